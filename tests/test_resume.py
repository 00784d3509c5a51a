"""Preemption safety of `python -m memgen train`: a run killed mid-way (SIGKILL, or
SIGTERM as SLURM sends on preemption / time limit / scancel) leaves no final output
but a resume file; the same command started again resumes from it and ends with
arrays identical (np.array_equal on every dataset) to an uninterrupted run."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from memgen import config
    from memgen.experiments import time_scale as TS

    block = config.validate({"families": ["time_scale"], "time_scale": json.loads(json.dumps(BLOCK))})["time_scale"]
    work = tmp_path_factory.mktemp("resume")
    ds, init = work / "dataset.h5", work / "init.h5"
    subprocess.run(_memgen("dataset", "--output", str(ds), "--params", json.dumps(TS.dataset_params(block))),
                   check=True, timeout=120)
    subprocess.run(_memgen("init", "--input", f"dataset={ds}", "--output", str(init),
                           "--params", json.dumps(TS.init_params(block, H, SEED))), check=True, timeout=120)
    params = json.dumps(TS.train_params(block, ALPHA, H, SEED))

    def train(output: Path, resume_every_s: float) -> list[str]:
        return _memgen("train", "--input", f"dataset={ds}", "--input", f"init={init}", "--output", str(output),
                       "--params", params, "--resume-every-s", str(resume_every_s))

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


def _kill_midway(cmd: list[str], sig: int, resume: Path, after_s: float) -> subprocess.CompletedProcess:
    """Start ``cmd``, wait for its first resume file (training is under way), send
    ``sig`` ``after_s`` seconds later, and return the result."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not resume.exists():
        assert proc.poll() is None, "the run ended before it could be killed: make it longer"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(after_s)
    assert proc.poll() is None, "the run ended before it could be killed: make it longer"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def test_reference_run_is_long_enough(inputs):
    _, ref, seconds = inputs
    with h5py.File(ref) as f:
        assert f.attrs["converged"], "the reference run should reach the margin"
        steps = int(f["trajectory/step"][-1])
    assert steps > 500, (steps, seconds)


def test_sigkill_then_restart_gives_identical_arrays(inputs, tmp_path):
    train, ref, _ = inputs
    out = tmp_path / "run.h5"
    resume = Path(str(out) + ".resume")
    cmd = train(out, 0.2)
    killed = _kill_midway(cmd, signal.SIGKILL, resume, after_s=0.5)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and resume.exists()
    with h5py.File(resume) as f:
        assert int(f.attrs["flow_step"]) > 0
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming from {resume} at step" in done.stdout + done.stderr
    assert out.exists() and not resume.exists()
    _assert_same(ref, out)


def test_sigterm_saves_a_resume_point_and_restart_gives_identical_arrays(inputs, tmp_path):
    train, ref, _ = inputs
    out = tmp_path / "run.h5"
    resume = Path(str(out) + ".resume")
    cmd = train(out, 0.5)
    killed = _kill_midway(cmd, signal.SIGTERM, resume, after_s=0.25)  # between two periodic saves
    assert killed.returncode == 143, killed.stdout
    m = re.search(r"terminated by SIGTERM; saved .* at step (\d+)", killed.stdout)
    assert m, killed.stdout
    assert not out.exists() and resume.exists()
    with h5py.File(resume) as f:  # the handler's save, not an earlier periodic one
        assert int(f.attrs["flow_step"]) == int(m.group(1))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming from {resume} at step {m.group(1)}," in done.stdout + done.stderr
    _assert_same(ref, out)


def test_sigterm_outside_the_training_loop_exits_at_once(tmp_path):
    """A step with no resume file (here: a stalled import-time wait) still obeys SIGTERM."""
    code = ("import time; from memgen.training import install_sigterm_handler; "
            "install_sigterm_handler(); print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert time.monotonic() - t0 < 10
