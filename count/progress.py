"""Progress of a long operation, as ``count`` shows it: a bar redrawn in place on a terminal,
plain lines (at most one per PLAIN_INTERVAL_S, only when something moved) otherwise, so that
a log or a pipe gets a readable record instead of carriage returns.

Pure apart from the stream it writes to: time comes in with each update.
"""

from __future__ import annotations

from typing import TextIO

BAR_WIDTH = 30
PLAIN_INTERVAL_S = 5.0


def bar(done: int, total: int, unit: str, elapsed_s: float, width: int = BAR_WIDTH) -> str:
    """``[#########.....]  120/450 ranges  27%  12 s`` (an unknown total shows no bar)."""
    if total <= 0:
        return f"{done:,} {unit}  {elapsed_s:.0f} s"
    done = min(done, total)
    filled = round(width * done / total)
    percent = 100 * done // total
    return (f"[{'#' * filled}{'.' * (width - filled)}]  {done:,}/{total:,} {unit}  "
            f"{percent}%  {elapsed_s:.0f} s")


class Progress:
    def __init__(self, stream: TextIO, what: str, unit: str, tty: bool | None = None) -> None:
        self.stream = stream
        self.what = what
        self.unit = unit
        self.tty = stream.isatty() if tty is None else tty
        self._drawn = False
        self._last_plain: tuple[float, int] | None = None  # (time, done) of the last line

    def update(self, done: int, total: int, elapsed_s: float) -> None:
        if self.tty:
            self.stream.write(f"\r{self.what}: {bar(done, total, self.unit, elapsed_s)}")
            self.stream.flush()
            self._drawn = True
            return
        last = self._last_plain
        if last is not None and (elapsed_s - last[0] < PLAIN_INTERVAL_S or done == last[1]):
            return
        self._last_plain = (elapsed_s, done)
        of = f" of {total:,}" if total > 0 else ""
        self.stream.write(f"{self.what}: {done:,}{of} {self.unit} after {elapsed_s:.0f} s\n")
        self.stream.flush()

    def finish(self) -> None:
        """End the bar's line (a terminal); plain output needs nothing."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
