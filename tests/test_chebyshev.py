"""memgen.chebyshev (RKC2) against closed-form solutions of linear flows."""

import math

import numpy as np
import pytest
import scipy.linalg as sl
import torch

from memgen import MemgenError
from memgen.chebyshev import MAX_STAGES, coefficients, relax, rkc_flow, stages_for, step_once
from memgen.dense_output import crossing, interpolate
from memgen.dynamics import FlowDiverged

from linear_flow import LinearFlow

# a stiff linear gradient flow: G(w) = A w, eigenvalues from 0.5 to 400
EIGS = np.geomspace(0.5, 400.0, 12)
Q = np.linalg.qr(np.random.default_rng(0).standard_normal((12, 12)))[0]
A = torch.tensor((Q * EIGS) @ Q.T)
W0 = torch.tensor(np.random.default_rng(1).standard_normal(12))


class Lin(LinearFlow):
    """The stiff flow above."""

    def __init__(self):
        super().__init__(A)


def exact(t, tau=0.0, scale=1.0):
    """w(t) of dw/dt = -A w (tau = 0) or of tau w'' + w' = -A w, w(0) = W0, w'(0) = 0
    (A / scale for ``scale``)."""
    a = A.numpy() / scale
    if tau == 0:
        return torch.from_numpy(sl.expm(-a * t) @ W0.numpy())
    n = len(W0)
    M = np.block([[np.zeros((n, n)), np.eye(n)], [-a / tau, -np.eye(n) / tau]])
    return torch.from_numpy((sl.expm(M * t) @ np.concatenate([W0.numpy(), np.zeros(n)]))[:n])


def fixed_steps(n, t_end, s, tau):
    lin = Lin()  # (on A / 40: the asymptotic regime, h lambda <= 0.25)
    lin.prepare = lambda w: (A / 40) @ w
    w = W0.clone()
    g = lin.prepare(w)
    v = -g if tau == 0 else torch.zeros_like(w)
    h = t_end / n
    for _ in range(n):
        w, v, g = step_once(w, v, g, g, h, s, tau, lin.prepare, lin.gradient, lin.valid)
    return w


@pytest.mark.parametrize("tau", [0.0, 0.02, 0.3])
def test_fixed_step_error_is_second_order(tau):
    """Halving h divides the global error by 4 (4 stages, h lambda_max = 2.5 .. 0.6)."""
    t_end, s = 2.0, 4
    errs = []
    for n in (80, 160, 320):
        errs.append(float((fixed_steps(n, t_end, s, tau) - exact(t_end, tau, 40)).norm()))
    assert 1e-8 < errs[0] < 1e-3 * float(W0.norm())
    for coarse, fine in zip(errs, errs[1:]):
        assert coarse / fine == pytest.approx(4.0, rel=0.12), errs


def test_stability_interval_covers_the_stiff_eigenvalues():
    """One step of h with s stages does not amplify any mode while h lambda <= 0.65 s^2;
    one stage fewer than stages_for gives does (here lambda = 400 dominates)."""
    h = 1.0
    s = stages_for(h, EIGS[-1])
    assert 0.65 * s**2 >= h * EIGS[-1] > 0.65 * (s - 2) ** 2
    lin = Lin()
    for stages, bounded in ((s, True), (max(2, s - 4), False)):
        amp = 0.0
        for i in range(12):  # amplification of each eigenvector
            q = torch.tensor(Q[:, i])
            w, _, _ = step_once(q, -A @ q, A @ q, None, h, stages, 0.0, lin.prepare, lin.gradient, lin.valid)
            amp = max(amp, float(w.norm()))
        assert (amp <= 1.0) == bounded, (stages, amp)


def test_coefficients_reach_the_end_of_the_step():
    for s in (2, 3, 10, MAX_STAGES):
        coef = coefficients(s)
        assert len(coef) == s and coef[-1][-1] == pytest.approx(1.0, abs=1e-12)  # c_s = 1
        c = [coef[0][1]] + [row[-1] for row in coef[1:]]
        assert all(a < b for a, b in zip(c, c[1:]))  # stage times increase
    with pytest.raises(MemgenError, match="s >= 2"):
        coefficients(1)


