"""Canonical parameters, their hashes, and the hash of the code behind each step.

Snakemake re-runs a job when its rule text, params or inputs change, but it does not
see edits inside ``src/memgen``. Every rule therefore carries
``code=code_hash(STEP)`` among its params: the SHA-256 of the source files of the
library modules that step runs (``STEP_MODULES``). Editing ``dynamics.py`` changes the
hash of ``train`` (and of the steps that read its outputs only through their own
inputs), so exactly the affected outputs become stale; editing ``figures/`` re-draws
figures without retraining anything.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

PACKAGE_DIR = Path(__file__).resolve().parent

# Step -> library modules (relative to the package, files or folders) whose code
# determines that step's output. Shared infrastructure (h5io, provenance, config) is
# listed once in COMMON.
COMMON = ("__init__.py", "h5io.py")
STEP_MODULES: dict[str, tuple[str, ...]] = {
    "dataset": ("data.py", "steps/core.py"),
    "init": ("models.py", "data.py", "steps/core.py"),
    "train": ("models.py", "losses.py", "dynamics.py", "training.py", "steps/core.py"),
    "ntk": ("models.py", "kernels", "steps/core.py"),
    "kernel_train": ("losses.py", "dynamics.py", "training.py", "steps/core.py"),
    "dd_linear": ("linear.py", "steps/double_descent.py"),
    "dd_theory_linear": ("linear.py", "theory.py", "steps/double_descent.py"),
    "dd_two_layer": ("linear.py", "steps/double_descent.py"),
    "dd_theory_two_layer": ("linear.py", "theory.py", "steps/double_descent.py"),
    "dd_modelwise": ("modelwise.py", "theory.py", "steps/double_descent.py"),
    "dd_theory_modelwise": ("modelwise.py", "theory.py", "steps/double_descent.py"),
    "kernel_accuracy": ("models.py", "data.py", "kernels", "dynamics.py", "steps/kernels.py"),
    "ntk_convergence": ("models.py", "data.py", "kernels", "dynamics.py", "steps/kernels.py"),
    "linearized_training": ("models.py", "data.py", "kernels", "dynamics.py", "steps/kernels.py"),
    "curvature_toy": ("curvature", "steps/curvature.py"),
    "curvature_digits": ("data.py", "steps/curvature.py"),
    "curvature_train": ("curvature", "steps/curvature.py"),
    "curvature_influence": ("curvature", "steps/curvature.py"),
    "curvature_loo": ("curvature", "steps/curvature.py"),
    "curvature_solvers": ("curvature", "steps/curvature.py"),
    "summary": ("experiments",),
    "figure": ("figures",),
}


def canonical_json(params: Mapping[str, Any]) -> str:
    """JSON with sorted keys and no whitespace: equal params give equal strings."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), allow_nan=False)


def params_hash(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()


def _files(entry: str) -> list[Path]:
    path = PACKAGE_DIR / entry
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".py", ".mplstyle"))
    return [path] if path.exists() else []


@lru_cache(maxsize=None)
def code_hash(step: str) -> str:
    """SHA-256 over the source of the modules behind ``step`` (see ``STEP_MODULES``)."""
    if step not in STEP_MODULES:
        raise KeyError(f"unknown step '{step}'; known: {', '.join(sorted(STEP_MODULES))}")
    digest = hashlib.sha256()
    for entry in sorted(set(COMMON + STEP_MODULES[step])):
        for file in _files(entry):
            digest.update(str(file.relative_to(PACKAGE_DIR)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
