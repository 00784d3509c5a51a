"""The machinery of the property-based contract tests (tests/test_properties_*.py).

A :class:`Case` is one public function: ``build(draw, dtype)`` draws valid arguments (a
dict) with Hypothesis, ``check(args, out)`` compares the result with a slow reference
(or at least its shape and finiteness), and ``bad`` maps an argument to the ways of
breaking it (:func:`corrupt`). :func:`run_valid` calls the function on valid arguments
and checks the answer; :func:`run_bad` breaks one argument and expects a MemgenError
whose message names it: never a silent NaN, never a wrong shape.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memgen import MemgenError

DTYPES = (torch.float32, torch.float64)
# small sizes, no deadline (shared 2-core CI machines), no speed-dependent health checks
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
sizes = st.integers(1, 4)


@dataclass
class Case:
    name: str
    fn: Callable
    build: Callable  # (draw, dtype) -> dict of valid keyword arguments
    bad: dict = field(default_factory=dict)  # argument -> kinds of corruption (see corrupt)
    check: Callable | None = None  # (args, out) -> None, asserts
    dtypes: tuple = DTYPES  # the dtypes to draw (numpy modules: float64 only)
    says: dict = field(default_factory=dict)  # argument -> the word its message uses (a config key)

    def __repr__(self):
        return self.name


def _nan(x):
    if torch.is_tensor(x):
        y = x.clone()
        y.view(-1)[0] = math.nan
        return y
    y = np.array(x, dtype=np.float64, copy=True)
    y.reshape(-1)[0] = np.nan
    return y


def _rows(x, k):
    return x[:k] if torch.is_tensor(x) or isinstance(x, np.ndarray) else list(x)[:k]


CORRUPTIONS = {
    "nan": _nan,  # one NaN entry
    "col": lambda x: x[..., None],  # (P,) -> (P, 1): an extra trailing axis
    "scalar": lambda x: x.reshape(-1)[0].clone() if torch.is_tensor(x) else np.float64(np.ravel(x)[0]),
    "drop": lambda x: _rows(x, len(x) - 1) if len(x) > 1 else _rows(x, 0),  # one row fewer (or none)
    "empty": lambda x: _rows(x, 0),
    "wide": lambda x: torch.cat([x, x[:, :1]], 1) if torch.is_tensor(x) else np.c_[x, np.ravel(x)[:len(x)]],
    "int": lambda x: x.to(torch.int64),
    "1d": lambda x: x[0],
    "nofeat": lambda x: x[:, :0],
    "asym": lambda x: x + torch.triu(torch.ones_like(x), 1),
    "zeros": lambda x: torch.zeros_like(x),
    "neg": lambda v: -abs(v) - 1 if np.ndim(v) == 0 else -np.abs(np.asarray(v, dtype=float)) - 1,
    "zero": lambda v: 0,
    "frac": lambda v: 2.5,
    "nanum": lambda v: math.nan,
    "inf": lambda v: math.inf,
    "notcallable": lambda v: 3,
    "bogus": lambda v: "bogus",
    "none": lambda v: None,
    "emptylist": lambda v: [],
    "int64dtype": lambda v: torch.int64,
    "zeroentry": lambda x: np.r_[0.0, np.asarray(x, dtype=np.float64).ravel()[1:]],  # a zero where > 0 is needed
}


def corrupt(kind: str, value):
    return CORRUPTIONS[kind](value)


def run_valid(case: Case, data) -> None:
    dtype = data.draw(st.sampled_from(case.dtypes), label="dtype")
    args = case.build(data.draw, dtype)
    if case.check == "raises":  # no valid call possible here (e.g. CIFAR not on this machine)
        with pytest.raises(MemgenError):
            case.fn(**args)
        return
    out = case.fn(**args)
    if case.check is not None:
        case.check(args, out)
    else:
        assert_finite(out)


def run_bad(case: Case, data) -> None:
    dtype = data.draw(st.sampled_from(case.dtypes), label="dtype")
    args = case.build(data.draw, dtype)
    name = data.draw(st.sampled_from(sorted(case.bad)), label="argument")
    kind = data.draw(st.sampled_from(case.bad[name]), label="corruption")
    args[name] = corrupt(kind, args[name])
    try:
        out = case.fn(**args)
        if hasattr(out, "__next__"):  # a generator checks its arguments at the first value
            next(out)
    except MemgenError as exc:
        word = case.says.get(name, name)
        assert re.search(rf"(^|\W){re.escape(word)}(\W|$)", str(exc)), f"{case.name}: {name} ({kind}): {exc}"
    else:
        raise AssertionError(f"{case.name}: {name} broken by {kind} was accepted")


def assert_finite(out) -> None:
    """Every tensor / array / number in ``out`` (nested tuples, lists, dicts) is finite."""
    if isinstance(out, (tuple, list)):
        for o in out:
            assert_finite(o)
    elif isinstance(out, dict):
        for o in out.values():
            assert_finite(o)
    elif torch.is_tensor(out):
        assert bool(torch.isfinite(out).all()), out
    elif isinstance(out, (np.ndarray, float, np.floating)):
        assert np.isfinite(out).all(), out


def close(a, b, dtype=torch.float64, scale: float = 1.0) -> None:
    """a == b to the accuracy of ``dtype`` (relative to max |b|, times ``scale``)."""
    a = a.detach().double() if torch.is_tensor(a) else torch.as_tensor(np.asarray(a, dtype=np.float64))
    b = b.detach().double() if torch.is_tensor(b) else torch.as_tensor(np.asarray(b, dtype=np.float64))
    assert a.shape == b.shape, (a.shape, b.shape)
    tol = (1e-4 if dtype == torch.float32 else 1e-9) * scale * max(1.0, float(b.abs().max()) if b.numel() else 1.0)
    assert float((a - b).abs().max()) <= tol if b.numel() else True, (a, b)


def tensor(draw, shape, dtype, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """A random tensor of ``shape`` from a drawn seed (fast: no element-wise drawing)."""
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype)


def spd(draw, P: int, dtype, lo: float = 1.0, hi: float = 2.0) -> torch.Tensor:
    """A random symmetric matrix with eigenvalues in [lo, hi]."""
    Q, _ = torch.linalg.qr(tensor(draw, (P, P), torch.float64))
    lam = tensor(draw, (P,), torch.float64, lo, hi)
    return ((Q * lam) @ Q.T).to(dtype)


def drop_args(*keys):
    """``fn`` called without the keyword arguments ``keys`` (builders may draw helper
    values, e.g. ``_x0``, that the function does not take)."""
    def wrap(fn):
        return lambda **kw: fn(**{k: v for k, v in kw.items() if k not in keys})
    return wrap


def property_tests(cases: list[Case]):
    """The two tests of a list of cases (a module assigns them to its test_ names)."""

    @pytest.mark.parametrize("case", cases, ids=repr)
    @PROPERTY
    @given(data=st.data())
    def test_valid_inputs_give_the_reference_answer(case, data):
        run_valid(case, data)

    @pytest.mark.parametrize("case", [c for c in cases if c.bad], ids=repr)
    @PROPERTY
    @given(data=st.data())
    def test_a_broken_argument_raises_a_memgen_error_naming_it(case, data):
        run_bad(case, data)

    return test_valid_inputs_give_the_reference_answer, test_a_broken_argument_raises_a_memgen_error_naming_it
