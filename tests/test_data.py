import pickle

import numpy as np
import pytest
import torch

from memgen import MemgenError, data, h5io


def test_sparse_parity_labels_sizes_distinct():
    n_train, n_test, k, d = 300, 500, 3, 10
    ds = data.sparse_parity(n_train, n_test, k, d, seed=7)
    assert ds.x_train.shape == (n_train, d) and ds.x_test.shape == (n_test, d)
    assert ds.y_train.shape == (n_train,) and ds.y_test.shape == (n_test,)
    assert ds.x_train.dtype == torch.float64
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        bits = x.numpy().astype(int)
        assert set(np.unique(bits)) <= {0, 1}
        parity = np.array([sum(int(b) for b in row[:k]) % 2 for row in bits])
        np.testing.assert_array_equal(y.numpy(), 2 * parity - 1)
    rows = [tuple(r) for r in np.concatenate([ds.x_train.numpy(), ds.x_test.numpy()]).astype(int)]
    assert len(set(rows)) == n_train + n_test  # distinct, hence train/test disjoint
    # every string of length d appears at most once even when almost all are drawn
    full = data.sparse_parity(2**d - 4, 4, k, d, seed=1)
    allrows = np.concatenate([full.x_train.numpy(), full.x_test.numpy()]).astype(int)
    assert len({tuple(r) for r in allrows}) == 2**d


def test_sparse_parity_long_strings_path():
    ds = data.sparse_parity(50, 50, 2, 70, seed=0)  # d > 62: rejection sampling
    x = np.concatenate([ds.x_train.numpy(), ds.x_test.numpy()]).astype(int)
    assert len({tuple(r) for r in x}) == 100
    np.testing.assert_array_equal(np.concatenate([ds.y_train, ds.y_test]), 2 * (x[:, :2].sum(1) % 2) - 1)


def test_sparse_parity_seeding():
    a = data.sparse_parity(40, 60, 2, 8, seed=3)
    b = data.sparse_parity(40, 60, 2, 8, seed=3)
    c = data.sparse_parity(40, 60, 2, 8, seed=4)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.x_train, c.x_train)


@pytest.mark.parametrize("args", [(200, 57, 2, 8), (10, 10, 9, 8), (10, 10, 0, 8)])
def test_sparse_parity_invalid(args):
    with pytest.raises(MemgenError):
        data.sparse_parity(*args, seed=0)


def test_sparse_parity_exactly_all_strings_ok():
    ds = data.sparse_parity(200, 56, 2, 8, seed=0)
    assert len(ds.y_train) + len(ds.y_test) == 256


def test_labels_balanced():
    n = 20000
    ds = data.sparse_parity(n, 0, 3, 20, seed=11)
    assert abs(float(ds.y_train.mean())) < 5 / np.sqrt(n)


def _save(ds, path, params):
    h5io.write(path, ds.arrays(), step="ts_dataset", params=params)


def _load(path, expect_params=None, binary=True):
    from memgen.families.shared import DATASET_WRITES

    return data.from_h5(h5io.read(path, DATASET_WRITES, step="ts_dataset", expect_params=expect_params), binary)


def test_save_load_roundtrip(tmp_path):
    ds = data.sparse_parity(30, 20, 2, 6, seed=5)
    params = {"name": "sparse_parity", "n_train": 30, "n_test": 20, "k": 2, "d": 6, "seed": 5}
    path = tmp_path / "ds.h5"
    _save(ds, path, params)
    back = _load(path, expect_params=params)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(ds, name), getattr(back, name))
    assert back.meta == params
    with pytest.raises(h5io.H5Error, match="other parameters"):
        _load(path, expect_params={**params, "seed": 6})
    _save(ds, path, {**params, "n_train": 31})  # arrays that do not match the params they carry
    with pytest.raises(h5io.H5Error, match="expected n_train = 31"):
        _load(path)


def test_load_rejects_non_binary_labels(tmp_path):
    ds = data.sparse_parity(30, 20, 2, 6, seed=5)
    ds.y_train = ds.y_train * 0.5
    path = tmp_path / "bad.h5"
    _save(ds, path, {"seed": 0})
    with pytest.raises(h5io.H5Error, match="y_train"):
        _load(path)
    assert len(_load(path, binary=False).y_train) == 30


