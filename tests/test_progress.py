"""Progress lines (memgen.progress): rate and ETA on a fake clock, throttling, the start
and final lines, $MEMGEN_PROGRESS_EVERY; the library loops that report progress print
a rate and an ETA without changing a single bit of their results; real steps (through
the CLI and in-process) log such lines."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_spd
from memgen import MemgenError, curvature, linear, training
from memgen.losses import Loss
from memgen.progress import ENV_EVERY, Progress, default_every, format_duration
from memgen.training import FlowConfig, KernelProblem

ROOT = Path(__file__).resolve().parents[1]
# "[label] done/total unit (rate unit/s, elapsed, eta [<=] duration)": a line with a rate and an ETA
ETA_LINE = r"\[{label}\] \d+/{total} {unit} \([\d.]+ {unit}/s, [\d.hms]+, eta {bound}[\d.dhms]+( \(\w+\))?\)"


class Clock:
    """A fake time.perf_counter: seconds set by the test."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr("memgen.progress.time.perf_counter", c)
    return c


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


# ---------------------------------------------------------------- Progress


def test_rate_eta_throttling_and_final_line(clock):
    out = io.StringIO()
    p = Progress("gd x", 100, every=10, stream=out, unit="step", message="8 draws")
    assert _lines(out) == ["[gd x] 0/100 step started: 8 draws"]  # at once, with the total
    clock.now += 5
    assert not p.update(10, lambda: pytest.fail("a throttled message is never built"))
    clock.now += 5
    assert p.update(20, "loss 0.5")
    assert _lines(out)[-1] == "[gd x] 20/100 step (2 step/s, 10s, eta 40s) loss 0.5"
    clock.now += 9.9
    assert not p.update(45)
    assert p.update(45, force=True)  # force ignores the throttle
    clock.now += 10.1
    assert p.update(50, lambda: "built")
    assert _lines(out)[-1] == "[gd x] 50/100 step (1.67 step/s, 30s, eta 30s) built"
    clock.now += 20
    p.finish(100, "ok")
    p.finish(100, "twice")  # once only
    assert _lines(out)[-1] == "[gd x] done 100/100 step in 50s (2 step/s) ok"
    assert len(_lines(out)) == 5


def test_every_zero_prints_every_update_and_rates_skip_resumed_units(clock):
    out = io.StringIO()
    p = Progress("r", 1000, every=0, stream=out, initial=400)  # resumed at 400
    assert _lines(out) == ["[r] 400/1000 started"]
    clock.now += 2
    p.update(500)
    clock.now += 2
    p.update(600)
    # 100 units in 2 s, then 200 in 4 s (not 600 / 4): 50/s, 500 and 400 left
    assert _lines(out)[1:] == ["[r] 500/1000 (50 it/s, 2.0s, eta 10s)", "[r] 600/1000 (50 it/s, 4.0s, eta 8.0s)"]


def test_explicit_eta_as_upper_bound_and_unknown_total(clock):
    out = io.StringIO()
    p = Progress("flow", every=0, stream=out, unit="step", bound=True)
    clock.now += 100
    p.update(1500)  # no total, no eta given: rate only
    p.update(1500, eta=3725, eta_note="(max_wall)")
    p.advance(500)
    assert _lines(out)[1:] == ["[flow] 1500 step (15 step/s, 1m40s)",
                               "[flow] 1500 step (15 step/s, 1m40s, eta <= 1h02m (max_wall))",
                               "[flow] 2000 step (20 step/s, 1m40s)"]


def test_no_label_is_silent_but_counts(clock):
    out = io.StringIO()
    calls = []
    p = Progress(None, 4, every=0, stream=out, message=lambda: calls.append(1) or "x")
    assert not p.due() and not p.update(2, lambda: calls.append(1) or "x", force=True)
    p.advance(2)
    p.finish(message=lambda: calls.append(1) or "x")
    assert out.getvalue() == "" and calls == [] and p.done == 4


