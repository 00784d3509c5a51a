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
- :func:`modelwise_risk` (defined in :mod:`memgen.modelwise`, re-exported): min-norm least squares on isotropic Gaussian features vs the
  ratio n/p (model-wise double descent, peak at n/p = 1).
- :func:`gd_flow_risk_isotropic` / :func:`early_stopped_modelwise_risk`: the same
  problem trained by gradient flow from zero, risk over time from the Marchenko-Pastur
  law, and its optimally early-stopped value (no peak).

Contracts (checked on entry, :mod:`memgen.contracts`): array arguments are real, finite
and of the shapes each docstring names (d features, n samples, p hidden units); step
counts are integers >= 0 (a scalar K means k = 0..K); scales, noise levels, SNRs and
ratios >= 0, n >= 1; a bad one raises MemgenError naming it. Inputs are converted to
float64.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

from memgen import MemgenError
from memgen import contracts as c
from memgen.modelwise import early_stopped_modelwise_risk, gd_flow_risk_isotropic, modelwise_risk  # noqa: F401


def _np(a) -> np.ndarray:
    try:
        import torch

        if torch.is_tensor(a):
            a = a.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(a, dtype=np.float64)


def _steps(fn: str, steps, name: str = "steps") -> np.ndarray:
    """k = 0..K for an integer K >= 0, or a 1-D array of step counts >= 0."""
    if np.ndim(steps) == 0:
        return np.arange(c.integer(fn, name, steps.item() if hasattr(steps, "item") else steps, lo=0) + 1)
    return c.array(fn, name, steps, ndim=1, lo=0)


