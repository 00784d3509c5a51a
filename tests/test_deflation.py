"""The deflated RKC2 step of memgen.chebyshev (module doc, "Deflation") against closed forms:
its stability function, its order, and an adaptive run on a flow with one outlier
eigenvalue, as the network's Hessian has at paper size."""

import math

import numpy as np
import pytest
import scipy.linalg as sl
import torch

from conftest import random_spd
from linear_flow import LinearFlow
from memgen import MemgenError, training
from memgen.chebyshev import (Memory, error_estimate, implicit_weight, rkc_flow, stages_for, step_deflated,
                              step_once)
from memgen.dense_output import interpolate
from memgen.losses import Loss
from memgen.training import FlowConfig, KernelProblem

# G(w) = A w: a bulk of eigenvalues 0.5 .. 20 and one outlier, 2000 (100x the bulk)
BULK = np.geomspace(0.5, 20.0, 11)
EIGS = np.concatenate([BULK, [2000.0]])
Q = np.linalg.qr(np.random.default_rng(3).standard_normal((12, 12)))[0]
A = torch.tensor((Q * EIGS) @ Q.T)
U = torch.tensor(Q[:, -1])  # the outlier's eigenvector
W0 = torch.tensor(np.random.default_rng(4).standard_normal(12))


class Lin(LinearFlow):
    def __init__(self, a=A):
        super().__init__(a)


def exact(t, a=A):
    return torch.from_numpy(sl.expm(-a.numpy() * t) @ W0.numpy())


def scalar_r(z_e: float, z_i: float, s: int) -> float:
    """R(z_E, z_I): one deflated step of h = 1 on dw/dt = (z_E + z_I) w from w = 1, with
    z_I = -lam the deflated part."""
    lin = Lin(torch.tensor([[-(z_e + z_i)]], dtype=torch.float64))
    one = torch.ones(1, dtype=torch.float64)
    w, _, _ = step_deflated(one, -(lin.a @ one), 1.0, s, -z_i, one, lin.prepare, lin.gradient, lin.valid)
    return float(w[0])


@pytest.mark.parametrize("s", [3, 4, 7, 20, 100])
def test_stability_function_is_second_order_and_bounded(s):
    """R(0, z) = e^z + O(z^3) (the implicit weight's purpose), R(z, 0) = RKC2's, and
    |R| <= 1 for z_E on RKC2's interval [-0.65 (s^2 - 1), 0] and every z_I <= 0."""
    for z in (-1e-2, -2e-2):
        assert abs(scalar_r(0.0, z, s) - math.exp(z)) < 0.3 * abs(z) ** 3
        assert abs(scalar_r(z, 0.0, s) - math.exp(z)) < 0.3 * abs(z) ** 3
    worst = max(abs(scalar_r(z_e, z_i, s)) for z_e in np.linspace(-0.65 * (s * s - 1), 0, 25)
                for z_i in -np.geomspace(1e-3, 1e8, 45))
    assert worst <= 1.0 + 1e-9, worst
    assert 0 < implicit_weight(s) < 1


def test_implicit_weight_needs_three_stages():
    with pytest.raises(MemgenError, match="s >= 3"):
        implicit_weight(2)


def fixed(n, t_end, s, lam, u, a):
    lin = Lin(a)
    w = W0.clone()
    v = -lin.prepare(w)
    for _ in range(n):
        w, v, _ = step_deflated(w, v, t_end / n, s, lam, u, lin.prepare, lin.gradient, lin.valid)
    return w


def test_fixed_step_error_is_second_order_for_any_split():
    """The split -G = F_E + F_I is exact for any (lam, u): on a non-stiff flow (the bulk
    alone, and u a random direction, so the two parts do not commute) halving h divides
    the global error by 4."""
    a = torch.tensor((Q[:, :-1] * BULK) @ Q[:, :-1].T) / 10
    u = torch.tensor(np.random.default_rng(5).standard_normal(12))
    u /= u.norm()
    errs = [float((fixed(n, 2.0, 4, 3.0, u, a) - exact(2.0, a)).norm()) for n in (40, 80, 160)]
    for coarse, fine in zip(errs, errs[1:]):
        assert coarse / fine == pytest.approx(4.0, rel=0.15), errs


def plain(n, t_end, s):
    lin, x = Lin(), W0.clone()
    g = lin.prepare(x)
    for _ in range(n):
        x, _, g = step_once(x, -g, g, g, t_end / n, s, 0.0, lin.prepare, lin.gradient, lin.valid)
    return x


def test_outlier_is_stable_deflated_and_unstable_plain():
    """h = 0.5 with stages for the bulk (5; h lam_outlier = 1000, 60x beyond their
    interval): the deflated step is as accurate as plain RKC2 with stages for the outlier
    (44), and the same 5 stages without deflation blow up."""
    s = stages_for(0.5, 1.2 * BULK[-1])
    s_outlier = stages_for(0.5, 1.2 * EIGS[-1])
    assert (s, s_outlier) == (5, 44)
    err = float((fixed(40, 20.0, s, float(EIGS[-1]), U, A) - exact(20.0)).norm())
    err_plain = float((plain(40, 20.0, s_outlier) - exact(20.0)).norm())
    assert err < 3 * err_plain and err < 2e-2 * float(W0.norm()), (err, err_plain)
    assert float(plain(5, 2.5, s).norm()) > 1e3 * float(W0.norm())


