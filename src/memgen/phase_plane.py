"""The reduced (u, z) dynamics of a two-layer linear network in the plane: seed 004's
"VECTOR FIELD", with the paths of the trained network and of the ODE on top.

Setting (:mod:`memgen.linear`, :mod:`memgen.theory`): d = 2 features, one per eigenvalue
group (``z = (z1, z2)``: z1 on the large eigenvalue, z2 on the small one), the network
``f(x) = v^T W x`` trained by GD, and its rank-one reduction ``w = u z`` obeying
:func:`memgen.theory.two_layer_flow` ``du = lr_v z.g``, ``dz = lr_W u g``,
``g = b - A (u z)``. The state (u, z1, z2) is three-dimensional; the seed draws the field
on planes at fixed values of the third coordinate. Here the third coordinate is taken
on the flow's invariant surface instead: ``d(u^2/lr_v - |z|^2/lr_W)/dtau = 0``, so
``u^2/lr_v - |z|^2/lr_W = c`` (:func:`invariant`) along every ODE path, and on the
surface of the ODE's own c the plane's field is exactly the projection of the flow the
ODE path follows (its arrows are tangent to the drawn path). Where the surface does not
reach a point of the plane, the field there is NaN.

The network's path is its rank-one projection ``(u, z) = (|v|, W^T v / |v|)``
(:func:`memgen.theory.rank_one_state`, exact for aligned layers, ``u z = W^T v`` always).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memgen import contracts

PLANES = ("u_z1", "u_z2", "z1_z2")  # (x axis, y axis) of each plane; the third coordinate from c
INITS = ("gaussian", "fixed", "rank_one")


def _lrs(fn: str, lr) -> tuple[float, float]:
    """(lr_W, lr_v): one step size > 0 or a pair."""
    return contracts.pair(fn, "lr", lr, lo=0, lo_open=True)


def invariant(u, z, lr=1.0):
    """``u^2 / lr_v - |z|^2 / lr_W``: constant along the reduced flow (u (...), z (..., d)).

    Contract: z finite with at least one axis (d its last); u finite of shape
    z.shape[:-1]; lr one number > 0 or a pair (lr_W, lr_v).
    """
    fn = "invariant"
    z = contracts.array(fn, "z", z)
    if z.ndim == 0:
        raise contracts.fail(fn, "z", contracts.describe(z), "states (..., d): at least one axis")
    u = contracts.array(fn, "u", u, shape=z.shape[:-1])
    lr_W, lr_v = _lrs(fn, lr)
    return u ** 2 / lr_v - (z ** 2).sum(-1) / lr_W


def plane_field(plane: str, x, y, A, b, lr, c: float, sign: float = 1.0):
    """The flow at the points (x, y) of ``plane`` (arrays of one shape) with the third
    coordinate on the invariant surface ``c`` (z1 or z2 of the sign ``sign``; u >= 0):
    returns (third, dx, dy), NaN where the surface does not reach (x, y).

    Contract: ``plane`` one of :data:`PLANES`; x finite (any shape), y finite of x's
    shape; A finite (2, 2), b finite (2,); lr one number > 0 or a pair; c a finite
    number; sign 1 or -1.
    """
    from memgen.theory import _flow

    fn = "plane_field"
    contracts.choice(fn, "plane", plane, PLANES)
    x = contracts.array(fn, "x", x, nonempty=False)
    y = contracts.array(fn, "y", y, shape=x.shape, nonempty=False)
    A, b = contracts.array(fn, "A", A, shape=(2, 2)), contracts.array(fn, "b", b, shape=(2,))
    lr_W, lr_v = _lrs(fn, lr)
    c = contracts.number(fn, "c", c)
    if contracts.number(fn, "sign", sign) not in (1.0, -1.0):
        raise contracts.fail(fn, "sign", f"{float(sign):g}", "1 or -1 (the sign of the third coordinate)")
    with np.errstate(invalid="ignore"):
        if plane == "z1_z2":
            third = np.sqrt(lr_v * (c + (x**2 + y**2) / lr_W))
            u, z = third, np.stack([x, y], -1)
        else:
            r = lr_W * (x**2 / lr_v - c) - y**2
            third = np.where(x >= 0, np.copysign(np.sqrt(r), sign), np.nan)
            u, z = x, np.stack([y, third] if plane == "u_z1" else [third, y], -1)
        du, dz = _flow(u, z, A, b, (lr_W, lr_v))
    dx, dy = {"z1_z2": (dz[..., 0], dz[..., 1]), "u_z1": (du, dz[..., 0]), "u_z2": (du, dz[..., 1])}[plane]
    bad = ~np.isfinite(third)
    return third, np.where(bad, np.nan, dx), np.where(bad, np.nan, dy)


def coordinates(plane: str, u, z) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of states (u (K,), z (K, 2)) in ``plane``.

    Contract: ``plane`` one of :data:`PLANES`; u finite (K,), K >= 1; z finite (K, 2).
    """
    fn = "coordinates"
    contracts.choice(fn, "plane", plane, PLANES)
    u = contracts.array(fn, "u", u, ndim=1)
    z = contracts.array(fn, "z", z, shape=(len(u), 2))
    return {"u_z1": (u, z[:, 0]), "u_z2": (u, z[:, 1]), "z1_z2": (z[:, 0], z[:, 1])}[plane]