def _gd_inputs(fn: str, steps, s, theta, noise_std, n, lr, w0):
    """The checked (k (K, 1), s^2, theta, w0, lr, noise_std, n) of linear GD (see
    :func:`linear_gd_weight_error`)."""
    s = c.array(fn, "s", s, ndim=1, lo=0)
    d = s.shape[0]
    theta, w0 = c.per_feature(fn, "theta", theta, d), c.per_feature(fn, "w0", w0, d, default=0.0)
    lr = c.per_feature(fn, "lr", lr, d, lo=0)
    noise_std, n = c.number(fn, "noise_std", noise_std, lo=0), c.integer(fn, "n", n, lo=1)
    k = _steps(fn, steps)
    s2 = s**2
    if (k != np.round(k)).any() and (1.0 - lr * s2 < 0).any():
        raise c.fail(fn, "steps", "fractional while some lr_i s_i^2 > 1", "integer step counts: (1 - lr_i s_i^2)^k "
                     "of a negative base is defined for integer k only (fractional k need every lr_i s_i^2 <= 1)")
    return k[:, None], s2, theta, w0, lr, noise_std, n


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

    A feature with s_i = 0 contributes nothing (its own finite term: 0); see
    :func:`linear_gd_weight_error` for the contract.
    Contract: as :func:`linear_gd_weight_error`.
    """
    E, s2 = _weight_error("linear_gd_risk", steps, s, theta, noise_std, n, lr, w0)
    return (s2 * E).sum(-1) + noise_std**2


def local_extrema(curve) -> tuple[np.ndarray, np.ndarray]:
    """Indices of strict interior local minima and maxima of a sampled curve (plateaus of
    equal values are merged). Contract: a 1-D curve without NaN (inf is allowed)."""
    curve = c.array("local_extrema", "curve", curve, ndim=1, finite=False, nonempty=False)
    if np.isnan(curve).any():
        raise c.fail("local_extrema", "curve", f"a curve with {int(np.isnan(curve).sum())} NaN", "no NaN")
    keep = np.r_[True, np.diff(curve) != 0]
    idx = np.nonzero(keep)[0]
    v = curve[idx]
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
    Contract: W finite (p, d); v finite (p,), not zero.
    """
    W, v = c.layers("rank_one_state", W, v)
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
    Contract: W finite (p, d); v (p,); b (d,), not zero.
    """
    W, v = c.layers("growing_mode_state", W, v)
    b = c.array("growing_mode_state", "b", b, shape=(W.shape[1],))
    if not b.any():
        raise c.fail("growing_mode_state", "b", "zero", "b = X^T y / n != 0 (no growing mode otherwise)")
    bh = b / np.linalg.norm(b)
    m = float(np.linalg.norm(0.5 * (v + W @ bh)))
    return m, m * bh


def two_layer_flow(u, z, A, b, lr=1.0):
    """The vector field of :func:`two_layer_ode` at states (u (...), z (..., d)):
    ``(lr_v z.g, lr_W u g)`` with ``g = b - A (u z)``; ``lr`` one step size or (lr_W, lr_v).

    Contract: z finite with at least one axis, its last of d entries; u finite of shape
    z.shape[:-1]; A finite (d, d), b finite (d,); lr one number > 0 or a pair.
    """
    fn = "two_layer_flow"
    A = c.array(fn, "A", A, shape=("d", "d"))
    d = A.shape[0]
    b = c.array(fn, "b", b, shape=(d,))
    z = c.array(fn, "z", z)
    if z.ndim == 0 or z.shape[-1] != d:
        raise c.fail(fn, "z", c.describe(z), f"shape (..., {d}) (d = {d}, the size of A)")
    u = c.array(fn, "u", u, shape=z.shape[:-1])
    return _flow(u, z, A, b, c.pair(fn, "lr", lr, lo=0, lo_open=True))


def _flow(u, z, A, b, lr):
    """:func:`two_layer_flow` without the checks (the ODE's right-hand side; the plane
    fields, whose states are NaN where the invariant surface does not reach)."""
    lr_W, lr_v = (float(lr), float(lr)) if np.ndim(lr) == 0 else (float(lr[0]), float(lr[1]))
    u, z = _np(u), _np(z)
    g = _np(b) - (u[..., None] * z) @ _np(A).T
    return lr_v * (z * g).sum(-1), lr_W * u[..., None] * g


def ode_start(W0, v0, b, init: str = "gaussian") -> tuple[float, np.ndarray]:
    """The (u, z) the reduced ODE starts from for layers (W0, v0): the growing mode of a
    ``"gaussian"`` init (:func:`growing_mode_state`), the exact rank-one state otherwise
    (:func:`rank_one_state`).

    Contract: W0 finite (p, d), v0 finite (p,), b finite (d,); ``init`` one of gaussian,
    fixed, rank_one; b != 0 for gaussian (its growing mode), v0 != 0 otherwise.
    """
    fn = "ode_start"
    init = c.choice(fn, "init", init, ("gaussian", "fixed", "rank_one"))
    W0, v0 = c.layers(fn, W0, v0, names=("W0", "v0"))
    b = c.array(fn, "b", b, shape=(W0.shape[1],))
    if init == "gaussian" and not b.any():
        raise c.fail(fn, "b", "zero", "b = X^T y / n != 0 (a gaussian init starts on its growing mode)")
    if init != "gaussian" and not v0.any():
        raise c.fail(fn, "v0", "zero", "v0 != 0 (v = 0 is a fixed point of the dynamics)")
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

    Contract: times a non-empty 1-D array, >= 0, non-decreasing; A (d, d), b (d,), z0
    (d,), u0 finite; lr one number > 0 or a pair; rtol, atol > 0.
    """
    fn = "two_layer_ode"
    t = c.array(fn, "times", times, ndim=1, lo=0)
    if (np.diff(t) < 0).any():
        raise c.fail(fn, "times", c.describe(times), "a 1-D array of times >= 0 in increasing order")
    A = c.array(fn, "A", A, shape=("d", "d"))
    d = A.shape[0]
    b, z0, u0 = c.array(fn, "b", b, shape=(d,)), c.array(fn, "z0", z0, shape=(d,)), c.number(fn, "u0", u0)
    lr_W, lr_v = c.pair(fn, "lr", lr, lo=0, lo_open=True)
    rtol, atol = c.number(fn, "rtol", rtol, lo=0, lo_open=True), c.number(fn, "atol", atol, lo=0, lo_open=True)

    def rhs(_, y):
        du, dz = _flow(y[0], y[1:], A, b, lr)
        return np.concatenate(([du], dz))

    sol = solve_ivp(rhs, (0.0, float(t.max())), np.concatenate(([float(u0)], z0)), t_eval=t,
                    method="LSODA", rtol=rtol, atol=atol)
    if not sol.success:
        raise MemgenError(f"two_layer_ode: integration failed: {sol.message}")
    return sol.y[0], sol.y[1:].T.reshape(len(t), d)


