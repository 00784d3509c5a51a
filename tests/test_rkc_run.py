"""training.run with flow.method "rkc": closed forms, a fine reference, euler at equal
accuracy, margin times, checkpoints, limits, divergence and resume."""

import math

import numpy as np
import pytest
import scipy.linalg as sl
import torch
from scipy.integrate import solve_ivp

from conftest import count_prepare, random_spd
from memgen import MemgenError, training
from memgen.data import sparse_parity
from memgen.losses import Loss
from memgen.models import FC
from memgen.training import FlowConfig, KernelProblem, NetworkProblem

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _kernel(alpha=7.0, tau=0.0, n=8, **kw):
    K = torch.tensor(random_spd(n, seed=0))
    rng = np.random.default_rng(1)
    y = torch.tensor(np.sign(rng.standard_normal(n)))
    K_test = torch.tensor(rng.standard_normal((5, n)))
    cfg = FlowConfig(alpha=alpha, loss=Loss("mse"), method="rkc", tau=tau, **kw)
    return KernelProblem(K, K_test, y, cfg), cfg


def _kernel_exact(problem, t, tau):
    """F_train(t) of the frozen-kernel MSE flow: c' = -coef (K c - y) (tau = 0), or
    tau c'' + c' = -coef (K c - y), from c = c' = 0."""
    K, y, coef = problem.K.numpy(), problem.y.numpy(), problem.coef
    n = len(y)
    if tau == 0:
        return (np.eye(n) - sl.expm(-coef * K * t)) @ y
    M = np.zeros((2 * n + 1, 2 * n + 1))  # d/dt (c, v, 1)
    M[:n, n:2 * n] = np.eye(n)
    M[n:2 * n, :n] = -coef * K / tau
    M[n:2 * n, n:2 * n] = -np.eye(n) / tau
    M[n:2 * n, -1] = coef * y / tau
    x = sl.expm(M * t) @ np.concatenate([np.zeros(2 * n), [1.0]])
    return K @ x[:n]


@pytest.mark.parametrize("tau", [0.0, 0.05])
def test_frozen_kernel_mse_matches_closed_form_at_second_order(tau):
    errs = []
    for rtol in (1e-3, 1e-4):
        problem, cfg = _kernel(tau=tau, rtol=rtol, max_time=4.0)
        res = training.run(problem, cfg, torch.ones(5, dtype=torch.float64))
        exact = np.array([_kernel_exact(problem, t, tau) for t in res.records["t"]])
        errs.append(float(np.max(np.abs(res.F_train[1:] - exact[1:]).max(1) / np.abs(exact[1:]).max(1))))
        assert res.status["stop_reason"] == "max_time" and res.records["t"][-1] == 4.0
    assert errs[0] < 2e-3 and 4 < errs[0] / errs[1] < 25, errs  # global error ~ rtol
    np.testing.assert_allclose(res.F_test, res.F_train @ np.linalg.solve(problem.K.numpy(), problem.K_test.numpy().T),
                               rtol=1e-9, atol=1e-12)


def test_checkpoints_are_log_spaced_in_time_from_the_first_step():
    problem, cfg = _kernel(max_time=50.0, checkpoints_per_decade=10.0)
    res = training.run(problem, cfg, torch.ones(5, dtype=torch.float64))
    t = res.records["t"]
    assert t[0] == 0.0 and t[-1] == 50.0
    ratios = t[2:-1] / t[1:-2]
    np.testing.assert_allclose(ratios, 10 ** 0.1, rtol=1e-12)
    assert len(t) - 2 == math.floor(10 * math.log10(50.0 / t[1])) + 1  # t_1 10^(k/10) < 50, k = 0, 1, ...
    assert np.all(np.diff(res.records["step"]) >= 0)  # a step may hold several checkpoints


def _tiny(alpha, tau=0.0, loss=Loss(), **kw):
    ds = sparse_parity(12, 8, 2, 5, seed=0)
    model = FC(5, 16, 1, normalize=True, seed=0)
    cfg = FlowConfig(alpha=alpha, loss=loss, tau=tau, **kw)
    return NetworkProblem(model.flat(), model.flat_parameters(), ds.x_train, ds.y_train, ds.x_test, cfg), cfg, ds


def _fine(alpha, tau):
    """The same flow by DOP853 at rtol 1e-10 (dense), with t_fit from its margin event."""
    problem, cfg, ds = _tiny(alpha, tau)
    P = problem.w0.numel()

    def rhs(t, x):
        w = torch.from_numpy(x[:P])
        g = problem.prepare((w, None)).grad.numpy()
        return -g if tau == 0 else np.concatenate([x[P:], -(x[P:] + g) / tau])

    def margin(t, x):
        return float(problem.margins(torch.from_numpy(x[:P])).min()) - 1

    margin.terminal, margin.direction = True, 1
    x0 = problem.w0.numpy() if tau == 0 else np.concatenate([problem.w0.numpy(), np.zeros(P)])
    sol = solve_ivp(rhs, (0, 1e9), x0, method="DOP853", rtol=1e-10, atol=1e-12, dense_output=True, events=margin)
    return problem, sol, float(sol.t_events[0][0])