@pytest.mark.parametrize("h", [0.05, 0.5, 2.0])
def test_filtered_estimate_matches_the_outliers_true_error(h):
    """One deflated step from W0 at h lam = 100, 1000, 4000: the error estimate's component
    along the outlier (the estimate is linear, so it is the estimate of the projected
    states) is 1-3x the step's true error there (against the matrix exponential); the raw
    RKC estimate overstates it over 100-fold and would reject the step."""
    lam = float(EIGS[-1])
    lin = Lin()
    w, v = W0.clone(), -(A @ W0)
    w_new, v_new, _ = step_deflated(w, v, h, max(3, stages_for(h, 1.2 * BULK[-1])), lam, U, lin.prepare,
                                    lin.gradient, lin.valid)
    true = abs(float(U @ (w_new - exact(h))))

    def along_u(filtered):
        p = [U * float(U @ x) for x in (w, v, w_new, v_new)]
        return error_estimate(*p, h, (lam, U) if filtered else None)

    assert 1.0 <= along_u(True) / true <= 3.0, (along_u(True), true)
    assert along_u(False) / true > 100, (along_u(False), true)


def adaptive(deflate, t_end=8.0, rtol=1e-4, stop=None):
    """(w at t_end, gradient evaluations, steps, lam after each step)."""
    lin, steps, lams = Lin(), [], []
    for st in rkc_flow(W0.clone(), None, lin.prepare, lin.gradient, lin.valid, tau=0.0, rtol=rtol, deflate=deflate):
        steps.append(st)
        lams.append(st.memory.lam)  # (the generator yields its live Memory)
        if st.t >= t_end or (stop is not None and st.step == stop):
            break
    return interpolate(steps[-1], min(t_end, steps[-1].t)), lin.calls, steps, lams


def test_adaptive_run_deflates_the_outlier_and_saves_evaluations():
    ref = exact(8.0)
    w_d, calls_d, _, lams = adaptive(True)
    w_p, calls_p, _, _ = adaptive(False)
    err_d, err_p = (float((w - ref).norm() / ref.norm()) for w in (w_d, w_p))
    assert err_d < 1e-3 and err_p < 1e-3, (err_d, err_p)
    lam = [x for x in lams if x > 0]
    assert lam and all(abs(x / EIGS[-1] - 1) < 0.05 for x in lam)  # the outlier found by the power iteration
    assert calls_d < 0.6 * calls_p, (calls_d, calls_p)


def test_resuming_from_memory_continues_bit_identically():
    """A run restarted from a deflated step's state and Memory (through the resume file's
    parts) takes the same steps as the uninterrupted one."""
    _, _, full, lams = adaptive(True, t_end=math.inf, stop=650)
    k = next(i for i, x in enumerate(lams) if x > 0) + 3  # a few steps into deflation
    _, _, upto, _ = adaptive(True, t_end=math.inf, stop=k + 1)
    last = upto[-1]
    assert last.memory.lam > 0 and last.step == k + 1
    arrays, attrs = last.memory.resume_parts()
    memory = Memory.from_resume({k: v.clone() for k, v in arrays.items()}, dict(attrs))
    lin = Lin()
    again = rkc_flow(last.w.clone(), None, lin.prepare, lin.gradient, lin.valid, tau=0.0, rtol=1e-4, t=last.t,
                     dt=last.next_dt, step=last.step, memory=memory)
    n = 0
    for ref, st in zip(full[k + 1:], again):
        assert torch.equal(ref.w, st.w) and ref.t == st.t and ref.stages == st.stages
        n += 1
    assert n == len(full) - k - 1 > 50


def test_frozen_kernel_runs_are_never_deflated(monkeypatch):
    """The frozen kernel's Jacobian in c, -coef diag(l'') K, is not symmetric, so rkc does
    not deflate it (memgen.training, symmetric_jacobian): flow.deflate true and false give
    the same run. With the guard lifted the same problem is deflated (its mean mode is
    100x the rest), so the equality is not vacuous."""
    n, rng = 40, np.random.default_rng(0)
    K = torch.tensor(random_spd(n, seed=0) / n + 20.0 * np.ones((n, n)) / n)
    y, K_test = torch.tensor(np.sign(rng.standard_normal(n))), torch.tensor(rng.standard_normal((5, n)))

    def fit(deflate):
        cfg = FlowConfig(alpha=10.0, loss=Loss("soft_hinge", beta=20.0), method="rkc", deflate=deflate)
        res = training.run(KernelProblem(K, K_test, y, cfg), cfg, torch.ones(5, dtype=torch.float64))
        assert res.status["stop_reason"] == "converged"
        return res.status["step_fit"], res.F_train

    plain = fit(False)
    on = fit(True)
    assert on[0] == plain[0] and np.array_equal(on[1], plain[1])
    monkeypatch.setattr(KernelProblem, "symmetric_jacobian", True)
    assert fit(True)[0] != plain[0]