def _path_inputs(fn: str, X, y, s, theta, noise_std, steps, lr, W0, v0) -> None:
    """The checks of :func:`network_path`'s arguments (for ``fn``)."""
    X, y = contracts.design(fn, X, y)
    d = X.shape[1]
    contracts.per_feature(fn, "s", s, d, lo=0)
    contracts.per_feature(fn, "theta", theta, d)
    contracts.number(fn, "noise_std", noise_std, lo=0)
    k = contracts.array(fn, "steps", steps, ndim=1, lo=0)
    if (k != np.round(k)).any() or (np.diff(k) < 0).any():
        raise contracts.fail(fn, "steps", contracts.describe(steps), "integer step counts >= 0 in increasing order")
    _lrs(fn, lr)
    W0, v0 = contracts.layers(fn, W0, v0, d, ("W0", "v0"))
    if k[0] == 0 and not v0.any():
        raise contracts.fail(fn, "v0", "zero", "v0 != 0 when the steps start at 0 (its rank-one projection needs |v| > 0)")


def network_path(X, y, s, theta, noise_std: float, steps, lr, W0, v0) -> tuple[np.ndarray, np.ndarray]:
    """GD on the two-layer network (:func:`memgen.linear.train_two_layer`) from (W0, v0),
    and its rank-one projection (u (K,), z (K, d)) at the sorted ``steps`` (the first may
    be 0): the run continues from one recorded step to the next, as one run.

    Contract: X finite (n, d), y finite (n,); s >= 0 and theta finite, one number or
    (d,); noise_std >= 0; steps a non-empty 1-D array of integer counts >= 0 in
    non-decreasing order; lr one number > 0 or a pair; W0 finite (p, d), v0 finite (p,),
    not zero when the steps start at 0.
    """
    from memgen.linear import train_two_layer
    from memgen.theory import rank_one_state

    _path_inputs("network_path", X, y, s, theta, noise_std, steps, lr, W0, v0)
    W, v = W0, v0
    done, us, zs = 0, [], []
    for k in np.asarray(steps, dtype=np.int64):
        if k > done:
            run = train_two_layer(X, y, s, theta, noise_std, int(k - done), lr, W0=W, v0=v)
            W, v, done = run.W, run.v, int(k)
        u, z = rank_one_state(W, v)
        us.append(u)
        zs.append(z)
    return np.array(us), np.stack(zs)


@dataclass
class VectorField:
    """One example: the steps K, the ODE's and the network's (u, z) there, the invariant
    c of the ODE, and per plane the grid axes (G,) and the field (third, dx, dy) (G, G)
    at ``x[j], y[i]`` (index [i, j])."""

    step: np.ndarray
    u_ode: np.ndarray
    z_ode: np.ndarray
    u_net: np.ndarray
    z_net: np.ndarray
    c: float
    planes: dict[str, dict[str, np.ndarray]]


def _axis(values, n: int, nonnegative: bool = False) -> np.ndarray:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    lo, hi = min(0.0, float(v.min())), max(0.0, float(v.max()))
    pad = 0.08 * (hi - lo or 1.0)
    return np.linspace(0.0 if nonnegative else lo - pad, hi + pad, n)


def vector_field(X, y, s, theta, noise_std: float, steps, lr, W0, v0, init: str = "gaussian",
                 grid: int = 20) -> VectorField:
    """Seed 004's vector fields for one network: GD from (W0, v0) on (X, y) with d = 2
    (:func:`network_path`), the reduced ODE from :func:`memgen.theory.ode_start`, and the
    field in each of :data:`PLANES` on a ``grid`` x ``grid`` box covering both paths and
    the origin, on the ODE's invariant surface (the sheet of the ODE's end point).

    Contract: as :func:`network_path` with d = 2 (X (n, 2); s, theta one number or (2,);
    W0 (p, 2)); ``init`` one of gaussian, fixed, rank_one (b = X^T y / n != 0 for
    gaussian); grid an integer >= 2.
    """
    from memgen.theory import ode_start, two_layer_ode

    fn = "vector_field"
    X, y = contracts.design(fn, X, y)
    n, d = X.shape
    if d != 2:
        raise contracts.fail(fn, "X", contracts.describe(X), "d = 2 features (one per group: the planes need z1, z2)")
    _path_inputs(fn, X, y, s, theta, noise_std, steps, lr, W0, v0)
    contracts.choice(fn, "init", init, INITS)
    grid = contracts.integer(fn, "grid", grid, lo=2)
    A, b = X.T @ X / n, X.T @ y / n
    steps = np.asarray(steps, dtype=np.int64)
    u_ode, z_ode = two_layer_ode(steps.astype(float), A, b, *ode_start(W0, v0, b, init), lr)
    u_net, z_net = network_path(X, y, s, theta, noise_std, steps, lr, W0, v0)
    c = float(np.mean(invariant(u_ode, z_ode, lr)))
    planes = {}
    for plane in PLANES:
        (xo, yo), (xn, yn) = coordinates(plane, u_ode, z_ode), coordinates(plane, u_net, z_net)
        gx = _axis(np.r_[xo, xn], grid, nonnegative=plane != "z1_z2")
        gy = _axis(np.r_[yo, yn], grid)
        third_axis = {"u_z1": 1, "u_z2": 0}.get(plane)
        sign = 1.0 if third_axis is None else float(np.sign(z_ode[-1, third_axis]) or 1.0)
        third, dx, dy = plane_field(plane, *np.meshgrid(gx, gy), A, b, lr, c, sign)
        planes[plane] = {"x": gx, "y": gy, "third": third, "dx": dx, "dy": dy}
    return VectorField(steps, u_ode, z_ode, u_net, z_net, c, planes)
