"""Which memgen functions a step actually runs: the run-time audit of the static code
closures of memgen.provenance (tests run the workflow with ``MEMGEN_TRACE_CODE=DIR``).

:func:`traced` records, while its block runs, every memgen function entered (module and
qualified name, ``train.<locals>.save``, through ``sys.setprofile``) and writes them to
a JSON file: module -> sorted names. ``<module>`` is a module's import-time code, class
bodies included (they run once, at import, and only define names).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
from pathlib import Path

OUTPUT_NEUTRAL = True  # memgen.provenance: recording calls cannot change an output

PACKAGE_DIR = Path(__file__).resolve().parent


def _module_name(filename: str) -> str | None:
    try:
        rel = Path(filename).resolve().relative_to(PACKAGE_DIR)
    except ValueError:
        return None
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["memgen", *parts])


@contextlib.contextmanager
def traced(path: Path):
    seen: dict[str, set[str]] = {}
    names: dict[str, str | None] = {}

    def hook(frame, event, arg):
        if event == "call":
            code = frame.f_code
            fn = code.co_filename
            if fn not in names:
                names[fn] = _module_name(fn)
            module = names[fn]
            if module is not None:
                # (no CO_NEWLOCALS: a module's or a class body's import-time code)
                name = code.co_qualname if code.co_flags & inspect.CO_NEWLOCALS else "<module>"
                seen.setdefault(module, set()).add(name)

    sys.setprofile(hook)
    try:
        yield seen
    finally:
        sys.setprofile(None)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({m: sorted(f) for m, f in sorted(seen.items())}, indent=1))
