"""Kernels family (issue 3): both NTK paths against a per-example gradient loop,
symmetry / PSD, convergence to the infinite-width kernel, predictors, linearized
dynamics against an ODE solve and (I - eta K)^t, linearized weights against explicit J
(its two-class data loaders: test_data.py)."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from torch import nn

from conftest import generic_ntk
from memgen import MemgenError
from memgen.dynamics import linearized_predictions, linearized_weights
from memgen.kernels import (
    analytic_kernels,
    empirical_ntk,
    empirical_ntk_blocks,
    kernel_regression,
    model_vjp,
    nngp_predictor,
)
from memgen.kernels import gemm
from memgen.kernels.gram import SYMMETRIC_LEAF, gram_entries, symmetric_tiles
from memgen.kernels.structured import sequential_chain
from memgen.models import FC

DT = torch.float64


def jacobian_loop(model, x):
    """Rows df(x_i)/dw from one autograd backward pass per example."""
    params = list(model.parameters())
    rows = []
    for xi in x:
        grads = torch.autograd.grad(model(xi.unsqueeze(0)).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def loop_ntk(model, x1, x2):
    return jacobian_loop(model, x1) @ jacobian_loop(model, x2).t()


def close(a, b, rtol=1e-10):
    assert a.shape == b.shape
    err = float((a - b).abs().max())
    assert err <= rtol * float(b.abs().max()), err / float(b.abs().max())


def psd_and_symmetric(K):
    torch.testing.assert_close(K, K.t(), rtol=0, atol=1e-12 * float(K.abs().max()))
    eig = torch.linalg.eigvalsh(K)
    assert eig.min() >= -1e-10 * eig.max()


def seq(*mods):
    torch.manual_seed(3)
    return nn.Sequential(*mods).double()


SEQUENTIALS = {
    "relu": lambda: seq(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 1)),
    "tanh_nobias": lambda: seq(nn.Linear(5, 7, bias=False), nn.Tanh(), nn.Linear(7, 1, bias=False)),
    "softplus_gelu": lambda: seq(nn.Linear(5, 8), nn.Softplus(beta=2.0), nn.Linear(8, 4), nn.GELU(),
                                 nn.Sigmoid(), nn.Linear(4, 1)),
    "flatten_linear": lambda: seq(nn.Flatten(), nn.Linear(5, 1)),
    "no_activation": lambda: seq(nn.Linear(5, 3), nn.Linear(3, 1)),
}


@pytest.mark.parametrize("name", sorted(SEQUENTIALS))
def test_structured_sequential_matches_loop(name):
    model = SEQUENTIALS[name]()
    assert sequential_chain(model) is not None  # the structured path is taken
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(9, 5, generator=g, dtype=DT), torch.randn(4, 5, generator=g, dtype=DT)
    K11 = empirical_ntk(model, x1)
    close(K11, loop_ntk(model, x1, x1))
    close(empirical_ntk(model, x2, x1, path="structured"), loop_ntk(model, x2, x1))
    close(generic_ntk(model, x2, x1), loop_ntk(model, x2, x1))
    psd_and_symmetric(K11)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("last_layer", ["mean_field", "ntk"])
def test_structured_fc_matches_loop_and_small_budget(bias, last_layer):
    model = FC(4, 6, 3, activation="tanh", bias=bias, last_layer=last_layer, seed=1)
    g = torch.Generator().manual_seed(1)
    model.load_flat(torch.randn(model.flat().numel, generator=g, dtype=DT))
    x1, x2 = torch.randn(11, 4, generator=g, dtype=DT), torch.randn(5, 4, generator=g, dtype=DT)
    ref11, ref21 = loop_ntk(model, x1, x1), loop_ntk(model, x2, x1)
    close(empirical_ntk(model, x1), ref11)
    # a tiny memory budget forces row blocks of 1-2 rows (and the mirrored triangle)
    close(empirical_ntk(model, x1, memory_budget=500), ref11)
    close(empirical_ntk(model, x2, x1, memory_budget=500), ref21)
    Ktt, Kst, Kss = empirical_ntk_blocks(model, x1, x2)
    close(Ktt, ref11), close(Kst, ref21), close(Kss, loop_ntk(model, x2, x2))
    psd_and_symmetric(Ktt)


@pytest.mark.parametrize("n", [0, 1, SYMMETRIC_LEAF, SYMMETRIC_LEAF + 1, 300, 517, 8 * SYMMETRIC_LEAF])
def test_symmetric_tiles_cover_the_upper_triangle_once(n):
    cover = torch.zeros(n, n, dtype=torch.int64)
    work = 0
    batches = list(symmetric_tiles(n))
    for r0, c0, J, step, rows, cols in batches:
        for j in range(J):
            r, c = r0 + j * step, c0 + j * step
            assert r + rows <= n and c + cols <= n
            cover[r:r + rows, c:c + cols] += 1
            if c0 != r0:  # tiles above the diagonal are mirrored
                assert r + rows <= c
                cover[c:c + cols, r:r + rows] += 1
            else:
                assert rows == cols <= SYMMETRIC_LEAF
        work += J * rows * cols
    assert bool((cover == 1).all())
    assert work == gram_entries(n, n, symmetric=True) <= n * n / 2 + n * SYMMETRIC_LEAF / 2
    if n == 8 * SYMMETRIC_LEAF:  # a power-of-two multiple: one batch per level
        assert [J for _, _, J, _, _, _ in batches] == [1, 2, 4, 8]


@pytest.mark.parametrize("budget", [None, 50_000, 20_000])
def test_symmetric_gram_blocks_equal_the_full_square(budget):
    """n > SYMMETRIC_LEAF, with uneven splits: the mirrored upper-triangle tiles (whole,
    one tile of a batch per piece, row panels of a tile) give the same matrix as the full square
    (x2 given: no symmetry used), exactly symmetric."""
    model = FC(3, 5, 2, activation="tanh", bias=True, last_layer="ntk", seed=2)
    x = torch.randn(4 * SYMMETRIC_LEAF + 37, 3, generator=torch.Generator().manual_seed(3), dtype=DT)
    kw = {} if budget is None else {"memory_budget": budget}
    full = empirical_ntk(model, x, x.clone(), **kw)
    K = empirical_ntk(model, x, **kw)
    close(K, full)
    assert torch.equal(K, K.t())
    close(empirical_ntk(model, x.t().contiguous().t(), **kw), full)  # column-major inputs: strided tiles


@pytest.mark.parametrize("budget", [None, 20_000])
@pytest.mark.parametrize("onednn", [True, False])
def test_float32_gram_on_both_gemm_backends(onednn, budget, monkeypatch):
    """float32 on CPU: with oneDNN's products (forward, backward, the large triangle tiles
    one by one, the test/train block) or torch.mm's, the Gram of float64 up to float32
    rounding, exactly symmetric."""
    if onednn and gemm.ONEDNN_LINEAR is None:
        pytest.skip("this torch has no oneDNN")
    calls = []
    if onednn:
        op = gemm.ONEDNN_LINEAR
        monkeypatch.setattr(gemm, "ONEDNN_LINEAR", lambda *args: calls.append(args[0].shape) or op(*args))
    else:
        monkeypatch.setattr(gemm, "ONEDNN_LINEAR", None)
    m32 = FC(3, 40, 2, activation="relu", bias=True, last_layer="ntk", seed=2, dtype=torch.float32)
    m64 = FC(3, 40, 2, activation="relu", bias=True, last_layer="ntk", dtype=DT).load_flat(m32.flat_parameters().double())
    x = torch.randn(4 * SYMMETRIC_LEAF + 37, 3, generator=torch.Generator().manual_seed(3))
    ref = empirical_ntk(m64, x.double())
    kw = {} if budget is None else {"memory_budget": budget}
    K = empirical_ntk(m32, x, **kw)
    rows = sorted({shape[0] for shape in calls})
    K21 = empirical_ntk(m32, x[:50], x, **kw)
    assert K.dtype == K21.dtype == torch.float32
    close(K.double(), ref, rtol=1e-5)
    close(K21.double(), ref[:50], rtol=1e-5)
    assert torch.equal(K, K.t())
    if onednn:  # the forward and backward passes (293 rows) and, unless cut into row panels, the 146-row tiles
        assert {293} | ({146} if budget is None else set()) <= set(rows) and 146 >= gemm.ONEDNN_MIN_ROWS


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 2), nn.Tanh(), nn.Flatten(),
                         nn.Linear(2 * 3 * 3, 1)).double()


def test_generic_cnn_matches_loop_blocks_and_budget():
    model = small_cnn()
    assert sequential_chain(model) is None
    g = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(7, 2, 6, 6, generator=g, dtype=DT), torch.randn(3, 2, 6, 6, generator=g, dtype=DT)
    ref11, ref21 = loop_ntk(model, x1, x1), loop_ntk(model, x2, x1)
    close(empirical_ntk(model, x1), ref11)
    close(generic_ntk(model, x2, x1, block=2), ref21)
    P = sum(p.numel() for p in model.parameters())
    close(generic_ntk(model, x1, memory_budget=4 * 8 * P), ref11)  # one example per block, no cache
    Ktt, Kst, Kss = empirical_ntk_blocks(model, x1, x2)
    close(Ktt, ref11), close(Kst, ref21), close(Kss, loop_ntk(model, x2, x2))
    psd_and_symmetric(Ktt)
    with pytest.raises(MemgenError, match="structured"):
        empirical_ntk(model, x1, path="structured")


def test_model_vjp_matches_autograd():
    g = torch.Generator().manual_seed(4)
    for model, x in ((FC(3, 5, 2, activation="relu", bias=True, seed=0), torch.randn(6, 3, generator=g, dtype=DT)),
                     (small_cnn(), torch.randn(4, 2, 6, 6, generator=g, dtype=DT))):
        v = torch.randn(len(x), generator=g, dtype=DT)
        J = jacobian_loop(model, x)
        close(model_vjp(model, x)(v), J.t() @ v)


# ---------------------------------------------------------------- infinite width


def test_analytic_kernel_diagonal_and_first_layer():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 7, generator=g, dtype=DT)
    x = x / x.norm(dim=1, keepdim=True) * 7 ** 0.5  # x.x/d = 1
    for L in (1, 2, 3):  # Sigma_{l}(x,x) = 2^{1-l}, Theta_l(x,x) = l / 2^{l-1}
        nngp, ntk = analytic_kernels(x, None, L)
        torch.testing.assert_close(torch.diag(nngp), torch.full((6,), 2.0 ** -L, dtype=DT))
        torch.testing.assert_close(torch.diag(ntk), torch.full((6,), (L + 1) / 2.0 ** L, dtype=DT))
        psd_and_symmetric(ntk)
    nn_, nt_ = analytic_kernels(x, None, 2, activation="relu_normalized")
    torch.testing.assert_close(torch.diag(nn_), torch.ones(6, dtype=DT))
    torch.testing.assert_close(torch.diag(nt_), torch.full((6,), 3.0, dtype=DT))
    # depth 1, NNGP = E_w[relu(w.x/sqrt d) relu(w.x'/sqrt d)]: Monte Carlo with many w
    w = torch.randn(400_000, 7, generator=g, dtype=DT)
    a = torch.relu(x[:3] @ w.t() / 7 ** 0.5)
    mc = a @ a.t() / w.shape[0]
    torch.testing.assert_close(analytic_kernels(x[:3], None, 1)[0], mc, rtol=0, atol=1e-2)


def test_empirical_ntk_converges_to_analytic_with_width():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(10, 5, generator=g, dtype=DT)
    _, ntk_inf = analytic_kernels(x, None, 2)
    widths = [32, 128, 512, 2048]
    errs = []
    for h in widths:
        e = []
        for seed in range(3):
            model = FC(5, h, 2, activation="relu", normalize=False, last_layer="ntk", bias=False, seed=seed)
            e.append(float((empirical_ntk(model, x) - ntk_inf).norm() / ntk_inf.norm()))
        errs.append(np.mean(e))
    slope = np.polyfit(np.log(widths), np.log(errs), 1)[0]
    assert -0.7 < slope < -0.35, (slope, errs)
    assert errs[-1] < 0.1


# ---------------------------------------------------------------- predictors


def test_kernel_regression_and_nngp_predictor():
    from sklearn.linear_model import Ridge

    g = torch.Generator().manual_seed(7)
    A = torch.randn(12, 12, generator=g, dtype=DT)
    K = A @ A.t() + 0.1 * torch.eye(12, dtype=DT)
    y = torch.randn(12, generator=g, dtype=DT)
    close(kernel_regression(K, K, y), y, rtol=1e-8)  # interpolates without ridge
    Ks = torch.randn(3, 12, generator=g, dtype=DT)
    close(kernel_regression(K, Ks, y, ridge=0.5), Ks @ torch.linalg.solve(K + 0.5 * torch.eye(12, dtype=DT), y))
    K0 = A[:, :4] @ A[:, :4].t()  # rank 4: the least-squares fallback
    assert torch.isfinite(kernel_regression(K0, Ks, y)).all()

    model = SEQUENTIALS["relu"]()
    x, xt = torch.randn(20, 5, generator=g, dtype=DT), torch.randn(6, 5, generator=g, dtype=DT)
    yy = torch.sign(torch.randn(20, generator=g, dtype=DT))
    ptr, pte = nngp_predictor(model, x, yy, xt, ridge=0.1)
    feats = lambda z: torch.relu(model[2](torch.relu(model[0](z)))).detach().numpy()  # noqa: E731
    ref = Ridge(alpha=0.1, fit_intercept=False, solver="cholesky").fit(feats(x), yy.numpy())
    np.testing.assert_allclose(pte.numpy(), ref.predict(feats(xt)), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- linearized dynamics


def _problem(n=8, m=5, rank=None, seed=8):
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((n + m, rank or 30))
    Kall = J @ J.T / J.shape[1] * 4
    K, Kst = Kall[:n, :n], Kall[n:, :n]
    return K, Kst, rng.standard_normal(n), rng.standard_normal(m), np.sign(rng.standard_normal(n))


@pytest.mark.parametrize("rank", [None, 3])  # full rank, and K with zero eigenvalues
def test_linearized_flow_matches_ode(rank):
    K, Kst, f0, f0t, y = _problem(rank=rank)
    n, lr = len(y), 0.7
    t = np.array([0.0, 0.3, 2.0, 10.0, 50.0])
    Ftr, Fte = linearized_predictions(torch.tensor(K), torch.tensor(Kst), f0, f0t, y, t, lr=lr)
    assert Ftr.shape == (5, n) and Fte.shape == (5, len(f0t))

    def rhs(_, z):  # d f/dt = -(lr/n) K (f - y) on train, -(lr/n) Kst (f - y) on test
        r = z[:n] - y
        return np.concatenate([-(lr / n) * K @ r, -(lr / n) * Kst @ r])

    sol = solve_ivp(rhs, (0, t[-1]), np.concatenate([f0, f0t]), t_eval=t, rtol=1e-11, atol=1e-12, method="DOP853")
    np.testing.assert_allclose(Ftr.numpy(), sol.y[:n].T, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(Fte.numpy(), sol.y[n:].T, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("rank", [None, 3])
def test_linearized_gd_matches_matrix_power(rank):
    K, Kst, f0, f0t, y = _problem(rank=rank)
    n, lr = len(y), 1.3
    steps = np.array([0, 1, 2, 7, 40])
    Ftr, Fte = linearized_predictions(torch.tensor(K), torch.tensor(Kst), f0, f0t, y, steps, lr=lr,
                                      continuous=False)
    M = np.eye(n) - lr * K / n
    f, ft = f0.copy(), f0t.copy()
    for k in range(steps[-1] + 1):  # GD on the linear model: f <- f - (lr/n) K (f - y)
        if k in steps:
            i = list(steps).index(k)
            np.testing.assert_allclose(Ftr[i].numpy(), f, rtol=1e-9, atol=1e-10)
            np.testing.assert_allclose(Fte[i].numpy(), ft, rtol=1e-9, atol=1e-10)
            np.testing.assert_allclose(Ftr[i].numpy() - y, np.linalg.matrix_power(M, k) @ (f0 - y),
                                       rtol=1e-9, atol=1e-10)
        r = f - y
        f, ft = f - lr / n * K @ r, ft - lr / n * Kst @ r


@pytest.mark.parametrize("continuous", [True, False])
def test_linearized_weights_match_explicit_jacobian(continuous):
    model = FC(3, 6, 2, activation="tanh", bias=True, last_layer="ntk", seed=2)
    g = torch.Generator().manual_seed(9)
    x, xt = torch.randn(5, 3, generator=g, dtype=DT), torch.randn(4, 3, generator=g, dtype=DT)
    y = torch.sign(torch.randn(5, generator=g, dtype=DT))
    J, Jt = jacobian_loop(model, x), jacobian_loop(model, xt)
    K = J @ J.t()
    w0 = model.flat_parameters()
    with torch.no_grad():
        f0, f0t = model(x), model(xt)
    lr, t = 0.5, torch.tensor([0.0, 1.0, 5.0, 30.0], dtype=DT)
    W = linearized_weights(w0, model_vjp(model, x), K, f0, y, t, lr=lr, continuous=continuous)
    eta = lr / len(y)
    lam, V = torch.linalg.eigh(K)
    for i, ti in enumerate(t):  # seed 001 with explicit J and the matrix function
        E = V @ torch.diag(torch.exp(-eta * lam * ti) if continuous else (1 - eta * lam) ** ti) @ V.t()
        w = w0 - J.t() @ torch.linalg.solve(K, (torch.eye(5, dtype=DT) - E) @ (f0 - y))
        close(W[i], w, rtol=1e-9)
    # the linearized outputs J (w(t) - w0) + f0 are linearized_predictions'
    Ftr, Fte = linearized_predictions(K, Jt @ J.t(), f0, f0t, y, t, lr=lr, continuous=continuous)
    close(f0 + (W - w0) @ J.t(), Ftr, rtol=1e-9)
    close(f0t + (W - w0) @ Jt.t(), Fte, rtol=1e-9)
    if not continuous:  # and GD in weight space on the linear model
        w = w0.clone()
        for _ in range(30):
            w = w - eta * J.t() @ (f0 + J @ (w - w0) - y)
        close(W[-1], w, rtol=1e-9)


# ---------------------------------------------------------------- the family's studies


def test_linearized_vs_gd_against_explicit_gd_and_the_first_step():
    """Losses of GD from an explicit loop; the linearized losses from
    linearized_predictions; one GD step of the network is one step of its linearization,
    so the weights agree after step 1 (w_dist ~ 0) and differ later."""
    from memgen.kernels.studies import linearized_vs_gd

    net = FC(3, 32, 2, activation="relu", last_layer="ntk", seed=4)
    g = torch.Generator().manual_seed(10)
    x, xt = torch.randn(8, 3, generator=g, dtype=DT), torch.randn(5, 3, generator=g, dtype=DT)
    y, yt = torch.sign(torch.randn(8, generator=g, dtype=DT)), torch.sign(torch.randn(5, generator=g, dtype=DT))
    record = np.array([0, 1, 3, 10])
    r = linearized_vs_gd(net, x, y, xt, yt, lr=0.5, steps=10, record=record)
    assert not r.diverged and list(r.step) == list(record) and np.allclose(r.t, 0.5 * record)
    model, losses = FC(3, 32, 2, activation="relu", last_layer="ntk", seed=4), {}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for k in range(11):
        loss = ((model(x) - y) ** 2).mean() / 2
        if k in record:
            with torch.no_grad():
                losses[k] = (float(loss), float(((model(xt) - yt) ** 2).mean() / 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(r.loss_train, [losses[k][0] for k in record], rtol=1e-10)
    np.testing.assert_allclose(r.loss_test, [losses[k][1] for k in record], rtol=1e-10)
    K, Ks, _ = empirical_ntk_blocks(net, x, xt)
    with torch.no_grad():
        Ftr, Fte = linearized_predictions(K, Ks, net(x), net(xt), y, torch.tensor(record, dtype=DT), lr=0.5,
                                          continuous=False)
    np.testing.assert_allclose(r.lin_loss_train, (((Ftr - y) ** 2).mean(1) / 2).numpy(), rtol=1e-12)
    np.testing.assert_allclose(r.lin_loss_test, (((Fte - yt) ** 2).mean(1) / 2).numpy(), rtol=1e-12)
    assert r.w_dist[0] == 0 and r.w_move[0] == 0 and r.f_dist_train[0] < 1e-12
    assert r.w_dist[1] < 1e-10 * r.w_move[1] and r.w_dist[3] > 1e-6 * r.w_move[3]


def test_convergence_errors_and_accuracy_comparison():
    from memgen.kernels.studies import accuracy_comparison, convergence_errors, sign_accuracy

    g = torch.Generator().manual_seed(11)
    x = torch.randn(10, 5, generator=g, dtype=DT)
    model = {"d": 5, "h": 64, "L": 2, "activation": "relu", "last_layer": "ntk"}
    ntk_err, nngp_err = convergence_errors(model, [0, 1], x)
    _, ntk_inf = analytic_kernels(x, None, 2)
    assert ntk_err[1] == float((empirical_ntk(FC(seed=1, **model), x) - ntk_inf).norm() / ntk_inf.norm())
    assert ntk_err.shape == nngp_err.shape == (2,) and (nngp_err > 0).all()
    assert sign_accuracy(torch.tensor([1.0, -2.0, 3.0]), torch.tensor([1.0, 1.0, 1.0])) == pytest.approx(2 / 3)
    assert np.isnan(sign_accuracy(torch.tensor([1.0, float("nan")]), torch.ones(2)))
    y = torch.sign(x[:, 0])
    acc, diverged = accuracy_comparison(FC(seed=0, **model), x, y, x, y, ridge_ntk=1e-8, ridge_nngp=1e-8,
                                        ridge_inf=1e-8, lr=1.0, steps=200)
    assert not diverged and set(acc) == {"ntk", "nngp", "ntk_inf", "nngp_inf", "trained"}
    assert acc["ntk"] == acc["ntk_inf"] == acc["trained"] == 1.0  # interpolating predictors on their own data
