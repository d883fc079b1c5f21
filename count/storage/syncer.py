"""The WAL's fdatasync on a thread of its own, so the node loop works while the disk syncs.

The loop writes a group commit's record (a page-cache write, microseconds) and tells the
syncer its sequence number; the syncer calls fdatasync (which releases the GIL) and reports
the highest sequence that call covered through a pipe the loop polls. Records written while
a sync runs are covered by the next one, so commits pipeline: the loop stages commit k+1
while commit k is on its way to the disk, and nothing is acknowledged before its sync.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class Syncer:
    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self._cv = threading.Condition()
        self._written = 0
        self._synced = 0
        self._error: OSError | None = None
        self._stopping = False
        self.ready_fd, self._notify_fd = os.pipe()
        os.set_blocking(self.ready_fd, False)
        self.syncs = 0
        self._thread = threading.Thread(target=self._run, name="wal-sync", daemon=True)
        self._thread.start()

    def written(self, seq: int) -> None:
        """Record ``seq`` (and everything before it) is written and waits for a sync."""
        with self._cv:
            assert seq > self._written
            self._written = seq
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._written == self._synced and not self._stopping:
                    self._cv.wait()
                if self._stopping and self._written == self._synced:
                    return
                target = self._written
            try:
                self._sync()
                error = None
            except OSError as exc:
                error = exc
            with self._cv:
                self._synced = target
                self._error = error or self._error
                self.syncs += 1
                self._cv.notify_all()
            os.write(self._notify_fd, b"!")

    def take(self) -> tuple[int, OSError | None]:
        """(highest synced sequence, the error of a failed sync since the last take)."""
        try:
            while os.read(self.ready_fd, 4096):
                pass
        except BlockingIOError:
            pass
        with self._cv:
            error, self._error = self._error, None
            return self._synced, error

    def wait(self) -> None:
        """Block until everything written so far is synced."""
        with self._cv:
            while self._synced < self._written:
                self._cv.wait()

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join()
        os.close(self.ready_fd)
        os.close(self._notify_fd)
