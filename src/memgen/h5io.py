"""Atomic HDF5 (and CSV) files with provenance, and readers that check what they read.

Every file memgen writes carries these root attributes:

- ``memgen_version``, ``step``: which step of which release wrote it;
- ``params``: canonical JSON (sorted keys, no spaces) of exactly the parameters that
  produced it, and ``params_sha256`` its hash;
- ``code_sha256``: hash of the library modules the step depends on
  (:func:`memgen.provenance.code_hash`);
- ``seed``; ``torch_version``, ``numpy_version``; ``device`` (where a step computed).

No wall-clock time is stored and datasets are written without HDF5 object timestamps,
so the same inputs give byte-identical arrays. Every non-scalar dataset carries a
Fletcher-32 checksum, so :func:`read` refuses a file whose data bytes were damaged
(HDF5 does not check raw data otherwise).

Files are written to ``<name>.tmp`` next to the target and renamed into place, so a job
killed mid-write never leaves a file under the final name (an older file there stays
intact). SIGKILL runs no cleanup, so it can leave ``<name>.tmp`` behind: that name never
ends in the output's suffix, no rule or reader asks for it, and the next write of
``<name>`` truncates it and renames it into place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from memgen import MemgenError, __version__
from memgen.provenance import canonical_json, params_hash


class H5Error(MemgenError):
    """An input HDF5 file is missing, unreadable, incomplete or from other parameters."""


PROVENANCE_KEYS = {"memgen_version", "step", "params", "params_sha256", "code_sha256", "seed",
                   "torch_version", "numpy_version", "device"}


def _to_numpy(value: Any) -> np.ndarray:
    try:  # torch tensors, without importing torch here
        value = value.detach().cpu().numpy()
    except AttributeError:
        pass
    return np.asarray(value)


def write(
    path: str | os.PathLike,
    arrays: Mapping[str, Any],
    *,
    step: str,
    params: Mapping[str, Any],
    seed: int | None = None,
    code_sha256: str = "",
    attrs: Mapping[str, Any] | None = None,
    device: str | None = None,
) -> Path:
    """Write ``arrays`` (name -> array; ``"a/b"`` makes group ``a``) atomically.

    ``attrs`` are extra scalar attributes on the root (e.g. ``diverged``); ``device``
    (where the step computed: ``cpu``, ``cuda``) becomes the provenance attribute
    ``device``.
    """
    import torch  # local: keep `import memgen.h5io` light

    path = Path(path)
    clash = PROVENANCE_KEYS & set(attrs or {})
    if clash:
        raise ValueError(f"h5io.write: attrs {sorted(clash)} would overwrite provenance attributes")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with h5py.File(tmp, "w", libver=("earliest", "v110")) as f:
            f.attrs["memgen_version"] = __version__
            f.attrs["step"] = step
            f.attrs["params"] = canonical_json(params)
            f.attrs["params_sha256"] = params_hash(params)
            f.attrs["code_sha256"] = code_sha256
            f.attrs["seed"] = -1 if seed is None else int(seed)
            f.attrs["torch_version"] = str(torch.__version__)
            f.attrs["numpy_version"] = np.__version__
            if device is not None:
                f.attrs["device"] = device
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            for name in sorted(arrays):
                data = _to_numpy(arrays[name])
                # Fletcher-32 checksums (chunked layout; scalars cannot have them): a flipped
                # byte in the data then fails the read instead of returning wrong numbers
                f.create_dataset(name, data=data, track_times=False, fletcher32=data.ndim > 0)
            f.flush()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


@dataclass
class H5Data:
    """Arrays and root attributes read from one memgen HDF5 file."""

    path: Path
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.attrs["params"])


Shape = tuple  # entries: int (exact), str (named dimension, consistent across keys), None (any)


def read(
    path: str | os.PathLike,
    shapes: Mapping[str, Shape | None],
    *,
    step: str | None = None,
    expect_params: Mapping[str, Any] | None = None,
    optional: tuple[str, ...] = (),
) -> H5Data:
    """Read the datasets named in ``shapes`` and check them.

    ``shapes`` maps a dataset name to its expected shape: ints must match exactly,
    strings are named dimensions that must agree across all datasets (``"n_train"``),
    ``None`` matches anything; a shape of ``None`` skips the check. ``step`` checks the
    writer step; ``expect_params`` checks the file was produced by exactly these
    parameters (by ``params_sha256``). Names in ``optional`` may be absent.

    Every failure raises :class:`H5Error` naming the file and what is wrong.
    """
    path = Path(path)
    if not path.exists():
        raise H5Error(f"{path}: file does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise H5Error(f"{path}: not a readable HDF5 file (truncated or corrupted?): {exc}") from None
    with f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        for key in ("step", "params", "params_sha256"):
            if key not in attrs:
                raise H5Error(f"{path}: missing provenance attribute '{key}' (not written by memgen?)")
        if step is not None and attrs["step"] != step:
            raise H5Error(f"{path}: written by step '{attrs['step']}', expected step '{step}'")
        if expect_params is not None and attrs["params_sha256"] != params_hash(expect_params):
            raise H5Error(
                f"{path}: produced by other parameters than this step expects "
                f"(params_sha256 {attrs['params_sha256'][:12]}... != {params_hash(expect_params)[:12]}...);\n"
                f"  file params:     {attrs['params']}\n  expected params: {canonical_json(expect_params)}\n"
                "  delete the file or re-run the workflow so it is rebuilt"
            )
        dims: dict[str, int] = {}
        arrays: dict[str, np.ndarray] = {}
        for name, shape in shapes.items():
            if name not in f:
                if name in optional:
                    continue
                have = []
                f.visit(lambda n: have.append(n) if isinstance(f[n], h5py.Dataset) else None)
                raise H5Error(f"{path}: missing dataset '{name}' (has: {', '.join(have) or 'nothing'})")
            try:
                data = f[name][()]
            except OSError as exc:
                raise H5Error(f"{path}: dataset '{name}' cannot be read (corrupted?): {exc}") from None
            if shape is not None:
                _check_shape(path, name, np.shape(data), shape, dims)
            arrays[name] = data
    return H5Data(path, arrays, attrs)


def _check_shape(path: Path, name: str, got: tuple, want: Shape, dims: dict[str, int]) -> None:
    if len(got) != len(want):
        raise H5Error(f"{path}: dataset '{name}' has shape {got}, expected {len(want)} dimensions {want}")
    for size, spec in zip(got, want):
        if spec is None:
            continue
        if isinstance(spec, str):
            if dims.setdefault(spec, size) != size:
                raise H5Error(
                    f"{path}: dataset '{name}' has shape {got}: dimension '{spec}' is {size}, "
                    f"but {dims[spec]} elsewhere in the file"
                )
        elif size != spec:
            raise H5Error(f"{path}: dataset '{name}' has shape {got}, expected {want}")


def shape_of(value: Any) -> tuple:
    """Shape of an array, tensor or scalar (no copy)."""
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else np.shape(value)


def check_shapes(path: str | os.PathLike, shapes: Mapping[str, tuple], want: Mapping[str, Shape | None]) -> None:
    """Check the shapes of datasets about to be written to ``path`` against ``want``
    (the same rules as :func:`read`: named dimensions agree across datasets)."""
    dims: dict[str, int] = {}
    for name, shape in want.items():
        if shape is not None and name in shapes:
            _check_shape(Path(path), name, tuple(shapes[name]), shape, dims)


def write_csv(df, path: str | os.PathLike) -> None:
    """Atomic CSV write (temp file + rename), full float precision."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False, float_format="%.10g")
    tmp.replace(path)


def attrs_of(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes only (cheap), with the same error handling as :func:`read`."""
    return read(path, {}).attrs
