"""Paper-style figures: how they are declared, found, captioned and drawn.

Each family's figures are the functions of its figure module
(``memgen.families.NAME.figures``) decorated with :func:`figure`::

    @figure(table=["sqrt_h_alpha", "test_err"])
    def test_error(table, options):
        \"\"\"Test error at the end of training vs sqrt(h) alpha, ...\"\"\"

The function's name is the figure's name (``figures/FAMILY/NAME.pdf``), the
decorator's keywords are the summary tables it reads with the columns it needs, and
its docstring is its caption (in ``snakemake --report`` and the README). Figures are
found by reading the module's source (:func:`specs`): declaring the workflow imports no
matplotlib. A figure reads summary CSVs only, so restyling one is instant.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

from memgen import MemgenError

BOOL_COLUMNS = ("diverged", "converged", "frozen_diverged")


def figure(**needs):
    """Declare a figure function: ``needs`` maps each summary table it reads (a
    parameter of the function) to the columns it requires."""

    def mark(fn):
        fn.needs = {k: list(v) for k, v in needs.items()}
        return fn

    return mark


@dataclass(frozen=True)
class Spec:
    """A figure as its source declares it."""

    name: str
    tables: tuple[str, ...]  # summary tables it reads
    caption: str  # its docstring, one paragraph


def _is_figure(decorator: ast.expr) -> bool:
    func = decorator.func if isinstance(decorator, ast.Call) else None
    named = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return named == "figure"


def _declared(family):
    if isinstance(family, str):
        from memgen.families import family as by_name

        return by_name(family)
    return family


def specs(family) -> dict[str, Spec]:
    """The figures of a family (a :class:`memgen.declare.Family` or its name), in source
    order."""
    from memgen.provenance import _tree, module_file

    family = _declared(family)
    path = module_file(family.figure_module)
    if path is None:
        raise MemgenError(f"family {family.name}: no figure module {family.figure_module}")
    out = {}
    for node in _tree(path).body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if _is_figure(dec):
                    caption = " ".join((ast.get_docstring(node) or "").split())
                    if not caption:
                        raise MemgenError(f"{path}: figure {node.name} has no docstring (its caption)")
                    out[node.name] = Spec(node.name, tuple(k.arg for k in dec.keywords), caption)
    return out


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
    return coerce_bools(df)


def coerce_bools(df):
    """The flag columns (:data:`BOOL_COLUMNS`) of a summary table read back as bool
    (they come back as object when they hold NaN)."""
    for col in BOOL_COLUMNS:
        if col in df.columns and df[col].dtype != bool:
            df[col] = df[col].astype(str).str.lower().isin(("true", "1", "1.0"))
    return df


def draw(family, name: str, inputs: dict[str, Path], outputs: list[str], options: dict) -> None:
    """Draw figure ``name`` of ``family`` (a :class:`memgen.declare.Family` or its name)
    from the CSVs in ``inputs`` into every path in ``outputs`` (format from the suffix)."""
    from memgen.figures import style

    family = _declared(family)
    known = specs(family)
    if name not in known:
        raise MemgenError(f"figure: unknown {family.name} figure '{name}'; known: {', '.join(known)}")
    fn = getattr(importlib.import_module(family.figure_module), name)
    data = {key: read_csv(inputs, key, cols, name) for key, cols in fn.needs.items()}
    with style.paper_style():
        fig = fn(**data, options=options)
        style.save(fig, [Path(o) for o in outputs])
