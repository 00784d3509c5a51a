"""The empirical NTK of a module, dispatching to the structured or the generic path;
kernel distances; vector-Jacobian products."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from memgen import MemgenError
from memgen.contracts import describe, fail, integer, module_dtype, rows, tensor
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


def _inputs(caller: str, model: nn.Module, chain, memory_budget, **xs):
    """The inputs ``xs`` (name -> (n, ...) tensor or None) checked and in the parameters'
    dtype (the reference), and the checked memory budget."""
    dtype = module_dtype(caller, "model", model)
    integer(caller, "memory_budget", memory_budget, lo=1)
    probe = chain if chain is not None else structured_chain(model)  # also on the generic path: check early
    width = probe[0][0].W.shape[1] if probe is not None else None  # the features the first layer takes
    out = []
    for name, x in xs.items():
        if x is None:
            out.append(None)
            continue
        out.append(rows(caller, name, x, width, dtype=dtype, finite=True))
    return out


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

    Contract: ``model`` a module with parameters of one dtype, float32 or float64 (the
    reference: x1, x2 of the other float dtype are converted on both paths, the Gram is
    in the parameters' dtype); x1, x2 finite float tensors (n, ...), n >= 1 examples in
    rows (a structured model: exactly its input features per row); ``memory_budget`` >= 1.
    """
    chain = _chain(model, path, "empirical_ntk")
    x1, x2 = _inputs("empirical_ntk", model, chain, memory_budget, x1=x1, x2=x2)
    if chain is not None:
        return structured_gram(chain, x1, x2, memory_budget, progress)
    xs, pairs = ([x1], [(0, 0)]) if x2 is None else ([x1, x2], [(0, 1)])
    return generic_gram_blocks(model, xs, pairs, memory_budget=memory_budget, progress=progress)[0]


def empirical_ntk_blocks(model: nn.Module, x_train: torch.Tensor, x_test: torch.Tensor, *, path: str = "auto",
                         memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: str | None = None):
    """(K_train_train (n, n), K_test_train (m, n), K_test_test (m, m)) of
    :func:`empirical_ntk`, one forward pass (structured) or one Jacobian computation per
    set when it fits the budget (generic). Same arguments and contract as :func:`empirical_ntk`.
    Contract: as :func:`empirical_ntk`, for x_train and x_test (n, m >= 1).
    """
    chain = _chain(model, path, "empirical_ntk_blocks")
    x_train, x_test = _inputs("empirical_ntk_blocks", model, chain, memory_budget, x_train=x_train, x_test=x_test)
    if chain is not None:
        return structured_blocks(chain, x_train, x_test, memory_budget, progress)
    return tuple(generic_gram_blocks(model, [x_train, x_test], [(0, 0), (1, 0), (1, 1)],
                                     memory_budget=memory_budget, progress=progress))


def _pair(caller: str, K0, K1):
    """Two finite kernels of one shape, K1 in K0's dtype, neither zero."""
    K0 = tensor(caller, "K0", K0, finite=True)
    K1 = tensor(caller, "K1", K1, shape=tuple(K0.shape), finite=True, dtype=K0.dtype)
    for name, K in (("K0", K0), ("K1", K1)):
        if not bool(K.ne(0).any()):
            raise fail(caller, name, f"{describe(K)} of zeros", "a kernel with ||K||_F > 0")
    return K0, K1


def relative_change(K0: torch.Tensor, K1: torch.Tensor) -> float:
    """||K1 - K0||_F / ||K0||_F. Contract: K0, K1 finite tensors of one shape (K1
    converted to K0's dtype), K0 and K1 not all zero."""
    K0, K1 = _pair("relative_change", K0, K1)
    return float((K1 - K0).norm() / K0.norm())


def shape_change(K0: torch.Tensor, K1: torch.Tensor) -> float:
    """|| K1/||K1|| - K0/||K0|| ||_F, in [0, 2]: how much the kernel turned. Contract as
    :func:`relative_change`."""
    K0, K1 = _pair("shape_change", K0, K1)
    return float((K1 / K1.norm() - K0 / K0.norm()).norm())


def model_vjp(model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """g (n,) -> J^T g (P,), the flat gradient of sum_i g_i f(x_i) over all of
    ``model.parameters()``, in their order (``requires_grad`` is not consulted: the layout
    of ``FC.flat_parameters()``); one forward pass, J never formed. FC uses its
    hand-written backward, other modules ``torch.func.vjp``. Contract: x finite (n, ...),
    n >= 1, converted to the parameters' dtype (the reference; an FC: n rows of its d
    features); g checked at each call: n entries, converted too."""
    chain = structured_chain(model) if isinstance(model, FC) else None
    (x,) = _inputs("model_vjp", model, chain, 1, x=x)
    n = len(x)

    def checked(g):
        return tensor("model_vjp's function", "g", g, shape=(n,), dtype=x.dtype)

    if isinstance(model, FC):
        flat = model.flat()
        w = model.flat_parameters()
        with torch.no_grad():
            _, cache = flat.forward(w, x.to(w.dtype))
        return lambda g: flat.vjp(cache, checked(g))
    from torch.func import functional_call, vjp

    names = [k for k, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def f(*ps):
        return functional_call(model, (dict(zip(names, ps)), buffers), (x,)).reshape(-1)

    _, pullback = vjp(f, *params)
    return lambda g: torch.cat([t.reshape(-1) for t in pullback(checked(g))])
