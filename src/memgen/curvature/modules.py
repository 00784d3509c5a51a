"""Gradients, Hessian-vector products and per-example gradients of a module's mean loss.

The parameters are the module's trainable ones (``requires_grad``), flattened in
``model.parameters()`` order into one vector of shape (P,). A loss is
``loss_fn(model(x), y)``, the mean over a batch; over several mini-batches the mean loss
is L = sum_b (n_b / N) L_b, and so are its gradient and Hessian.

Contracts (checked on entry): ``model`` an ``nn.Module`` with trainable parameters of
one dtype (float32 or float64, the reference: flat vectors are in it, a vector of the
other float dtype is converted), ``loss_fn`` callable, ``batches`` a non-empty
re-iterable of (x, y) tensor pairs with as many rows in x as in y, N >= 1 in all.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from memgen.contracts import describe, fail, function, module_dtype, same_length, tensor
from memgen.curvature.hvp import HVPFn, _dot


def module_params(model: nn.Module, caller: str = "module_params") -> list[torch.Tensor]:
    """Parameters of ``model`` that require grad, in ``model.parameters()`` order (at
    least one, of one float dtype).
    Contract: model an nn.Module with at least one trainable parameter, every parameter of
    one dtype, float32 or float64.
    """
    module_dtype(caller, "model", model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise fail(caller, "model", f"a {type(model).__name__} with no trainable parameter",
                   "at least one parameter with requires_grad")
    return params


def flat_params(model: nn.Module) -> torch.Tensor:
    """The trainable parameters flattened and concatenated, shape (P,), detached.
    Contract: as :func:`module_params`.
    """
    return torch.cat([p.detach().reshape(-1) for p in module_params(model, "flat_params")])


def set_flat_params(model: nn.Module, w: torch.Tensor) -> None:
    """Write a flat (P,) vector (finite; converted to the parameters' dtype) back into the
    trainable parameters (in place).
    Contract: model as :func:`module_params`; w finite (P,), P its trainable size (converted
    to its dtype).
    """
    params = module_params(model, "set_flat_params")
    w = tensor("set_flat_params", "w", w, shape=(sum(p.numel() for p in params),), finite=True)
    with torch.no_grad():
        for p, chunk in zip(params, unflatten(w, params)):
            p.copy_(chunk)


def unflatten(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat (P,) vector into views shaped like the tensors of ``like`` (P = their
    total size).
    Contract: vec a float tensor (P,), P the total size of ``like``.
    """
    vec = tensor("unflatten", "vec", vec, ndim=1, nonempty=False)
    sizes = [t.numel() for t in like]
    if vec.numel() != sum(sizes):
        raise fail("unflatten", "vec", f"a vector of {vec.numel()} entries", f"{sum(sizes)} entries (the parameters)")
    return [c.view_as(t) for c, t in zip(vec.split(sizes), like)]


def _flatten(tensors: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1) for t, p in zip(tensors, like)])


def _batch_loss(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean loss of one batch: loss_fn(model(x), y); a non-scalar result is averaged."""
    out = loss_fn(model(x), y)
    return out if out.dim() == 0 else out.mean()


def _data(caller: str, name: str, t, dtype: torch.dtype):
    """A batch's x or y: a tensor with a first axis; floating ones in the reference dtype
    (integer ones, e.g. class labels, as they are)."""
    if not torch.is_tensor(t) or t.dim() == 0:
        raise fail(caller, name, describe(t), "a tensor (n_b, ...)")
    return t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t


def _sizes(caller: str, model, loss_fn, batches, names: tuple[str, str] | None = None) -> tuple[list, list[int], int]:
    """The checked (batches as a list of (x, y), their sizes, N) of a module's mean loss;
    ``names``: the arguments' names of a single (x, y) pair (else batches[b] x, y)."""
    dtype = module_params(model, caller)[0].dtype
    function(caller, "loss_fn", loss_fn)
    if torch.is_tensor(batches) or not isinstance(batches, Iterable):
        raise fail(caller, "batches", describe(batches), "an iterable of (x, y) pairs")
    batches = list(batches)
    if not batches:
        raise fail(caller, "batches", "empty", "at least one (x, y) batch")
    out, sizes = [], []
    for b, batch in enumerate(batches):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise fail(caller, f"batches[{b}]", describe(batch), "an (x, y) pair")
        nx, ny = names or (f"batches[{b}] x", f"batches[{b}] y")
        out.append((_data(caller, nx, batch[0], dtype), _data(caller, ny, batch[1], dtype)))
        sizes.append(same_length(caller, (nx, ny), *out[-1]))
    N = sum(sizes)
    if N == 0:
        raise fail(caller, "batches", "without examples", "N >= 1 examples in all")
    return out, sizes, N


def module_gradient(model: nn.Module, loss_fn, batches: Iterable) -> torch.Tensor:
    """Gradient (P,) of the mean loss over all examples of all batches,
    grad L = sum_b (n_b / N) grad L_b, with L_b = loss_fn(model(x_b), y_b) the batch mean.
    Contract: the module contract above (model, loss_fn, batches).
    """
    batches, sizes, N = _sizes("module_gradient", model, loss_fn, batches)
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
      hvp_fn: u of shape (P,) -> H u of shape (P,), detached (u checked: P entries,
      converted to the parameters' dtype).
    Contract: the module contract above; u of the returned function (P,), converted to the
    parameters' dtype.
    """
    batches, sizes, N = _sizes("make_module_hvp", model, loss_fn, batches)
    params = module_params(model)
    P, dtype = sum(p.numel() for p in params), params[0].dtype

    def batch_grad(x, y):
        g = torch.autograd.grad(_batch_loss(model, loss_fn, x, y), params, create_graph=True, allow_unused=True)
        return [(gi, p) for gi, p in zip(g, params) if gi is not None and gi.requires_grad]

    cache = [batch_grad(x, y) for x, y in batches] if cache_graph else None

    def hvp_fn(u: torch.Tensor) -> torch.Tensor:
        u = tensor("make_module_hvp's hvp_fn", "u", u, shape=(P,), dtype=dtype)
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
    """H v, (P,), for the Hessian of the mean loss over all batches (see :func:`make_module_hvp`).
    Contract: as :func:`make_module_hvp`; v finite (P,).
    """
    v = tensor("module_hvp", "v", v, shape=(sum(p.numel() for p in module_params(model, "module_hvp")),), finite=True)
    return make_module_hvp(model, loss_fn, batches)(v)


def make_batch_hvps(model: nn.Module, loss_fn, batches: Iterable, cache_graph: bool = False) -> list[HVPFn]:
    """One unbiased Hessian estimate per batch, for LiSSA's ``batch_hvps``.

    Callable b returns (B n_b / N) H_b u; with b drawn uniformly from the B batches,
    E[(B n_b / N) H_b] = sum_b (n_b / N) H_b = H, so unequal batch sizes stay unbiased.
    ``cache_graph`` as in :func:`make_module_hvp`.
    Contract: as :func:`make_module_hvp`.
    """
    batches, sizes, N = _sizes("make_batch_hvps", model, loss_fn, batches)
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
    torch._dynamo, seconds per process: the loop is faster for small n). Contract: x, y
    tensors with the same number n >= 1 of rows.
    """
    ((x, y),), _, _ = _sizes("per_example_gradients", model, loss_fn, [(x, y)], ("x", "y"))
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