def test_digits_binary_pixels_are_the_seeded_permutation_of_the_two_classes():
    """labels="binary", normalize=False (the curvature family): pixels / 16, labels 0/1,
    the rows of a seeded permutation of the two classes' images (written out here as the
    curvature step's loader did before it used memgen.data.digits)."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    rows = np.flatnonzero(np.isin(raw.target, (1, 7)))
    perm = np.random.default_rng(4).permutation(rows)
    tr, te = perm[:30], perm[30:50]
    ds = data.digits(30, 20, (1, 7), 4, labels="binary", normalize=False)
    np.testing.assert_array_equal(ds.meta["index_train"], tr)
    np.testing.assert_array_equal(ds.meta["index_test"], te)
    np.testing.assert_array_equal(ds.x_train.numpy(), raw.data[tr] / 16.0)
    np.testing.assert_array_equal(ds.x_test.numpy(), raw.data[te] / 16.0)
    np.testing.assert_array_equal(ds.y_train.numpy(), (raw.target[tr] == 7).astype(float))
    np.testing.assert_array_equal(ds.y_test.numpy(), (raw.target[te] == 7).astype(float))
    signed = data.digits(30, 20, (1, 7), 4)  # the kernels family's: same rows, +-1, centred unit rows
    np.testing.assert_array_equal(signed.meta["index_train"], tr)
    np.testing.assert_array_equal(signed.y_train.numpy(), 2 * ds.y_train.numpy() - 1)
    np.testing.assert_allclose((signed.x_train ** 2).sum(1).numpy(), 64.0, rtol=1e-12)
    with pytest.raises(MemgenError, match="labels"):
        data.digits(30, 20, (1, 7), 4, labels="01")


# ---------------------------------------------------------------- two-class data (kernels family)


def test_digits_two_classes():
    ds = data.digits(n_train=50, n_test=0, classes=(3, 8), seed=1)
    assert ds.x_train.shape == (50, 64) and len(ds.x_test) > 250
    assert set(ds.y_train.tolist()) <= {-1.0, 1.0} and set(ds.y_test.tolist()) == {-1.0, 1.0}
    torch.testing.assert_close((ds.x_train ** 2).sum(1), torch.full((50,), 64.0, dtype=torch.float64))
    again = data.make({"name": "digits", "n_train": 50, "n_test": 0, "classes": [3, 8], "seed": 1})
    assert torch.equal(again.x_test, ds.x_test)
    with pytest.raises(MemgenError, match="exceeds"):
        data.digits(n_train=400, n_test=0)


def test_digits_even_vs_odd():
    """A class may be a list of digits: even vs odd over all ten (the accuracy figure's task)."""
    from sklearn.datasets import load_digits

    from memgen.families.kernels.summary import task

    evens, odds = [0, 2, 4, 6, 8], [1, 3, 5, 7, 9]
    ds = data.digits(n_train=300, n_test=0, classes=(evens, odds), seed=0, normalize=False)
    digit = load_digits().target
    assert len(ds.x_train) + len(ds.x_test) == len(digit)  # every image is in one of the two classes
    for y, rows in ((ds.y_train, ds.meta["index_train"]), (ds.y_test, ds.meta["index_test"])):
        np.testing.assert_array_equal(y.numpy(), np.where(digit[rows] % 2 == 1, 1.0, -1.0))
    np.testing.assert_array_equal(ds.x_train.numpy(), load_digits().data[ds.meta["index_train"]] / 16.0)
    with pytest.raises(MemgenError, match="disjoint"):
        data.digits(n_train=10, classes=([1, 2], [2, 3]))
    assert task([evens, odds]) == "even vs odd" and task([3, 8]) == "3 vs 8" and task([[1, 7], 2]) == "{1,7} vs 2"


def _fake_cifar(root, n=20, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name in data.CIFAR_FILES:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 3, n))}
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh)


def test_cifar2_from_local_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    with pytest.raises(MemgenError, match="data_batch_1.*test_batch"):
        data.cifar2(root=str(root))
    _fake_cifar(root)
    ds = data.cifar2(n_train=12, n_test=0, classes=(0, 1), seed=0, root=str(root))
    with open(root / "test_batch", "rb") as fh:
        tb = pickle.load(fh)
    labels = np.asarray(tb[b"labels"])
    keep = np.isin(labels, (0, 1))
    assert ds.x_train.shape == (12, 3072) and len(ds.x_test) == keep.sum()
    np.testing.assert_allclose(ds.x_test.numpy(), 2 * tb[b"data"][keep].astype(np.float64) / 255.0 - 1)
    np.testing.assert_array_equal(ds.y_test.numpy(), np.where(labels[keep] == 1, 1.0, -1.0))
    assert float(ds.x_train.abs().max()) <= 1.0
    (root / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(MemgenError, match="not a CIFAR-10 python batch"):
        data.cifar2(root=str(root))