def two_layer_ode_risk(times, X, y, s, theta, noise_std: float, u0: float, z0, lr=1.0) -> np.ndarray:
    """Population risk ``sum_i s_i^2 (u z_i - theta_i)^2 + sigma^2`` along
    :func:`two_layer_ode` for the training set (X, y). Contract: X (n, d), y (n,), s and
    theta (d,), noise_std >= 0; the rest as for :func:`two_layer_ode`."""
    X, y = c.design("two_layer_ode_risk", X, y)
    s, theta = (c.array("two_layer_ode_risk", k, a, shape=(X.shape[1],)) for k, a in (("s", s), ("theta", theta)))
    noise_std = c.number("two_layer_ode_risk", "noise_std", noise_std, lo=0)
    n = X.shape[0]
    u, z = two_layer_ode(times, X.T @ X / n, X.T @ y / n, u0, z0, lr)
    w = u[:, None] * z
    return ((w - theta) ** 2 * s**2).sum(-1) + noise_std**2


# ---------------------------------------------------------------------------------------
# per-feature weight errors of linear GD; the linearised (lazy) two-layer network
# ---------------------------------------------------------------------------------------


def linear_gd_weight_error(steps, s, theta, noise_std: float, n: int, lr, w0=None) -> np.ndarray:
    """Expected squared error of each weight after k GD steps, shape (len(steps), d):

    ``E (w_i(k) - theta_i)^2 = (1 - lr_i s_i^2)^(2k) (theta_i - w0_i)^2
    + sigma^2 / (n s_i^2) (1 - (1 - lr_i s_i^2)^k)^2``

    (same model, conventions and exactness as :func:`linear_gd_risk`, whose excess risk
    is ``sum_i s_i^2`` times this). Dividing by ``theta_i^2`` gives the seed's relative
    "MSE weights" per feature. A feature with s_i = 0 never moves: E_i = (theta_i -
    w0_i)^2 exactly (the noise term's limit is 0, not 0/0).

    Contract: ``steps`` an integer K >= 0 (k = 0..K) or a 1-D array of counts >= 0
    (fractional counts only when every lr_i s_i^2 <= 1: a negative base has no
    fractional power); s (d,) >= 0, d >= 1; theta, w0 (d,) or one number; lr >= 0, one
    number or (d,); noise_std >= 0; n an integer >= 1.
    """
    return _weight_error("linear_gd_weight_error", steps, s, theta, noise_std, n, lr, w0)[0]


def _weight_error(fn: str, steps, s, theta, noise_std, n, lr, w0):
    """(E (K, d) of :func:`linear_gd_weight_error`, s^2), the inputs checked for ``fn``."""
    k, s2, theta, w0, lr, noise_std, n = _gd_inputs(fn, steps, s, theta, noise_std, n, lr, w0)
    ak = np.power(1.0 - lr * s2, k)  # 1 - lr s^2 < 0 (lr_i s_i^2 > 1) needs integer k
    coef = np.divide(noise_std**2, n * s2, out=np.zeros_like(s2), where=s2 > 0)  # 0 at s_i = 0 (see above)
    return ak**2 * (theta - w0) ** 2 + coef * (1.0 - ak) ** 2, s2


