"""Preemption safety of the long steps (`ts_train`, and `kn_convergence`, `cv_loo`,
`dd_two_layer` through memgen.resume): a run killed mid-way (SIGKILL, or
SIGTERM as SLURM sends on preemption / time limit / scancel) leaves no final output
but a resume file; the same command started again resumes from it and ends with
arrays identical (np.array_equal on every dataset) to an uninterrupted run.

The kills trigger on the run's own progress (memgen.faults: the run pauses at a step
count, with a resume point saved there, and the test signals it once the pause file
appears), so they land at the same step on a fast idle machine and on a loaded one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

# A run of a few seconds on one CPU thread: h=64, 120 training points, feature regime.
BLOCK = {
    "dataset": {"k": 3, "d": 10, "n_train": 120, "n_test": 100, "seed": 0},
    "model": {"L": 2},
    "flow": {"max_dgrad": 1.0e-4, "max_dout": 0.1, "max_steps": 20000, "checkpoint_step": 20},
    "alphas": [1.0],
    "widths": [64],
    "seeds": [0],
}
ALPHA, H, SEED = 1.0, 64, 0


def _memgen(*args: str) -> list[str]:
    return [sys.executable, "-m", "memgen", *args, "--device", "cpu", "--threads", "1"]


PAUSE_STEP = 300  # of the ~1500 steps of the reference run


def _train_command(raw_block: dict, work: Path):
    """Make the data set and the init of the time-scale block ``raw_block`` at (ALPHA,
    H, SEED) in ``work``; returns train(output, resume_every_s) -> the ts_train command,
    with its params as ``train.params``."""
    from memgen import config
    from memgen.declare import job_params
    from memgen.families.time_scale import DATASET, INIT, TRAIN

    block = config.validate({"families": ["time_scale"], "time_scale": json.loads(json.dumps(raw_block))})
    block = block["time_scale"]
    wc = {"alpha": f"{ALPHA:g}", "h": str(H), "seed": str(SEED)}
    ds, init = work / "dataset.h5", work / "init.h5"
    subprocess.run(_memgen("ts_dataset", "--output", str(ds), "--params", json.dumps(job_params(DATASET, block, wc))),
                   check=True, timeout=120)
    subprocess.run(_memgen("ts_init", "--input", "dataset", str(ds), "--output", str(init),
                           "--params", json.dumps(job_params(INIT, block, wc))), check=True, timeout=120)
    params = job_params(TRAIN, block, wc)

    def train(output: Path, resume_every_s: float) -> list[str]:
        return _memgen("ts_train", "--input", "dataset", str(ds), "--input", "init", str(init), "--output",
                       str(output), "--params", json.dumps(params), "--resume-every-s", str(resume_every_s))

    train.params = params
    return train


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    work = tmp_path_factory.mktemp("resume")
    train = _train_command(BLOCK, work)
    ref = work / "reference.h5"
    t0 = time.perf_counter()
    subprocess.run(train(ref, 1e9), check=True, timeout=600, capture_output=True)
    return train, ref, time.perf_counter() - t0


def _arrays(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _assert_same(a: Path, b: Path) -> None:
    x, y = _arrays(a), _arrays(b)
    assert sorted(x) == sorted(y)
    for name in x:
        assert np.array_equal(x[name], y[name], equal_nan=True), name
    with h5py.File(a) as fa, h5py.File(b) as fb:
        for key in ("converged", "stop_reason", "t_fit", "step_fit", "params_sha256"):
            assert fa.attrs[key] == fb.attrs[key], key


def _kill_at_step(cmd: list[str], sig: int, resume: Path, pause: Path, at: int = PAUSE_STEP
                  ) -> subprocess.CompletedProcess:
    """Start ``cmd`` with a pause at step ``at`` (memgen.faults: a resume point is saved
    there first), send ``sig`` once it pauses, and return the result."""
    env = {**os.environ, "MEMGEN_PAUSE_AT": f"ts_train:{at}", "MEMGEN_PAUSE_FILE": str(pause)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 300
    while not pause.exists():
        assert proc.poll() is None, "the run ended before its pause step: make it longer"
        assert time.monotonic() < deadline, "the run never reached its pause step"
        time.sleep(0.02)  # ok-clock: polls for the pause file, the trigger is the step count
    assert resume.exists()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def test_reference_run_is_long_enough(inputs):
    _, ref, seconds = inputs
    with h5py.File(ref) as f:
        assert f.attrs["converged"], "the reference run should reach the margin"
        steps = int(f["trajectory/step"][-1])
    assert steps > 2 * PAUSE_STEP, (steps, seconds)


def test_sigkill_then_restart_gives_identical_arrays(inputs, tmp_path):
    train, ref, _ = inputs
    out = tmp_path / "run.h5"
    resume = Path(str(out) + ".resume")
    cmd = train(out, 1e9)  # no periodic save: the only resume point is the pause's
    killed = _kill_at_step(cmd, signal.SIGKILL, resume, tmp_path / "paused")
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and resume.exists()
    with h5py.File(resume) as f:
        assert int(f.attrs["flow_step"]) == PAUSE_STEP
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming from {resume} at step" in done.stdout + done.stderr
    assert out.exists() and not resume.exists()
    _assert_same(ref, out)


def test_sigterm_saves_a_resume_point_and_restart_gives_identical_arrays(inputs, tmp_path):
    train, ref, _ = inputs
    out = tmp_path / "run.h5"
    resume = Path(str(out) + ".resume")
    cmd = train(out, 1e9)
    killed = _kill_at_step(cmd, signal.SIGTERM, resume, tmp_path / "paused")
    assert killed.returncode == 143, killed.stdout
    m = re.search(r"terminated by SIGTERM; saved .* at step (\d+)", killed.stdout)
    assert m and int(m.group(1)) == PAUSE_STEP + 1, killed.stdout  # the handler saves after the step it was in
    assert not out.exists() and resume.exists()
    with h5py.File(resume) as f:  # the handler's save, not an earlier periodic one
        assert int(f.attrs["flow_step"]) == int(m.group(1))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming from {resume} at step {m.group(1)}," in done.stdout + done.stderr
    _assert_same(ref, out)


def test_rkc_with_momentum_sigkilled_at_a_step_resumes_to_identical_arrays(tmp_path):
    """flow.method rkc with momentum: SIGKILLed at its 40th step (memgen.faults; the
    resume file holds the integrator's memory, the power iteration's vector and the step
    controller's state), the same command resumes and ends with the uninterrupted run's
    arrays."""
    block = json.loads(json.dumps(BLOCK))
    block["flow"] = {"method": "rkc", "tau_over_h": 1.0e-3, "max_steps": 20000}
    command = _train_command(block, tmp_path)
    params = command.params
    assert params["flow"]["method"] == "rkc" and params["flow"]["tau"] > 0

    def train(output: Path) -> list[str]:
        return command(output, 1e9)

    ref, out = tmp_path / "reference.h5", tmp_path / "run.h5"
    subprocess.run(train(ref), check=True, timeout=600, capture_output=True)
    with h5py.File(ref) as f:
        assert f.attrs["converged"] and int(f["trajectory/step"][-1]) > 80  # (the pause lies mid-run)
    resume = Path(str(out) + ".resume")
    killed = _kill_at_step(train(out), signal.SIGKILL, resume, tmp_path / "paused", at=40)
    assert killed.returncode == -signal.SIGKILL, killed.stdout
    assert not out.exists()
    with h5py.File(resume) as f:
        assert int(f.attrs["flow_step"]) == 40 and "method/vector" in f
    done = subprocess.run(train(out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming from {resume} at step 40" in done.stdout + done.stderr
    assert out.exists() and not resume.exists()
    _assert_same(ref, out)


def test_sigterm_outside_the_training_loop_exits_at_once(tmp_path):
    """A step with no resume file (here: a stalled import-time wait) still obeys SIGTERM."""
    code = ("import time; from memgen.resume import install_sigterm_handler; "
            "install_sigterm_handler(); print('ready', flush=True); time.sleep(60)")  # ok-clock: waits for the signal
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143  # (143: the handler's exit; the default action gives -15)


# ---------------------------------------------------------------- the other long steps


def _prepare(step: str, tmp_path: Path):
    """(inputs, params) of a small job of ``step``, its inputs built in process."""
    from conftest import config_block, run_step, step_params

    if step == "kn_convergence":
        kb = config_block("kernels", convergence__seeds=[0, 1, 2, 3], convergence__widths=[64, 128])
        ds = tmp_path / "digits.h5"
        assert run_step("kn_dataset", {}, ds, step_params("kn_dataset", kb, ds="digits")) == 0
        return {"dataset": ds}, step_params(step, kb, h=64), 2
    if step == "dd_two_layer":
        dd = config_block("double_descent", two_layer__steps=3000)
        return {}, step_params(step, dd, init="small"), 1000
    cv = config_block("curvature", influence__n_top=4, influence__n_random=2)
    files = {"dataset": tmp_path / "digits.h5", "train": tmp_path / "train.h5", "influence": tmp_path / "inf.h5"}
    wc = {"cv_model": "mlp"}
    assert run_step("cv_digits", {}, files["dataset"], step_params("cv_digits", cv)) == 0
    assert run_step("cv_train", {"dataset": files["dataset"]}, files["train"], step_params("cv_train", cv, **wc)) == 0
    assert run_step("cv_influence", {k: files[k] for k in ("dataset", "train")}, files["influence"],
                    step_params("cv_influence", cv, **wc)) == 0
    return files, step_params(step, cv, **wc), 3


@pytest.mark.parametrize("step, sig", [("kn_convergence", signal.SIGKILL), ("cv_loo", signal.SIGKILL),
                                       ("dd_two_layer", signal.SIGKILL), ("dd_two_layer", signal.SIGTERM)])
def test_long_steps_resume_to_identical_arrays(step, sig, tmp_path):
    """Killed after a few seeds / retrainings / GD steps (SIGKILL, or SIGTERM as SLURM
    sends it: the step saves a resume point and exits 143), the same command continues
    from the resume file to the arrays of an uninterrupted run."""
    from conftest import step_argv

    inputs, params, at = _prepare(step, tmp_path)
    ref, out = tmp_path / "reference.h5", tmp_path / "run.h5"
    argv = lambda o: [sys.executable, "-m", "memgen", *step_argv(step, inputs, o, params, "--threads", "1",  # noqa: E731
                                                                 "--resume-every-s", "1e9")]
    subprocess.run(argv(ref), check=True, capture_output=True, timeout=600)
    resume, pause = Path(f"{out}.resume"), tmp_path / "paused"
    env = {**os.environ, "MEMGEN_PAUSE_AT": f"{step}:{at}", "MEMGEN_PAUSE_FILE": str(pause)}
    proc = subprocess.Popen(argv(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 300
    while not pause.exists():
        assert proc.poll() is None, "the step ended before its pause point"
        assert time.monotonic() < deadline
        time.sleep(0.02)  # ok-clock: polls for the pause file, the trigger is the step's own count
    proc.send_signal(sig)
    killed, _ = proc.communicate(timeout=120)
    assert not out.exists() and resume.exists()
    with h5py.File(resume) as f:
        saved = int(f.attrs["count"])
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL and saved == at
    else:  # the handler's save: after the unit it was in
        assert proc.returncode == 143 and saved == at + 1, killed
        assert f"terminated by SIGTERM; saved {resume} at {at + 1} done" in killed
    done = subprocess.run(argv(out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming from {resume} at {saved} done" in done.stdout + done.stderr
    assert out.exists() and not resume.exists()
    x, y = _arrays(ref), _arrays(out)
    assert sorted(x) == sorted(y) and all(np.array_equal(x[k], y[k], equal_nan=True) for k in x)
