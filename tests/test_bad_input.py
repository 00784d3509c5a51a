"""Bad input is refused with a message naming it, and leaves nothing behind:

- an invalid config stops ``snakemake`` before any job runs (nothing under data/,
  figures/, logs/), naming the key;
- a damaged, incomplete, wrongly shaped or foreign HDF5 input makes the real step
  (``python -m memgen STEP``, called in process through :func:`memgen.cli.main`) exit
  with status 2 and one error line naming the file and what was expected, without an
  output file or a temporary file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from conftest import config_block, copy_workflow, run_step, step_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- config, through Snakemake


@pytest.mark.parametrize("bad, expected", [
    ({"kernels": {"cifar": {"enabled": True, "root": "no_such/cifar-10-batches-py"}}},
     [r"kernels\.cifar\.root: 'no_such/cifar-10-batches-py' \(/\S+/no_such/cifar-10-batches-py\) does not exist",
      r"data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch"]),
    ({"time_scale": {"widths": [16, -4]}}, [r"time_scale\.widths\[1\]: -4 is out of range; must be >= 1"]),
], ids=["cifar_root_missing", "negative_width"])
def test_snakemake_refuses_an_invalid_config_before_any_job(tmp_path, bad, expected):
    copy_workflow(tmp_path)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "bad.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "invalid config:" in out, out[-3000:]
    for pattern in expected:
        assert re.search(pattern, out), (pattern, out[-3000:])
    for name in ("data", "figures", "logs"):
        assert not (tmp_path / name).exists(), name


# ---------------------------------------------------------------- HDF5 inputs of real steps


def _block(**over) -> dict:
    return config_block("time_scale", flow__max_steps=300, **over)


H, SEED, ALPHA = 16, 0, 1.0


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict:
    """A valid data set and init of the time-scale family (and one of each from other params)."""
    ts, other = _block(), _block(seeds=[1])
    other["dataset"]["seed"] = 1
    d = tmp_path_factory.mktemp("good")
    files = {"dataset": d / "dataset.h5", "init": d / "init.h5", "dataset_other": d / "dataset_other.h5",
             "init_other": d / "init_other.h5"}
    assert run_step("ts_dataset", {}, files["dataset"], step_params("ts_dataset", ts)) == 0
    assert run_step("ts_init", {"dataset": files["dataset"]}, files["init"], step_params("ts_init", ts, h=H, seed=SEED)) == 0
    assert run_step("ts_dataset", {}, files["dataset_other"], step_params("ts_dataset", other)) == 0
    # same data set, init seed 1 instead of 0
    assert run_step("ts_init", {"dataset": files["dataset"]}, files["init_other"], step_params("ts_init", ts, h=H, seed=1)) == 0
    return {"ts": ts, **files}


def _edit(src: Path, dst: Path, fn) -> Path:
    """Copy ``src`` to ``dst`` and apply ``fn(h5py.File)`` to the copy (provenance kept)."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        fn(f)
    return dst


def _replace(name: str, transform):
    def fn(f):
        data = f[name][()]
        del f[name]
        f[name] = transform(data)
    return fn


def _truncated(good, d):
    raw = good["dataset"].read_bytes()
    (d / "dataset.h5").write_bytes(raw[: len(raw) // 2])
    return d / "dataset.h5"


def _bitrot(good, d):
    raw = bytearray(good["dataset"].read_bytes())
    with h5py.File(good["dataset"]) as f:
        x = f["x_train"][()]
    at = raw.find(x.tobytes())
    assert at > 0, "x_train is stored contiguously in one chunk"
    raw[at + 17] ^= 0x01  # one bit of one input value
    (d / "dataset.h5").write_bytes(bytes(raw))
    return d / "dataset.h5"


# (case, step, input that is bad, how to make it, what the message must say after the file name)
CASES = [
    ("truncated", "init", "dataset", _truncated, r"not a readable HDF5 file \(truncated or corrupted\?\)"),
    ("bitrot", "init", "dataset", _bitrot, r"dataset 'x_train' cannot be read \(corrupted\?\)"),
    ("missing_file", "init", "dataset", lambda g, d: d / "nowhere.h5", "file does not exist"),
    ("missing_dataset", "init", "dataset",
     lambda g, d: _edit(g["dataset"], d / "dataset.h5", lambda f: f.__delitem__("y_test")),
     r"missing dataset 'y_test' \(has: x_test, x_train, y_train\)"),
    ("inconsistent_shape", "init", "dataset",
     lambda g, d: _edit(g["dataset"], d / "dataset.h5", _replace("y_train", lambda a: a[:-1])),
     r"dataset 'y_train' has shape \(23,\): dimension 'n_train' is 23, but 24 elsewhere in the file"),
    ("shape_not_the_params", "init", "dataset",
     lambda g, d: _edit(g["dataset"], d / "dataset.h5",
                        lambda f: [_replace(k, lambda a: a[:, :5])(f) for k in ("x_train", "x_test")]),
     r"dataset 'x_train' has shape \(24, 5\), expected d = 6 along axis 1"),
    ("non_finite", "init", "dataset",
     lambda g, d: _edit(g["dataset"], d / "dataset.h5", _replace("x_test", lambda a: np.where(a == 1, np.nan, a))),
     r"dataset 'x_test' holds \d+ non-finite value\(s\); expected finite inputs"),
    ("other_params", "init", "dataset", lambda g, d: g["dataset_other"],
     r"produced by other parameters than this step expects \(params_sha256 [0-9a-f]{12}\.\.\. != [0-9a-f]{12}\.\.\.\)"),
    ("other_params", "train", "init", lambda g, d: g["init_other"],
     r"produced by other parameters than this step expects"),
    ("wrong_step", "train", "init", lambda g, d: g["dataset"], r"written by step 'ts_dataset', expected step 'ts_init'"),
    ("w0_length", "train", "init",
     lambda g, d: _edit(g["init"], d / "init.h5", lambda f: [_replace("w0", lambda a: a[:-1])(f)]),
     r"w0 has \d+ entries, model FCSpec\(.*\) needs \d+"),
]


@pytest.mark.parametrize("case, step, bad_input, make, expected", CASES,
                         ids=[f"{c[1]}-{c[2]}-{c[0]}" for c in CASES])
def test_step_refuses_bad_hdf5_input(good, tmp_path, capsys, case, step, bad_input, make, expected):
    ts = good["ts"]
    inputs = {"dataset": good["dataset"]} if step == "init" else {"dataset": good["dataset"], "init": good["init"]}
    params = step_params(f"ts_{step}", ts, alpha=ALPHA, h=H, seed=SEED)
    (tmp_path / "in").mkdir()
    bad = make(good, tmp_path / "in")
    inputs[bad_input] = bad
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "result.h5"
    capsys.readouterr()
    rc = run_step(f"ts_{step}", inputs, output, params)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert re.search(rf"^memgen ts_{step}: error: {re.escape(str(bad))}: {expected}", err, re.M), err
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == []  # no output, no NAME.tmp, no NAME.resume
    # the same step on the good inputs writes the output: the failure was the input's
    assert run_step(f"ts_{step}", {**inputs, bad_input: good[bad_input]}, output, params) == 0
    assert [p.name for p in out_dir.iterdir()] == ["result.h5"]
