"""Diagnostics of the linear family (:mod:`memgen.linear`, which re-exports them):
per-group weight errors and the Jacobian of the two-layer linear network f(x) = v^T W x.
Contracts are checked on entry (:mod:`memgen.contracts`)."""

from __future__ import annotations

from typing import Sequence

import torch

from memgen import MemgenError
from memgen import contracts as c

_arg = c.float64_tensor


def _network(fn: str, X, W, v):
    """The checked inputs X (n, d), W (p, d), v (p,) of the two-layer network."""
    X = c.design(fn, X)[0]
    return tuple(map(torch.from_numpy, (X, *c.layers(fn, W, v, X.shape[1]))))


def group_weight_error(w, theta, sizes: Sequence[int]) -> torch.Tensor:
    """The seed's "MSE weights" per group: the mean over each group of features of
    ``((w_i - theta_i) / theta_i)^2`` (relative squared error of the end-to-end weights).

    ``w``: (..., d); ``sizes = (d1, d2, ...)`` splits the features in order (for
    :func:`two_group_scales`: the large-eigenvalue group first). Returns (..., len(sizes)).
    ``theta_i`` must be nonzero. Contract: w (..., d) (non-finite from a diverged run gives
    non-finite errors); theta finite (d,).
    """
    w = _arg("group_weight_error", "w", w, ndim=range(1, 8), finite=False)  # a diverged run's: NaN errors
    theta = _arg("group_weight_error", "theta", theta, (w.shape[-1],))
    if sum(int(k) for k in sizes) != w.shape[-1]:
        raise MemgenError(f"group_weight_error: sizes {tuple(sizes)} do not split d={w.shape[-1]}")
    if bool((theta == 0).any()):
        raise MemgenError("group_weight_error: theta has zero entries (relative error undefined)")
    rel = ((w - theta) / theta) ** 2
    return torch.stack([part.mean(-1) for part in torch.split(rel, [int(k) for k in sizes], dim=-1)], dim=-1)


def two_layer_jacobian(X, W, v) -> torch.Tensor:
    """Jacobian of the outputs ``f(x_k) = v^T W x_k`` on the rows of X with respect to the
    parameters, shape (n, p*d + p): first ``df/dW_jl = v_j x_kl`` (W flattened row-major),
    then ``df/dv_j = (W x_k)_j``. (The seed's ``get_jacobian_two_layer`` keeps the W block
    only: it skips parameters with fewer than 2 dimensions, but torch's second layer
    weight is (1, p), so both blocks are in; same columns up to order.) Contract: X
    finite (n, d), W (p, d), v (p,).
    """
    X, W, v = _network("two_layer_jacobian", X, W, v)
    n = X.shape[0]
    JW = (v[None, :, None] * X[:, None, :]).reshape(n, -1)
    return torch.cat([JW, X @ W.T], dim=1)


def jacobian_spectrum(X, W, v) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values of :func:`two_layer_jacobian` (descending, min(n, p*d + p) of
    them) and, per right singular vector, the share of its squared norm on the W block
    (the seed's ``v1^2 / (v1^2 + v2^2)``; 1 - share lies on v).

    ``J J^T = ||v||^2 X X^T + X W^T W X^T``: the first term is the second layer's, the
    second the first layer's contribution to the network's tangent kernel. Contract as
    :func:`two_layer_jacobian`.
    """
    X, W, v = _network("jacobian_spectrum", X, W, v)
    J = two_layer_jacobian(X, W, v)
    _, sv, Vh = torch.linalg.svd(J, full_matrices=False)
    pd = W.numel()
    share = (Vh[:, :pd] ** 2).sum(-1) / (Vh**2).sum(-1)
    return sv, share


def jacobian_spectra(X, run):
    """:func:`jacobian_spectrum` of a :class:`TwoLayerRun` at init and at the end:
    (sv_init, share_init, sv_final, share_final, diverged). A run whose risk or layers are
    not finite (GD diverged) has no final spectrum (the SVD refuses non-finite input):
    NaN of the init's shapes, and ``diverged`` True. Contract: ``run`` a TwoLayerRun."""
    if not all(hasattr(run, k) for k in ("W0", "v0", "W", "v", "risk")):
        raise c.fail("jacobian_spectra", "run", c.describe(run), "a TwoLayerRun (memgen.linear.train_two_layer)")
    sv0, share0 = jacobian_spectrum(X, run.W0, run.v0)
    diverged = not (torch.isfinite(run.risk).all() and torch.isfinite(run.W).all() and torch.isfinite(run.v).all())
    sv1, share1 = ((torch.full_like(sv0, torch.nan), torch.full_like(share0, torch.nan)) if diverged
                   else jacobian_spectrum(X, run.W, run.v))
    return sv0, share0, sv1, share1, diverged
