import math

import pytest
import torch

from memgen.dynamics import FlowDiverged, flow, momentum_step, relative_change

LAM = 2.0
X0 = torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64)


def _decay_flow(limit, **kwargs):
    def compare(g, g_new):
        r = relative_change(g, g_new)
        return r < limit, r < limit / 2

    return flow((X0.clone(), None), lambda s: LAM * s[0], lambda s, g, dt: momentum_step(s[0], s[1], g, dt, 0.0),
                compare, **kwargs)


def _max_rel_error(limit, t_end=2.0):
    err = 0.0
    for fs in _decay_flow(limit):
        exact = X0 * math.exp(-LAM * fs.t)
        err = max(err, float(((fs.state[0] - exact).norm() / exact.norm())))
        if fs.t >= t_end:
            return err, fs


def test_decay_matches_exponential_and_error_shrinks_with_limit():
    errs = {}
    for limit in (1e-4, 1e-6):
        err, last = _max_rel_error(limit)
        # forward Euler with lam*dt <= sqrt(limit): relative error <= lam t sqrt(limit) / 2
        assert err < 1.05 * LAM * last.t * math.sqrt(limit) / 2, (limit, err)
        assert err > 0.1 * LAM * 2.0 * math.sqrt(limit) / 2  # it is first-order Euler, not exact
        errs[limit] = err
    assert errs[1e-6] < errs[1e-4] / 5


def test_shrink_on_reject_and_grow_when_relaxed():
    calls = {"compare": 0, "states": []}

    def compare(old, new):
        calls["compare"] += 1
        return (False, False) if calls["compare"] == 1 else (True, True)

    def make_step(s, g, dt):
        calls["states"].append(s[0].clone())
        return momentum_step(s[0], s[1], g, dt, 0.0)

    gen = flow((X0.clone(), None), lambda s: LAM * s[0], make_step, compare, dt=1.0)
    first = next(gen)
    assert first.rejected == 1 and first.step == 1
    assert first.dt == pytest.approx(0.1) and first.t == pytest.approx(0.1) and first.next_dt == pytest.approx(0.11)
    assert torch.equal(calls["states"][0], calls["states"][1])  # retried from the same state
    torch.testing.assert_close(first.state[0], X0 * (1 - LAM * 0.1))
    second = next(gen)
    assert second.rejected == 0 and second.step == 2
    assert second.dt == pytest.approx(0.11) and second.t == pytest.approx(0.21)
    assert second.next_dt == pytest.approx(0.121)


def test_accepted_but_not_relaxed_keeps_dt():
    gen = flow(X0.clone(), lambda s: s, lambda s, g, dt: s - dt * g, lambda a, b: (True, False), dt=0.5)
    steps = [next(gen) for _ in range(3)]
    assert [s.dt for s in steps] == [0.5, 0.5, 0.5] and steps[-1].t == pytest.approx(1.5)


def test_restart_from_saved_counters_reproduces_run():
    a = _decay_flow(1e-4)
    run = [next(a) for _ in range(6)]
    mid = run[2]
    b = flow(mid.state, lambda s: LAM * s[0], lambda s, g, dt: momentum_step(s[0], s[1], g, dt, 0.0),
             lambda g, h: (relative_change(g, h) < 1e-4, relative_change(g, h) < 5e-5),
             t=mid.t, dt=mid.next_dt, step=mid.step)
    for expect in run[3:]:
        got = next(b)
        assert (got.step, got.t, got.dt) == (expect.step, expect.t, expect.dt)
        assert torch.equal(got.state[0], expect.state[0])


def test_nan_gradient_raises_flow_diverged():
    def prepare(s):
        return s if s is X0 else torch.full_like(s, float("nan"))

    def compare(g, g_new):
        r = relative_change(g, g_new)
        return r < 1e-4, r < 5e-5

    gen = flow(X0, prepare, lambda s, g, dt: s - dt * g, compare, min_dt=1e-12)
    with pytest.raises(FlowDiverged):
        next(gen)


def test_momentum_step_constant_gradient_closed_form():
    g = torch.tensor([1.5, -0.5], dtype=torch.float64)
    tau, t_end = 0.7, 3.0

    def integrate(n):
        w, v = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        dt = t_end / n
        for _ in range(n):
            w_new, v_new = momentum_step(w, v, g, dt, tau)
            assert w_new is not w and v_new is not v
            w, v = w_new, v_new
        return w, v

    errs = []
    for n in (500, 1000):
        w, v = integrate(n)
        torch.testing.assert_close(v, -g * (1 - math.exp(-t_end / tau)), rtol=1e-12, atol=1e-13)
        w_exact = -g * (t_end - tau * (1 - math.exp(-t_end / tau)))
        errs.append(float((w - w_exact).norm() / w_exact.norm()))
    assert errs[0] < 2e-3
    assert errs[1] == pytest.approx(errs[0] / 2, rel=0.05)  # first order in dt
    w, v = momentum_step(torch.ones(2, dtype=torch.float64), None, g, 0.1, 0.0)  # tau = 0: gradient flow
    torch.testing.assert_close(v, -g)
    torch.testing.assert_close(w, 1 - 0.1 * g)


class _LinearModel:
    """f(w, x) = x w as a pure function of w: forward and J^T g."""

    def forward(self, w, x):
        return x @ w, x

    def vjp(self, cache, g):
        return cache.t() @ g


def test_gd_mse_is_the_least_squares_recursion():
    """For f = X w, GD on (1/2n)||Xw - y||^2 gives w_k - w* = (I - lr X^T X / n)^k (w_0 - w*)."""
    from memgen.dynamics import gd_mse

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(20, 4, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    w0 = torch.randn(4, generator=g, dtype=torch.float64)
    w_star = torch.linalg.lstsq(X, y).solution
    M = torch.eye(4, dtype=torch.float64) - 0.3 * X.t() @ X / 20
    seen = {}
    w, f, diverged = gd_mse(_LinearModel(), w0, X, y, lr=0.3, steps=25, record=[0, 7, 25],
                            on_record=lambda k, wk, fk: seen.update({k: (wk.clone(), fk.clone())}))
    assert not diverged and sorted(seen) == [0, 7, 25]
    for k, (wk, fk) in seen.items():
        torch.testing.assert_close(wk - w_star, torch.linalg.matrix_power(M, k) @ (w0 - w_star), rtol=1e-10,
                                   atol=1e-12)
        torch.testing.assert_close(fk, X @ wk, rtol=0, atol=0)
    assert torch.equal(w, seen[25][0]) and torch.equal(f, seen[25][1])
    _, _, diverged = gd_mse(_LinearModel(), w0, X, y, lr=1e3, steps=500)  # lr far above 2 / lambda_max
    assert diverged
