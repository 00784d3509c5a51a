"""Compare the outputs of two runs of the workflow (e.g. on SLURM and locally).

    python tests/slurm/compare_outputs.py DIR_A DIR_B

Both directories must hold the same HDF5 files under data/ with, for every dataset,
equal shapes, dtypes and values (np.array_equal, NaN == NaN), and the same
provenance (params_sha256, code_sha256, step); the summary CSVs (data/summary/*.csv)
must be byte-identical. Figures are not compared (PDF metadata differ). Exit status 0
when everything matches, 1 with one line per difference otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np

PROVENANCE = ("step", "params_sha256", "code_sha256", "seed")


def datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def equal_arrays(a: np.ndarray, b: np.ndarray, exact: bool = False) -> bool:
    """Same shape, dtype and values (NaN == NaN); ``exact``: byte-identical."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if exact:
        return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def compare(a: Path, b: Path, exact: bool = False) -> tuple[list[str], int, int]:
    """(differences, number of HDF5 files, number of datasets) between runs a and b;
    ``exact``: datasets must be byte-identical, not only equal in value."""
    problems: list[str] = []
    files_a = {p.relative_to(a) for p in (a / "data").rglob("*.h5")}
    files_b = {p.relative_to(b) for p in (b / "data").rglob("*.h5")}
    for rel in sorted(files_a ^ files_b):
        problems.append(f"{rel}: only in {a if rel in files_a else b}")
    if not files_a:
        problems.append(f"{a}/data: no HDF5 files")
    n_sets = 0
    for rel in sorted(files_a & files_b):
        da, db = datasets(a / rel), datasets(b / rel)
        for name in sorted(set(da) ^ set(db)):
            problems.append(f"{rel}:{name}: dataset in one run only")
        for name in sorted(set(da) & set(db)):
            n_sets += 1
            if not equal_arrays(da[name], db[name], exact):
                problems.append(f"{rel}:{name}: values differ")
        with h5py.File(a / rel) as fa, h5py.File(b / rel) as fb:
            for key in PROVENANCE:
                if fa.attrs.get(key) != fb.attrs.get(key):
                    problems.append(f"{rel}: attribute {key} differs")
    for csv in sorted((a / "data" / "summary").glob("*.csv")):
        other = b / csv.relative_to(a)
        if not other.exists() or other.read_bytes() != csv.read_bytes():
            problems.append(f"{csv.relative_to(a)}: differs")
    return problems, len(files_a & files_b), n_sets


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    problems, n_files, n_sets = compare(Path(argv[0]), Path(argv[1]))
    for line in problems:
        print(f"DIFFERENT {line}")
    if problems:
        return 1
    print(f"identical: {n_files} HDF5 files, {n_sets} datasets (np.array_equal), summary CSVs byte-equal")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
