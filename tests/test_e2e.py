"""One end-to-end run of the whole DAG on config/test.yaml, in a scratch copy of the
workflow: every figure is built, a second run has nothing to do, and an edit of a
library module marks exactly the outputs that depend on it as stale."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

pytestmark = pytest.mark.e2e


def _snakemake(workdir: Path, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run([*SNAKEMAKE, "--cores", "2", "--configfile", "config/test.yaml", *args],
                          cwd=workdir, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def _jobs(dry_run_output: str) -> dict[str, int]:
    """Job counts per rule from the 'Job stats' table of a dry run."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", dry_run_output, re.M)
            if m.group(1) != "total"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("workflow")
    for name in ("Snakefile", "workflow", "config", "profiles"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    _snakemake(work)
    return work


def test_every_figure_is_built(built):
    import importlib

    from memgen import config

    cfg = config.load(built / "config" / "test.yaml")
    assert "time_scale" in cfg["families"]
    for family in cfg["families"]:
        module = importlib.import_module(f"memgen.experiments.{family}")
        for name in module.FIGURES:
            for ext in cfg[family]["figures"]["formats"]:
                path = built / "figures" / family / f"{name}.{ext}"
                assert path.stat().st_size > 1000, path


def test_outputs_carry_provenance(built):
    files = sorted((built / "data").rglob("*.h5"))
    time_scale = [f for f in files if "time_scale" in str(f.relative_to(built))]
    assert len(time_scale) == 1 + 2 + 2 + 3 * 6  # dataset, inits, ntk at init, per point: run, ntk, frozen
    for path in files:
        with h5py.File(path) as f:
            for key in ("memgen_version", "step", "params", "params_sha256", "code_sha256", "seed"):
                assert key in f.attrs, (path, key)
    assert not list((built / "data").rglob("*.tmp")) and not list((built / "data").rglob("*.resume"))


def test_second_run_does_nothing(built):
    out = _snakemake(built, "-n")
    assert "Nothing to be done" in out, out[-3000:]


def test_library_edit_marks_dependent_outputs_stale(built, tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "src" / "memgen", pkg / "memgen", ignore=shutil.ignore_patterns("__pycache__"))
    with open(pkg / "memgen" / "dynamics.py", "a") as fh:
        fh.write("\n# an edit\n")
    out = _snakemake(built, "-n", env={"PYTHONPATH": str(pkg)})
    jobs = _jobs(out)
    # dynamics.py feeds training and the frozen-kernel runs; the NTK at the end of
    # training and everything downstream follow; data sets, inits and NTKs at init do not.
    assert jobs.get("ts_train") == 6 and jobs.get("ts_frozen") == 6, jobs
    assert "ts_dataset" not in jobs and "ts_init" not in jobs and "ts_ntk_init" not in jobs, jobs
