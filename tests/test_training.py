import numpy as np
import pytest
import scipy.linalg as sl
import torch

from conftest import count_prepare, random_spd
from memgen import training
from memgen.data import sparse_parity
from memgen.kernels import empirical_ntk
from memgen.losses import Loss
from memgen.models import FC
from memgen.training import FlowConfig, KernelProblem, NetworkProblem


def _kernel_run(alpha, normalization, max_dgrad, n=8):
    K = random_spd(n, seed=0)
    rng = np.random.default_rng(1)
    y = np.sign(rng.standard_normal(n))
    K_test = rng.standard_normal((5, n))
    cfg = FlowConfig(alpha=alpha, loss=Loss("mse"), normalization=normalization, max_dgrad=max_dgrad, max_time=4.0)
    res = training.run(KernelProblem(torch.tensor(K), torch.tensor(K_test), torch.tensor(y), cfg), cfg,
                       torch.ones(5, dtype=torch.float64))
    rate = alpha if normalization == "code" else 1.0  # code: objective is alpha x the article one
    exact = np.array([(np.eye(n) - sl.expm(-rate * K * t / n)) @ y for t in res.records["t"]])
    err = np.linalg.norm(res.F_train[1:] - exact[1:], axis=1) / np.linalg.norm(exact[1:], axis=1)
    return res, K, K_test, y, err.max()


@pytest.mark.parametrize("alpha,normalization", [(7.0, "article"), (3.0, "code")])
def test_frozen_kernel_mse_matches_closed_form(alpha, normalization):
    res, K, K_test, y, err_fine = _kernel_run(alpha, normalization, 1e-6)
    assert res.status["stop_reason"] == "max_time" and res.records["t"][-1] >= 4.0
    assert len(res.records["t"]) > 20 and res.records["t"][0] == 0.0
    assert err_fine < 1.5e-3
    err_coarse = _kernel_run(alpha, normalization, 1e-4)[-1]
    assert err_fine < err_coarse / 4  # Euler error shrinks with the step limit
    np.testing.assert_allclose(res.F_test, res.F_train @ np.linalg.solve(K, K_test.T), rtol=1e-9, atol=1e-12)
    loss = 0.5 * ((1 - res.F_train * y) ** 2).mean(1)
    expect_norm = alpha**-2 if normalization == "article" else 1 / alpha
    np.testing.assert_allclose(res.records["loss"], expect_norm * loss, rtol=1e-12)


def _tiny(alpha, loss=Loss(), max_dgrad=1e-3, normalization="article", **kw):
    ds = sparse_parity(12, 8, 2, 5, seed=0)
    model = FC(5, 16, 1, normalize=True, seed=0)
    cfg = FlowConfig(alpha=alpha, loss=loss, max_dgrad=max_dgrad, normalization=normalization, **kw)
    return NetworkProblem(model.flat(), model.flat_parameters(), ds.x_train, ds.y_train, ds.x_test, cfg), cfg, ds, model


