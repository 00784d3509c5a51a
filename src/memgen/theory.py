"""Closed forms and reduced dynamics for the linear double-descent family.

Data model and conventions: :mod:`memgen.linear` (features ``x_i ~ N(0, s_i^2)``
independent, ``y = <theta, x> + eps``, ``eps ~ N(0, sigma^2)``, mean loss
``1/(2n)||Xw - y||^2``, GD step ``w <- w - lr X^T(Xw - y)/n``). Everything returns
numpy float64 arrays.

- :func:`linear_gd_risk`: Heckel & Yilmaz's (ICLR 2021) risk of GD after k steps,
  epoch-wise double descent when the feature scales have two well separated groups.
- :func:`two_layer_ode` / :func:`two_layer_ode_risk`: the rank-one (u, z) reduction of
  GD on a two-layer linear network ``f(x) = v^T W x`` (seed 004's ``dt, dzdt, dudt``),
  integrated with :func:`scipy.integrate.solve_ivp`.
- :func:`linear_gd_group_curves` / :func:`two_layer_theory`: the per-group curves and
  the two-layer network's ODE and lazy predictions the double-descent steps store.
- :func:`modelwise_risk`: min-norm least squares on isotropic Gaussian features vs the
  ratio n/p (model-wise double descent, peak at n/p = 1).
- :func:`gd_flow_risk_isotropic` / :func:`early_stopped_modelwise_risk`: the same
  problem trained by gradient flow from zero, risk over time from the Marchenko-Pastur
  law, and its optimally early-stopped value (no peak).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.integrate import solve_ivp

from memgen import MemgenError


def _np(a) -> np.ndarray:
    try:
        import torch

        if torch.is_tensor(a):
            a = a.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(a, dtype=np.float64)


def _steps(steps) -> np.ndarray:
    k = np.arange(int(steps) + 1) if np.ndim(steps) == 0 else _np(steps)
    return k


# ---------------------------------------------------------------------------------------
# epoch-wise: GD on a linear model
# ---------------------------------------------------------------------------------------


def linear_gd_risk(steps, s, theta, noise_std: float, n: int, lr, w0=None) -> np.ndarray:
    """Expected population risk after k full-batch GD steps (Heckel & Yilmaz 2021).

    ``R(k) = sum_i s_i^2 (1 - lr_i s_i^2)^(2k) (theta_i - w0_i)^2
    + sum_i (sigma^2/n) (1 - (1 - lr_i s_i^2)^k)^2 + sigma^2``

    for the model of :mod:`memgen.linear`: ``x_i ~ N(0, s_i^2)`` independent,
    ``y = <theta, x> + eps``, ``eps ~ N(0, sigma^2)`` (sigma = ``noise_std``), n training
    samples, GD ``w <- w - lr * X^T(Xw - y)/n`` (mean loss ``1/(2n)||Xw - y||^2``; with
    the sum loss ``1/2||Xw - y||^2`` replace lr by lr/n) from ``w0`` (default 0);
    ``lr`` is a scalar or one step size per feature. ``steps``: an int K (k = 0..K) or
    an array of step counts (non-integer k interpolates when every lr_i s_i^2 <= 1).

    Derivation: with ``A = X^T X / n`` and ``xi = X^T eps / n``,
    ``w_k - theta = (I - D A)^k (w0 - theta) + (I - (I - D A)^k) A^{-1} xi`` (D = diag lr).
    It is EXACT (expectation over the label noise) when ``A = diag(s^2)``, i.e. for
    ``decoupled=True`` data, for every n >= d. For i.i.d. Gaussian rows it is the
    approximation for n >> d: it replaces A by its mean diag(s^2) (Heckel & Yilmaz state
    it as holding with high probability for n large relative to d); e.g. the variance
    term of the exact expectation is larger, by about n/(n - d - 1) at convergence.
    Measured (tests/test_theory.py, d = 20): 0.6% max deviation of the excess risk at
    n = 2000, 4.4% at n = 1000.
    """
    s2 = _np(s) ** 2
    return (s2 * linear_gd_weight_error(steps, s, theta, noise_std, n, lr, w0)).sum(-1) + noise_std**2


def local_extrema(curve) -> tuple[np.ndarray, np.ndarray]:
    """Indices of strict interior local minima and maxima of a sampled curve (plateaus of
    equal values are merged)."""
    c = _np(curve)
    keep = np.r_[True, np.diff(c) != 0]
    idx = np.nonzero(keep)[0]
    v = c[idx]
    dv = np.sign(np.diff(v))
    turns = np.nonzero(dv[1:] != dv[:-1])[0] + 1
    mins = idx[turns[dv[turns - 1] < 0]]
    maxs = idx[turns[dv[turns - 1] > 0]]
    return mins, maxs


# ---------------------------------------------------------------------------------------
# two-layer linear network: rank-one reduced dynamics
# ---------------------------------------------------------------------------------------


def rank_one_state(W, v) -> tuple[float, np.ndarray]:
    """``(u, z)`` with ``u = ||v||``, ``z = W^T v / ||v||`` (so ``u z = W^T v``).

    Exact for rank-one aligned layers (``W = a z^T``, ``v = u a``, ||a|| = 1: the
    ``fixed`` and ``rank_one`` inits), which GD keeps aligned. (The seed sets
    ``u = scale_v``, ``z = scale_W 1`` for its all-constant init, which misses the factor
    ``p`` of the end-to-end map ``W^T v = p scale_W scale_v 1``.)
    """
    W, v = _np(W), _np(v)
    u = float(np.linalg.norm(v))
    if u == 0:
        raise MemgenError("rank_one_state: v = 0 is a fixed point of the dynamics")
    return u, W.T @ v / u


def growing_mode_state(W, v, b) -> tuple[float, np.ndarray]:
    """Rank-one ``(u, z)`` matched to the unstable mode of a small generic init.

    Near ``w = 0`` (balanced step sizes) the layers obey ``v' = W g0``, ``W' = v g0^T``
    with ``g0 = b = X^T y / n``: the component ``m = (v + W g0/|g0|)/2`` of R^p grows
    like ``exp(|g0| t)``, everything else stays O(init). The reduced model started at
    ``u = |m|``, ``z = |m| g0/|g0|`` has the same unstable mode, so for init -> 0 it
    follows the network (the ``rank_one_state`` projection of a random init gets the
    escape time wrong by O(log) terms).
    """
    W, v, b = _np(W), _np(v), _np(b)
    bh = b / np.linalg.norm(b)
    m = float(np.linalg.norm(0.5 * (v + W @ bh)))
    return m, m * bh


def two_layer_flow(u, z, A, b, lr=1.0):
    """The vector field of :func:`two_layer_ode` at states (u (...), z (..., d)):
    ``(lr_v z.g, lr_W u g)`` with ``g = b - A (u z)``; ``lr`` one step size or (lr_W, lr_v)."""
    lr_W, lr_v = (float(lr), float(lr)) if np.ndim(lr) == 0 else (float(lr[0]), float(lr[1]))
    u, z = _np(u), _np(z)
    g = _np(b) - (u[..., None] * z) @ _np(A).T
    return lr_v * (z * g).sum(-1), lr_W * u[..., None] * g


def ode_start(W0, v0, b, init: str = "gaussian") -> tuple[float, np.ndarray]:
    """The (u, z) the reduced ODE starts from for layers (W0, v0): the growing mode of a
    ``"gaussian"`` init (:func:`growing_mode_state`), the exact rank-one state otherwise
    (:func:`rank_one_state`)."""
    return growing_mode_state(W0, v0, b) if init == "gaussian" else rank_one_state(W0, v0)


def two_layer_ode(times, A, b, u0: float, z0, lr=1.0, rtol: float = 1e-9, atol: float = 1e-12):
    """Integrate the reduced (u, z) flow of a two-layer linear network.

    With ``w = u z`` and the gradient ``g(w) = b - A w`` (``A = X^T X/n``,
    ``b = X^T y/n``; the seed's ``dt = St - u z S`` in the SVD basis where A is diagonal):
    ``du/dtau = lr_v z.g``, ``dz/dtau = lr_W u g``. ``tau`` counts GD steps (so ``lr``:
    one step size or (lr_W, lr_v), as in :func:`memgen.linear.train_two_layer`); this is
    the continuous-time limit of GD on ``1/(2n)||X W^T v - y||^2`` restricted to
    ``W = a z^T``, ``v = u a``. (The seed's factor 2 comes from its sum loss without 1/2.)
    Returns ``u`` (len(times),) and ``z`` (len(times), d).
    """
    A, b, z0 = _np(A), _np(b), _np(z0)
    t = _np(times)
    d = b.shape[0]

    def rhs(_, y):
        du, dz = two_layer_flow(y[0], y[1:], A, b, lr)
        return np.concatenate(([du], dz))

    sol = solve_ivp(rhs, (0.0, float(t.max())), np.concatenate(([float(u0)], z0)), t_eval=t,
                    method="LSODA", rtol=rtol, atol=atol)
    if not sol.success:
        raise MemgenError(f"two_layer_ode: integration failed: {sol.message}")
    return sol.y[0], sol.y[1:].T.reshape(len(t), d)


def two_layer_ode_risk(times, X, y, s, theta, noise_std: float, u0: float, z0, lr=1.0) -> np.ndarray:
    """Population risk ``sum_i s_i^2 (u z_i - theta_i)^2 + sigma^2`` along
    :func:`two_layer_ode` for the training set (X, y)."""
    X, y = _np(X), _np(y)
    n = X.shape[0]
    u, z = two_layer_ode(times, X.T @ X / n, X.T @ y / n, u0, z0, lr)
    w = u[:, None] * z
    return ((w - _np(theta)) ** 2 * _np(s) ** 2).sum(-1) + noise_std**2


# ---------------------------------------------------------------------------------------
# model-wise: min-norm least squares and early-stopped GD on isotropic features
# ---------------------------------------------------------------------------------------


def modelwise_risk(ratios, snr: float = 1.0, noise_std: float = 1.0, p: int | None = None) -> np.ndarray:
    """Test risk ``E (y - x^T theta_hat)^2`` of min-norm least squares ``theta_hat = X^+ y``
    against ``r = n/p`` (samples per parameter).

    Model: ``x ~ N(0, I_p)``, ``y = x^T theta + eps``, ``eps ~ N(0, sigma^2)``,
    ``||theta||^2 = snr * sigma^2``, n samples; risk = ``E||theta_hat - theta||^2 + sigma^2``.

    Finite p (exact; Belkin, Hsu & Xu 2019, "Two models of double descent for weak
    features", Gaussian model with all features used; Hastie, Montanari, Rosset &
    Tibshirani 2019, "Surprises in high-dimensional ridgeless least squares
    interpolation"):
    - n >= p + 2: ``sigma^2 + sigma^2 p / (n - p - 1)`` (``E (X^T X)^{-1} = I/(n-p-1)``);
    - n <= p - 2: ``||theta||^2 (1 - n/p) + sigma^2 + sigma^2 n / (p - n - 1)``
      (bias: the projection of theta on the null space of a uniformly random n-dim row
      space; variance: ``E tr (X X^T)^{-1} = n/(p-n-1)``);
    - |n - p| <= 1: +inf (the expected risk diverges).
    ``p=None``: the proportional limit p, n -> inf with n/p = r (Hastie et al. 2019,
    isotropic case, gamma = p/n = 1/r): r > 1: ``sigma^2 + sigma^2 / (r - 1)``;
    r < 1: ``||theta||^2 (1 - r) + sigma^2 + sigma^2 r / (1 - r)``; r = 1: +inf.
    """
    r = _np(ratios)
    s2 = float(noise_std) ** 2
    th2 = float(snr) * s2
    out = np.full(r.shape, np.inf)
    if p is None:
        over = r < 1
        under = r > 1
        out[under] = s2 + s2 / (r[under] - 1.0)
        out[over] = th2 * (1 - r[over]) + s2 + s2 * r[over] / (1 - r[over])
        return out
    n = r * p
    under = n >= p + 2
    over = n <= p - 2
    out[under] = s2 + s2 * p / (n[under] - p - 1)
    out[over] = th2 * (1 - n[over] / p) + s2 + s2 * n[over] / (p - n[over] - 1)
    return out


@lru_cache(maxsize=8)
def _legendre(m: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(m)


@lru_cache(maxsize=256)
def _mp_nodes(gamma: float, m: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Quadrature for the spectrum of ``X^T X / n`` (x ~ N(0, I_p), p/n -> gamma).

    Continuous part: density ``sqrt((l+ - l)(l - l-)) / (2 pi gamma l)`` on
    ``[l-, l+] = [(1 - sqrt(gamma))^2, (1 + sqrt(gamma))^2]``, mass ``min(1, 1/gamma)``;
    plus an atom at 0 of mass ``max(0, 1 - 1/gamma)``. Substituting
    ``l = c + h cos(phi)`` makes the integrand smooth (also at gamma = 1):
    Gauss-Legendre in phi. Returns (nodes, weights, atom mass).
    """
    lm, lp = (1 - np.sqrt(gamma)) ** 2, (1 + np.sqrt(gamma)) ** 2
    c, h = (lp + lm) / 2, (lp - lm) / 2
    x, wq = _legendre(m)
    phi = (x + 1) * np.pi / 2
    lam = c + h * np.cos(phi)
    wts = wq * (np.pi / 2) * (h * np.sin(phi)) ** 2 / (2 * np.pi * gamma * lam)
    return lam, wts, max(0.0, 1.0 - 1.0 / gamma)


def gd_flow_risk_isotropic(times, ratio: float, snr: float = 1.0, noise_std: float = 1.0,
                           quad: int = 400) -> np.ndarray:
    """Risk of gradient flow from zero on ``1/(2n)||X w - y||^2`` for the isotropic model
    of :func:`modelwise_risk` at ``n/p = ratio``, proportional limit, at flow times t
    (t = lr * steps for small lr; discrete GD replaces ``exp(-l t)`` by ``(1 - lr l)^k``).

    In the eigenbasis of ``A = X^T X / n`` (eigenvalues l_j) this is
    :func:`linear_gd_risk` with the empirical spectrum and a random direction of theta:
    ``R(t) = ||theta||^2 (1/p) sum_j e^{-2 l_j t}
    + sigma^2 (1/n) sum_{l_j>0} (1 - e^{-l_j t})^2 / l_j + sigma^2``
    (the variance term carries 1/l_j because the test covariance is I, not A), averaged
    over the Marchenko-Pastur law with gamma = p/n = 1/ratio. t -> inf gives
    :func:`modelwise_risk` (p=None).
    """
    t = _np(times)[:, None]
    gamma = 1.0 / float(ratio)
    lam, wts, atom = _mp_nodes(gamma, quad)
    s2 = float(noise_std) ** 2
    th2 = float(snr) * s2
    bias = th2 * (atom + (np.exp(-2 * lam * t) * wts).sum(-1))
    var = s2 * gamma * (((-np.expm1(-lam * t)) ** 2 / lam) * wts).sum(-1)
    return bias + var + s2


def early_stopped_modelwise_risk(ratios, snr: float = 1.0, noise_std: float = 1.0,
                                 quad: int = 400, return_times: bool = False):
    """Optimally early-stopped gradient-flow risk ``min_t`` :func:`gd_flow_risk_isotropic`
    against ``n/p`` (proportional limit). Finite everywhere: the peak at n/p = 1 of
    :func:`modelwise_risk` disappears (cf. "Optimal regularization can mitigate double
    descent", Nakkiran et al. 2021; early stopping ~ ridge, Ali, Kolter & Tibshirani
    2019). Optimum searched on a log grid of t in [1e-3, 1e5] (plus t = 0), then refined
    linearly. ``return_times``: also the optimal t (flow time = lr * steps).
    """
    r = np.atleast_1d(_np(ratios))
    grid = np.r_[0.0, np.geomspace(1e-3, 1e5, 600)]
    risks, times = [], []
    for ri in r:
        curve = gd_flow_risk_isotropic(grid, ri, snr, noise_std, quad)
        j = int(np.argmin(curve))
        lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, len(grid) - 1)]
        fine = np.linspace(lo, hi, 201)
        c2 = gd_flow_risk_isotropic(fine, ri, snr, noise_std, quad)
        jj = int(np.argmin(c2))
        risks.append(c2[jj])
        times.append(fine[jj])
    risks, times = np.array(risks), np.array(times)
    return (risks, times) if return_times else risks


# ---------------------------------------------------------------------------------------
# per-feature weight errors of linear GD; the linearised (lazy) two-layer network
# ---------------------------------------------------------------------------------------


def linear_gd_weight_error(steps, s, theta, noise_std: float, n: int, lr, w0=None) -> np.ndarray:
    """Expected squared error of each weight after k GD steps, shape (len(steps), d):

    ``E (w_i(k) - theta_i)^2 = (1 - lr_i s_i^2)^(2k) (theta_i - w0_i)^2
    + sigma^2 / (n s_i^2) (1 - (1 - lr_i s_i^2)^k)^2``

    (same model, conventions and exactness as :func:`linear_gd_risk`, whose excess risk
    is ``sum_i s_i^2`` times this). Dividing by ``theta_i^2`` gives the seed's relative
    "MSE weights" per feature.
    """
    k = _steps(steps)[:, None]
    s2 = _np(s) ** 2
    theta = _np(theta)
    d = s2.shape[0]
    w0 = np.zeros(d) if w0 is None else np.broadcast_to(_np(w0), (d,))
    lr = np.broadcast_to(_np(lr), (d,))
    ak = np.power(1.0 - lr * s2, k)  # 1 - lr s^2 < 0 (lr_i s_i^2 > 1) needs integer k
    return ak**2 * (theta - w0) ** 2 + (noise_std**2 / (n * s2)) * (1.0 - ak) ** 2


def linear_gd_group_curves(steps, s, theta, noise_std: float, n: int, lr, sizes):
    """Per group of features (``sizes = (d1, d2, ...)``, in order) the closed forms of
    linear GD after k steps: returns (risk (K,) of :func:`linear_gd_risk`, excess-risk
    contributions (K, G) ``sum_{i in g} s_i^2 E_i``, relative weight errors (K, G)
    ``mean_{i in g} E_i / theta_i^2``) with E = :func:`linear_gd_weight_error` (K, d); the
    contributions sum to the excess risk R - sigma^2."""
    args = (steps, s, theta, noise_std, n, lr)
    E = linear_gd_weight_error(*args)
    s2, th2 = _np(s) ** 2, _np(theta) ** 2
    bounds = np.cumsum([0] + [int(k) for k in sizes])
    if bounds[-1] != E.shape[1]:
        raise MemgenError(f"linear_gd_group_curves: sizes {tuple(sizes)} do not split d={E.shape[1]}")
    groups = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    rel = E / th2
    return (linear_gd_risk(*args), np.stack([(s2[g] * E[:, g]).sum(-1) for g in groups], axis=-1),
            np.stack([rel[:, g].mean(-1) for g in groups], axis=-1))


def two_layer_theory(steps, X, y, W0, v0, lr, init: str = "gaussian") -> tuple[np.ndarray, np.ndarray]:
    """End-to-end weights (len(steps), d) that theory predicts for GD on the two-layer
    linear network from (W0, v0) on the training set (X, y): the reduced (u, z) ODE
    (:func:`two_layer_ode`, started on the growing mode of a ``"gaussian"`` init,
    :func:`growing_mode_state`, or on the exact rank-one state otherwise,
    :func:`rank_one_state`) and the linearised (lazy) network (:func:`lazy_two_layer`).
    Returns (w_ode, w_lazy)."""
    X, y = _np(X), _np(y)
    n = X.shape[0]
    A, b = X.T @ X / n, X.T @ y / n
    u, z = two_layer_ode(steps, A, b, *ode_start(W0, v0, b, init), lr)
    return u[:, None] * z, lazy_two_layer(steps, A, b, W0, v0, lr)


def lazy_two_layer(steps, A, b, W0, v0, lr=1.0) -> np.ndarray:
    """End-to-end weights of the two-layer linear network ``f(x) = v^T W x`` linearised
    around its initialisation (the lazy / frozen-tangent-kernel limit), shape
    (len(steps), d).

    One GD step of :func:`memgen.linear.train_two_layer` moves ``w = W^T v`` by
    ``M g + O(lr^2)`` with ``g = b - A w`` and the preconditioner
    ``M = lr_v W^T W + lr_W ||v||^2 I``; freezing M at its initial value gives the
    linear recursion ``w_{k+1} = w_k + M0 (b - A w_k)``, solved in closed form: with
    ``S = M0^{1/2}``, ``u = S^{-1} w`` obeys ``u_{k+1} = u_k + S b - (S A S) u_k``,
    diagonal in the eigenbasis of ``S A S`` (eigenvalues l_j):
    ``c_j(k) = (1 - l_j)^k c_j(0) + beta_j (1 - (1 - l_j)^k) / l_j`` (``k beta_j`` for
    ``l_j = 0``). Accurate when the layers barely move relative to their size (large
    init); for small init the network follows :func:`two_layer_ode` instead.
    """
    A, b, W0, v0 = _np(A), _np(b), _np(W0), _np(v0)
    lr_W, lr_v = (float(lr), float(lr)) if np.ndim(lr) == 0 else (float(lr[0]), float(lr[1]))
    d = b.shape[0]
    M0 = lr_v * W0.T @ W0 + lr_W * float(v0 @ v0) * np.eye(d)
    m, Q = np.linalg.eigh(M0)
    if m.min() <= 0:
        raise MemgenError("lazy_two_layer: the preconditioner at init is singular (v0 = 0 and rank W0 < d)")
    S = (Q * np.sqrt(m)) @ Q.T
    Sinv = (Q / np.sqrt(m)) @ Q.T
    l, U = np.linalg.eigh(S @ A @ S)
    beta = U.T @ (S @ b)
    c0 = U.T @ (Sinv @ (W0.T @ v0))
    k = _steps(steps)[:, None]
    ak = np.power(1.0 - l, k)
    safe = np.where(np.abs(l) > 1e-14, l, 1.0)
    drive = np.where(np.abs(l) > 1e-14, (1.0 - ak) / safe, k)
    c = ak * c0 + drive * beta
    return (c @ U.T) @ S
