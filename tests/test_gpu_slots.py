"""memgen.gpu_slots: each process gets a GPU slot of its own.

Holders are separate processes that take a slot, report it on stdout and keep it until
their stdin closes, so every step here waits on an event (a line, an exit), never on a
sleep: what another process holds is decided by the kernel's flock, not by timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from memgen import MemgenError, gpu_slots

HOLDER = """
import sys
from memgen import gpu_slots
slot = gpu_slots.acquire_gpu(int(sys.argv[1]), sys.argv[2], timeout=float(sys.argv[3]))
import os
print(slot, os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
sys.stdin.read()  # hold the slot until the test closes our stdin
"""


class Holder:
    """A process that took a slot (``slot``, ``device``) and holds it until ``release()``."""

    def __init__(self, n_slots, lock_dir, timeout=0, env=None):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(n_slots), str(lock_dir), str(timeout)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        line = self.proc.stdout.readline()  # blocks until the slot is taken (or the process failed)
        if not line:
            self.proc.wait()
            raise AssertionError(f"holder failed: {self.proc.stderr.read()}")
        slot, self.device = line.split()
        self.slot = int(slot)

    def release(self, sig=None):
        if sig is None:
            self.proc.stdin.close()
        else:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        self.proc.stdout.close()
        self.proc.stderr.close()
        if sig is None:
            self.proc.stdin = None


@pytest.fixture
def fresh(monkeypatch):
    """This process holds no slot, sees no CUDA_VISIBLE_DEVICES; restored afterwards."""
    gpu_slots.release_gpu()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield
    gpu_slots.release_gpu()


def test_two_processes_never_share_a_slot(tmp_path, fresh):
    a = Holder(2, tmp_path)
    try:
        slot = gpu_slots.acquire_gpu(2, tmp_path, timeout=0)
        assert slot != a.slot and {slot, a.slot} == {0, 1}
        assert os.environ["CUDA_VISIBLE_DEVICES"] == str(slot) and a.device == str(a.slot)
        assert gpu_slots.acquire_gpu(2, tmp_path) == slot  # again in the same process: the same slot
    finally:
        a.release()


def test_all_slots_held_waits_then_takes_the_freed_one(tmp_path, fresh):
    holders = [Holder(3, tmp_path) for _ in range(3)]
    try:
        assert sorted(h.slot for h in holders) == [0, 1, 2]
        with pytest.raises(gpu_slots.GpuSlotsBusy, match=r"all 3 GPU slots .* held .*pid \d+"):
            gpu_slots.acquire_gpu(3, tmp_path, timeout=0)
        freed = holders.pop(1)
        freed.release()  # returns once that process has exited: its lock is gone
        assert gpu_slots.acquire_gpu(3, tmp_path, timeout=0) == freed.slot
    finally:
        for h in holders:
            h.release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, fresh):
    a = Holder(1, tmp_path)
    a.release(signal.SIGKILL)
    assert gpu_slots.acquire_gpu(1, tmp_path, timeout=0) == 0


def test_a_waiting_process_gets_the_slot_when_it_is_released(tmp_path, fresh):
    a = Holder(1, tmp_path)
    waiter = subprocess.Popen([sys.executable, "-c", HOLDER, "1", str(tmp_path), "600"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        a.release()
        assert waiter.stdout.readline().split() == ["0", "0"]  # blocks until it has the slot
    finally:
        waiter.stdin.close()
        waiter.wait(timeout=60)
        waiter.stdout.close()


def test_slots_subdivide_the_visible_devices(tmp_path, fresh, monkeypatch):
    a = Holder(2, tmp_path, env={"CUDA_VISIBLE_DEVICES": "3,5"})
    try:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
        slot = gpu_slots.acquire_gpu(2, tmp_path, timeout=0)
        assert {a.device, os.environ["CUDA_VISIBLE_DEVICES"]} == {"3", "5"}
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "35"[slot]
    finally:
        a.release()


def test_more_slots_than_visible_devices_is_an_error(tmp_path, fresh, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(MemgenError, match=r"2 GPU slots .*CUDA_VISIBLE_DEVICES='0' lists 1 .*MEMGEN_GPUS"):
        gpu_slots.acquire_gpu(2, tmp_path)


def test_refuses_after_cuda_is_initialised(tmp_path, fresh, monkeypatch):
    class Cuda:
        @staticmethod
        def is_initialized():
            return True

    monkeypatch.setitem(sys.modules, "torch", type("torch", (), {"cuda": Cuda}))
    with pytest.raises(MemgenError, match="already initialised CUDA"):
        gpu_slots.acquire_gpu(1, tmp_path)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_slot_count(tmp_path, bad, fresh):
    with pytest.raises(MemgenError, match="n_slots must be an integer >= 1"):
        gpu_slots.acquire_gpu(bad, tmp_path)


def test_from_env(tmp_path):
    assert gpu_slots.from_env({}) is None and gpu_slots.from_env({"MEMGEN_GPUS": ""}) is None
    assert gpu_slots.from_env({"MEMGEN_GPUS": "2", "MEMGEN_GPU_LOCK_DIR": str(tmp_path)}) == (2, tmp_path)
    assert gpu_slots.from_env({"MEMGEN_GPUS": "1"}) == (1, gpu_slots.DEFAULT_LOCK_DIR)
    with pytest.raises(MemgenError, match=r"MEMGEN_GPUS='two'"):
        gpu_slots.from_env({"MEMGEN_GPUS": "two"})


JOB = ("import json, os; from memgen import gpu_slots; n, d = gpu_slots.from_env(); "
       "s = gpu_slots.acquire_gpu(n, d, timeout=0); "  # no wait: the scheduler must never run more GPU jobs than slots
       "print(json.dumps(dict(slot=s, cuda=os.environ['CUDA_VISIBLE_DEVICES'])))")


@pytest.mark.e2e
def test_gpu_local_profile_gives_each_job_a_slot(tmp_path):
    """profiles/gpu-local with MEMGEN_GPUS=2: four jobs that declare gpu=1, each taking a
    slot without waiting (GpuSlotsBusy, a failed job, if Snakemake ran more than two at
    once), each seeing only its slot's GPU."""
    import json
    import shutil

    from conftest import ROOT

    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    (tmp_path / "Snakefile").write_text(
        "rule all:\n    input: expand('out/{i}.json', i=range(4))\n\n"
        "rule job:\n    output: 'out/{i}.json'\n    resources: gpu=1\n"
        f"    shell: {sys.executable + ' -c ' + repr(JOB) + ' > {output}'!r}\n")
    env = {**os.environ, "MEMGEN_GPUS": "2", "MEMGEN_GPU_LOCK_DIR": str(tmp_path / "locks")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/gpu-local", "--cores", "4"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = [json.loads((tmp_path / "out" / f"{i}.json").read_text()) for i in range(4)]
    assert all(s["slot"] in (0, 1) and s["cuda"] == str(s["slot"]) for s in seen), seen


def test_gpu_local_profile_needs_the_gpu_count(tmp_path):
    import shutil

    from conftest import ROOT

    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    (tmp_path / "Snakefile").write_text("rule all:\n    output: 'x'\n    shell: 'touch x'\n")
    env = {k: v for k, v in os.environ.items() if k != "MEMGEN_GPUS"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--profile", "profiles/gpu-local", "--cores", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "set MEMGEN_GPUS to the number of GPUs" in proc.stdout + proc.stderr
