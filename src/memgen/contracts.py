"""Input contracts of memgen's public functions: the shared checks they run on entry.

Every check raises :class:`memgen.MemgenError` with one message form,
``"FUNCTION: ARGUMENT is WHAT IT GOT; expected WHAT IS ALLOWED"``, and returns the value
it checked (converted where the policy below says so). The checks are cheap: types,
shapes, ranges of scalars, and finiteness of vectors and of inputs the function itself
reads whole; never a pass over a large matrix inside a loop.

Dtype policy (the README's "Library conventions"): a function computes in one dtype, its
*reference*: the parameters' dtype for a function of a model, else the dtype of its
first tensor argument; torch tensors must be float32 or float64, and a floating tensor
of the other dtype is converted to the reference on entry (:func:`tensor` with
``dtype=``), on every path; results are in the reference dtype. The numpy modules
(:mod:`memgen.theory`, :mod:`memgen.modelwise`) and :mod:`memgen.linear` compute in
float64 whatever the input (:func:`array`).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import numpy as np
import torch

from memgen import MemgenError

FLOAT_DTYPES = (torch.float32, torch.float64)


def describe(x) -> str:
    """A short description of a value for an error message."""
    if torch.is_tensor(x):
        return f"a {str(x.dtype).replace('torch.', '')} tensor of shape {tuple(x.shape)}"
    if isinstance(x, np.ndarray):
        return f"a {x.dtype} array of shape {x.shape}"
    text = repr(x)
    return f"{type(x).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def fail(fn: str, name: str, got: str, expected: str) -> MemgenError:
    """The error of a broken contract (to ``raise``)."""
    return MemgenError(f"{fn}: {name} is {got}; expected {expected}")


def _shape_text(shape) -> str:
    inner = ", ".join("?" if s is None else str(s) for s in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _check_shape(fn, name, x, shape, ndim, what):
    dims = tuple(x.shape)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if len(dims) not in allowed:
            want = " or ".join(str(k) for k in allowed)
            raise fail(fn, name, what, f"{want} dimension(s)")
    if shape is not None:
        bound: dict[str, int] = {}
        ok = len(dims) == len(shape)
        for have, want in zip(dims, shape) if ok else ():
            if isinstance(want, str):
                ok = ok and bound.setdefault(want, have) == have
            elif want is not None:
                ok = ok and have == want
        if not ok:
            raise fail(fn, name, what, f"shape {_shape_text(shape)}")


def _nonfinite(fn, name, what, count):
    return fail(fn, name, f"{what} with {count} non-finite value(s) (NaN or inf)", "finite values")


def tensor(fn: str, name: str, x, shape: Sequence | None = None, *, ndim=None, dtype: torch.dtype | None = None,
           finite: bool = False, nonempty: bool = True, convert: bool = False) -> torch.Tensor:
    """``x`` as a float32/float64 torch tensor of ``shape`` (ints, None = any size, or a
    name: equal names, equal sizes) or ``ndim`` (an int or the allowed ints), with at
    least one entry unless not ``nonempty``, finite if ``finite``; converted to ``dtype``
    (the reference) when given. ``convert``: array-likes (numpy, lists) are accepted and
    made tensors of ``dtype`` (default float64)."""
    if not torch.is_tensor(x):
        if not convert:
            raise fail(fn, name, describe(x), "a torch tensor")
        try:
            x = torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype or torch.float64)
        except (TypeError, ValueError):
            raise fail(fn, name, describe(x), "a tensor or an array of real numbers") from None
    what = describe(x)
    if x.dtype not in FLOAT_DTYPES:
        raise fail(fn, name, what, "a float32 or float64 tensor")
    _check_shape(fn, name, x, shape, ndim, what)
    if nonempty and x.numel() == 0:
        raise fail(fn, name, what, "at least one entry")
    if finite:
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            raise _nonfinite(fn, name, what, int(bad.sum()))
    return x if dtype is None or x.dtype == dtype else x.to(dtype)


def array(fn: str, name: str, a, shape: Sequence | None = None, *, ndim=None, finite: bool = True,
          nonempty: bool = True, lo: float | None = None, lo_open: bool = False) -> np.ndarray:
    """``a`` (numpy, torch, list or number) as a float64 numpy array, checked like
    :func:`tensor`; every entry >= ``lo`` (> with ``lo_open``) when given."""
    if torch.is_tensor(a):
        a = a.detach().cpu().numpy()
    if np.iscomplexobj(a):
        raise fail(fn, name, describe(a), "real numbers")
    try:
        out = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise fail(fn, name, describe(a), "real numbers") from None
    what = describe(a if isinstance(a, np.ndarray) else out)
    _check_shape(fn, name, out, shape, ndim, what)
    if nonempty and out.size == 0:
        raise fail(fn, name, what, "at least one entry")
    if finite and not np.isfinite(out).all():
        raise _nonfinite(fn, name, what, int((~np.isfinite(out)).sum()))
    if lo is not None and out.size and ((out < lo).any() or (lo_open and (out == lo).any())):
        raise fail(fn, name, f"{what} with an entry {out.min():g}", f"entries {_bounds_text(lo, None, lo_open, False)}")
    return out


def float64_tensor(fn: str, name: str, a, shape: Sequence | None = None, **checks) -> torch.Tensor:
    """:func:`array` as a float64 torch tensor (the float64 modules' torch arguments)."""
    return torch.from_numpy(array(fn, name, a, shape, **checks))


def _bounds_text(lo, hi, lo_open, hi_open) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return " and ".join(parts)


def number(fn: str, name: str, value, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False, finite: bool = True) -> float:
    """``value`` as a float: a real number (not a bool), finite unless not ``finite``, in
    the range given (``lo``/``hi``, open ends with ``lo_open``/``hi_open``)."""
    if torch.is_tensor(value) and value.numel() == 1 and value.dtype.is_floating_point:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise fail(fn, name, describe(value), "a real number")
    v = float(value)
    rng = _bounds_text(lo, hi, lo_open, hi_open)
    if math.isnan(v) or (finite and math.isinf(v)):
        raise fail(fn, name, f"{v}", f"a finite number{' ' + rng if rng else ''}")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi))):
        raise fail(fn, name, f"{v:g}", f"a number {rng}")
    return v


