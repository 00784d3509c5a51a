"""Data sets: generated ones (sparse parity) and their HDF5 form.

All generators are seeded explicitly and return a :class:`Dataset` of float64 torch
tensors; labels are +-1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from memgen import MemgenError, h5io
from memgen import contracts as c


@dataclass
class Dataset:
    """Inputs ``x_*`` of shape (n, d), labels ``y_*`` of shape (n,).
    Contract: a plain container (nothing checked on construction); :meth:`to` takes dtype
    None, float32 or float64.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def d(self) -> int:
        return self.x_train.shape[1]

    def arrays(self) -> dict[str, torch.Tensor]:
        """The four arrays by name, as a data-set step writes them."""
        return {"x_train": self.x_train, "y_train": self.y_train, "x_test": self.x_test, "y_test": self.y_test}

    def to(self, device=None, dtype=None) -> "Dataset":
        """The data set on ``device`` in ``dtype`` (None, float32 or float64).
        Contract: dtype None, float32 or float64.
        """
        if dtype is not None:
            c.choice("Dataset.to", "dtype", dtype, c.FLOAT_DTYPES)
        conv = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return Dataset(conv(self.x_train), conv(self.y_train), conv(self.x_test), conv(self.y_test), self.meta)


def sparse_parity(n_train: int, n_test: int, k: int, d: int, seed: int) -> Dataset:
    """(k, d)-sparse parity.

    ``n_train + n_test`` distinct strings drawn uniformly from {0,1}^d without
    replacement; label ``y = 2 * (x_1 + ... + x_k mod 2) - 1`` in {-1, +1} (upstream
    feature_lazy convention); inputs stay the raw {0,1} strings. The first ``n_train``
    strings of the seeded draw form the training set. Contract: integers with
    1 <= k <= d, n_train >= 1, n_test >= 0, n_train + n_test <= 2^d.
    """
    fn = "sparse_parity"
    n_train, n_test, k, d = (c.integer(fn, key, v) for key, v in
                             (("n_train", n_train), ("n_test", n_test), ("k", k), ("d", d)))
    seed = c.integer(fn, "seed", seed)
    if not 1 <= k <= d:
        raise MemgenError(f"sparse_parity: need 1 <= k <= d, got k={k}, d={d}")
    if n_train < 1 or n_test < 0:
        raise MemgenError(f"sparse_parity: need n_train >= 1 and n_test >= 0, got {n_train}, {n_test}")
    n = n_train + n_test
    if d < 63 and n > 2**d:
        raise MemgenError(
            f"sparse_parity: n_train + n_test = {n} exceeds the {2**d} distinct strings of length d={d}"
        )
    rng = np.random.default_rng(seed)
    if d <= 62:
        codes = rng.choice(2**d, size=n, replace=False)
        bits = ((codes[:, None] >> np.arange(d)[None, :]) & 1).astype(np.float64)
    else:  # rejection sampling for long strings
        seen: set[bytes] = set()
        rows = []
        while len(rows) < n:
            row = rng.integers(0, 2, size=d, dtype=np.uint8)
            if row.tobytes() not in seen:
                seen.add(row.tobytes())
                rows.append(row)
        bits = np.array(rows, dtype=np.float64)
    y = 2.0 * (bits[:, :k].sum(axis=1) % 2) - 1.0
    x, y = torch.from_numpy(bits), torch.from_numpy(y)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], {"name": "sparse_parity", "k": k, "d": d})


GENERATORS = {"sparse_parity": sparse_parity}
# (digits and cifar2 are added at the end of the module)


def make(params: dict[str, Any]) -> Dataset:
    """Build the data set described by ``params`` (``{"name": ..., **kwargs}``): a dict
    with a known ``name`` and that generator's arguments.
    Contract: params a dict with a known name and only that generator's arguments.
    """
    if not isinstance(params, dict) or "name" not in params:
        raise c.fail("make", "params", c.describe(params), "a dict {'name': ..., **arguments}")
    kwargs = dict(params)
    name = kwargs.pop("name")
    if name not in GENERATORS:
        raise MemgenError(f"dataset.name: unknown data set '{name}'; known: {', '.join(GENERATORS)}")
    import inspect

    unknown = set(kwargs) - set(inspect.signature(GENERATORS[name]).parameters)
    if unknown:
        raise c.fail("make", "params", f"{sorted(unknown)} for '{name}'",
                     f"arguments of {name}: {', '.join(inspect.signature(GENERATORS[name]).parameters)}")
    return GENERATORS[name](**kwargs)


