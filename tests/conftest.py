"""Shared helpers for the memgen unit tests: independent reference computations."""

import numpy as np
import pytest
from scipy import integrate


def gauss_expect(fn):
    """E[fn(z)], z ~ N(0, 1), by adaptive quadrature (split at the relu kink z = 0)."""
    dens = lambda z: float(fn(np.float64(z))) * np.exp(-z * z / 2) / np.sqrt(2 * np.pi)  # noqa: E731
    return sum(integrate.quad(dens, a, b, epsabs=1e-13, epsrel=1e-12)[0] for a, b in ((-np.inf, 0), (0, np.inf)))


def random_spd(n, seed, low=1.0, high=8.0):
    """Random SPD matrix with eigenvalues spread in [low, high]."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.linspace(low, high, n)) @ q.T


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny problems: intra-op threads only add contention on a shared machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
