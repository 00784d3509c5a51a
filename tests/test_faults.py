"""Faults during a run:

- SIGKILL in the middle of an HDF5 write never leaves a file under the final name (an
  older file there stays byte-identical);
- NaN/inf in the middle of training is recorded as a diverged run (``diverged=True``
  in its HDF5), the rest of the sweep completes, the summary tables carry the flag and
  the time-scale test-error figure marks the run; the kernels and double-descent
  families' GD runs that blow up (a step size far too large) are flagged in their
  summary CSVs the same way.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import config_block, run_step, step_params
from memgen import h5io
from memgen.families import step
from memgen.losses import Loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- SIGKILL during a write

# The child writes a 1 MB dataset "a", flushes, says so, then stalls inside h5io.write
# (before dataset "b" and before the rename), where the test kills it.
WRITER = textwrap.dedent("""
    import sys, time
    import h5py, numpy as np
    from memgen import h5io

    create = h5py.Group.create_dataset

    def stalling(self, name, *args, **kw):
        out = create(self, name, *args, **kw)
        if name == "a":
            self.file.flush()
            print("writing", flush=True)
            time.sleep(300)  # ok-clock: a stall; the test kills it once "writing" is printed
        return out

    h5py.Group.create_dataset = stalling
    h5io.write(sys.argv[1], {"a": np.arange(2.0**17), "b": np.ones(3)}, step="dataset", params={"version": 2})
""")


def _write(path: Path, version: int) -> None:
    h5io.write(path, {"a": np.arange(2.0**17), "b": np.full(3, float(version))}, step="dataset",
               params={"version": version})


@pytest.mark.parametrize("older_file", [False, True], ids=["new", "overwrite"])
def test_sigkill_mid_write_leaves_no_file_under_the_final_name(tmp_path, older_file):
    path = tmp_path / "out.h5"
    if older_file:
        _write(path, 1)
        before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "writing\n", "the writer ended before it could be killed"
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if older_file:  # the older output is untouched
        assert path.read_bytes() == before
        assert h5io.read(path, {"b": (3,)}, expect_params={"version": 1})["b"].tolist() == [1.0, 1.0, 1.0]
    else:
        assert not path.exists()
    # What h5io leaves: the half-written temp file "out.h5.tmp" (SIGKILL runs no cleanup).
    # It cannot be taken for the output: its name does not end in ".h5" (no rule output or
    # *.h5 glob matches it), and as an output it is incomplete (no "b").
    leftover = sorted(p.name for p in tmp_path.iterdir() if p != path)
    assert leftover == ["out.h5.tmp"]
    with pytest.raises(h5io.H5Error, match=r"out\.h5\.tmp: (missing dataset 'b'|not a readable HDF5 file)"):
        h5io.read(tmp_path / "out.h5.tmp", {"a": None, "b": (3,)})
    # the next write of the same output reuses that name and renames it away: nothing accumulates
    _write(path, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]
    assert h5io.read(path, {"b": (3,)}, expect_params={"version": 3})["b"].tolist() == [3.0, 3.0, 3.0]


# ---------------------------------------------------------------- time scale: a run diverges mid-training


H, SEED, POISONED = 16, 0, 1.0  # the sweep: alphas 0.1, 1, 100 at h=16; the alpha=1 run goes NaN


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Every step of a time-scale sweep through the CLI (as the rules run it) while the
    loss derivative of the alpha=1 run turns NaN after 40 evaluations; then the summary."""
    ts = config_block("time_scale", flow__max_steps=2000)
    assert ts["alphas"] == [0.1, 1.0, 100.0]
    d = tmp_path_factory.mktemp("sweep")
    ds, init = d / "dataset.h5", d / "init.h5"
    ntk0 = d / "ntk_init.h5"
    pt = {"h": H, "seed": SEED}
    assert run_step("ts_dataset", {}, ds, step_params("ts_dataset", ts)) == 0
    assert run_step("ts_init", {"dataset": ds}, init, step_params("ts_init", ts, **pt)) == 0
    assert run_step("ts_ntk_init", {"dataset": ds, "init": init}, ntk0, step_params("ts_ntk_init", ts, **pt)) == 0
    derivative, calls = Loss.derivative, {"n": 0, "poison": False}

    def poisoned(self, z):
        out = derivative(self, z)
        if calls["poison"]:
            calls["n"] += 1
            if calls["n"] > 40:
                return out * math.nan
        return out

    runs, finals = [], []
    mp = pytest.MonkeyPatch()
    mp.setattr(Loss, "derivative", poisoned)
    try:
        for alpha in ts["alphas"]:
            run, final = d / f"run_{alpha:g}.h5", d / f"ntk_final_{alpha:g}.h5"
            calls["poison"] = alpha == POISONED
            assert run_step("ts_train", {"dataset": ds, "init": init}, run,
                            step_params("ts_train", ts, alpha=alpha, **pt)) == 0
            calls["poison"] = False
            assert run_step("ts_ntk_final", {"dataset": ds, "init": init, "run": run}, final,
                            step_params("ts_ntk_final", ts, alpha=alpha, **pt)) == 0
            runs.append(run)
            finals.append(final)
    finally:
        mp.undo()
    assert calls["n"] > 40  # the poison did act
    tables = {name: d / Path(path).name for name, path in step("ts_summary").outputs.items()}
    assert run_step("ts_summary", {"runs": runs, "ntk_init": [ntk0] * len(runs), "ntk_final": finals, "frozen": []},
                    tables, {}) == 0
    return {"ts": ts, "runs": runs, "tables": tables, "dir": d}


