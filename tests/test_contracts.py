"""The cases of issue 18 ("no silent wrong answer from a public function"), one test
each, and the library's dtype policy (README, "Library conventions")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from memgen import MemgenError, theory
from memgen.curvature import LissaDiverged, hvp, inverse_hvp
from memgen.kernels import analytic_kernels, empirical_ntk, kernel_regression
from memgen.models import FC

D = torch.float64


def _quadratic(P=3):
    A = torch.diag(torch.arange(1.0, P + 1, dtype=D))
    return (lambda w: 0.5 * w @ (A @ w)), A


def test_hvp_refuses_a_column_or_scalar_v():
    fn, A = _quadratic()
    w = torch.ones(3, dtype=D)
    assert torch.equal(hvp(fn, w, torch.ones(3, dtype=D)), A @ torch.ones(3, dtype=D))
    for v in (torch.ones(3, 1, dtype=D), torch.tensor(1.0, dtype=D), torch.ones(4, dtype=D)):
        with pytest.raises(MemgenError, match=r"hvp: v is .* expected shape \(3,\)"):
            hvp(fn, w, v)


def test_kernel_regression_refuses_a_non_symmetric_k():
    K = torch.tensor([[2.0, 0.5], [0.0, 1.0]], dtype=D)
    with pytest.raises(MemgenError, match="k_train_train is .*max |K - K^T| = 0.5.*symmetric"):
        kernel_regression(K, K, torch.ones(2, dtype=D))
    Ks = (K + K.T) / 2  # symmetric: the regression itself
    out = kernel_regression(Ks, Ks, torch.ones(2, dtype=D))
    assert torch.allclose(out, torch.ones(2, dtype=D))


def test_analytic_kernels_refuse_a_1d_input_and_zero_features():
    with pytest.raises(MemgenError, match=r"x1 is a float64 tensor of shape \(5,\).*x\[None\]"):
        analytic_kernels(torch.ones(5, dtype=D))
    with pytest.raises(MemgenError, match=r"x1 is a float64 tensor of shape \(4, 0\).*d >= 1 features"):
        analytic_kernels(torch.ones(4, 0, dtype=D))
    with pytest.raises(MemgenError, match=r"x2 is .*\(3, 2\).*5 features"):
        analytic_kernels(torch.ones(4, 5, dtype=D), torch.ones(3, 2, dtype=D))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-15), (torch.float32, 1e-6)])
def test_analytic_kernel_diagonal_is_exact(dtype, tol):
    # cos t = 1 on the diagonal: Sigma_{l+1}(x, x) = Sigma_l / 2, Theta_{l+1} = Sigma_{l+1} + Theta_l / 2 (relu)
    x = torch.randn(64, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nngp, ntk = analytic_kernels(x.to(dtype), None, depth=3)
    s = theta = (x * x).sum(1) / 7
    for _ in range(3):
        s = s / 2
        theta = s + theta / 2
    assert float(((ntk.diagonal().double() - theta) / theta).abs().max()) <= tol
    assert float(((nngp.diagonal().double() - s) / s).abs().max()) <= tol


def test_linear_gd_risk_gives_a_zero_scale_feature_its_own_finite_term():
    s, theta = np.array([1.0, 0.0, 0.5]), np.array([1.0, 2.0, 3.0])
    R = theory.linear_gd_risk(10, s, theta, 0.7, 20, 0.5)
    assert np.isfinite(R).all()
    # the s_i = 0 feature never moves and weighs nothing in the risk: the risk of the others
    np.testing.assert_allclose(R, theory.linear_gd_risk(10, s[[0, 2]], theta[[0, 2]], 0.7, 20, 0.5), rtol=1e-15)
    E = theory.linear_gd_weight_error(10, s, theta, 0.7, 20, 0.5)
    np.testing.assert_array_equal(E[:, 1], np.full(11, 4.0))  # (theta - w0)^2 exactly


@pytest.mark.parametrize("kwargs,match", [
    ({"n": 0}, "n is 0; expected an integer >= 1"),
    ({"n": -5}, "n is -5"),
    ({"n": 2.5}, "n is float 2.5"),
    ({"steps": 2.5}, "steps is float 2.5; expected an integer"),
    ({"steps": -1}, "steps is -1"),
    ({"steps": np.array([0.0, -2.0])}, "steps is .* entry -2"),
    ({"steps": np.array([0.5]), "lr": 3.0}, "steps is fractional while some lr_i s_i\\^2 > 1"),
])
def test_linear_gd_risk_refuses_bad_n_and_steps(kwargs, match):
    args = {"steps": 5, "s": np.ones(2), "theta": np.ones(2), "noise_std": 1.0, "n": 10, "lr": 0.5} | kwargs
    with pytest.raises(MemgenError, match=match):
        theory.linear_gd_risk(**args)


def test_linear_gd_risk_fractional_steps_where_defined():
    # every lr s^2 <= 1: (1 - lr s^2)^k is defined for real k (documented interpolation)
    R = theory.linear_gd_risk(np.array([0.0, 0.5, 1.0]), np.ones(2), np.ones(2), 1.0, 10, 0.5)
    assert np.isfinite(R).all() and R[0] > R[1] > R[2]


@pytest.mark.parametrize("method", ["exact", "cg", "lissa"])
def test_inverse_hvp_blames_nan_in_v(method):
    _, A = _quadratic()
    v = torch.tensor([1.0, math.nan, 2.0], dtype=D)
    with pytest.raises(MemgenError, match="v is .* with 1 non-finite value.*expected finite values") as exc:
        inverse_hvp(lambda u: A @ u, v, method=method)
    assert "positive definite" not in str(exc.value) and "diverge" not in str(exc.value)


@pytest.mark.parametrize("method", ["exact", "cg", "lissa"])
def test_solvers_blame_a_nan_from_hvp_fn(method):
    with pytest.raises(MemgenError, match="the output of hvp_fn is non-finite") as exc:
        opts = {"lambda_max": 1.0} if method == "lissa" else {}  # past the power iteration (it blames hvp_fn too)
        inverse_hvp(lambda u: u * math.nan, torch.ones(3, dtype=D), method=method, **opts)
    assert not isinstance(exc.value, LissaDiverged)


def test_lissa_on_an_indefinite_hessian_raises_at_its_default_depth():
    # eigenvalues 5, 1, -0.05 at damping 0: lambda_max = 5 passes the scale check, and the
    # old growth guard let ||x|| reach ~1e5 within the default depth 1000
    H = torch.diag(torch.tensor([5.0, 1.0, -0.05], dtype=D))
    with pytest.raises(LissaDiverged, match="increment .* grew .*not positive definite") as exc:
        inverse_hvp(lambda u: H @ u, torch.ones(3, dtype=D), method="lissa")
    step = int(str(exc.value).split("at step ")[1].split()[0])
    assert step < 100  # caught early, long before the iterates get large
    # positive definite (even ill-conditioned, oscillating scale): no false alarm
    Hp = torch.diag(torch.tensor([5.0, 1.0, 1e-3], dtype=D))
    for scale in (None, 3.0):
        x, _ = inverse_hvp(lambda u: Hp @ u, torch.ones(3, dtype=D), method="lissa", scale=scale, depth=3000)
        assert torch.isfinite(x).all()


def test_dtype_policy_empirical_ntk_both_paths():
    net = FC(3, 4, 2, activation="tanh", seed=0, dtype=torch.float64)
    x32 = torch.randn(5, 3, generator=torch.Generator().manual_seed(1)).to(torch.float32)
    Ks, Kg = empirical_ntk(net, x32, path="structured"), empirical_ntk(net, x32, path="generic")
    assert Ks.dtype == Kg.dtype == torch.float64  # the parameters' dtype, x converted on both paths
    assert torch.allclose(Ks, Kg, rtol=1e-10, atol=1e-12)
    assert torch.allclose(Ks, empirical_ntk(net, x32.double()), rtol=0, atol=0)
    net32 = FC(3, 4, 2, activation="tanh", seed=0, dtype=torch.float32)
    assert empirical_ntk(net32, x32.double(), path="generic").dtype == torch.float32


@pytest.mark.parametrize("v_dtype,h_dtype", [(torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_dtype_policy_inverse_hvp_methods_agree(v_dtype, h_dtype):
    A = torch.diag(torch.tensor([1.0, 2.0, 1.5], dtype=h_dtype))
    v = torch.ones(3, dtype=v_dtype)
    xs = [inverse_hvp(lambda u: A @ u.to(h_dtype), v, method=m, depth=300)[0] if m == "lissa" else
          inverse_hvp(lambda u: A @ u.to(h_dtype), v, method=m)[0] for m in ("exact", "cg", "lissa")]
    assert {x.dtype for x in xs} == {v_dtype}  # the reference: v's dtype, every method
    for x in xs:
        assert torch.allclose(x.double(), torch.tensor([1.0, 0.5, 1 / 1.5], dtype=D), atol=1e-5)


@pytest.mark.parametrize("call,match", [
    (lambda: empirical_ntk(FC(3, 4, 1, seed=0), torch.ones(0, 3, dtype=D)), "empirical_ntk: x1 is .*n >= 1 examples"),
    (lambda: analytic_kernels(torch.ones(0, 3, dtype=D)), "analytic_kernels: x1 is .*n >= 1"),
    (lambda: inverse_hvp(lambda u: u, torch.ones(0, dtype=D)), "inverse_hvp: v is .*at least one entry"),
    (lambda: inverse_hvp(lambda u: u, torch.ones(2, dtype=D), method="lissa", record_every=0),
     "lissa_solve: record_every is 0"),
    (lambda: kernel_regression(torch.ones(0, 0, dtype=D), torch.ones(1, 0, dtype=D), torch.ones(0, dtype=D)),
     "kernel_regression: k_train_train is .*at least one entry"),
    (lambda: theory.linear_gd_risk(3, np.ones(0), np.ones(0), 1.0, 5, 0.1), "linear_gd_risk: s is .*at least one entry"),
    (lambda: theory.local_extrema(np.ones((2, 2))), "local_extrema: curve is"),
    (lambda: __import__("memgen.curvature", fromlist=["x"]).module_gradient(nn.Linear(2, 1).double(), nn.MSELoss(), []),
     "module_gradient: batches is empty"),
])
def test_empty_inputs_fail_with_a_named_error(call, match):
    with pytest.raises(MemgenError, match=match):
        call()


def test_population_risk_of_diverged_weights_is_non_finite_not_an_error():
    """A diverged run's weights (inf, NaN) give a non-finite risk, which the caller records
    as diverged; finite weights give the closed form sum s^2 (w - theta)^2 + sigma^2."""
    from memgen.linear import population_risk

    s, theta = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    w = torch.tensor([[0.0, 0.0], [math.inf, 0.0], [math.nan, 1.0]], dtype=torch.float64)
    r = population_risk(w, s, theta, 0.5)
    assert float(r[0]) == pytest.approx(0.25 + 4.0 + 0.25)
    assert math.isinf(float(r[1])) and math.isnan(float(r[2]))
