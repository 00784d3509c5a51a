"""Gradients, Hessian-vector products and per-example gradients of a module's mean loss.

The parameters are the module's trainable ones (``requires_grad``), flattened in
``model.parameters()`` order into one vector of shape (P,). A loss is
``loss_fn(model(x), y)``, the mean over a batch; over several mini-batches the mean loss
is L = sum_b (n_b / N) L_b, and so are its gradient and Hessian.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from memgen import MemgenError
from memgen.curvature.hvp import HVPFn, _dot


def module_params(model: nn.Module) -> list[torch.Tensor]:
    """Parameters of ``model`` that require grad, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def flat_params(model: nn.Module) -> torch.Tensor:
    """The trainable parameters flattened and concatenated, shape (P,), detached."""
    return torch.cat([p.detach().reshape(-1) for p in module_params(model)])


def set_flat_params(model: nn.Module, w: torch.Tensor) -> None:
    """Write a flat (P,) vector back into the trainable parameters (in place)."""
    with torch.no_grad():
        for p, chunk in zip(module_params(model), unflatten(w, module_params(model))):
            p.copy_(chunk)


def unflatten(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat (P,) vector into views shaped like the tensors of ``like``."""
    sizes = [t.numel() for t in like]
    if vec.numel() != sum(sizes):
        raise MemgenError(f"vector has {vec.numel()} entries, the parameters {sum(sizes)}")
    return [c.view_as(t) for c, t in zip(vec.reshape(-1).split(sizes), like)]


def _flatten(tensors: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1) for t, p in zip(tensors, like)])


def _batch_loss(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean loss of one batch: loss_fn(model(x), y); a non-scalar result is averaged."""
    out = loss_fn(model(x), y)
    return out if out.dim() == 0 else out.mean()


def _sizes(batches) -> tuple[list, list[int], int]:
    batches = list(batches)
    if not batches:
        raise MemgenError("no batches given")
    sizes = [int(x.shape[0]) for x, _ in batches]
    N = sum(sizes)
    if N == 0:
        raise MemgenError("the batches hold no examples")
    return batches, sizes, N


def module_gradient(model: nn.Module, loss_fn, batches: Iterable) -> torch.Tensor:
    """Gradient (P,) of the mean loss over all examples of all batches,
    grad L = sum_b (n_b / N) grad L_b, with L_b = loss_fn(model(x_b), y_b) the batch mean.
    """
    batches, sizes, N = _sizes(batches)
    params = module_params(model)
    total = None
    for (x, y), n in zip(batches, sizes):
        g = torch.autograd.grad(_batch_loss(model, loss_fn, x, y), params, allow_unused=True)
        g = _flatten(g, params).mul_(n / N)
        total = g if total is None else total.add_(g)
    return total


def make_module_hvp(model: nn.Module, loss_fn, batches: Iterable, cache_graph: bool = False) -> HVPFn:
    """u -> H u with H the Hessian of the mean loss over all examples of all batches.

    L(w) = (1/N) sum_i l(z_i, w) = sum_b (n_b / N) L_b(w), L_b the mean over batch b
    (``loss_fn(model(x_b), y_b)``, a scalar mean; a per-example vector is averaged), so
    H u = sum_b (n_b / N) H_b u, computed by double backward batch by batch: unequal
    batch sizes give the same H as one full batch.

    Args:
      model: the network at the parameters of interest (its trainable parameters, P).
      loss_fn: (outputs, targets) -> mean loss of the batch.
      batches: re-iterable of (x, y) with x of shape (n_b, ...) (a list, a DataLoader).
      cache_graph: build each batch's gradient graph grad L_b(w) once and keep it, so
        every call is a single backward pass of (grad L_b . u) per batch instead of
        forward + backward + backward. Costs the memory of all batches' graphs; the
        parameters must not change afterwards (autograd then raises on the stale graph).

    Returns:
      hvp_fn: u of shape (P,) -> H u of shape (P,), detached.
    """
    batches, sizes, N = _sizes(batches)
    params = module_params(model)

    def batch_grad(x, y):
        g = torch.autograd.grad(_batch_loss(model, loss_fn, x, y), params, create_graph=True, allow_unused=True)
        return [(gi, p) for gi, p in zip(g, params) if gi is not None and gi.requires_grad]

    cache = [batch_grad(x, y) for x, y in batches] if cache_graph else None

    def hvp_fn(u: torch.Tensor) -> torch.Tensor:
        us = dict(zip(map(id, params), unflatten(u.detach(), params)))
        total = None
        for b, ((x, y), n) in enumerate(zip(batches, sizes)):
            g = cache[b] if cache_graph else batch_grad(x, y)
            if not g:  # loss at most linear in the parameters
                hv = torch.zeros_like(u)
            else:
                gu = sum(_dot(gi, us[id(p)]) for gi, p in g)
                hv = _flatten(torch.autograd.grad(gu, params, allow_unused=True, retain_graph=cache_graph), params)
            hv = hv.detach().mul_(n / N)
            total = hv if total is None else total.add_(hv)
        return total

    return hvp_fn


def module_hvp(model: nn.Module, loss_fn, batches: Iterable, v: torch.Tensor) -> torch.Tensor:
    """H v, (P,), for the Hessian of the mean loss over all batches (see :func:`make_module_hvp`)."""
    return make_module_hvp(model, loss_fn, batches)(v)


def make_batch_hvps(model: nn.Module, loss_fn, batches: Iterable, cache_graph: bool = False) -> list[HVPFn]:
    """One unbiased Hessian estimate per batch, for LiSSA's ``batch_hvps``.

    Callable b returns (B n_b / N) H_b u; with b drawn uniformly from the B batches,
    E[(B n_b / N) H_b] = sum_b (n_b / N) H_b = H, so unequal batch sizes stay unbiased.
    ``cache_graph`` as in :func:`make_module_hvp`.
    """
    batches, sizes, N = _sizes(batches)
    B = len(batches)
    out = []
    for batch, n in zip(batches, sizes):
        f = make_module_hvp(model, loss_fn, [batch], cache_graph=cache_graph)
        out.append(lambda u, f=f, c=B * n / N: f(u).mul_(c))
    return out


def per_example_gradients(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor,
                          vectorized: bool = True) -> torch.Tensor:
    """Gradients of l(z_i, w) = loss_fn(model(x_i[None]), y_i[None]), shape (n, P).

    Vectorized with torch.func (vmap of grad over functional_call); a model that
    torch.func cannot vmap (e.g. batch norm in training mode) falls back to a loop.
    ``vectorized=False`` uses the loop directly (torch.func's first call imports
    torch._dynamo, seconds per process: the loop is faster for small n).
    """
    if not vectorized:
        return torch.stack([module_gradient(model, loss_fn, [(x[i:i + 1], y[i:i + 1])]) for i in range(x.shape[0])])
    params = module_params(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    try:
        from torch.func import functional_call, grad, vmap

        fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        fixed.update(dict(model.named_buffers()))

        def loss_one(ps, xi, yi):
            out = loss_fn(functional_call(model, {**fixed, **ps}, (xi.unsqueeze(0),)), yi.unsqueeze(0))
            return out if out.dim() == 0 else out.mean()

        gs = vmap(grad(loss_one), in_dims=(None, 0, 0))({n: p.detach() for n, p in zip(names, params)}, x, y)
        return torch.cat([gs[n].reshape(x.shape[0], -1) for n in names], dim=1)
    except (RuntimeError, NotImplementedError):
        return torch.stack([module_gradient(model, loss_fn, [(x[i:i + 1], y[i:i + 1])]) for i in range(x.shape[0])])