def test_nan_mid_training_is_recorded_as_diverged(sweep):
    for alpha, path in zip(sweep["ts"]["alphas"], sweep["runs"]):
        d = h5io.read(path, {"trajectory/step": ("c",), "trajectory/F_train": ("c", 24), "w_final": None})
        a = d.attrs
        if alpha == POISONED:
            assert bool(a["diverged"]) and a["stop_reason"] == "diverged" and not bool(a["converged"])
            assert math.isnan(a["t_fit"]) and int(a["step_fit"]) == -1
            # the last finite state is recorded, the run stopped early
            assert 0 < d["trajectory/step"][-1] < 40
            assert np.isfinite(d["trajectory/F_train"]).all() and np.isfinite(d["w_final"]).all()
        else:  # the rest of the sweep runs to the margin as usual
            assert not bool(a["diverged"]) and a["stop_reason"] == "converged" and bool(a["converged"])
            assert d["trajectory/step"][-1] > 100
    assert not list(sweep["dir"].glob("*.tmp")) and not list(sweep["dir"].glob("*.resume"))


def test_summary_row_of_the_diverged_run(sweep):
    table = pd.read_csv(sweep["tables"]["table"])
    assert table["alpha"].tolist() == [0.1, 1.0, 100.0]
    assert table["diverged"].tolist() == [False, True, False]
    assert table["stop_reason"].tolist() == ["converged", "diverged", "converged"]
    assert table["converged"].tolist() == [True, False, True]
    bad, ok = table[table["diverged"]].iloc[0], table[~table["diverged"]]
    assert math.isnan(bad["t_fit"]) and (ok["t_fit"] > 0).all()
    curves = pd.read_csv(sweep["tables"]["curves"])
    assert sorted(curves["alpha"].unique()) == [0.1, 1.0, 100.0]


def test_test_error_figure_marks_the_diverged_run(sweep):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memgen.families.time_scale import figures as fig_ts
    from memgen.figures import read_csv

    table = read_csv(sweep["tables"], "table", fig_ts.test_error.needs["table"], "test_error")
    bad_x = float(table.loc[table["diverged"], "sqrt_h_alpha"].iloc[0])
    fig = fig_ts.test_error(table, {})
    try:
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "diverged" in labels and "$h=16$" in labels
        marks = [ln for ln in ax.lines if ln.get_marker() == "x" and ln.get_color() == "red"]
        assert len(marks) == 1 and marks[0].get_xdata().tolist() == [bad_x]
        # the diverged run is left out of the seed means: the h=16 curve has the other two points
        (curve,) = [c for c in ax.containers if c.get_label() == "$h=16$"]
        assert curve.lines[0].get_xdata().tolist() == sorted(table.loc[~table["diverged"], "sqrt_h_alpha"])
        assert bad_x not in curve.lines[0].get_xdata().tolist()
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- kernels, double descent: GD blows up


