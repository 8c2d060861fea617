"""Progress lines for long steps: how far, how fast, how long left, what failed; at most one line every
`PROGRESS_SECONDS`, and one at the end. `clipflow status` reads the records, not these lines."""

import logging
import time
from collections import Counter

PROGRESS_SECONDS = 30.0

log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s" if rest >= 60 else f"{rest}s"


class Progress:
    """`what` (e.g. "shard 00000012") done out of `total` `unit`s, with failures by reason."""

    def __init__(self, what: str, total: int | None, unit: str, every: float = PROGRESS_SECONDS):
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.done, self.failures = 0, Counter()
        self.started = self.last = time.monotonic()

    def add(self, done: int = 0, failures: Counter | dict | None = None) -> None:
        self.done += done
        self.failures.update(failures or {})
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            log.info("%s", self.line())

    def finish(self) -> str:
        line = self.line(finished=True)
        log.info("%s", line)
        return line

    def line(self, finished: bool = False) -> str:
        seconds = time.monotonic() - self.started
        rate = self.done / seconds if seconds > 0 else 0.0
        if self.total:
            parts = [f"{self.what}: {self.done:,} of {self.total:,} {self.unit} ({self.done / self.total:.0%})"]
        else:
            parts = [f"{self.what}: {self.done:,} {self.unit}"]
        parts.append(f"{rate:,.1f} {self.unit}/s")
        if finished:
            parts.append(f"done in {duration(seconds)}")
        elif self.total and rate > 0:
            parts.append(f"~{duration((self.total - self.done) / rate)} left")
        if self.failures:
            commonest = sorted(self.failures.items(), key=lambda item: (-item[1], item[0]))[:5]
            listed = ", ".join(f"{reason} {count}" for reason, count in commonest)
            parts.append(f"{sum(self.failures.values()):,} failed ({listed})")
        return ", ".join(parts)
