"""Tests of memgen.curvature: exact HVPs, inverse HVPs (exact / CG / LiSSA), influence."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memgen import MemgenError
from memgen.curvature import (
    LissaDiverged,
    NotPositiveDefinite,
    finite_difference_hvp,
    flat_params,
    gradient,
    hessian_matrix,
    hvp,
    influence_on_test_loss,
    inverse_hvp,
    make_batch_hvps,
    make_module_hvp,
    module_gradient,
    module_hvp,
    set_flat_params,
    top_eigenvalue,
)

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The reference notebook's toy: L(w) = (y - w1 w2 x)^2 on {(x, y) = (2, 1)}, at (1, 1/3).
TOY_W = torch.tensor([1.0, 1.0 / 3.0], dtype=D)
TOY_H = torch.tensor([[8.0 / 9.0, 4.0 / 3.0], [4.0 / 3.0, 8.0]], dtype=D)
TOY_V = torch.ones(2, dtype=D)
TOY_X = torch.tensor([1.25, -1.0 / 12.0], dtype=D)  # H^{-1} (1, 1)
TOY_LMAX = float(np.linalg.eigvalsh(TOY_H.numpy())[-1])  # 8.2422...


def toy_loss(w):
    return (1.0 - w[0] * w[1] * 2.0) ** 2


def toy_hvp(u):
    return hvp(toy_loss, TOY_W, u)


def toy_matvec(u):  # the same H as a plain matrix, for long LiSSA runs
    return TOY_H @ u


def spd(n, cond, seed):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D))
    return Q @ torch.diag(torch.logspace(0, math.log10(cond), n, dtype=D)) @ Q.T


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------- HVP


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hvp_matches_explicit_hessian(seed):
    g = torch.Generator().manual_seed(seed)
    P = 7
    A = torch.randn(5, P, generator=g, dtype=D)
    B = torch.randn(P, P, generator=g, dtype=D)
    c = torch.randn(P, generator=g, dtype=D)

    def f(w):
        return torch.tanh(A @ w).pow(3).sum() + (w @ B @ w) * torch.sin(c @ w) + torch.exp(0.1 * w).sum()

    w = torch.randn(P, generator=g, dtype=D)
    v = torch.randn(P, generator=g, dtype=D)
    H = torch.autograd.functional.hessian(f, w)
    assert torch.allclose(hvp(f, w, v), H @ v, rtol=1e-12, atol=1e-12)
    assert torch.allclose(hessian_matrix(lambda u: hvp(f, w, u), w), (H + H.T) / 2, atol=1e-12)


def test_hvp_of_linear_function_is_zero():
    w = torch.randn(4, dtype=D)
    assert torch.equal(hvp(lambda x: x.sum() * 3.0, w, torch.ones(4, dtype=D)), torch.zeros(4, dtype=D))


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()


def _mse(out, y):
    return F.mse_loss(out.squeeze(-1), y)


def _explicit_module_hessian(model, x, y):
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def loss(w):
        ps = {n: c.view(s) for n, c, s in zip(names, w.split(sizes), shapes)}
        return _mse(functional_call(model, ps, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat_params(model))


def test_module_hvp_minibatch_accumulation_equals_full_batch():
    model = _mlp()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 3, generator=g, dtype=D)
    y = torch.randn(10, generator=g, dtype=D)
    P = flat_params(model).numel()
    v = torch.randn(P, generator=g, dtype=D)

    full = module_hvp(model, _mse, [(x, y)], v)
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]  # unequal sizes 3 and 7
    mini = module_hvp(model, _mse, batches, v)
    H = _explicit_module_hessian(model, x, y)
    assert torch.allclose(full, H @ v, rtol=1e-10, atol=1e-12)
    assert torch.allclose(mini, H @ v, rtol=1e-10, atol=1e-12)
    # the size weighting matters: a plain average of the two batch means is different
    naive = (module_hvp(model, _mse, batches[:1], v) + module_hvp(model, _mse, batches[1:], v)) / 2
    assert rel(naive, H @ v) > 1e-2
    # gradients are weighted the same way
    assert torch.allclose(module_gradient(model, _mse, batches), module_gradient(model, _mse, [(x, y)]), atol=1e-13)
    # a cached gradient graph gives the same products, and refuses stale parameters
    cached = make_module_hvp(model, _mse, batches, cache_graph=True)
    assert torch.allclose(cached(v), H @ v, rtol=1e-10, atol=1e-12)
    assert torch.allclose(cached(2 * v), 2 * (H @ v), rtol=1e-10, atol=1e-12)
    w0 = flat_params(model)
    set_flat_params(model, w0 + 0.1)
    with pytest.raises(RuntimeError, match="inplace"):
        cached(v)
    set_flat_params(model, w0)
    # per-batch estimates for LiSSA are unbiased: their uniform average is H
    est = torch.stack([f(v) for f in make_batch_hvps(model, _mse, batches)]).mean(0)
    assert torch.allclose(est, H @ v, rtol=1e-10, atol=1e-12)


def test_finite_difference_error_small_nonzero_and_u_shaped():
    model = _mlp(1)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 3, generator=g, dtype=D)
    y = torch.randn(12, generator=g, dtype=D)
    w0 = flat_params(model)
    v = torch.randn(w0.numel(), generator=g, dtype=D)
    v /= v.norm()
    exact = module_hvp(model, _mse, [(x, y)], v)
    assert rel(exact, _explicit_module_hessian(model, x, y) @ v) < 1e-12

    def grad_fn(w):
        set_flat_params(model, w)
        return module_gradient(model, _mse, [(x, y)])

    err = {r: rel(finite_difference_hvp(grad_fn, w0, v, r), exact) for r in (1e-2, 1e-4, 1e-5, 1e-10)}
    set_flat_params(model, w0)
    assert 1e-13 < err[1e-4] < 1e-4
    assert err[1e-5] < err[1e-2] and err[1e-5] < err[1e-10]  # truncation vs rounding


# ----------------------------------------------------------------------------- the seed toy


def test_toy_hessian_values():
    assert torch.allclose(hessian_matrix(toy_hvp, 2), TOY_H, atol=1e-14)
    # the same toy as a two-layer linear module y = w2 (w1 x)
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)).double()
    set_flat_params(model, TOY_W)
    data = [(torch.tensor([[2.0]], dtype=D), torch.tensor([1.0], dtype=D))]
    H = hessian_matrix(make_module_hvp(model, _mse, data), 2)
    assert torch.allclose(H, TOY_H, atol=1e-14)


@pytest.mark.parametrize("method,opts", [("exact", {}), ("cg", {}), ("lissa", {"scale": 10.0, "depth": 1000})])
def test_toy_inverse_hvp_all_methods(method, opts):
    x, info = inverse_hvp(toy_hvp, TOY_V, method=method, **opts)
    assert torch.allclose(x, TOY_X, atol=1e-6)
    assert info["method"] == method and info["hvps"] > 0


@pytest.mark.parametrize("scale", [20.0, 10.0, 5.0, 4.2])  # 4.2 > lambda_max/2 = 4.12: oscillates but converges
def test_toy_lissa_valid_scales_converge(scale):
    x, info = inverse_hvp(toy_matvec, TOY_V, method="lissa", scale=scale, depth=1500, record_every=10)
    assert torch.allclose(x, TOY_X, atol=1e-6)
    assert info["path"][0].shape == (150,) and info["path_steps"][:2] == [10, 20]
    assert abs(info["path"][0][-1] - TOY_X.norm()) < 1e-6
    assert info["hvps"] >= 1500 and abs(info["lambda_max"] - TOY_LMAX) < 1e-4


@pytest.mark.parametrize("scale", [1.0, 4.0, 4.1])
def test_lissa_guard_rejects_small_scale(scale):
    with pytest.raises(MemgenError, match="scale") as exc:
        inverse_hvp(toy_hvp, TOY_V, method="lissa", scale=scale)
    assert isinstance(exc.value, LissaDiverged)
    assert "4.12" in str(exc.value)  # the bound (lambda_max + damping) / 2


def test_lissa_runtime_guard_never_returns_nan():
    # a wrong lambda_max passes the pre-check; the recursion itself must notice
    with pytest.raises(LissaDiverged, match="scale"):
        inverse_hvp(toy_hvp, TOY_V, method="lissa", scale=1.0, lambda_max=1.0, depth=5000)
    # H + damping I indefinite: diverges for every scale
    with pytest.raises(LissaDiverged, match="positive definite"):
        inverse_hvp(lambda u: -toy_hvp(u), TOY_V, method="lissa")


def test_lissa_default_scale_and_iterate_path():
    x, info = inverse_hvp(toy_hvp, TOY_V, method="lissa", depth=600, record="iterate", record_every=100)
    assert info["scale"] == pytest.approx(1.1 * TOY_LMAX, rel=1e-5)
    assert torch.allclose(x, TOY_X, atol=1e-6)
    assert info["path"][0].shape == (6, 2)
    assert torch.allclose(info["path"][0][-1], x)
    # a callback can stop a repeat early (e.g. once close enough to a reference)
    x, info = inverse_hvp(toy_matvec, TOY_V, method="lissa", depth=10000, record_every=5,
                          callback=lambda j, xj: rel(xj, TOY_X) < 1e-3)
    assert rel(x, TOY_X) < 1e-3 and info["steps"][0] < 1000 and info["steps"][0] % 5 == 0


# ----------------------------------------------------------------------------- random SPD systems


def test_cg_on_ill_conditioned_spd():
    A = spd(20, 1e3, seed=5)
    v = torch.randn(20, generator=torch.Generator().manual_seed(6), dtype=D)
    x_cg, info = inverse_hvp(lambda u: A @ u, v, method="cg")
    x_ex, _ = inverse_hvp(lambda u: A @ u, v, method="exact")
    assert info["converged"] and info["residual"] <= 1e-10
    assert float((A @ x_cg - v).norm() / v.norm()) <= 1e-9
    assert info["true_residual"] <= 1e-9
    assert rel(x_cg, x_ex) < 1e-6
    assert rel(x_ex, torch.linalg.solve(A, v)) < 1e-12
    assert len(info["residual_history"]) == info["iterations"] + 1 and info["hvps"] == info["iterations"] + 1
    assert info["residual_history"][0] == 1.0 and 20 <= info["iterations"] <= 200


def test_cg_max_iter_warns_and_indefinite_raises():
    A = spd(20, 1e3, seed=5)
    v = torch.ones(20, dtype=D)
    with pytest.warns(RuntimeWarning, match="conjugate gradient"):
        _, info = inverse_hvp(lambda u: A @ u, v, method="cg", max_iter=3)
    assert not info["converged"] and info["iterations"] == 3
    with pytest.raises(NotPositiveDefinite, match="damping"):
        inverse_hvp(lambda u: -(A @ u), v, method="cg")


@pytest.mark.parametrize("method,opts", [("exact", {}), ("cg", {}), ("lissa", {"depth": 3000})])
def test_damping_solves_shifted_system(method, opts):
    lam = 0.5
    A = spd(8, 50, seed=7)
    v = torch.randn(8, generator=torch.Generator().manual_seed(8), dtype=D)
    for hvp_fn, vv in ((lambda u: A @ u, v), (toy_matvec, TOY_V)):
        M = hessian_matrix(hvp_fn, vv) + lam * torch.eye(len(vv), dtype=D)
        x, _ = inverse_hvp(hvp_fn, vv, method=method, damping=lam, **opts)
        assert float((M @ x - vv).norm() / vv.norm()) < 1e-8


def test_lissa_damping_independent_of_scale():
    lam = 0.3
    want = torch.linalg.solve(TOY_H + lam * torch.eye(2, dtype=D), TOY_V)
    xs = [inverse_hvp(toy_matvec, TOY_V, method="lissa", damping=lam, scale=s, depth=1500)[0] for s in (6.0, 25.0)]
    for x in xs:
        assert torch.allclose(x, want, atol=1e-8)
    # the seed's update h = v + (1 - damping) h - H h / s solves (H + s*damping I) x = v instead
    assert rel(want, torch.linalg.solve(TOY_H + 25.0 * lam * torch.eye(2, dtype=D), TOY_V)) > 0.5


def test_lissa_minibatch_estimates():
    # stochastic LiSSA: three unequal "batch" Hessians drawn uniformly, averaging to H
    Hs = [spd(4, 10, seed=s) * c for s, c in ((12, 0.5), (13, 1.0), (14, 1.5))]
    H = sum(Hs) / 3
    v = torch.ones(4, dtype=D)
    want = torch.linalg.solve(H, v)
    lam_b = max(float(np.linalg.eigvalsh(M.numpy())[-1]) for M in Hs)
    batch = [lambda u, M=M: M @ u for M in Hs]
    x, info = inverse_hvp(lambda u: H @ u, v, method="lissa", scale=2 * lam_b, depth=300, repeats=8,
                          batch_hvps=batch, seed=1)
    assert info["estimates"].shape == (8, 4) and info["hvps"] >= 8 * 300
    assert rel(x, want) < 0.1
    x2, _ = inverse_hvp(lambda u: H @ u, v, method="lissa", scale=2 * lam_b, depth=300, repeats=8,
                        batch_hvps=batch, seed=1)
    assert torch.equal(x, x2)  # seeded


def test_top_eigenvalue_matches_eigvalsh():
    A = spd(20, 1e3, seed=10)
    lam = top_eigenvalue(lambda u: A @ u, 20, iters=500, tol=1e-12)
    assert lam == pytest.approx(np.linalg.eigvalsh(A.numpy())[-1], rel=1e-8)
    assert top_eigenvalue(toy_hvp, TOY_V) == pytest.approx(TOY_LMAX, rel=1e-6)
    # largest magnitude, signed
    B = torch.diag(torch.tensor([1.0, 2.0, -5.0], dtype=D))
    assert top_eigenvalue(lambda u: B @ u, 3, iters=500, tol=1e-12) == pytest.approx(-5.0, rel=1e-8)


def test_inverse_hvp_rejects_bad_input():
    with pytest.raises(MemgenError, match="unknown method"):
        inverse_hvp(toy_hvp, TOY_V, method="newton")
    with pytest.raises(MemgenError, match="unexpected keyword"):
        inverse_hvp(toy_hvp, TOY_V, method="cg", depth=3)
    with pytest.raises(MemgenError, match="max_dim"):
        inverse_hvp(toy_hvp, TOY_V, method="exact", max_dim=1)


# ----------------------------------------------------------------------------- influence


def _logreg_fit(X, y, lam, theta=None):
    """Newton's method on mean logistic loss + lam/2 ||theta||^2 (closed-form derivatives)."""
    Xa = torch.cat([X, torch.ones(len(X), 1, dtype=D)], dim=1)
    theta = torch.zeros(Xa.shape[1], dtype=D) if theta is None else theta.clone()
    for _ in range(50):
        p = torch.sigmoid(Xa @ theta)
        g = Xa.T @ (p - y) / len(y) + lam * theta
        H = (Xa.T * (p * (1 - p))) @ Xa / len(y) + lam * torch.eye(len(theta), dtype=D)
        step = torch.linalg.solve(H, g)
        theta -= step
        if step.norm() < 1e-15:
            break
    return theta


