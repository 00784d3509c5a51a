"""Resume points for long loops: killed and restarted, a loop ends with the arrays an
uninterrupted run gives.

A :class:`ResumePoint` belongs to one output (``OUTPUT.h5.resume``, next to it) and the
params that produce it. The loop calls :meth:`ResumePoint.checkpoint` after each unit
of work (a seed, a retraining, a GD step) with the count done and a function returning
its state (arrays); the state is written atomically every ``every_s`` seconds, and when
SIGTERM arrives (SLURM preemption, a time limit, ``scancel``: the CLI's handler defers
it while a resume point is active) it is written at once and the process exits with
status 143 (:class:`Terminated`; :func:`install_sigterm_handler` is the CLI's handler). A restarted job calls :meth:`load`,
gets the saved state (or None: no file, or one from other params, which is ignored
with a message) and continues from there. For the kill tests, :meth:`checkpoint` is
also a :func:`memgen.faults.pause_point` (a resume point is saved before the pause).

The loops are deterministic functions of their state (GD from (W, v); one retraining
or one seed after another), so resuming gives bit-identical arrays.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from memgen import h5io
from memgen.faults import pause_point

State = Callable[[], Mapping[str, np.ndarray]]


class Terminated(SystemExit):
    """SIGTERM arrived (SLURM preemption, time limit, scancel); exit status 143."""

    def __init__(self, message: str):
        super().__init__(143)
        self.message = message


# SIGTERM while a loop runs with a resume point (training, ResumePoint): finish the unit, save the
# resume state, then raise Terminated; at any other time: raise Terminated at once.
_TERM = {"deferred": False, "requested": False}


def _on_sigterm(signum, frame):
    if _TERM["deferred"]:
        _TERM["requested"] = True
    else:
        raise Terminated("terminated by SIGTERM")


def install_sigterm_handler() -> None:
    """Make SIGTERM save a resume point before exiting (the CLI's steps call this)."""
    signal.signal(signal.SIGTERM, _on_sigterm)


class ResumePoint:
    """Resume file ``path`` of a loop run with ``params`` (module doc); ``path`` None:
    no resume points (the loop runs as usual). ``label``: the loop's progress label,
    for fault injection."""

    def __init__(self, path: Path | None, params: Mapping, every_s: float = 300.0, label: str | None = None):
        self.path, self.params, self.every_s, self.label = path, dict(params), float(every_s), label
        self.last = time.perf_counter()

    def load(self) -> dict[str, np.ndarray] | None:
        """The saved state (arrays, plus ``"count"``), or None."""
        if self.path is None or not Path(self.path).exists():
            return None
        try:
            d = h5io.read(self.path, {}, step="resume", expect_params=self.params)
            d = h5io.read(self.path, {k: None for k in _names(self.path)}, step="resume")
        except h5io.H5Error as exc:  # unusable leftovers are ignored, not fatal
            print(f"ignoring resume file: {exc}", flush=True)
            return None
        print(f"resuming from {self.path} at {int(d.attrs['count'])} done", flush=True)
        return {**d.arrays, "count": int(d.attrs["count"])}

    def save(self, count: int, state: Mapping[str, np.ndarray]) -> None:
        h5io.write(self.path, state, step="resume", params=self.params, attrs={"count": int(count)})
        self.last = time.perf_counter()

    def checkpoint(self, count: int, state: State) -> None:
        """After unit ``count``: save when due or when SIGTERM arrived (then exit 143)."""
        if self.path is None:
            return
        if _TERM["requested"] or time.perf_counter() - self.last >= self.every_s:
            self.save(count, state())
            if _TERM["requested"]:
                raise Terminated(f"terminated by SIGTERM; saved {self.path} at {count} done")
        pause_point(self.label, count, lambda: self.save(count, state()))

    def __enter__(self) -> "ResumePoint":
        _TERM["deferred"] = self.path is not None  # SIGTERM: save at the next checkpoint
        return self

    def __exit__(self, *exc) -> None:
        _TERM["deferred"] = _TERM["requested"] = False

    def done(self) -> None:
        """The output is written: the resume file is no longer needed."""
        if self.path is not None:
            Path(self.path).unlink(missing_ok=True)


def _names(path) -> list[str]:
    import h5py

    names: list[str] = []
    with h5py.File(path) as f:
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names