def from_h5(data: h5io.H5Data, binary: bool = True) -> Dataset:
    """A :class:`Dataset` from a data-set file already read (its arrays x_train, y_train,
    x_test, y_test), checked: the sizes its params state (``n_train``, ``n_test`` when
    > 0, ``d``) match the arrays, inputs are finite and (when ``binary``) labels are +-1.
    A file whose provenance is right but whose arrays are not is refused before any step
    computes with it. Contract: ``data`` an :class:`memgen.h5io.H5Data` (h5io.read)."""
    if not isinstance(data, h5io.H5Data):
        raise c.fail("from_h5", "data", c.describe(data), "an h5io.H5Data (memgen.h5io.read)")
    path, params = data.path, data.params
    sizes = {"n_train": ("x_train", 0), "n_test": ("x_test", 0), "d": ("x_train", 1)}
    for key, (name, axis) in sizes.items():
        want = params.get(key)
        if isinstance(want, int) and want > 0 and data[name].shape[axis] != want:
            raise h5io.H5Error(f"{path}: dataset '{name}' has shape {data[name].shape}, expected {key} = {want} "
                               f"along axis {axis} (the file's params say so)")
    for key in ("x_train", "x_test"):
        if not np.all(np.isfinite(data[key])):
            raise h5io.H5Error(f"{path}: dataset '{key}' holds {int((~np.isfinite(data[key])).sum())} "
                               "non-finite value(s); expected finite inputs")
    for key in ("y_train", "y_test") if binary else ():
        if not np.all(np.isin(data[key], (-1.0, 1.0))):
            raise h5io.H5Error(f"{path}: dataset '{key}' must hold labels in {{-1, +1}}")
    t = {k: torch.from_numpy(np.asarray(data[k], dtype=np.float64)) for k in ("x_train", "y_train", "x_test", "y_test")}
    return Dataset(t["x_train"], t["y_train"], t["x_test"], t["y_test"], params)


# ---------------------------------------------------------------- real data: two classes


def _two_class_split(x: np.ndarray, labels: np.ndarray, classes, n_train: int, n_test: int, seed: int,
                     name: str, x_test=None, labels_test=None, negative: float = -1.0):
    """Keep two classes (first -> ``negative``, second -> +1; a class is a label or a list
    of labels, e.g. the even and the odd digits); seeded draw of ``n_train`` training
    points (and ``n_test`` test points, 0 = all) from the given pools. Returns x_train,
    y_train, x_test, y_test and the rows of the train and test points in the pools they
    came from."""
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__len__") or len(classes) != 2:
        raise MemgenError(f"{name}: classes must be two labels (or two lists of labels), got {classes!r}")
    groups = [[c.integer(name, "classes", k) for k in (g if isinstance(g, (list, tuple)) else [g])] for g in classes]
    if not all(groups) or set(groups[0]) & set(groups[1]):
        raise MemgenError(f"{name}: classes must be two different labels (or disjoint lists of labels), "
                          f"got {list(classes)}")
    n_train, n_test, seed = c.integer(name, "n_train", n_train, lo=1), c.integer(name, "n_test", n_test, lo=0), \
        c.integer(name, "seed", seed)
    rng = np.random.default_rng(seed)

    def pick(xs, ls):
        rows = np.flatnonzero(np.isin(ls, groups[0] + groups[1]))
        return xs[rows].astype(np.float64), np.where(np.isin(ls[rows], groups[1]), 1.0, negative), rows

    xa, ya, ra = pick(x, labels)
    if x_test is None:  # one pool: split it
        perm = rng.permutation(len(xa))
        n_te = len(xa) - n_train if n_test == 0 else n_test
        if n_train < 1 or n_te < 1 or n_train + n_te > len(xa):
            raise MemgenError(f"{name}: n_train={n_train} + n_test={n_test} exceeds the {len(xa)} points "
                              f"of classes {classes} (n_test=0 takes all the rest)")
        tr, te = perm[:n_train], perm[n_train:n_train + n_te]
        return xa[tr], ya[tr], xa[te], ya[te], ra[tr], ra[te]
    xb, yb, rb = pick(x_test, labels_test)
    if n_train < 1 or n_train > len(xa) or n_test > len(xb):
        raise MemgenError(f"{name}: asked for {n_train} train / {n_test} test points; classes {classes} have "
                          f"{len(xa)} / {len(xb)}")
    tr = rng.choice(len(xa), n_train, replace=False)
    te = np.arange(len(xb)) if n_test == 0 else np.sort(rng.choice(len(xb), n_test, replace=False))
    return xa[tr], ya[tr], xb[te], yb[te], ra[tr], rb[te]


