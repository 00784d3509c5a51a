"""Fault injection that triggers on a loop's own progress, never on the clock.

Long loops call :func:`pause_point` with their progress label (``"ts_train
alpha~1_h~64_seed~0"``) and a count (steps, retrainings, ...). With

    MEMGEN_PAUSE_AT=LABEL_PREFIX:COUNT    e.g. ts_train:500
    MEMGEN_PAUSE_FILE=PATH                written when the loop pauses

the first call of a matching loop whose count reached COUNT first runs ``before``
(a resumable loop saves its resume point there), then writes PATH (the label and the
count) and waits for a signal. A test then kills the process exactly there (SIGKILL),
or sends the signal that a cluster would (SIGTERM: its handler runs and the loop goes
on from the same state): the kill happens at the same point of the computation on a
fast idle machine and on a slow loaded one. Without the variables nothing happens.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable

OUTPUT_NEUTRAL = True  # memgen.provenance: a pause never changes what is computed

ENV_AT, ENV_FILE = "MEMGEN_PAUSE_AT", "MEMGEN_PAUSE_FILE"
_done: set[str] = set()


def _threshold(label: str | None) -> int | None:
    spec = os.environ.get(ENV_AT, "")
    if not spec or label is None or label in _done:
        return None
    prefix, _, count = spec.rpartition(":")
    return int(count) if label.startswith(prefix) and count.isdigit() else None


def pause_point(label: str | None, count: int, before: Callable[[], None] | None = None) -> bool:
    """Pause here if ``$MEMGEN_PAUSE_AT`` asks for ``label`` at ``count`` (module doc);
    returns whether it paused."""
    at = _threshold(label)
    if at is None or count < at:
        return False
    _done.add(label)
    if before is not None:
        before()
    path = Path(os.environ.get(ENV_FILE, "memgen.paused"))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{label}\n{count}\n{os.getpid()}\n")
    os.replace(tmp, path)  # appears whole: the test reads it as soon as it exists
    signal.pause()
    return True
