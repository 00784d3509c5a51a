"""Pieces shared by several families: the data-set step (run function and the datasets
it writes) and how a step loads a data-set input. Imports nothing heavy at module level:
family declarations import it."""

from __future__ import annotations

# The datasets of a data-set step (memgen.data.Dataset's arrays; n = points, d = features).
DATASET_WRITES = {"x_train": ("n_train", "d"), "y_train": ("n_train",), "x_test": ("n_test", "d"),
                  "y_test": ("n_test",)}


def dataset(job) -> None:
    """Generate the data set its params describe (memgen.data.make)."""
    from memgen import data

    ds = data.make(job.params)
    job.write(ds.arrays(), seed=job.params.get("seed"))


def load_dataset(job, name: str = "dataset", device="cpu", dtype=None, binary: bool = True):
    """Input ``name``, a data-set step's file, checked (memgen.data.from_h5: sizes as its
    params say, finite inputs, labels +-1 unless not ``binary``), on ``device`` / ``dtype``."""
    from memgen import data

    return data.from_h5(job.read(name), binary=binary).to(device, dtype)
