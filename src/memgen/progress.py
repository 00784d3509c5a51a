"""Progress lines for long steps: count, rate, elapsed time and ETA, on stderr (the log).

A :class:`Progress` prints one line when it is created (the total, so a log shows at
once what a step is doing), at most one line every ``every`` seconds from
:meth:`Progress.update`, and a last line with the total elapsed time from
:meth:`Progress.finish`::

    [dd_linear uniform] 0/20000 step started: 10000 run(s), d=50
    [dd_linear uniform] 4210/20000 step (421 step/s, 10s, eta 38s)
    [dd_linear uniform] done 20000/20000 step in 47s (425 step/s)

``every`` defaults to the environment variable ``MEMGEN_PROGRESS_EVERY`` (seconds,
default 10; 0 prints every update): set it for one run (``MEMGEN_PROGRESS_EVERY=60
snakemake ...``) without touching configs. The ETA is ``(total - done) / rate`` with
the mean rate since the start; a caller that knows better passes ``eta=`` to
:meth:`Progress.update`, and ``bound=True`` prints it as ``eta <= ...`` (an upper bound:
the loop may stop earlier, e.g. an iterative solver at its tolerance).

Progress never changes what a loop computes: it only reads counters and the clock, and
a ``message`` may be a callable, called only when its line is printed (or check
:meth:`Progress.due` first). Library loops take ``progress: str | None`` (the label;
None, their default, is silent) and the steps pass one, so only step logs get lines. A
``Progress`` whose label is None prints nothing (``due()`` is always False), so loops
call it unconditionally.
This module is not part of any step's code hash (memgen.provenance): it cannot change
an output.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, TextIO

from memgen import MemgenError

OUTPUT_NEUTRAL = True  # memgen.provenance: progress lines cannot change an output
ENV_EVERY = "MEMGEN_PROGRESS_EVERY"
DEFAULT_EVERY = 10.0

Message = str | Callable[[], str]


def default_every() -> float:
    """Seconds between progress lines: ``$MEMGEN_PROGRESS_EVERY`` or 10."""
    raw = os.environ.get(ENV_EVERY, "").strip()
    if not raw:
        return DEFAULT_EVERY
    try:
        every = float(raw)
    except ValueError:
        every = math.nan
    if not every >= 0:
        raise MemgenError(f"{ENV_EVERY}={raw!r}: expected seconds >= 0 (e.g. 10, 0.5; 0 = every update)")
    return every


def format_duration(seconds: float) -> str:
    """``0.42s``, ``7.3s``, ``42s``, ``3m07s``, ``2h05m``, ``3d04h``; ``inf``; ``?`` for nan."""
    if not math.isfinite(seconds):
        return "?" if math.isnan(seconds) else "inf" if seconds > 0 else "0.00s"
    s = max(seconds, 0.0)
    if s < 10:
        return f"{s:.2f}s" if s < 1 else f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    s = round(s)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _number(x: float) -> str:
    """Whole numbers in full (20000, not 2e+04), others to 4 digits."""
    x = float(x)
    return f"{int(x)}" if x.is_integer() and abs(x) < 1e15 else f"{x:.4g}"


def sublabel(label: str | None, part: str) -> str | None:
    """Label of one loop inside a labelled step: ``"label part"``; None (silent) stays None."""
    return None if label is None else f"{label} {part}"


class Progress:
    """Progress of one loop (module doc). ``total``: number of units to do (None:
    unknown, no ETA); ``initial``: units done before this process (a resumed run), not
    counted in the rate; ``unit``: printed after the counts; ``bound``: the ETA is an
    upper bound (printed ``eta <= ...``); ``message``: appended to the start line."""

    def __init__(self, label: str | None, total: float | None = None, every: float | None = None,
                 stream: TextIO | None = None, *, unit: str = "", initial: float = 0, bound: bool = False,
                 message: Message = ""):
        self.label, self.total, self.unit, self.bound = label, total, unit, bound
        self.active = label is not None  # None: silent
        self.every = default_every() if every is None else float(every)
        self.stream = stream if stream is not None else sys.stderr
        self.initial = self.done = initial
        self.finished = False
        self.start = self.last = time.perf_counter()
        if self.active:
            message = message() if callable(message) else message
            self._write(f"{self._count(initial)} started{': ' + message if message else ''}", "")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def due(self) -> bool:
        """Whether :meth:`update` would print now (build costly messages only then)."""
        return self.active and time.perf_counter() - self.last >= self.every

    def rate(self, done: float | None = None, now: float | None = None) -> float:
        """Units per second since the start (nan before any time has passed)."""
        elapsed = (time.perf_counter() if now is None else now) - self.start
        done = self.done if done is None else done
        return (done - self.initial) / elapsed if elapsed > 0 else math.nan

    def update(self, done: float, message: Message = "", force: bool = False, *, eta: float | None = None,
               eta_note: str = "") -> bool:
        """Record ``done`` units; print a line if ``every`` seconds passed since the last
        one (or ``force``). ``eta``: seconds left, instead of (total - done) / rate;
        ``eta_note``: printed after it. Returns whether a line was printed."""
        self.done = done
        if not self.active:
            return False
        now = time.perf_counter()
        if not force and now - self.last < self.every:
            return False
        self.last = now
        rate = self.rate(done, now)
        if eta is None and self.total is not None and rate > 0:
            eta = max(self.total - done, 0) / rate
        eta_text = ""
        if eta is not None:
            eta_text = f", eta {'<= ' if self.bound else ''}{format_duration(eta)}{' ' + eta_note if eta_note else ''}"
        self._write(f"{self._count(done)} ({self._rate(rate)}, {format_duration(now - self.start)}{eta_text})", message)
        return True

    def advance(self, units: float = 1, message: Message = "") -> bool:
        """:meth:`update` with ``units`` more done."""
        return self.update(self.done + units, message)

    def finish(self, done: float | None = None, message: Message = "") -> None:
        """Print the last line: units done, total elapsed time, mean rate (once)."""
        if self.finished:
            return
        self.finished = True
        self.done = self.done if done is None else done
        now = time.perf_counter()
        self._write(f"done {self._count(self.done)} in {format_duration(now - self.start)} "
                    f"({self._rate(self.rate(self.done, now))})", message)

    def _count(self, done: float) -> str:
        total = f"/{_number(self.total)}" if self.total is not None else ""
        return f"{_number(done)}{total}{' ' + self.unit if self.unit else ''}"

    def _rate(self, rate: float) -> str:
        text = "?" if not math.isfinite(rate) else f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"
        return f"{text} {self.unit or 'it'}/s"

    def _write(self, text: str, message: Message) -> None:
        if not self.active:
            return
        message = message() if callable(message) else message
        self.stream.write(f"[{self.label}] {text}{' ' + message if message else ''}\n")
        self.stream.flush()