def test_relax_is_the_exact_velocity_for_a_linear_gradient():
    tau, d = 0.3, 0.7
    v0, ga, gb = (torch.tensor(x, dtype=torch.float64) for x in ([1.0, -2.0], [0.5, 0.1], [-0.3, 0.4]))
    # v' = -(v + ga + (gb - ga) s / d) / tau, solved by scipy
    from scipy.integrate import solve_ivp

    sol = solve_ivp(lambda s, v: -(v + ga.numpy() + (gb - ga).numpy() * s / d) / tau, (0, d), v0.numpy(),
                    rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(relax(v0, ga, gb, d, tau).numpy(), sol.y[:, -1], rtol=1e-9)
    assert torch.equal(relax(v0, ga, gb, d, 0.0), -gb)


def _adaptive(rtol, t_end, tau=0.0):
    lin = Lin()
    out, steps = None, []
    for st in rkc_flow(W0.clone(), None, lin.prepare, lin.gradient, lin.valid, tau=tau, rtol=rtol):
        steps.append(st)
        if st.t >= t_end:
            out = interpolate(st, t_end)
            break
    return float((out - exact(t_end, tau)).norm() / exact(t_end, tau).norm()), lin.calls, steps


@pytest.mark.parametrize("tau", [0.0, 1e-3])
def test_adaptive_error_follows_rtol_with_few_evaluations(tau):
    t_end = 4.0
    err3, calls3, steps = _adaptive(1e-3, t_end, tau)
    err5, calls5, _ = _adaptive(1e-5, t_end, tau)
    # error per unit step: the global error scales like rtol (two decades: ~100x)
    assert err3 < 1e-3 and 50 < err3 / err5 < 200, (err3, err5)
    # forward Euler: stable for h < 2 / 400, and its error on the slowest mode
    # (lambda 0.5) is lambda^2 h t / 2 relative: err3 takes lambda^2 t^2 / (2 err3) steps
    euler = max(t_end * EIGS[-1] / 2, EIGS[0] ** 2 * t_end**2 / (2 * err3))
    assert calls3 < euler / 3 and max(st.stages for st in steps) > 4, (calls3, euler)
    assert calls5 < calls3 * 10  # rtol / 100 costs about 7x (h ~ rtol^(1/2))


def test_dense_output_between_steps_is_third_order_accurate():
    _, _, steps = _adaptive(1e-6, 2.0)
    st = steps[len(steps) // 2]
    mid = 0.5 * (st.t0 + st.t)
    err = float((interpolate(st, mid) - exact(mid)).norm())
    end_err = float((st.w - exact(st.t)).norm())
    assert err < 10 * end_err + 1e-9
    assert torch.equal(interpolate(st, st.t), st.w) and torch.equal(interpolate(st, st.t0), st.w0)


def test_crossing_finds_the_root_to_the_tolerance():
    calls = []

    def fn(t):
        calls.append(t)
        return math.exp(t) - 3.0, t

    t, payload = crossing(fn, 0.0, -2.0, 2.0, math.exp(2) - 3, lambda x: x >= 0)
    assert t == pytest.approx(math.log(3.0), rel=1e-10) and t >= math.log(3.0) and payload == t
    assert len(calls) < 20
    with pytest.raises(MemgenError, match="event false at a"):
        crossing(fn, 0.0, 1.0, 2.0, 2.0, lambda x: x >= 0)


def test_non_finite_gradient_raises_flow_diverged():
    """Every gradient after the initial one is NaN: steps are retried with h / 10 until
    h < min_dt."""
    calls = {"n": 0}

    def prepare(w):
        calls["n"] += 1
        return A @ w if calls["n"] == 1 else torch.full_like(w, math.nan)

    gen = rkc_flow(W0.clone(), None, prepare, Lin.gradient, Lin.valid, tau=0.0, rtol=1e-3, dt=1.0, min_dt=1e-6)
    with pytest.raises(FlowDiverged, match="below 1e-06"):
        next(gen)
    assert 7 <= calls["n"] < 60  # one power iteration probe, then one NaN stage per trial h = 1 .. 1e-6


@pytest.mark.parametrize("kw,match", [(dict(rtol=0.0), "flow.rtol"), (dict(rtol=1.0), "flow.rtol"),
                                      (dict(tau=-1.0), "flow.tau")])
def test_bad_tolerances_are_refused(kw, match):
    args = dict(tau=0.0, rtol=1e-3) | kw
    with pytest.raises(MemgenError, match=match):
        next(rkc_flow(W0.clone(), None, Lin().prepare, Lin.gradient, Lin.valid, **args))
