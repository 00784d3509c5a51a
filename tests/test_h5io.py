import json
import os

import h5py
import numpy as np
import pytest
import torch

from memgen import h5io, provenance

PARAMS = {"b": [1, 2.5], "a": {"z": "x", "y": None}, "seed": 3}


def _write(path, **kw):
    arrays = {"x": np.arange(12.0).reshape(4, 3), "grp/y": torch.ones(4, dtype=torch.float64), "n": np.int64(7)}
    return h5io.write(path, arrays, step="dataset", params=PARAMS, seed=3, code_sha256="abc", **kw)


def test_roundtrip_and_provenance(tmp_path):
    path = _write(tmp_path / "sub" / "f.h5", attrs={"diverged": True})
    data = h5io.read(path, {"x": ("n", 3), "grp/y": ("n",), "n": ()}, step="dataset", expect_params=dict(PARAMS))
    np.testing.assert_array_equal(data["x"], np.arange(12.0).reshape(4, 3))
    np.testing.assert_array_equal(data["grp/y"], np.ones(4))
    assert data["n"] == 7 and data.params == PARAMS
    a = data.attrs
    assert a["params"] == json.dumps(PARAMS, sort_keys=True, separators=(",", ":"))
    assert a["params_sha256"] == provenance.params_hash(PARAMS) and len(a["params_sha256"]) == 64
    assert provenance.params_hash({"seed": 3, "a": {"y": None, "z": "x"}, "b": [1, 2.5]}) == a["params_sha256"]
    assert a["seed"] == 3 and a["code_sha256"] == "abc" and a["step"] == "dataset" and bool(a["diverged"])
    assert a["torch_version"] == torch.__version__ and a["numpy_version"] == np.__version__
    assert not any("time" in k.lower() for k in a)
    assert h5io.attrs_of(path)["params_sha256"] == a["params_sha256"]
    assert os.listdir(path.parent) == ["f.h5"]


def test_same_inputs_give_identical_bytes(tmp_path):
    a, b = _write(tmp_path / "a.h5"), _write(tmp_path / "b.h5")
    assert a.read_bytes() == b.read_bytes()


def _failing_write(path):
    bad = np.array([object(), object()], dtype=object)  # h5py cannot store object arrays
    h5io.write(path, {"a_good": np.zeros(3), "b_bad": bad}, step="dataset", params={})


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(Exception):
        _failing_write(tmp_path / "f.h5")
    assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_old_file(tmp_path, monkeypatch):
    path = _write(tmp_path / "f.h5")
    before = path.read_bytes()
    with pytest.raises(Exception):
        _failing_write(path)
    calls = []
    original = h5py.Group.create_dataset

    def failing(self, name, *args, **kw):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return original(self, name, *args, **kw)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        _write(path)
    assert len(calls) == 2 and path.read_bytes() == before and os.listdir(tmp_path) == ["f.h5"]


@pytest.mark.parametrize("case,shapes,kw,match", [
    ("missing", {}, {}, "does not exist"),
    ("truncated", {}, {}, "not a readable HDF5"),
    ("bitrot", {"x": (4, 3)}, {}, r"dataset 'x' cannot be read \(corrupted\?\)"),
    ("ok", {"x": (4, 3), "nope": None}, {}, "missing dataset 'nope'"),
    ("ok", {"x": (4, 2)}, {}, r"'x' has shape \(4, 3\)"),
    ("ok", {"x": (4, 3, 1)}, {}, "'x' has shape"),
    ("ok", {"x": ("n", "d"), "grp/y": ("d",)}, {}, "dimension 'd' is 4, but 3"),
    ("ok", {}, {"step": "train"}, "expected step 'train'"),
    ("ok", {}, {"expect_params": {**PARAMS, "seed": 4}}, "other parameters"),
])
def test_read_errors(tmp_path, case, shapes, kw, match):
    path = tmp_path / "f.h5"
    if case != "missing":
        _write(path)
    if case == "truncated":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    if case == "bitrot":  # one flipped byte inside x's data: only the checksum can tell
        raw = bytearray(path.read_bytes())
        at = raw.find(np.arange(12.0).tobytes())
        assert at > 0 and raw.find(np.arange(12.0).tobytes(), at + 1) < 0
        raw[at + 8 * 5 + 3] ^= 0x10
        path.write_bytes(bytes(raw))
    with pytest.raises(h5io.H5Error, match=match) as err:
        h5io.read(path, shapes, **kw)
    assert str(path) in str(err.value)


def test_optional_dataset_may_be_absent(tmp_path):
    data = h5io.read(_write(tmp_path / "f.h5"), {"x": None, "extra": (2,)}, optional=("extra",))
    assert "extra" not in data.arrays and data["x"].shape == (4, 3)