def _bce(out, y):
    return F.binary_cross_entropy_with_logits(out.squeeze(-1), y)


def test_influence_matches_retraining_logistic_regression():
    g = torch.Generator().manual_seed(11)
    n, lam = 40, 0.1
    X = torch.randn(n, 3, generator=g, dtype=D)
    y = (torch.rand(n, generator=g, dtype=D) < torch.sigmoid(X @ torch.tensor([1.5, -2.0, 0.5], dtype=D) + 0.3)).to(D)
    xt = torch.tensor([[0.8, 0.9, -0.4]], dtype=D)
    yt = torch.tensor([1.0], dtype=D)

    theta = _logreg_fit(X, y, lam)
    model = nn.Linear(3, 1).double()  # flat parameters: (weight (1, 3), bias) = theta
    set_flat_params(model, theta)

    xta = torch.cat([xt, torch.ones(1, 1, dtype=D)], 1)

    def test_loss(th):
        return _bce((xta @ th).unsqueeze(-1), yt)

    inf = influence_on_test_loss(model, _bce, X, y, xt, yt, l2=lam, method="cg")
    # at the optimum the per-point gradients (incl. the l2 term) sum to zero
    assert inf.train_grads.sum(0).abs().max() < 1e-12
    assert torch.allclose(inf.removal_change, -inf.up_loss / n)

    actual = torch.tensor([float(test_loss(_logreg_fit(X[torch.arange(n) != i], y[torch.arange(n) != i], lam, theta)) -
                                 test_loss(theta)) for i in range(n)], dtype=D)
    pred = inf.removal_change
    r = np.corrcoef(pred.numpy(), actual.numpy())[0, 1]
    assert r > 0.99
    top = torch.argsort(actual.abs(), descending=True)[:5]
    # first order in 1/n: removing 1 of 40 points leaves a ~10% second-order remainder
    err = (pred[top] - actual[top]).abs() / actual[top].abs()
    assert err.mean() < 0.12 and err.max() < 0.2
    assert (torch.sign(pred[top]) == torch.sign(actual[top])).all()

    # the other solvers and mini-batch accumulation of H agree
    for method, opts in (("exact", {}), ("lissa", {"depth": 200})):
        other = influence_on_test_loss(model, _bce, X, y, xt, yt, l2=lam, method=method, batch_size=7,
                                       cache_graph=True, **opts)
        assert torch.allclose(other.up_loss, inf.up_loss, rtol=1e-6, atol=1e-9)
    # damping shifts the solve: equals the undamped solve with l2 raised by the damping
    d1 = influence_on_test_loss(model, _bce, X, y, xt, yt, l2=lam, damping=0.05, method="exact")
    H = hessian_matrix(make_module_hvp(model, _bce, [(X, y)]), 4) + (lam + 0.05) * torch.eye(4, dtype=D)
    assert torch.allclose(d1.up_loss, -inf.train_grads @ torch.linalg.solve(H, inf.test_grad), atol=1e-12)
    assert torch.allclose(inf.test_grad, gradient(test_loss, theta), atol=1e-14)
