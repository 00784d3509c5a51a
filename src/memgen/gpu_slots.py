"""One GPU per job on a machine with several: exclusive slot locks.

Snakemake schedules local jobs by resource counts (``--resources gpu=N``: at most N
jobs that declare ``gpu=1`` run at once) but never says *which* GPU a job gets, so
without more every job's torch takes ``cuda:0``. ``acquire_gpu(n_slots, lock_dir)``
gives the calling process one of ``n_slots`` devices of its own: it takes an exclusive
``fcntl.flock`` on the first free slot file ``lock_dir/gpu<i>.lock``, keeps that file
open for the rest of the process and sets ``CUDA_VISIBLE_DEVICES`` so that torch sees
exactly that device (as ``cuda:0``). The kernel drops the lock when the process exits,
however it exits (SIGKILL included), so a crashed job never leaves a slot taken.

Call it before torch initialises CUDA (the first CUDA call reads
``CUDA_VISIBLE_DEVICES``); it refuses once CUDA is initialised. Slot ``i`` is the
``i``-th device this process may see: device ``i`` when ``CUDA_VISIBLE_DEVICES`` is
unset, else the ``i``-th entry of it (so slots subdivide what the caller was given).

``from_env()`` reads the settings the local-GPU profile hands to jobs
(``MEMGEN_GPUS``, ``MEMGEN_GPU_LOCK_DIR``; docs/cluster.md "Local GPU machines"). This
module imports neither torch nor Snakemake.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path

from memgen import MemgenError

ENV_SLOTS = "MEMGEN_GPUS"
ENV_LOCK_DIR = "MEMGEN_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / "memgen-gpu-slots"

_held: dict[str, object] = {}  # the slot this process holds: slot, fd, path, device, n_slots, lock_dir


class GpuSlotsBusy(MemgenError):
    """No slot became free within the timeout."""


def _visible_devices(n_slots: int) -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(n_slots)]
    devices = [d.strip() for d in visible.split(",") if d.strip()]
    if len(devices) < n_slots:
        raise MemgenError(f"{n_slots} GPU slots asked for, but CUDA_VISIBLE_DEVICES={visible!r} lists "
                          f"{len(devices)} device(s): set {ENV_SLOTS} to at most {len(devices)}")
    return devices[:n_slots]


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    return bool(cuda is not None and cuda.is_initialized())


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return fd


def acquire_gpu(n_slots: int, lock_dir: str | os.PathLike = DEFAULT_LOCK_DIR, *,
                timeout: float | None = None, poll_s: float = 0.5) -> int:
    """Take one of ``n_slots`` GPU slots for this process; return its index (0-based).

    Sets ``CUDA_VISIBLE_DEVICES`` to the slot's device. Waits while every slot is held
    by other processes, up to ``timeout`` seconds (None: as long as it takes; 0: try
    once), then raises ``GpuSlotsBusy`` naming the holders. Calling it again in the same
    process returns the slot it already holds. The slot is held until ``release_gpu()``
    or the end of the process.
    """
    if isinstance(n_slots, bool) or not isinstance(n_slots, int) or n_slots < 1:
        raise MemgenError(f"acquire_gpu: n_slots must be an integer >= 1, got {n_slots!r}")
    lock_dir = Path(lock_dir)
    if _held:
        if _held["n_slots"] != n_slots or _held["lock_dir"] != lock_dir:
            raise MemgenError(f"acquire_gpu: this process already holds slot {_held['slot']} of "
                              f"{_held['n_slots']} in {_held['lock_dir']}")
        return int(_held["slot"])
    if _cuda_initialised():
        raise MemgenError("acquire_gpu: torch has already initialised CUDA in this process, so "
                          "CUDA_VISIBLE_DEVICES can no longer choose its GPU: take the slot before "
                          "the first CUDA call")
    devices = _visible_devices(n_slots)
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MemgenError(f"GPU slot directory {lock_dir}: {exc.strerror} (set {ENV_LOCK_DIR})") from exc
    deadline = None if timeout is None else time.monotonic() + timeout
    # start the search at a slot that depends on the pid: concurrent starters spread out
    # instead of all trying gpu0 first (correctness does not depend on it: the lock decides)
    first = os.getpid() % n_slots
    while True:
        for k in range(n_slots):
            slot = (first + k) % n_slots
            path = lock_dir / f"gpu{slot}.lock"
            try:
                fd = _try_lock(path)
            except OSError as exc:
                raise MemgenError(f"GPU slot file {path}: {exc.strerror} (set {ENV_LOCK_DIR})") from exc
            if fd is not None:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for the busy message
                os.environ["CUDA_VISIBLE_DEVICES"] = devices[slot]
                _held.update(slot=slot, fd=fd, path=path, device=devices[slot], n_slots=n_slots, lock_dir=lock_dir)
                return slot
        if deadline is not None and time.monotonic() >= deadline:
            holders = ", ".join(f"gpu{i}: pid {_holder(lock_dir / f'gpu{i}.lock')}" for i in range(n_slots))
            raise GpuSlotsBusy(f"all {n_slots} GPU slots in {lock_dir} are held ({holders}); more GPU jobs "
                               f"run than {ENV_SLOTS}={n_slots} allows (is --resources gpu larger, or does "
                               "another run share the lock directory?)")
        time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def held_slot() -> int | None:
    """The slot this process holds, or None."""
    return int(_held["slot"]) if _held else None


def release_gpu() -> None:
    """Give the slot back (also happens at process exit). CUDA_VISIBLE_DEVICES stays."""
    if _held:
        fd = int(_held["fd"])
        _held.clear()
        os.close(fd)  # closing the only fd drops the flock


def from_env(environ=None) -> tuple[int, Path] | None:
    """(n_slots, lock_dir) from ``MEMGEN_GPUS`` / ``MEMGEN_GPU_LOCK_DIR``; None when
    ``MEMGEN_GPUS`` is unset or empty (no slots: e.g. under SLURM, which sets
    CUDA_VISIBLE_DEVICES per job itself)."""
    environ = os.environ if environ is None else environ
    raw = environ.get(ENV_SLOTS, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise MemgenError(f"{ENV_SLOTS}={raw!r}: must be the number of GPUs (an integer >= 1)")
    return n, Path(environ.get(ENV_LOCK_DIR) or DEFAULT_LOCK_DIR)
