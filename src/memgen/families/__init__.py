"""The experiment families: one subpackage each, declaring ``FAMILY``
(:class:`memgen.declare.Family`). A family is found by being here: adding one is
adding its package (plus its ``.smk`` file and config-schema block), nothing else."""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from memgen import MemgenError
from memgen.declare import Family, Step


@lru_cache(maxsize=None)
def registry() -> dict[str, Family]:
    """Family name -> declaration, for every subpackage of this package."""
    out = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.ispkg:
            family = importlib.import_module(f"{__name__}.{info.name}").FAMILY
            if family.name != info.name:
                raise MemgenError(f"{__name__}.{info.name}: FAMILY.name is {family.name!r}, not the package name")
            out[family.name] = family
    return out


def _lookup(table: dict, name: str, what: str):
    if name not in table:
        raise MemgenError(f"unknown {what} '{name}'; known: {', '.join(sorted(table))}")
    return table[name]


def family(name: str) -> Family:
    return _lookup(registry(), name, "experiment family")


def steps() -> dict[str, Step]:
    """Step name -> declaration, over every family."""
    out: dict[str, Step] = {}
    for fam in registry().values():
        for step in fam.steps:
            if step.name in out:
                raise MemgenError(f"step name {step.name} is declared by two families")
            out[step.name] = step
    return out


def step(name: str) -> Step:
    return _lookup(steps(), name, "step")
