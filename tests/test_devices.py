"""Where a step computes, and what happens when the machine lacks what was asked for.

- A device step given GPUs by the config (resources.gpu > 0) runs with --device cuda
  (the dry run's commands), so on a machine without CUDA it stops with a message naming
  the problem and how to install a CUDA build, instead of computing on the CPU silently;
  CPU-only steps always get --device cpu.
- Every output records the device it was computed on (the ``device`` attribute).
- With MEMGEN_GPUS (the local-GPU profile) a device step takes a GPU slot of its own
  before torch sees CUDA_VISIBLE_DEVICES (memgen.gpu_slots).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import pytest

from conftest import config_block, run_step, step_params
from memgen.families import steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    ts = config_block("time_scale")
    d = tmp_path_factory.mktemp("devices")
    assert run_step("ts_dataset", {}, d / "ds.h5", step_params("ts_dataset", ts)) == 0
    assert run_step("ts_init", {"dataset": d / "ds.h5"}, d / "init.h5", step_params("ts_init", ts, h=16, seed=0)) == 0
    return ts, d


def _ntk_cmd(ts, d, out, device):
    return [sys.executable, "-m", "memgen", "ts_ntk_init", "--input", "dataset", str(d / "ds.h5"), "--input", "init",
            str(d / "init.h5"), "--output", str(out), "--params",
            json.dumps(step_params("ts_ntk_init", ts, h=16, seed=0)), "--device", device, "--threads", "1"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_step_asked_for_cuda_without_cuda_stops_and_says_how_to_get_it(inputs, tmp_path):
    ts, d = inputs
    out = tmp_path / "ntk.h5"
    proc = subprocess.run(_ntk_cmd(ts, d, out, "cuda"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "memgen ts_ntk_init: error: --device cuda: no CUDA device is available to this job" in proc.stderr
    assert "make venv GPU=" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_outputs_record_the_device(inputs, tmp_path):
    ts, d = inputs
    out = tmp_path / "ntk.h5"
    subprocess.run(_ntk_cmd(ts, d, out, "cpu"), check=True, capture_output=True, timeout=300)
    with h5py.File(out) as f:
        assert f.attrs["device"] == "cpu"
    with h5py.File(d / "init.h5") as f:  # a CPU-only step records cpu whatever it was given
        assert f.attrs["device"] == "cpu"


def test_a_device_step_takes_a_gpu_slot_of_its_own(inputs, tmp_path):
    ts, d = inputs
    code = ("import os, sys, runpy; from memgen import cli, gpu_slots; rc = cli.main(sys.argv[1:]); "
            "print(json.dumps({'rc': rc, 'slot': gpu_slots.held_slot(), 'visible': os.environ.get("
            "'CUDA_VISIBLE_DEVICES')}))")
    env = {**os.environ, "MEMGEN_GPUS": "2", "MEMGEN_GPU_LOCK_DIR": str(tmp_path / "slots")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = subprocess.run([sys.executable, "-c", "import json; " + code, *_ntk_cmd(ts, d, tmp_path / "a.h5", "auto")[3:]],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["rc"] == 0 and got["slot"] in (0, 1) and got["visible"] == str(got["slot"])
    # a CPU-only step never takes a slot
    init = [sys.executable, "-m", "memgen", "ts_init", "--input", "dataset", str(d / "ds.h5"), "--output",
            str(tmp_path / "i.h5"), "--params", json.dumps(step_params("ts_init", ts, h=16, seed=0))]
    out = subprocess.run([sys.executable, "-c", "import json; " + code, *init[3:]], capture_output=True, text=True,
                         env=env, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1])["slot"] is None


def test_rules_pass_cuda_to_device_steps_that_got_gpus():
    from memgen.plan import dry_run, parse_dry_run

    jobs = parse_dry_run(dry_run(["config/paper.yaml"]))
    declared = steps()
    seen = set()
    for job in jobs:
        if job.rule in declared and job.params is not None:
            seen.add(job.rule)
    assert {"ts_train", "cv_loo"} <= seen
    text = dry_run(["config/paper.yaml"])
    for block in text.split("Shell command: ")[1:]:
        cmd = block.splitlines()[0]
        words = cmd.split()
        if len(words) > 3 and words[1:3] == ["-m", "memgen"] and words[3] in declared:
            device = words[words.index("--device") + 1]
            assert device == ("cuda" if declared[words[3]].device else "cpu"), cmd[:200]