def digits(n_train: int, n_test: int = 0, classes=(3, 8), seed: int = 0, labels: str = "sign",
           normalize: bool = True) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, d = 64), two classes: two digits, or two
    disjoint lists of digits (``classes=([0, 2, 4, 6, 8], [1, 3, 5, 7, 9])``: even vs odd).

    A seeded permutation of the two classes' images gives ``n_train`` training points and
    ``n_test`` test points (0 = all the rest). Labels: ``classes[1]`` -> +1,
    ``classes[0]`` -> -1 (``labels="sign"``) or 0 (``labels="binary"``, for a logistic
    loss). Inputs: pixels / 16 in [0, 1]; with ``normalize`` (the kernels family) then
    centred by the training mean and each image scaled to norm sqrt(d) (so x.x/d = 1, the
    analytic kernels' natural scale). ``meta["index_train"]``, ``meta["index_test"]``:
    the rows of the points in scikit-learn's data set.
    Contract: n_train >= 1, n_test >= 0 and seed integers; classes two different integers;
    labels sign or binary.
    """
    from sklearn.datasets import load_digits

    if labels not in DIGIT_LABELS:
        raise MemgenError(f"digits: labels must be one of {', '.join(DIGIT_LABELS)}, got {labels!r}")
    raw = load_digits()
    xtr, ytr, xte, yte, itr, ite = _two_class_split(raw.data / 16.0, raw.target, classes, n_train, n_test, seed,
                                                    "digits", negative=DIGIT_LABELS[labels])
    if normalize:
        mean = xtr.mean(axis=0)
        xtr, xte = _unit_rows(xtr - mean), _unit_rows(xte - mean)
    t = torch.from_numpy
    return Dataset(t(xtr), t(ytr), t(xte), t(yte), {"name": "digits", "classes": list(classes),
                                                    "index_train": itr, "index_test": ite})


DIGIT_LABELS = {"sign": -1.0, "binary": 0.0}  # the label of classes[0]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.sqrt(x.shape[1]) / np.where(norm > 0, norm, 1.0)


CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def cifar2(n_train: int = 128, n_test: int = 0, classes=(0, 1), seed: int = 0,
           root: str = "data/cifar-10-batches-py") -> Dataset:
    """CIFAR-10, two classes (seed 002: airplane vs automobile, 128 training points),
    from the python-pickle batches under ``root`` (the extracted cifar-10-python.tar.gz:
    data_batch_1 ... data_batch_5, test_batch); nothing is downloaded.

    Inputs as seed 002's ``ToTensor`` + ``Normalize(0.5, 0.5)``: 2 * pixel / 255 - 1,
    flattened to d = 3072 in CIFAR's channel-major order. Labels ``classes[0]`` -> -1,
    ``classes[1]`` -> +1. ``n_train`` training points are a seeded draw from the five
    training batches; the test set is the test batch's images of the two classes
    (``n_test`` > 0: a seeded subset of that many).
    Contract: n_train >= 1, n_test >= 0 and seed integers, checked before any file; classes
    two different integers; root a path (missing files: a MemgenError naming them).
    """
    import pickle
    from pathlib import Path

    n_train, n_test = c.integer("cifar2", "n_train", n_train, lo=1), c.integer("cifar2", "n_test", n_test, lo=0)
    seed = c.integer("cifar2", "seed", seed)
    missing = cifar_missing(root)  # checks root too
    base = Path(root)
    if missing:
        raise MemgenError(
            f"cifar2: missing {', '.join(str(base / f) for f in missing)}; expected the CIFAR-10 python "
            f"batches {', '.join(CIFAR_FILES)} under {base}/ (extract cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html into data/; memgen does not download)")

    def batch(name):
        try:
            with open(base / name, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3072)
            return x, np.asarray(d[b"labels"])
        except Exception as exc:  # noqa: BLE001 - any unreadable batch is the same user error
            raise MemgenError(f"cifar2: {base / name} is not a CIFAR-10 python batch ({exc})") from None

    parts = [batch(f) for f in CIFAR_FILES[:-1]]
    x, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    xt, lt = batch("test_batch")
    scale = lambda a: 2.0 * a / 255.0 - 1.0  # noqa: E731
    xtr, ytr, xte, yte, _, _ = _two_class_split(scale(x), labels, classes, n_train, n_test, seed, "cifar2",
                                                scale(xt), lt)
    t = torch.from_numpy
    return Dataset(t(xtr), t(ytr), t(xte), t(yte), {"name": "cifar2", "classes": list(classes)})


def cifar_missing(root: str = "data/cifar-10-batches-py") -> list[str]:
    """The CIFAR-10 batch files (:data:`CIFAR_FILES`) that are not under ``root`` (a path).
    Contract: root a path (str or os.PathLike).
    """
    import os
    from pathlib import Path

    if not isinstance(root, (str, os.PathLike)):
        raise c.fail("cifar_missing", "root", c.describe(root), "a path (str or os.PathLike)")

    return [f for f in CIFAR_FILES if not (Path(root) / f).is_file()]


def cifar_available(root: str = "data/cifar-10-batches-py") -> bool:
    """Whether every CIFAR-10 batch file is under ``root`` (a path).
    Contract: root a path (str or os.PathLike).
    """
    return not cifar_missing(root)


GENERATORS.update({"digits": digits, "cifar2": cifar2})
