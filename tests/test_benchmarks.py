"""The benchmarks still run against today's library, at tiny sizes. No test times them
(benchmarks/README.md reports ratios from full runs); these catch a benchmark broken by a
library change, as train_step.py was by the input contracts until the seed loop's problem
gained a test point, and they check what each script checks of itself."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

BENCH = ROOT / "benchmarks"


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_train_step_follows_the_seed_loop_step_for_step(tmp_path):
    """memgen's euler (run and bare flow) against the seed loop's re-implementation from the
    same weights: the same accepted and rejected steps, t and outputs (the script exits 1
    otherwise); 200 steps at the default size take rejected steps, so the retry is covered."""
    out = tmp_path / "train_step.json"
    p = _run("train_step.py", "--steps", "200", "--paper-steps", "0", "--repeats", "1", "--threads", "1",
             "--out", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["rejected"] >= 1
    for side in ("memgen_run", "memgen_flow"):
        assert row["trajectory"][side]["ok"], row["trajectory"][side]["problems"]
        assert row["trajectory"][side]["max_dF"] <= 1e-8


def test_ntk_benchmark_generic_path_matches_its_loop(tmp_path):
    out = tmp_path / "ntk.json"
    p = _run("ntk.py", "--n", "64", "--h", "64", "--rss-n", "256", "--cnn-n", "16", "--repeats", "1",
             "--skip-loop", "--threads", "1", "--out", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(out.read_text())
    assert res["cnn_relerr"] < 1e-5  # float32 generic CNN Gram against the per-example loop


RUN_ABOVE = {"train_step", "ntk"}  # the scripts the tests above run


@pytest.mark.parametrize("module", sorted({p.stem for p in BENCH.glob("*.py")} - RUN_ABOVE))
def test_benchmark_imports(module):
    """Every other script (full runs take minutes: flow.py's DOP853 references) at least
    imports against today's library and the shared seed loop."""
    p = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(BENCH)!r}); import {module}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