def integer(fn: str, name: str, value, *, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int: an integer (an integral float such as 3.0 is accepted, 2.5 and
    bools are not) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            (not isinstance(value, numbers.Integral) and not (math.isfinite(value) and float(value).is_integer())):
        raise fail(fn, name, describe(value), "an integer" + (f" >= {lo}" if lo is not None else ""))
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise fail(fn, name, f"{v}", "an integer " + _bounds_text(lo, hi, False, False))
    return v


def choice(fn: str, name: str, value, allowed: Sequence):
    """``value`` if it is one of ``allowed``."""
    if value not in tuple(allowed):
        raise fail(fn, name, repr(value), "one of " + ", ".join(repr(a) for a in allowed))
    return value


def function(fn: str, name: str, f, optional: bool = False):
    """``f`` if it is callable (or None when ``optional``)."""
    if f is None and optional:
        return f
    if not callable(f):
        raise fail(fn, name, describe(f), "a callable")
    return f


def module_dtype(fn: str, name: str, model) -> torch.dtype:
    """The one float dtype of the parameters of ``model`` (an ``nn.Module``): its reference."""
    if not isinstance(model, torch.nn.Module):
        raise fail(fn, name, describe(model), "a torch.nn.Module")
    dtypes = {p.dtype for p in model.parameters()}
    if not dtypes:
        raise fail(fn, name, f"a {type(model).__name__} without parameters", "a module with parameters")
    if len(dtypes) > 1 or not dtypes <= set(FLOAT_DTYPES):
        got = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        raise fail(fn, name, f"a module with parameters of dtype {got}", "parameters of one dtype, float32 or float64")
    return dtypes.pop()


def symmetric(fn: str, name: str, K: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """``K`` if it is symmetric to ``rtol`` (default sqrt(eps) of its dtype) times max |K|."""
    rtol = math.sqrt(torch.finfo(K.dtype).eps) if rtol is None else rtol
    gap = float((K - K.t()).abs().max()) if K.numel() else 0.0
    if gap > rtol * float(K.abs().max()):
        raise fail(fn, name, f"{describe(K)} with max |K - K^T| = {gap:.3g}", f"a symmetric matrix (relative tolerance {rtol:.2g})")
    return K


def same_length(fn: str, names: Sequence[str], *xs) -> int:
    """The common length (first axis) of ``xs``."""
    lengths = [len(x) for x in xs]
    if len(set(lengths)) > 1:
        got = ", ".join(f"{n} has {k}" for n, k in zip(names, lengths))
        raise MemgenError(f"{fn}: {' and '.join(names)} must have as many rows; {got}")
    return lengths[0]


def operator(fn: str, name: str, f: Callable, like: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f`` (u (P,) -> (P,), e.g. an hvp_fn) wrapped so that every output is checked:
    a tensor of u's shape (reshaped from P entries), finite for a finite u, and converted
    to ``like``'s dtype (the reference)."""
    function(fn, name, f)
    P, dtype = like.numel(), like.dtype

    def checked(u: torch.Tensor) -> torch.Tensor:
        out = f(u)
        if not torch.is_tensor(out) or out.numel() != P:
            raise fail(fn, f"the output of {name}", describe(out), f"a tensor of {P} entries (the size of its input)")
        out = out.reshape(u.shape)
        if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(u).all()):
            raise fail(fn, f"the output of {name}", "non-finite (NaN or inf) for a finite input",
                       "finite values (is the Hessian or the loss finite at this point?)")
        return out if out.dtype == dtype else out.to(dtype)

    return checked


def pair(fn: str, name: str, value, *, lo: float | None = None, lo_open: bool = False) -> tuple[float, float]:
    """One number or a pair of numbers (each checked as by :func:`number`) as a pair."""
    a = array(fn, name, value)
    if a.ndim > 1 or a.size not in (1, 2):
        raise fail(fn, name, describe(value), "one number or a pair of numbers")
    first, second = (a.item(), a.item()) if a.size == 1 else (a[0], a[1])
    return number(fn, name, float(first), lo=lo, lo_open=lo_open), number(fn, name, float(second), lo=lo, lo_open=lo_open)


def per_feature(fn: str, name: str, a, d: int, default: float | None = None, **checks) -> np.ndarray:
    """One number or d numbers (checked as by :func:`array`) as a (d,) float64 array;
    None gives ``default`` everywhere (when a default is given)."""
    if a is None and default is not None:
        return np.full(d, float(default))
    return np.broadcast_to(array(fn, name, a, (d,) if np.ndim(a) else (), **checks), (d,)).copy()


def design(fn: str, X, y=None) -> tuple[np.ndarray, np.ndarray | None]:
    """A training set: X finite (n, d), y finite (n,) (or None), float64."""
    X = array(fn, "X", X, ndim=2)
    return X, None if y is None else array(fn, "y", y, (X.shape[0],))


def layers(fn: str, W, v, d: int | None = None, names: tuple[str, str] = ("W", "v")) -> tuple[np.ndarray, np.ndarray]:
    """The layers of a two-layer linear network f(x) = v^T W x: W finite (p, d), v (p,)."""
    W = array(fn, names[0], W, (None, d))
    return W, array(fn, names[1], v, (W.shape[0],))


def rows(fn: str, name: str, x, width: int | None = None, *, dtype: torch.dtype | None = None,
         finite: bool = False, matrix: bool = False) -> torch.Tensor:
    """Examples in rows: a float tensor (n, ...) (``matrix``: exactly (n, d)), n >= 1, each
    row of ``width`` entries when given (else at least one), finite if ``finite``;
    converted to ``dtype``."""
    if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() < 2 or (matrix and x.dim() != 2) or \
            len(x) == 0 or x[0].numel() != (width or max(x[0].numel(), 1)):
        feats = f"{width} features" if width else "d >= 1 features"
        raise fail(fn, name, describe(x), f"a float tensor ({'n, d' if matrix else 'n, ...'}): n >= 1 examples in rows, "
                   f"{feats} each" + ("" if x is None or torch.is_tensor(x) and x.dim() >= 2 else " (one example: x[None])"))
    return tensor(fn, name, x, finite=finite, dtype=dtype)
