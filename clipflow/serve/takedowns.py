"""A served index's takedowns: the rows its blocklist (clipflow.blocklist) names, which the service never returns,
serves an image of or lists in /metadata. The blocklist's files are looked at every POLL_SECONDS by a thread of
their own; when one changed, the files are read again and matched against the index's metadata, a record batch
at a time, and the new set of rows replaces the old at once. Requests meanwhile go on with the old set. A
blocklist that cannot be read at start stops the service; one that goes bad later keeps the last good set and
is reported in /health and the log."""

import logging
import os
import threading
from pathlib import Path

import numpy as np

from clipflow.blocklist import read_blocklist
from clipflow.errors import ClipflowError
from clipflow.index.folder import ClipIndex
from clipflow.index.takedowns import matched_rows

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0


class Takedowns:
    def __init__(self, name: str, entries: list, base: Path, index: ClipIndex):
        self.name, self.entries, self.base, self.index = name, entries, Path(base), index
        self.blocked = np.empty(0, np.int64)  # sorted row ids
        self.checksum: str | None = None
        self.error: str | None = None
        self.seen = self._signature()
        self._load()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"takedowns-{name}", daemon=True)
        self._thread.start()

    def _paths(self) -> list[Path]:
        return [self.base / (entry if isinstance(entry, str) else entry.get("path", "")) for entry in self.entries]

    def _signature(self) -> list:
        signature = []
        for path in self._paths():
            try:
                status = os.stat(path)
                signature.append((status.st_mtime_ns, status.st_size, status.st_ino))
            except OSError:
                signature.append(None)
        return signature

    def _load(self) -> None:
        blocklist = read_blocklist(self.entries, self.base)
        metadata = self.index.metadata
        blocklist.check_columns(metadata.column_names, f"index {self.name!r}'s metadata")
        self.blocked = matched_rows(blocklist, metadata)[0]
        self.checksum, self.error = blocklist.checksum, None
        log.info("index %r: %d rows taken down by blocklist %s", self.name, len(self.blocked), self.checksum[:12])

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            signature = self._signature()
            if signature == self.seen:
                continue
            self.seen = signature  # taken before reading: a change made while it reads is seen next time
            try:
                self._load()
            except (ClipflowError, OSError, ValueError) as error:
                self.error = str(error)
                log.error("index %r: the blocklist was not reloaded (the last one read stays): %s", self.name, error)

    def holds(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` are taken down."""
        blocked = self.blocked  # one read: a reload swaps the array whole
        return np.isin(np.asarray(ids, dtype=np.int64), blocked)

    def status(self) -> dict:
        return {"blocked": int(len(self.blocked)), "checksum": self.checksum, "error": self.error}

    def stop(self) -> None:
        self._stop.set()
