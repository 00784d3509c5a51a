"""Kernel predictors: kernel (ridge) regression, seed 002's NNGP predictor, NTK regression."""

from __future__ import annotations

import torch
from torch import nn

from memgen import MemgenError
from memgen.contracts import fail, module_dtype, number, symmetric, tensor
from memgen.kernels.empirical import _inputs, empirical_ntk
from memgen.kernels.structured import last_layer_input, structured_chain


def kernel_regression(k_train_train: torch.Tensor, k_test_train: torch.Tensor, y_train: torch.Tensor,
                      ridge: float = 0.0) -> torch.Tensor:
    """K(test, train) (K(train, train) + ridge I)^{-1} y: kernel (ridge) regression
    predictions on the test points (y may be (n,) or (n, k)). Cholesky when the
    regularised Gram is positive definite, least squares (minimum norm) otherwise.

    Contract: ``k_train_train`` a finite symmetric (n, n) float32/float64 tensor, n >= 1
    (the reference dtype; a non-symmetric K is refused, relative tolerance sqrt(eps),
    instead of one triangle being used); ``k_test_train`` finite (m, n); ``y_train``
    finite (n,) or (n, k); both converted to K's dtype; ``ridge`` >= 0."""
    k_train_train = tensor("kernel_regression", "k_train_train", k_train_train, shape=("n", "n"), finite=True)
    symmetric("kernel_regression", "k_train_train", k_train_train)
    n, dtype = len(k_train_train), k_train_train.dtype
    k_test_train = tensor("kernel_regression", "k_test_train", k_test_train, shape=(None, n), finite=True, dtype=dtype)
    y_train = tensor("kernel_regression", "y_train", y_train, finite=True, dtype=dtype)
    if y_train.dim() not in (1, 2) or len(y_train) != n:
        raise fail("kernel_regression", "y_train", f"of shape {tuple(y_train.shape)}", f"shape ({n},) or ({n}, k)")
    ridge = number("kernel_regression", "ridge", ridge, lo=0)
    K = k_train_train + ridge * torch.eye(len(k_train_train), dtype=k_train_train.dtype,
                                          device=k_train_train.device)
    y = y_train.to(K.dtype)
    col = y.reshape(len(y), -1)
    L, info = torch.linalg.cholesky_ex(K)
    if int(info) == 0:
        alpha = torch.cholesky_solve(col, L)
    else:
        alpha = torch.linalg.lstsq(K.cpu(), col.cpu(), driver="gelsd").solution.to(K.device)
    return (k_test_train.to(K.dtype) @ alpha).reshape((len(k_test_train),) + y.shape[1:])


def last_hidden_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input of the last linear layer (n, h), times its scale for FC. Contract: x as for
    :func:`empirical_ntk` (finite (n, d), n >= 1, converted to the parameters' dtype)."""
    module_dtype("last_hidden_features", "model", model)
    chain = structured_chain(model)
    if chain is None:
        raise MemgenError("last_hidden_features: needs FC or a plain Sequential of Linear + activations")
    (x,) = _inputs("last_hidden_features", model, chain, 1, x=x)
    with torch.no_grad():
        return last_layer_input(chain, x)


def nngp_predictor(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                   ridge: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed 002's NNGP predictor: the random hidden layers are kept and the last layer
    is fitted by ridge regression on the last hidden features G (n, h):
    w = (G^T G + ridge I)^{-1} G^T y (no bias). Returns (train, test) predictions.
    Contract: x_train (n, d), x_test (m, d) as for :func:`empirical_ntk`; y_train finite
    (n,) (converted to the parameters' dtype); ``ridge`` >= 0 (0 with a singular G^T G
    raises)."""
    y_train = _targets("nngp_predictor", model, x_train, y_train, x_test)
    ridge = number("nngp_predictor", "ridge", ridge, lo=0)
    with torch.no_grad():
        G = last_hidden_features(model, x_train)
        Gt = last_hidden_features(model, x_test)
        A = G.t() @ G + ridge * torch.eye(G.shape[1], dtype=G.dtype, device=G.device)
        try:
            w = torch.linalg.solve(A, G.t() @ y_train.to(G.dtype))
        except torch.linalg.LinAlgError:
            raise MemgenError(f"nngp_predictor: G^T G + {ridge:g} I is singular (features h={G.shape[1]}, "
                              f"n={len(G)}); use ridge > 0") from None
        return G @ w, Gt @ w


def ntk_regression(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                   ridge: float = 1e-4, centered: bool = False) -> torch.Tensor:
    """Kernel regression with the empirical NTK (:func:`empirical_ntk`, trained parameters)
    at the model's parameters (seed 002, ridge 1e-4). ``centered``: predict
    f0(test) + K (K + ridge)^-1 (y - f0(train)), the infinite-time linearized network,
    instead of the seed's plain K (K + ridge)^-1 y. Contract as :func:`nngp_predictor`
    (``ridge`` >= 0)."""
    y_train = _targets("ntk_regression", model, x_train, y_train, x_test)
    Ktt, Kst = empirical_ntk(model, x_train), empirical_ntk(model, x_test, x_train)
    if not centered:
        return kernel_regression(Ktt, Kst, y_train, ridge)
    with torch.no_grad():
        f0tr, f0te = model(x_train).reshape(-1), model(x_test).reshape(-1)
    return f0te + kernel_regression(Ktt, Kst, y_train.to(f0tr.dtype) - f0tr, ridge)


def _targets(caller: str, model, x_train, y_train, x_test) -> torch.Tensor:
    """x_train, x_test checked as by empirical_ntk and y_train against x_train: finite
    (n,), in the parameters' dtype."""
    dtype = module_dtype(caller, "model", model)
    x_train, _ = _inputs(caller, model, structured_chain(model), 1, x_train=x_train, x_test=x_test)
    return tensor(caller, "y_train", y_train, shape=(len(x_train),), finite=True, dtype=dtype)