@pytest.mark.parametrize("normalization", ["article", "code"])
@pytest.mark.parametrize("loss", [Loss("soft_hinge", 5.0), Loss("mse")])
def test_network_gradient_is_autograd_of_objective(loss, normalization):
    alpha = 3.0
    problem, cfg, ds, model = _tiny(alpha, loss, normalization=normalization)
    w = problem.w0 + 0.3 * torch.randn(problem.w0.shape, generator=torch.Generator().manual_seed(2),
                                       dtype=torch.float64)
    f0 = model(ds.x_train).detach()
    model.load_flat(w.clone())
    F = alpha * (model(ds.x_train) - f0)
    norm = alpha**-2 if normalization == "article" else 1 / alpha
    objective = norm * loss.value(F * ds.y_train).mean()
    expect = torch.cat([g.reshape(-1) for g in torch.autograd.grad(objective, list(model.parameters()))])
    prep = problem.prepare((w, None))
    torch.testing.assert_close(prep.grad, expect, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(prep.F, F.detach(), rtol=1e-12, atol=1e-12)


def test_network_converges_to_margin():
    problem, cfg, ds, _ = _tiny(1.0)
    res = training.run(problem, cfg, ds.y_test)
    assert res.status["converged"] and res.status["stop_reason"] == "converged"
    assert res.records["margin_min"][-1] >= 1 and (res.F_train[-1] * ds.y_train.numpy()).min() >= 1
    assert res.records["margin_min"][:-1].min() < 1 and res.records["train_err"][-1] == 0
    assert res.status["step_fit"] == res.records["step"][-1] and res.status["t_fit"] == res.records["t"][-1]
    assert 0 < res.status["t_memorize"] <= res.status["t_fit"]
    assert np.all(np.diff(res.records["t"]) > 0)


def test_lazy_network_follows_frozen_ntk_closed_form():
    """alpha -> infinity: the network's F(t) is the frozen-NTK solution (I - e^{-K t/n}) y."""
    problem, cfg, ds, model = _tiny(1e4, Loss("mse"), max_dgrad=1e-5, max_time=20.0)
    res = training.run(problem, cfg, ds.y_test)
    K = empirical_ntk(model, ds.x_train).numpy()
    n, y = len(ds.y_train), ds.y_train.numpy()
    exact = np.array([(np.eye(n) - sl.expm(-K * t / n)) @ y for t in res.records["t"][1:]])
    err = np.linalg.norm(res.F_train[1:] - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert err.max() < 3e-3


@pytest.mark.parametrize("method", ["euler", "rkc"])
def test_nan_loss_derivative_ends_as_diverged(monkeypatch, method):
    problem, cfg, ds, _ = _tiny(1.0, method=method)
    original = Loss.derivative
    calls = {"n": 0}

    def derivative(self, z):
        calls["n"] += 1
        out = original(self, z)
        return out if calls["n"] <= 40 else out * float("nan")

    monkeypatch.setattr(Loss, "derivative", derivative)
    res = training.run(problem, cfg, ds.y_test)
    assert res.status["diverged"] and res.status["stop_reason"] == "diverged" and not res.status["converged"]
    assert 0 < res.records["step"][-1] < 40  # the last accepted (finite) state is recorded
    assert np.isfinite(res.F_train).all()


@pytest.mark.parametrize("kw", [{}, {"method": "rkc", "tau": 0.3}])
def test_resume_after_interrupt_gives_identical_arrays(tmp_path, kw):
    """Interrupted at the 61st gradient evaluation (a resume file saved after every step),
    the rerun continues from the file to the uninterrupted run's arrays."""
    problem, cfg, ds, _ = _tiny(1.0, **kw)
    total = count_prepare(problem)
    ref = training.run(problem, cfg, ds.y_test)
    path, params = tmp_path / "run.resume.h5", {"run": "tiny"}

    problem, cfg, ds, _ = _tiny(1.0, **kw)
    calls = count_prepare(problem)
    prepare = problem.prepare

    def interrupted(state):
        if calls["n"] >= 60:
            raise KeyboardInterrupt
        return prepare(state)

    problem.prepare = interrupted
    with pytest.raises(KeyboardInterrupt):
        training.run(problem, cfg, ds.y_test, resume_path=path, resume_every_s=0, resume_params=params)
    assert path.exists()

    problem, cfg, ds, _ = _tiny(1.0, **kw)
    resumed_calls = count_prepare(problem)
    res = training.run(problem, cfg, ds.y_test, resume_path=path, resume_every_s=1e9, resume_params=params)
    assert resumed_calls["n"] < total["n"] - 40  # it continued, not restarted
    assert ref.status["converged"] and res.status == ref.status
    assert ref.records.keys() == res.records.keys()
    for key in ref.records:
        assert np.array_equal(ref.records[key], res.records[key]), key
        assert ref.records[key].dtype == res.records[key].dtype
    assert np.array_equal(ref.F_train, res.F_train) and np.array_equal(ref.F_test, res.F_test)
    assert np.array_equal(ref.final["w_final"], res.final["w_final"])
