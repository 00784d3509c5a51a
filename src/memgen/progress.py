"""Progress lines for long steps: rate and ETA, at most one line every ``every`` seconds."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: float | None = None, every: float = 10.0, stream=None):
        self.label, self.total, self.every = label, total, every
        self.stream = stream or sys.stderr
        self.start = self.last = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def update(self, done: float, message: str = "", force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = ""
        if self.total and rate > 0:
            eta = f" eta {max(self.total - done, 0) / rate:.0f}s"
        self.stream.write(f"[{self.label}] {done:g}{'/' + format(self.total, 'g') if self.total else ''} "
                          f"({rate:.1f}/s, {elapsed:.0f}s{eta}) {message}\n")
        self.stream.flush()
