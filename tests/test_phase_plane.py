"""Seed 004's vector fields (memgen.phase_plane): the reduced (u, z) flow conserves
u^2/lr_v - |z|^2/lr_W, the plane fields are that flow on the invariant surface (tangent
to the ODE's path, NaN where the surface does not reach), the network's path is one GD
run recorded in pieces, and from a small init the network ends where the ODE does."""

from __future__ import annotations

import numpy as np
import pytest

from memgen import MemgenError, linear, phase_plane, theory

LR = (0.02, 0.05)  # (lr_W, lr_v): unequal, so the invariant's weights matter


def _problem(kappa=100.0, scale=0.01, hidden=10):
    s, theta = linear.two_group_teacher(1, 1, kappa, 1.0, 1.0)
    X, y = linear.linear_teacher(10, 2, s, theta, 1.0, seed=12, decoupled=True)
    W0, v0 = linear.two_layer_init(2, hidden, "gaussian", scale, 0)
    return s, theta, X, y, W0, v0


def _ode(u0=0.7, z0=(0.2, -0.1), steps=4000):
    s, theta, X, y, *_ = _problem()
    X, y = X.numpy(), y.numpy()
    A, b = X.T @ X / len(y), X.T @ y / len(y)
    t = np.linspace(0, steps, 200)
    u, z = theory.two_layer_ode(t, A, b, u0, np.array(z0), LR)
    return A, b, u, z


def test_invariant_is_conserved_along_the_ode():
    _, _, u, z = _ode()
    c = phase_plane.invariant(u, z, LR)
    assert np.ptp(c) < 1e-6 * np.abs(c).max() and abs(c[0] - (0.7**2 / 0.05 - 0.05 / 0.02)) < 1e-12
    assert np.ptp(u) > 0.1  # (it moved)


@pytest.mark.parametrize("plane", phase_plane.PLANES)
def test_plane_field_is_the_flow_on_the_invariant_surface(plane):
    A, b, u, z = _ode()
    c = float(phase_plane.invariant(u[0], z[0], LR))
    du, dz = theory.two_layer_flow(u, z, A, b, LR)
    x, y = phase_plane.coordinates(plane, u, z)
    third_true = {"u_z1": z[:, 1], "u_z2": z[:, 0], "z1_z2": u}[plane]
    want = {"u_z1": (du, dz[:, 0]), "u_z2": (du, dz[:, 1]), "z1_z2": (dz[:, 0], dz[:, 1])}[plane]
    for k in range(0, len(u), 17):
        sign = 1.0 if plane == "z1_z2" else float(np.sign(third_true[k]))
        third, dx, dy = phase_plane.plane_field(plane, x[k], y[k], A, b, LR, c, sign)
        np.testing.assert_allclose([third, dx, dy], [third_true[k], want[0][k], want[1][k]], rtol=1e-6, atol=1e-9)
    # a point the surface does not reach has no field
    far = {"u_z1": (0.1, 5.0), "u_z2": (0.1, 5.0), "z1_z2": (0.0, 0.0)}[plane]
    c_far = 1.0 if plane != "z1_z2" else -1.0  # (u^2 = lr_v (c + |z|^2 / lr_W) < 0 at z = 0)
    assert all(np.isnan(v) for v in phase_plane.plane_field(plane, *far, A, b, LR, c_far))


def test_network_path_is_one_run_recorded_in_pieces():
    s, theta, X, y, W0, v0 = _problem(scale=0.3)
    steps = np.array([0, 3, 10, 50])
    u, z = phase_plane.network_path(X, y, s, theta, 1.0, steps, LR, W0, v0)
    run = linear.train_two_layer(X, y, s, theta, 1.0, 50, LR, W0=W0, v0=v0)
    np.testing.assert_allclose(u[:, None] * z, run.w[steps].numpy(), rtol=1e-12, atol=1e-15)
    u_end, z_end = theory.rank_one_state(run.W, run.v)  # the pieces end with the one run's layers, bit for bit
    assert u[-1] == u_end and np.array_equal(z[-1], z_end)


def test_vector_field_of_a_small_init_ends_where_the_ode_ends():
    s, theta, X, y, W0, v0 = _problem(kappa=1.0)
    steps = linear.logged_steps(4000, 30)
    vf = phase_plane.vector_field(X, y, s, theta, 1.0, steps, 0.05, W0, v0, "gaussian", grid=6)
    w_star = np.linalg.solve(X.T.numpy() @ X.numpy(), X.T.numpy() @ y.numpy())  # least squares: both converge there
    np.testing.assert_allclose(vf.u_ode[-1] * vf.z_ode[-1], w_star, rtol=1e-4)
    np.testing.assert_allclose(vf.u_net[-1] * vf.z_net[-1], w_star, rtol=1e-4)
    assert abs(vf.c) < 1e-9  # (the growing-mode start has u = |z|)
    for plane, f in vf.planes.items():
        assert f["x"].shape == f["y"].shape == (6,) and f["dx"].shape == f["third"].shape == (6, 6)
        assert f["x"][0] <= 0 <= f["x"][-1] and f["y"][0] <= 0 <= f["y"][-1]  # the saddle at the origin is drawn
        assert np.isfinite(f["dx"]).any()
    with pytest.raises(MemgenError, match="d = 2"):
        phase_plane.vector_field(np.ones((4, 3)), np.ones(4), s, theta, 1.0, steps, 0.05, np.ones((5, 3)), np.ones(5))
