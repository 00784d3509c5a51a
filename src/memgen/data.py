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


@dataclass
class Dataset:
    """Inputs ``x_*`` of shape (n, d), labels ``y_*`` of shape (n,)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def d(self) -> int:
        return self.x_train.shape[1]

    def to(self, device=None, dtype=None) -> "Dataset":
        conv = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return Dataset(conv(self.x_train), conv(self.y_train), conv(self.x_test), conv(self.y_test), self.meta)


def sparse_parity(n_train: int, n_test: int, k: int, d: int, seed: int) -> Dataset:
    """(k, d)-sparse parity.

    ``n_train + n_test`` distinct strings drawn uniformly from {0,1}^d without
    replacement; label ``y = 2 * (x_1 + ... + x_k mod 2) - 1`` in {-1, +1} (upstream
    feature_lazy convention); inputs stay the raw {0,1} strings. The first ``n_train``
    strings of the seeded draw form the training set.
    """
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


def make(params: dict[str, Any]) -> Dataset:
    """Build the data set described by ``params`` (``{"name": ..., **kwargs}``)."""
    kwargs = dict(params)
    name = kwargs.pop("name")
    if name not in GENERATORS:
        raise MemgenError(f"dataset.name: unknown data set '{name}'; known: {', '.join(GENERATORS)}")
    return GENERATORS[name](**kwargs)


SHAPES = {"x_train": ("n_train", "d"), "y_train": ("n_train",), "x_test": ("n_test", "d"), "y_test": ("n_test",)}


def save(ds: Dataset, path, params: dict[str, Any], code_sha256: str = "") -> None:
    arrays = {"x_train": ds.x_train, "y_train": ds.y_train, "x_test": ds.x_test, "y_test": ds.y_test}
    h5io.write(path, arrays, step="dataset", params=params, seed=params.get("seed"), code_sha256=code_sha256)


def load(path, expect_params: dict[str, Any] | None = None, binary: bool = True) -> Dataset:
    """Read a data set file written by :func:`save`, checking keys, shapes and (when
    ``binary``) that labels are +-1."""
    data = h5io.read(path, SHAPES, step="dataset", expect_params=expect_params)
    for key in ("y_train", "y_test") if binary else ():
        if not np.all(np.isin(data[key], (-1.0, 1.0))):
            raise h5io.H5Error(f"{path}: dataset '{key}' must hold labels in {{-1, +1}}")
    t = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in data.arrays.items()}
    return Dataset(t["x_train"], t["y_train"], t["x_test"], t["y_test"], data.params)