def _errors(problem, sol, t_fit_ref, res):
    """Largest relative sup-norm error of F_train / F_test over the checkpoints, and of t_fit."""
    P = problem.w0.numel()
    err = 0.0
    for t, ftr, fte in zip(res.records["t"][1:], res.F_train[1:], res.F_test[1:]):
        w = torch.from_numpy(sol.sol(min(t, t_fit_ref))[:P])
        rtr = (problem.margins(w) * problem.y).numpy()
        rte = problem.test_outputs((w, None)).numpy()
        err = max(err, np.abs(ftr - rtr).max() / np.abs(rtr).max(), np.abs(fte - rte).max() / np.abs(rte).max())
    return err, abs(res.status["t_fit"] / t_fit_ref - 1)


@pytest.mark.parametrize("tau", [0.0, 3.0])
def test_network_rkc_beats_euler_at_equal_accuracy(tau):
    """Both against DOP853 at rtol 1e-10: rkc (rtol 1e-3) is at least as accurate as
    euler (max_dgrad 1e-4, max_dout 0.1) on the trajectory and 10x on t_fit, with fewer
    gradient evaluations (on this tiny, barely stiff problem; benchmarks/flow.py measures
    paper-size runs)."""
    ref_problem, sol, t_fit = _fine(1.0, tau)
    out = {}
    for method in ("euler", "rkc"):
        problem, cfg, ds = _tiny(1.0, tau, method=method, max_dgrad=1e-4)
        calls = count_prepare(problem)
        res = training.run(problem, cfg, ds.y_test)
        assert res.status["converged"]
        out[method] = (*_errors(ref_problem, sol, t_fit, res), calls["n"])
    (e_eu, t_eu, n_eu), (e_rkc, t_rkc, n_rkc) = out["euler"], out["rkc"]
    assert e_rkc <= e_eu and t_rkc * 10 <= t_eu and t_rkc < 1e-4, out
    assert n_rkc < n_eu, out


def test_margin_times_are_located_inside_the_step():
    problem, cfg, ds = _tiny(1.0, method="rkc")
    res = training.run(problem, cfg, ds.y_test)
    s = res.status
    assert s["converged"] and s["stop_reason"] == "converged"
    assert res.records["t"][-1] == s["t_fit"] and res.records["step"][-1] == s["step_fit"]
    assert 1.0 <= res.records["margin_min"][-1] < 1 + 1e-8  # the crossing itself, not a step end
    assert (res.F_train[-1] * ds.y_train.numpy()).min() >= 1
    np.testing.assert_array_equal(res.final["w_final"].shape, problem.w0.shape)
    z = problem.margins(torch.from_numpy(res.final["w_final"]))
    assert float(z.min()) == res.records["margin_min"][-1]
    assert 0 < s["t_memorize"] < s["t_fit"] and 0 < s["step_memorize"] <= s["step_fit"]
    assert res.records["train_err"][-1] == 0
    # the memorization crossing: the interpolated margins there are ~0
    ref_problem, sol, t_fit = _fine(1.0, 0.0)
    assert s["t_fit"] == pytest.approx(t_fit, rel=1e-3)
    w_mem = torch.from_numpy(sol.sol(s["t_memorize"])[:problem.w0.numel()])
    assert abs(float(ref_problem.margins(w_mem).min())) < 1e-3


def test_max_steps_stops_at_the_end_of_a_step():
    problem, cfg, ds = _tiny(1.0, method="rkc", max_steps=3)
    res = training.run(problem, cfg, ds.y_test)
    assert res.status["stop_reason"] == "max_steps" and res.records["step"][-1] == 3


@pytest.mark.parametrize("method", ["euler", "rkc"])
def test_float32_gradients_follow_the_float64_run(method):
    """gradient_dtype float32: the state stays float64, the outputs agree with the float64
    run far below the integrators' own errors (1e-3), margin times too."""
    runs = {}
    for dtype in ("same", "float32"):
        problem, cfg, ds = _tiny(1.0, method=method, gradient_dtype=dtype)
        runs[dtype] = training.run(problem, cfg, ds.y_test)
        assert runs[dtype].final["w_final"].dtype == np.float64 and runs[dtype].F_train.dtype == np.float64
    a, b = runs["same"], runs["float32"]
    assert problem.eval_dtype == torch.float32 and problem.x.dtype == torch.float32
    if method == "rkc":  # same checkpoint times (log grid from a first step of the same size)
        np.testing.assert_allclose(b.records["t"], a.records["t"], rtol=1e-4)
        assert np.abs(b.F_train - a.F_train).max() < 1e-4 * np.abs(a.F_train).max()
    assert abs(b.status["t_fit"] / a.status["t_fit"] - 1) < 1e-4
    assert 0 < np.abs(b.F_train[-1] - a.F_train[-1]).max() < 1e-4 * np.abs(a.F_train[-1]).max()


@pytest.mark.parametrize("kw,match", [(dict(method="rk4"), "flow.method: unknown 'rk4'; allowed: euler, rkc"),
                                      (dict(gradient_dtype="half"), "flow.gradient_dtype"),
                                      (dict(rtol=0.0), "flow.rtol"), (dict(rtol=2.0), "flow.rtol"),
                                      (dict(checkpoints_per_decade=0.0), "flow.checkpoints_per_decade"),
                                      (dict(tau=-0.1), "flow.tau"), (dict(deflate="yes"), "flow.deflate")])
def test_flow_config_checks_method_and_tolerances(kw, match):
    with pytest.raises(MemgenError, match=match):
        FlowConfig(alpha=1.0, **kw)
