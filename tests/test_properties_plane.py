"""Property-based contract tests (Hypothesis) of the reduced two-layer flow and its
planes (memgen.theory.two_layer_flow / ode_start, memgen.phase_plane) and of the
crossover estimators (memgen.scaling): valid inputs give the closed form or a slow
reference, a broken argument raises a MemgenError naming it; NaN samples of the
estimators are data (dropped), not errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import strategies as st
from scipy import stats

from contract_cases import Case, drop_args, close, property_tests, sizes, spd, tensor
from memgen import MemgenError, linear, phase_plane, scaling, theory

F64 = (torch.float64,)
LRS = st.sampled_from([0.3, (0.2, 0.5), (0.05, 0.02)])


def _np(draw, shape, lo=-1.0, hi=1.0):
    return tensor(draw, shape, torch.float64, lo, hi).numpy()


def _lrs(lr):
    return (float(lr), float(lr)) if np.ndim(lr) == 0 else (float(lr[0]), float(lr[1]))


def _flow_at(u, z, A, b, lr):
    """(du, dz) at one state by explicit sums: du = lr_v z.g, dz = lr_W u g, g = b - A u z."""
    lr_W, lr_v = _lrs(lr)
    d = len(z)
    g = [b[i] - sum(A[i, j] * u * z[j] for j in range(d)) for i in range(d)]
    return lr_v * sum(z[i] * g[i] for i in range(d)), np.array([lr_W * u * gi for gi in g])


def _flow_args(draw, dtype):
    d, K = draw(sizes, label="d"), draw(sizes, label="K")
    return {"u": _np(draw, (K,), 0.1, 1.5), "z": _np(draw, (K, d)), "A": _np(draw, (d, d)), "b": _np(draw, (d,)),
            "lr": draw(LRS)}


def _check_flow(a, out):
    ref = [_flow_at(u, z, a["A"], a["b"], a["lr"]) for u, z in zip(a["u"], a["z"])]
    close(out[0], np.array([r[0] for r in ref]))
    close(out[1], np.stack([r[1] for r in ref]))


def _start_args(draw, dtype):
    d, p = draw(sizes, label="d"), draw(sizes, label="p")
    init = draw(st.sampled_from(phase_plane.INITS), label="init")
    W0, v0 = linear.two_layer_init(d, p, init, 0.3, draw(st.integers(0, 9)))
    return {"W0": W0.numpy(), "v0": v0.numpy(), "b": _np(draw, (d,), 0.5, 1.5), "init": init}


def _check_start(a, out):
    u, z = out
    W0, v0, b = a["W0"], a["v0"], a["b"]
    if a["init"] == "gaussian":  # the growing mode: u = |m|, z = |m| b/|b|, m = (v0 + W0 b/|b|)/2
        bh = b / np.linalg.norm(b)
        m = np.linalg.norm(0.5 * (v0 + W0 @ bh))
        close(u, m)
        close(z, m * bh)
    else:  # the exact rank-one state: u = |v0|, u z = W0^T v0
        close(u, np.linalg.norm(v0))
        close(u * z, W0.T @ v0)


def _crossing_args(draw, dtype):
    n = draw(st.integers(4, 12), label="n")
    x = np.geomspace(1e-2, 1e2, n)
    x0 = float(np.exp(draw(st.floats(math.log(x[0]) + 0.01, math.log(x[-2])), label="log x0")))  # inside
    power, level = draw(st.floats(0.5, 3.0), label="power"), draw(st.sampled_from([1.0, 0.3, 4.0]), label="level")
    decreasing, never = draw(st.booleans(), label="decreasing"), draw(st.booleans(), label="never")
    y = level * (x / x0) ** (-power if decreasing else power)
    if never:  # the curve stays on the starting side of the level: no crossing
        y = np.full(n, level * (2.0 if decreasing else 0.5))
    junk = draw(st.lists(st.integers(1, n - 2), max_size=2), label="dropped")  # NaN, inf, <= 0: dropped data
    for i, bad in zip(junk, (np.nan, 0.0)):
        y[i] = bad
    if junk:
        x[junk[0]] = np.inf if len(junk) > 1 else -1.0
    order = np.random.default_rng(draw(st.integers(0, 99))).permutation(n)  # any order of samples
    return {"x": x[order], "y": y[order], "level": level, "decreasing": decreasing, "_x0": math.nan if never else x0}


def _check_crossing(a, out):
    if math.isnan(a["_x0"]):
        assert math.isnan(out)
    else:  # log-log linear interpolation of an exact power law is exact
        assert out == pytest.approx(a["_x0"], rel=1e-9)


def _power_args(draw, dtype):
    n = draw(st.integers(3, 10), label="n")
    x = np.exp(_np(draw, (n,), 0.0, 5.0))
    x[:2] = [1.0, 50.0]  # at least two distinct x
    noise = draw(st.sampled_from([0.0, 0.3]), label="noise")
    y = 2.5 * x ** -0.7 * np.exp(noise * _np(draw, (n,)))
    junk = draw(st.integers(0, 3), label="junk")  # points with NaN, inf or <= 0: dropped, not errors
    x, y = np.r_[x, [np.nan, 3.0, -1.0][:junk]], np.r_[y, [1.0, np.inf, 2.0][:junk]]
    return {"x": x, "y": y, "confidence": draw(st.sampled_from([0.5, 0.95])), "_noise": noise, "_n": n}


def _check_power(a, fit):
    lx, ly = np.log(a["x"][:a["_n"]]), np.log(a["y"][:a["_n"]])
    ref = stats.linregress(lx, ly)
    half = stats.t.ppf(0.5 + a["confidence"] / 2, a["_n"] - 2) * ref.stderr
    assert fit.points == a["_n"] and fit.confidence == a["confidence"]
    close(fit.exponent, -ref.slope)
    close(fit.prefactor, math.exp(ref.intercept))
    if a["_noise"] == 0:  # the closed form: y = 2.5 x^-0.7 exactly, an interval of width 0
        assert fit.exponent == pytest.approx(0.7, rel=1e-9) and fit.prefactor == pytest.approx(2.5, rel=1e-9)
        assert fit.exponent_lo <= fit.exponent <= fit.exponent_hi and fit.exponent_hi - fit.exponent_lo < 1e-9
    else:  # (linregress's stderr, from 1 - r^2, is inaccurate at a perfect fit)
        close([fit.exponent_lo, fit.exponent_hi], [-ref.slope - half, -ref.slope + half], scale=10)


def _check_invariant(a, c):
    lr_W, lr_v = _lrs(a["lr"])
    close(c, np.array([u * u / lr_v - sum(zi * zi for zi in z) / lr_W for u, z in zip(a["u"], a["z"])]))
    du, dz = theory.two_layer_flow(a["u"], a["z"], a["A"], a["b"], a["lr"])  # conserved: grad c . flow = 0
    close(2 * a["u"] * du / lr_v - 2 * (a["z"] * dz).sum(-1) / lr_W, np.zeros(len(a["u"])))


def _plane_args(draw, dtype):
    return {"plane": draw(st.sampled_from(phase_plane.PLANES), label="plane"), "x": _np(draw, (2, 3), -1.5, 1.5),
            "y": _np(draw, (2, 3), -1.5, 1.5), "A": spd(draw, 2, torch.float64, 0.5, 1.5).numpy(),
            "b": _np(draw, (2,)), "lr": draw(LRS), "c": draw(st.floats(-1.0, 1.0), label="c"),
            "sign": draw(st.sampled_from([1.0, -1.0]), label="sign")}


def _plane_ref(plane, x, y, A, b, lr, c, sign):
    """(third, dx, dy) point by point: the third coordinate solved from the invariant
    u^2/lr_v - |z|^2/lr_W = c (NaN where it has no solution, or u < 0), then the flow."""
    lr_W, lr_v = _lrs(lr)
    out = np.full((3,) + np.shape(x), np.nan)
    for i in np.ndindex(np.shape(x)):
        X, Y = float(x[i]), float(y[i])
        if plane == "z1_z2":
            r = lr_v * (c + (X * X + Y * Y) / lr_W)
            u, z, t = math.sqrt(max(r, 0.0)), np.array([X, Y]), r
        else:
            r = lr_W * (X * X / lr_v - c) - Y * Y
            third = sign * math.sqrt(max(r, 0.0))
            u, z, t = X, np.array([Y, third] if plane == "u_z1" else [third, Y]), min(r, X)
        if t < 0:
            continue
        du, dz = _flow_at(u, z, A, b, lr)
        assert u * u / lr_v - (z @ z) / lr_W == pytest.approx(c, rel=1e-9, abs=1e-9)  # on the surface
        out[(slice(None),) + i] = [{"z1_z2": u, "u_z1": z[1], "u_z2": z[0]}[plane],
                                   *{"z1_z2": dz, "u_z1": (du, dz[0]), "u_z2": (du, dz[1])}[plane]]
    return out


def _check_plane(a, out):
    np.testing.assert_allclose(np.stack(out), _plane_ref(**a), rtol=1e-9, atol=1e-12)


def _path_args(draw, dtype):
    n, d, p = draw(st.integers(2, 5), label="n"), draw(sizes, label="d"), draw(sizes, label="p")
    X = _np(draw, (n, d))
    W0, v0 = linear.two_layer_init(d, p, "gaussian", 0.3, draw(st.integers(0, 9)))
    steps = sorted(draw(st.lists(st.integers(0, 6), min_size=1, max_size=4), label="steps"))
    return {"X": X, "y": X @ np.ones(d), "s": np.ones(d), "theta": np.ones(d), "noise_std": 0.5,
            "steps": np.array(steps), "lr": draw(LRS), "W0": W0.numpy(), "v0": v0.numpy()}


def _gd_path(a):
    """(u, z) at the steps by a plain numpy loop of GD on the two-layer network."""
    X, y = a["X"], a["y"]
    n = len(y)
    A, b = X.T @ X / n, X.T @ y / n
    lr_W, lr_v = _lrs(a["lr"])
    W, v, states = a["W0"].copy(), a["v0"].copy(), {}
    for k in range(int(max(a["steps"])) + 1):
        states[k] = (np.linalg.norm(v), W.T @ v / np.linalg.norm(v))
        g = b - A @ (W.T @ v)
        W, v = W + lr_W * np.outer(v, g), v + lr_v * (W @ g)
    return np.array([states[k][0] for k in a["steps"]]), np.stack([states[k][1] for k in a["steps"]])


def _check_path(a, out):
    u, z = _gd_path(a)
    close(out[0], u, scale=10)
    close(out[1], z, scale=10)


def _field_args(draw, dtype):
    n, p = draw(st.integers(3, 6), label="n"), draw(sizes, label="p")
    X = _np(draw, (n, 2))
    init = draw(st.sampled_from(phase_plane.INITS), label="init")
    W0, v0 = linear.two_layer_init(2, p, init, 0.2, draw(st.integers(0, 9)))
    return {"X": X, "y": X @ np.array([1.0, 2.0]) + 0.1, "s": np.ones(2), "theta": np.array([1.0, 2.0]),
            "noise_std": 0.5, "steps": np.array([0, 2, 5, 10]), "lr": 0.05, "W0": W0.numpy(), "v0": v0.numpy(),
            "init": init, "grid": draw(st.integers(2, 4), label="grid")}


def _check_field(a, vf):
    u, z = _gd_path(a)
    close(vf.u_net, u, scale=10)
    close(vf.z_net, z, scale=10)
    n = len(a["y"])
    A, b = a["X"].T @ a["X"] / n, a["X"].T @ a["y"] / n
    u0, z0 = theory.ode_start(a["W0"], a["v0"], b, a["init"])
    close(vf.u_ode[0], u0)
    assert vf.c == pytest.approx(u0**2 / 0.05 - z0 @ z0 / 0.05, rel=1e-6, abs=1e-6)  # the start's invariant, conserved
    for plane, f in vf.planes.items():
        assert f["x"].shape == f["y"].shape == (a["grid"],) and f["x"][0] <= 0 <= f["x"][-1]
        third = {"u_z1": 1, "u_z2": 0}.get(plane)
        sign = 1.0 if third is None else float(np.sign(vf.z_ode[-1, third]) or 1.0)
        gx, gy = np.meshgrid(f["x"], f["y"])
        np.testing.assert_allclose(np.stack([f["third"], f["dx"], f["dy"]]),
                                   _plane_ref(plane, gx, gy, A, b, a["lr"], vf.c, sign), rtol=1e-9, atol=1e-12)


CASES = [
    Case("two_layer_flow", theory.two_layer_flow, _flow_args,
         {"u": ("nan", "drop", "col"), "z": ("nan", "wide", "scalar"), "A": ("nan", "wide"), "b": ("drop", "nan"),
          "lr": ("zero", "neg", "nanum")}, _check_flow, F64),
    Case("ode_start", theory.ode_start, _start_args,
         {"init": ("bogus",), "W0": ("nan", "1d"), "v0": ("drop", "nan"), "b": ("drop", "nan")}, _check_start, F64),
    Case("crossing", drop_args("_x0")(scaling.crossing), _crossing_args,
         {"x": ("col", "bogus"), "y": ("drop", "col"), "level": ("zero", "neg", "nanum", "inf"),
          "decreasing": ("bogus", "none")}, _check_crossing, F64),
    Case("power_law", drop_args("_noise", "_n")(scaling.power_law), _power_args,
         {"x": ("col", "bogus"), "y": ("drop",), "confidence": ("zero", "neg", "nanum", "frac")}, _check_power, F64),
    Case("invariant", drop_args("A", "b")(phase_plane.invariant), _flow_args,
         {"u": ("nan", "drop", "col"), "z": ("nan", "scalar"), "lr": ("zero", "neg", "nanum")}, _check_invariant, F64),
    Case("plane_field", phase_plane.plane_field, _plane_args,
         {"plane": ("bogus",), "x": ("nan",), "y": ("drop", "nan"), "A": ("nan", "wide"), "b": ("drop",),
          "lr": ("zero", "neg"), "c": ("nanum", "inf"), "sign": ("zero", "frac", "bogus")}, _check_plane, F64),
    Case("coordinates", phase_plane.coordinates,
         lambda draw, dt: {"plane": draw(st.sampled_from(phase_plane.PLANES)), "u": _np(draw, (K := draw(sizes),)),
                           "z": _np(draw, (K, 2))},
         {"plane": ("bogus",), "u": ("nan", "col"), "z": ("nan", "wide", "drop")},
         lambda a, out: close(np.stack(out), np.stack({"u_z1": (a["u"], a["z"][:, 0]), "u_z2": (a["u"], a["z"][:, 1]),
                                                       "z1_z2": (a["z"][:, 0], a["z"][:, 1])}[a["plane"]])), F64),
    Case("network_path", phase_plane.network_path, _path_args,
         {"X": ("nan", "1d"), "y": ("drop", "nan"), "s": ("drop", "neg"), "theta": ("nan",), "noise_std": ("neg", "nanum"),
          "steps": ("neg", "frac", "empty", "nan"), "lr": ("zero", "neg"), "W0": ("wide", "nan"), "v0": ("drop", "nan")},
         _check_path, F64),
    Case("vector_field", phase_plane.vector_field, _field_args,
         {"X": ("nan", "wide"), "y": ("drop",), "s": ("drop",), "noise_std": ("neg",), "steps": ("neg", "frac"),
          "lr": ("zero",), "W0": ("wide", "nan"), "v0": ("drop",), "init": ("bogus",), "grid": ("zero", "frac", "neg")},
         _check_field, F64),
]

test_valid_inputs_give_the_reference_answer, test_a_broken_argument_raises_a_memgen_error_naming_it = \
    property_tests(CASES)


def test_estimators_take_nan_rows_as_data():
    """The time-scale phase table's inputs: no (h, seed) crossed, or every run diverged
    (an empty object-dtype column): NaN results, not errors."""
    empty = pd.DataFrame([], columns=["h", "alpha_star"])
    fit = scaling.power_law(empty["h"], empty["alpha_star"])
    assert fit.points == 0 and math.isnan(fit.exponent) and math.isnan(fit.prefactor)
    fit = scaling.power_law(pd.Series([64, 128, 256]), pd.Series([np.nan, 0.5, np.nan]))
    assert fit.points == 1 and math.isnan(fit.exponent)
    assert math.isnan(scaling.crossing(pd.Series([1.0, 2.0]), pd.Series([np.nan, np.nan])))
    assert math.isnan(scaling.crossing([], []))


@pytest.mark.parametrize("fn", ["network_path", "vector_field"])
def test_unsorted_or_fractional_steps_are_refused(fn):
    s, theta = linear.two_group_teacher(1, 1, 4.0, 1.0, 2.0)
    X, y = linear.linear_teacher(6, 2, s, theta, 0.5, seed=1)
    W0, v0 = linear.two_layer_init(2, 3, "gaussian", 0.2, 0)
    for steps in ([0, 5, 2], [0, 1.5]):
        with pytest.raises(MemgenError, match=rf"^{fn}: steps .*increasing order"):
            getattr(phase_plane, fn)(X, y, s, theta, 0.5, np.array(steps), 0.05, W0, v0)


def test_a_start_without_a_direction_is_refused():
    W0, v0 = np.ones((3, 2)), np.ones(3)
    with pytest.raises(MemgenError, match="^ode_start: b is zero"):
        theory.ode_start(W0, v0, np.zeros(2), "gaussian")
    with pytest.raises(MemgenError, match="^ode_start: v0 is zero"):
        theory.ode_start(W0, np.zeros(3), np.ones(2), "fixed")
    X = np.eye(2)
    with pytest.raises(MemgenError, match="^network_path: v0 is zero"):
        phase_plane.network_path(X, X @ np.ones(2), 1.0, 1.0, 0.0, np.array([0, 3]), 0.1, W0, np.zeros(3))
    u, z = phase_plane.network_path(X, X @ np.ones(2), 1.0, 1.0, 0.0, np.array([2, 3]), 0.1, W0, np.zeros(3))
    assert np.isfinite(u).all() and (u > 0).all()  # v0 = 0 moves after one step: only step 0 has no direction