def linear_gd_group_curves(steps, s, theta, noise_std: float, n: int, lr, sizes):
    """Per group of features (``sizes = (d1, d2, ...)``, in order) the closed forms of
    linear GD after k steps: returns (risk (K,) of :func:`linear_gd_risk`, excess-risk
    contributions (K, G) ``sum_{i in g} s_i^2 E_i``, relative weight errors (K, G)
    ``mean_{i in g} E_i / theta_i^2``) with E = :func:`linear_gd_weight_error` (K, d); the
    contributions sum to the excess risk R - sigma^2. Contract as
    :func:`linear_gd_weight_error`, with theta_i != 0 (relative errors) and ``sizes``
    integers >= 0 that split d."""
    fn = "linear_gd_group_curves"
    if not (c.array(fn, "theta", theta) != 0).all():
        raise c.fail(fn, "theta", "zero in some entry", "theta_i != 0 (relative weight errors)")
    sizes = [c.integer(fn, "sizes", k, lo=0) for k in c.array(fn, "sizes", sizes, ndim=1)]
    E, s2 = _weight_error(fn, steps, s, theta, noise_std, n, lr, None)
    th2 = _np(theta) ** 2
    bounds = np.cumsum([0] + sizes)
    if bounds[-1] != E.shape[1]:
        raise MemgenError(f"linear_gd_group_curves: sizes {tuple(sizes)} do not split d={E.shape[1]}")
    groups = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    rel = E / th2
    return ((s2 * E).sum(-1) + c.number(fn, "noise_std", noise_std) ** 2, np.stack([(s2[g] * E[:, g]).sum(-1) for g in groups], axis=-1),
            np.stack([rel[:, g].mean(-1) for g in groups], axis=-1))


def two_layer_theory(steps, X, y, W0, v0, lr, init: str = "gaussian") -> tuple[np.ndarray, np.ndarray]:
    """End-to-end weights (len(steps), d) that theory predicts for GD on the two-layer
    linear network from (W0, v0) on the training set (X, y): the reduced (u, z) ODE
    (:func:`two_layer_ode`, started on the growing mode of a ``"gaussian"`` init,
    :func:`growing_mode_state`, or on the exact rank-one state otherwise,
    :func:`rank_one_state`) and the linearised (lazy) network (:func:`lazy_two_layer`).
    Returns (w_ode, w_lazy). Contract: steps as for :func:`linear_gd_weight_error`
    (sorted); X (n, d), y (n,), W0 (p, d), v0 (p,); lr as for :func:`two_layer_ode`;
    ``init`` one of gaussian, fixed, rank_one."""
    X, y = c.design("two_layer_theory", X, y)
    W0, v0 = c.layers("two_layer_theory", W0, v0, X.shape[1], ("W0", "v0"))
    c.choice("two_layer_theory", "init", init, ("gaussian", "fixed", "rank_one"))
    steps = _steps("two_layer_theory", steps)
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

    Contract: steps as for :func:`linear_gd_weight_error`; A (d, d), b (d,), W0 (p, d),
    v0 (p,); lr one number > 0 or a pair.
    """
    fn = "lazy_two_layer"
    A = c.array(fn, "A", A, shape=("d", "d"))
    d = A.shape[0]
    b = c.array(fn, "b", b, shape=(d,))
    W0, v0 = c.layers(fn, W0, v0, d, ("W0", "v0"))
    lr_W, lr_v = c.pair(fn, "lr", lr, lo=0, lo_open=True)
    M0 = lr_v * W0.T @ W0 + lr_W * float(v0 @ v0) * np.eye(d)
    m, Q = np.linalg.eigh(M0)
    if m.min() <= 0:
        raise MemgenError("lazy_two_layer: the preconditioner at init is singular (v0 = 0 and rank W0 < d)")
    S = (Q * np.sqrt(m)) @ Q.T
    Sinv = (Q / np.sqrt(m)) @ Q.T
    l, U = np.linalg.eigh(S @ A @ S)
    beta = U.T @ (S @ b)
    c0 = U.T @ (Sinv @ (W0.T @ v0))
    k = _steps(fn, steps)[:, None]
    ak = np.power(1.0 - l, k)
    safe = np.where(np.abs(l) > 1e-14, l, 1.0)
    drive = np.where(np.abs(l) > 1e-14, (1.0 - ak) / safe, k)
    cj = ak * c0 + drive * beta
    return (cj @ U.T) @ S
