"""Paper-style figures, one module per family; they read summary CSVs only."""

from __future__ import annotations

import importlib
from pathlib import Path

from memgen import MemgenError

FAMILIES = ("time_scale", "double_descent", "kernels", "curvature")


BOOL_COLUMNS = ("diverged", "converged", "frozen_diverged")


def read_csv(inputs: dict[str, Path], key: str, columns: list[str], name: str):
    """Read input ``key`` of figure ``name``, checking it has ``columns``."""
    import pandas as pd

    if key not in inputs:
        raise MemgenError(f"figure {name}: missing --input {key}=PATH")
    path = Path(inputs[key])
    if not path.is_file():
        raise MemgenError(f"figure {name}: input {key} '{path}' does not exist")
    df = pd.read_csv(path)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MemgenError(f"figure {name}: {path} lacks column(s) {', '.join(missing)}")
    for col in BOOL_COLUMNS:  # bool columns come back as object when they hold NaN
        if col in df.columns and df[col].dtype != bool:
            df[col] = df[col].astype(str).str.lower().isin(("true", "1", "1.0"))
    return df


def draw(family: str, name: str, inputs: dict[str, Path], outputs: list[str], options: dict) -> None:
    """Draw figure ``name`` of ``family`` from the CSVs in ``inputs`` into every path in
    ``outputs`` (format from the suffix).

    A family module declares ``NEEDS`` (figure -> input -> columns) and one function
    ``_NAME(**frames, options=...)`` per figure returning a matplotlib figure.
    """
    from memgen.figures import style

    if family not in FAMILIES:
        raise MemgenError(f"figure: unknown family '{family}'; known: {', '.join(FAMILIES)}")
    module = importlib.import_module(f"memgen.figures.{family}")
    if name not in module.NEEDS:
        raise MemgenError(f"figure: unknown {family} figure '{name}'; known: {', '.join(module.NEEDS)}")
    data = {key: read_csv(inputs, key, cols, name) for key, cols in module.NEEDS[name].items()}
    with style.paper_style():
        fig = getattr(module, f"_{name}")(**data, options=options)
        style.save(fig, [Path(o) for o in outputs])
