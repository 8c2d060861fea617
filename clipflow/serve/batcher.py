"""Micro-batching for the search service: concurrent requests share one model or index call.

Items submitted while a batch is running queue up and go together in the next one, so under load
each call serves many requests, and a lone request waits for nothing.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class MicroBatcher:
    """`await submit(item)` returns `run(items)[i]` for that item; `run` executes in one worker thread,
    set up by `initializer`."""

    def __init__(self, run: Callable[[list], list], max_batch: int, name: str, initializer: Callable | None = None):
        self.run, self.max_batch = run, max_batch
        self.pending: list[tuple[object, asyncio.Future]] = []
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=initializer)
        self.busy = False
        self.calls = self.items = 0  # for the metrics: items / calls is the mean batch size

    async def submit(self, item):
        future = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        if not self.busy:
            self.busy = True
            asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
                self.calls, self.items = self.calls + 1, self.items + len(batch)
                try:
                    results = await loop.run_in_executor(self.executor, self.run, [item for item, _ in batch])
                except Exception as error:  # every waiter learns of the failure
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
        finally:
            self.busy = False

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