def test_kernels_gd_blowup_is_flagged_in_the_summary(tmp_path):
    """A step size of 1e30 (schema-valid) makes GD of the trained network / of the
    linearized-vs-real comparison overflow: the runs end, flagged, and the rest is normal."""
    from memgen.families.kernels.params import METHODS
    from memgen.figures import draw

    small = {"accuracy__n_train": [8], "accuracy__steps": 50, "linearized__widths": [32], "linearized__steps": 50}
    blocks = {"ok": config_block("kernels", **small),
              "bad": config_block("kernels", accuracy__lr=1e30, linearized__lr=1e30, **small)}
    ds = tmp_path / "digits.h5"
    assert run_step("kn_dataset", {}, ds, step_params("kn_dataset", blocks["ok"], ds="digits")) == 0
    files = {"accuracy": [], "linearized": []}
    for name, kb in blocks.items():
        assert step_params("kn_dataset", kb, ds="digits") == step_params("kn_dataset", blocks["ok"], ds="digits")
        files["accuracy"].append(tmp_path / f"acc_{name}.h5")
        assert run_step("kn_accuracy", {"dataset": ds}, files["accuracy"][-1],
                        step_params("kn_accuracy", kb, ds="digits", n=8, seed=0)) == 0
        files["linearized"].append(tmp_path / f"lin_{name}.h5")
        assert run_step("kn_linearized", {"dataset": ds}, files["linearized"][-1],
                        step_params("kn_linearized", kb, h=32)) == 0
    assert [bool(h5io.attrs_of(p)["diverged"]) for p in files["accuracy"] + files["linearized"]] == [
        False, True, False, True]
    out = {k: tmp_path / f"kernels_{k}.csv" for k in ("accuracy", "convergence", "linearized")}
    assert run_step("kn_summary", {**files, "convergence": []}, out, {}) == 0
    acc = pd.read_csv(out["accuracy"])
    assert len(acc) == 2 * len(METHODS)
    ok, bad = acc.iloc[: len(METHODS)], acc.iloc[len(METHODS):]
    assert not ok["diverged"].any() and ok["accuracy"].between(0.5, 1).all()
    assert bad["diverged"].tolist() == [m == "trained" for m in METHODS]
    assert bad.loc[bad["diverged"], "accuracy"].isna().all()
    # the kernel predictors do not train: the same accuracies with either step size
    kernel_rows = [i for i, m in enumerate(METHODS) if m != "trained"]
    assert bad["accuracy"].iloc[kernel_rows].tolist() == ok["accuracy"].iloc[kernel_rows].tolist()
    lin = pd.read_csv(out["linearized"])
    assert lin.groupby("lr")["diverged"].agg(["all", "any"]).to_dict("index") == {
        1.0: {"all": False, "any": False}, 1e30: {"all": True, "any": True}}
    draw("kernels", "accuracy_vs_n", {"accuracy": out["accuracy"]}, [str(tmp_path / "acc.png")], {})
    assert (tmp_path / "acc.png").stat().st_size > 1000


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_double_descent_two_layer_blowup_is_flagged_in_the_summary(tmp_path):
    """Two-layer GD with lr = 5 overflows within 200 steps: the step records the run as
    diverged (NaN Jacobian spectrum after training; it used to crash in the SVD) and the
    two_layer / jacobian tables carry the flag."""
    short = {"two_layer__steps": 200, "two_layer__n_logged": 20}
    dds = {"small": config_block("double_descent", **short),
           "large": config_block("double_descent", two_layer__lr=5.0, **short)}
    runs, theories = [], []
    for init, dd in dds.items():
        runs.append(tmp_path / f"two_layer_{init}.h5")
        assert run_step("dd_two_layer", {}, runs[-1], step_params("dd_two_layer", dd, init=init)) == 0
        theories.append(tmp_path / f"theory_{init}.h5")
        assert run_step("dd_theory_two_layer", {"run": runs[-1]}, theories[-1],
                        step_params("dd_theory_two_layer", dd, init=init)) == 0
    r = h5io.read(runs[1], {"risk": ("K",), "jac_sv_init": ("J",), "jac_sv_final": ("J",)})
    assert bool(r.attrs["diverged"]) and not np.isfinite(r["risk"][-1])
    assert np.isfinite(r["jac_sv_init"]).all() and np.isnan(r["jac_sv_final"]).all()
    assert not bool(h5io.attrs_of(runs[0])["diverged"])
    from memgen.declare import Job
    from memgen.families.double_descent.summary import _two_layer

    job = Job(step("dd_summary"), {"two_layer": runs, "theory_two_layer": theories}, {}, {})
    two_layer, jac = _two_layer(job)
    assert two_layer.groupby("init")["diverged"].agg(["all", "any"]).to_dict("index") == {
        "large": {"all": True, "any": True}, "small": {"all": False, "any": False}}
    assert np.isfinite(two_layer.loc[two_layer["init"] == "small", "risk"]).all()
    assert jac.groupby("init")["diverged"].all().to_dict() == {"large": True, "small": False}