@pytest.mark.parametrize("seconds,text", [(0.123, "0.12s"), (7.26, "7.3s"), (42.4, "42s"), (187, "3m07s"),
                                          (7500, "2h05m"), (3 * 86400 + 4 * 3600 + 10, "3d04h"),
                                          (math.inf, "inf"), (math.nan, "?"), (-1, "0.00s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_every_from_the_environment(monkeypatch):
    monkeypatch.delenv(ENV_EVERY, raising=False)
    assert default_every() == 10.0
    monkeypatch.setenv(ENV_EVERY, " 0.5 ")
    assert default_every() == 0.5
    assert Progress("x", stream=io.StringIO()).every == 0.5
    assert Progress("x", every=3, stream=io.StringIO()).every == 3.0  # an explicit value wins
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(ENV_EVERY, bad)
        with pytest.raises(MemgenError, match=ENV_EVERY):
            default_every()


# ---------------------------------------------------------------- library loops


def test_linear_gd_progress_leaves_the_arrays_unchanged(monkeypatch, capsys):
    monkeypatch.setenv(ENV_EVERY, "0")
    X, y = linear.linear_teacher(20, 5, noise_std=0.5, seed=1, batch=3)
    quiet = linear.linear_gd(X, y, 200, 0.1, record=[0, 10, 200])
    assert capsys.readouterr().err == ""  # silent without a label
    loud = linear.linear_gd(X, y, 200, 0.1, record=[0, 10, 200], progress="gd")
    err = capsys.readouterr().err.splitlines()
    assert torch.equal(quiet, loud)
    assert err[0] == "[gd] 0/200 step started: 3 run(s), d=5"
    assert re.fullmatch(ETA_LINE.format(label="gd", total=200, unit="step", bound=""), err[1])
    assert re.fullmatch(r"\[gd\] done 200/200 step in \S+ \([\d.]+ step/s\)", err[-1])
    assert len(err) == 202


def test_solvers_report_bounded_and_exact_etas(monkeypatch, capsys):
    monkeypatch.setenv(ENV_EVERY, "0")
    A = torch.tensor(random_spd(6, seed=3))
    v = torch.arange(1.0, 7.0, dtype=torch.float64)
    hvp = lambda u: A @ u  # noqa: E731
    x_cg, _ = curvature.cg_solve(hvp, v, tol=1e-12)
    x_ls, _ = curvature.lissa_solve(hvp, v, depth=50, repeats=2, lambda_max=8.0)
    assert capsys.readouterr().err == ""
    y_cg, info = curvature.cg_solve(hvp, v, tol=1e-12, progress="cg")
    y_ls, _ = curvature.lissa_solve(hvp, v, depth=50, repeats=2, lambda_max=8.0, progress="lissa")
    assert torch.equal(x_cg, y_cg) and torch.equal(x_ls, y_ls)
    err = capsys.readouterr().err.splitlines()
    cg = [line for line in err if line.startswith("[cg]")]
    assert re.fullmatch(ETA_LINE.format(label="cg", total=100, unit="iter", bound="<= ") + r" residual .*tol.*",
                        cg[1])
    assert cg[-1].startswith(f"[cg] done {info['iterations']}/100 iter in ")
    ls = [line for line in err if line.startswith("[lissa]")]
    assert len(ls) == 102 and ls[-1].startswith("[lissa] done 100/100 step")
    assert re.fullmatch(ETA_LINE.format(label="lissa", total=100, unit="step", bound="") + r" repeat 2/2 .*", ls[-2])


def _kernel_run(max_steps=300, **kw):
    K = random_spd(8, seed=0)
    y = np.sign(np.random.default_rng(1).standard_normal(8))
    cfg = FlowConfig(alpha=3.0, loss=Loss("soft_hinge", beta=20.0), max_dgrad=1e-3, max_steps=max_steps)
    problem = KernelProblem(torch.tensor(K), torch.tensor(K[:3]), torch.tensor(y), cfg)
    return training.run(problem, cfg, torch.tensor(y[:3]), **kw)


def test_flow_progress_gives_an_upper_bound_eta_and_leaves_the_run_unchanged(capsys):
    quiet = _kernel_run(progress_every_s=1e9, progress="kernel")
    q_err = capsys.readouterr().err.splitlines()
    assert len(q_err) == 2 and q_err[0].startswith("[kernel] 0 step started: 8 points to margin 1, limits ")
    loud = _kernel_run(progress_every_s=0, progress="kernel")
    err = capsys.readouterr().err.splitlines()
    for key, a in quiet.arrays().items():
        assert np.array_equal(a, loud.arrays()[key], equal_nan=True), key
    assert quiet.status == loud.status
    steps = int(loud.records["step"][-1])
    assert len(err) == steps + 1  # start, one per step but the last, final
    assert re.fullmatch(r"\[kernel\] 1 step \(\S+ step/s, \S+, eta <= \S+ \((max_steps|max_time|max_wall)\)\) "
                        r"t=\S+ dt=\S+ margin_min=\S+ fit=\d/8 train_err=\S+", err[1])
    assert re.fullmatch(rf"\[kernel\] done {steps} step in \S+ \(\S+ step/s\) stopped: \w+ at t=\S+", err[-1])


def test_resumed_flow_counts_its_rate_from_the_resume_point(tmp_path, capsys):
    resume = tmp_path / "run.resume"
    first = _kernel_run(max_steps=40, progress_every_s=1e9, resume_path=resume, resume_every_s=0.0)
    assert first.status["stop_reason"] == "max_steps" and resume.exists()
    capsys.readouterr()
    resumed = _kernel_run(progress_every_s=0, progress="train", resume_path=resume, resume_every_s=1e9)
    out, err = capsys.readouterr()
    saved = int(re.search(r"resuming from .* at step (\d+),", out).group(1))
    err = err.splitlines()
    start = err[0]
    assert 0 < saved < 40 and start.startswith(f"[train] {saved} step started: ") and ", resumed at t=" in start
    assert err[-1].startswith(f"[train] done {int(resumed.records['step'][-1])} step in ")
    whole = _kernel_run(progress_every_s=1e9)
    for key, a in whole.arrays().items():
        assert np.array_equal(a, resumed.arrays()[key], equal_nan=True), key


def test_eta_to_limit_takes_the_nearest_hard_limit():
    cfg = FlowConfig(alpha=1.0, max_time=100.0, max_steps=1000, max_wall=3600.0)
    # 500 steps left at 10/s: 50 s; t: 90 left at 1/s: 90 s; wall: 3000 s
    assert training._eta_to_limit(cfg, 500, 10.0, 600.0, 10.0, 1.0) == (50.0, "max_steps")
    assert training._eta_to_limit(cfg, 500, 95.0, 600.0, 10.0, 1.0) == (5.0, "max_time")
    assert training._eta_to_limit(cfg, 500, 95.0, 3599.0, 10.0, 1.0) == (1.0, "max_wall")
    unbounded = FlowConfig(alpha=1.0)  # max_steps 1e9 only: still a (loose) bound
    assert training._eta_to_limit(unbounded, 0, 0.0, 1.0, math.nan, math.nan) == (None, "")
    assert training._eta_to_limit(unbounded, 0, 0.0, 1.0, 1e3, 0.0) == (1e6, "max_steps")


# ---------------------------------------------------------------- real steps


def test_cli_step_logs_progress_with_rate_and_eta(tmp_path):
    params = {"data": {"d_fast": 3, "d_slow": 2, "kappa": 10.0, "theta_fast": 1.0, "theta_slow": 2.0, "n": 20,
                       "noise_std": 0.5, "decoupled": False},
              "steps": 300, "n_logged": 10, "lr": 0.1, "schedule": "uniform", "rate": 0.5, "seed": 0, "draws": 4}
    out = tmp_path / "lin.h5"
    env = {**os.environ, ENV_EVERY: "0"}
    res = subprocess.run([sys.executable, "-m", "memgen", "dd_linear", "--output", str(out), "--params",
                          json.dumps(params), "--device", "cpu", "--threads", "1"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    err = res.stderr.splitlines()
    assert err[0] == "[dd_linear lin] 0/300 step started: 4 run(s), d=5"
    assert re.fullmatch(ETA_LINE.format(label="dd_linear lin", total=300, unit="step", bound=""), err[150])
    assert re.fullmatch(r"\[dd_linear lin\] done 300/300 step in \S+ \(\S+ step/s\)", err[-1])
    assert out.exists()


def test_in_process_step_logs_gram_and_gd_progress(tmp_path, monkeypatch, capsys, one_torch_thread):
    from memgen.declare import Job
    from memgen.families import step

    monkeypatch.setenv(ENV_EVERY, "0")
    ds = {"name": "digits", "n_train": 12, "n_test": 6, "classes": [3, 8], "seed": 0}
    dataset, lin = step("kn_dataset"), step("kn_linearized")
    dataset.function()(Job(dataset, {}, tmp_path / "digits.h5", ds))
    params = {"dataset": ds, "n_train": 12, "seed": 0, "dtype": "float64", "lr": 1.0, "steps": 30, "checkpoints": 4,
              "model": {"d": 64, "h": 16, "L": 1, "activation": "relu", "beta": 5.0, "normalize": False,
                        "bias": False, "last_layer": "ntk"}}
    capsys.readouterr()
    inputs = {"dataset": tmp_path / "digits.h5"}
    lin.function()(Job(lin, inputs, tmp_path / "quiet.h5", params))
    assert capsys.readouterr().err == ""  # called directly, without a label: silent
    # the label the CLI gives it (``STEP OUTPUT-STEM``)
    lin.function()(Job(lin, inputs, tmp_path / "lin.h5", params, progress="linearized_training lin"))
    err = capsys.readouterr().err.splitlines()
    gram = [line for line in err if line.startswith("[linearized_training lin ntk]")]
    gd = [line for line in err if line.startswith("[linearized_training lin]")]
    assert gram[0] == "[linearized_training lin ntk] 0/252 entry started: NTK Gram blocks of 12 train, 6 test points"
    assert gram[-1].startswith("[linearized_training lin ntk] done 252/252 entry in ")  # 12^2 + 6 * 12 + 6^2
    assert gd[0] == "[linearized_training lin] 0/30 step started: GD on 12 points, lr=1"
    assert re.fullmatch(ETA_LINE.format(label="linearized_training lin", total=30, unit="step", bound="")
                        + r" train loss \S+", gd[5])
    assert re.fullmatch(r"\[linearized_training lin\] done 30/30 step in \S+ \(\S+ step/s\) train loss \S+", gd[-1])
