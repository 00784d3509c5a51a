"""The empirical NTK of a module, dispatching to the structured or the generic path;
kernel distances; vector-Jacobian products."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from memgen import MemgenError
from memgen.kernels.generic import generic_gram_blocks
from memgen.kernels.gram import DEFAULT_MEMORY_BUDGET
from memgen.kernels.structured import structured_blocks, structured_chain, structured_gram
from memgen.models import FC

PATHS = ("auto", "structured", "generic")


def _chain(model: nn.Module, path: str, caller: str):
    """The structured chain for ``path`` ("auto": when the model has one), or None."""
    if path not in PATHS:
        raise MemgenError(f"{caller}: unknown path '{path}'; allowed: {', '.join(PATHS)}")
    chain = structured_chain(model) if path != "generic" else None
    if chain is None and path == "structured":
        raise MemgenError(f"{caller}: no structured path for this model (memgen FC, or nn.Sequential([Flatten,] "
                          "Linear, (elementwise activation*, Linear)*) with one output); use path='generic'")
    return chain


def empirical_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *, path: str = "auto",
                  memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: str | None = None) -> torch.Tensor:
    """Empirical NTK Gram Theta(x1, x2) = J(x1) J(x2)^T, shape (n1, n2), of a
    scalar-output module (x2 = None: x1 with itself, exactly symmetric), with
    J(x) = df(x)/dw over the module's **trained parameters only** (``requires_grad``;
    a frozen weight or bias contributes nothing), at their current values.

    ``path``: ``"structured"`` (memgen :class:`FC` and plain ``nn.Sequential`` of
    ``nn.Linear`` and elementwise activations: layer-wise matrix products, no per-example
    Jacobians, upper triangle only for x2 = None; :mod:`memgen.kernels.structured`),
    ``"generic"`` (any module: per-example Jacobians by torch.func, in blocks;
    :mod:`memgen.kernels.generic`), or ``"auto"`` (structured when the model has that
    form). Both give the same matrix up to rounding. ``memory_budget``: bytes of
    temporaries (tiles, Jacobian blocks). ``progress``: label of progress lines (Gram
    entries) on stderr; None: silent. Computed in the parameters' dtype and device.
    """
    chain = _chain(model, path, "empirical_ntk")
    if chain is not None:
        return structured_gram(chain, x1, x2, memory_budget, progress)
    xs, pairs = ([x1], [(0, 0)]) if x2 is None else ([x1, x2], [(0, 1)])
    return generic_gram_blocks(model, xs, pairs, memory_budget=memory_budget, progress=progress)[0]


def empirical_ntk_blocks(model: nn.Module, x_train: torch.Tensor, x_test: torch.Tensor, *, path: str = "auto",
                         memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: str | None = None):
    """(K_train_train (n, n), K_test_train (m, n), K_test_test (m, m)) of
    :func:`empirical_ntk`, one forward pass (structured) or one Jacobian computation per
    set when it fits the budget (generic). Same arguments as :func:`empirical_ntk`."""
    chain = _chain(model, path, "empirical_ntk_blocks")
    if chain is not None:
        return structured_blocks(chain, x_train, x_test, memory_budget, progress)
    return tuple(generic_gram_blocks(model, [x_train, x_test], [(0, 0), (1, 0), (1, 1)],
                                     memory_budget=memory_budget, progress=progress))


def relative_change(K0: torch.Tensor, K1: torch.Tensor) -> float:
    """||K1 - K0||_F / ||K0||_F."""
    return float((K1 - K0).norm() / K0.norm())


def shape_change(K0: torch.Tensor, K1: torch.Tensor) -> float:
    """|| K1/||K1|| - K0/||K0|| ||_F, in [0, 2]: how much the kernel turned."""
    return float((K1 / K1.norm() - K0 / K0.norm()).norm())


def model_vjp(model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """g (n,) -> J^T g (P,), the flat gradient of sum_i g_i f(x_i) over all of
    ``model.parameters()``, in their order (``requires_grad`` is not consulted: the layout
    of ``FC.flat_parameters()``); one forward pass, J never formed. FC uses its
    hand-written backward, other modules ``torch.func.vjp``."""
    if isinstance(model, FC):
        flat = model.flat()
        w = model.flat_parameters()
        with torch.no_grad():
            _, cache = flat.forward(w, x.to(w.dtype))
        return lambda g: flat.vjp(cache, g.to(w.dtype))
    from torch.func import functional_call, vjp

    names = [k for k, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def f(*ps):
        return functional_call(model, (dict(zip(names, ps)), buffers), (x,)).reshape(-1)

    _, pullback = vjp(f, *params)
    return lambda g: torch.cat([t.reshape(-1) for t in pullback(g.to(params[0].dtype))])
