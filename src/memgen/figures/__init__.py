"""Paper-style figures, one module per family; they read summary CSVs only."""

from __future__ import annotations

import importlib
from pathlib import Path

from memgen import MemgenError

FAMILIES = ("time_scale", "double_descent", "kernels", "curvature")


def draw(family: str, name: str, inputs: dict[str, Path], outputs: list[str], options: dict) -> None:
    """Draw figure ``name`` of ``family`` from the CSVs in ``inputs`` into every path in
    ``outputs`` (format from the suffix)."""
    if family not in FAMILIES:
        raise MemgenError(f"figure: unknown family '{family}'; known: {', '.join(FAMILIES)}")
    module = importlib.import_module(f"memgen.figures.{family}")
    module.draw(name, inputs, [Path(o) for o in outputs], options)
