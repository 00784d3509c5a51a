"""Generic empirical NTK: per-example Jacobians of any scalar-output module (torch.func).

J(x) (n, P) holds df(x_i)/dw for the P trained parameters (``requires_grad``; frozen
parameters and buffers are held fixed), from ``vmap`` of ``jacrev`` over
``functional_call``, ``block`` examples at a time; Theta(x, x') = J(x) J(x')^T.
"""

from __future__ import annotations

import torch
from torch import nn

from memgen.kernels.gram import DEFAULT_MEMORY_BUDGET
from memgen.progress import Progress

DEFAULT_BLOCK = 256  # examples per Jacobian block (fewer under a small memory budget)


def _jacobian_fn(model: nn.Module):
    """(x (b, ...) -> J (b, P), P, a parameter tensor or None when nothing is trained)."""
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    fixed = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    fixed.update({k: v.detach() for k, v in model.named_buffers()})
    numel = sum(p.numel() for p in params.values())

    def f_single(p, x):
        return functional_call(model, (p, fixed), (x.unsqueeze(0),)).reshape(())

    jac = vmap(jacrev(f_single), in_dims=(None, 0))

    def jacobian(x):
        return torch.cat([g.reshape(g.shape[0], -1) for g in jac(params, x).values()], dim=1)

    return jacobian, numel, next(iter(params.values()), None)


def generic_gram_blocks(model: nn.Module, xs, pairs, block: int = DEFAULT_BLOCK,
                        memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: str | None = None):
    """Gram blocks J(xs[i]) J(xs[j])^T (len(xs[i]), len(xs[j])) for each (i, j) in
    ``pairs``. Jacobians of ``block`` examples at a time, fewer if a block's Jacobian would
    exceed a quarter of ``memory_budget`` bytes; the Jacobians of a set are kept (computed
    once) when they fit in half the budget, else recomputed per block row. ``progress``:
    label of progress lines (Gram entries) on stderr."""
    jacobian, P, p0 = _jacobian_fn(model)
    bar = Progress(progress, sum(len(xs[i]) * len(xs[j]) for i, j in pairs), unit="entry",
                   message=f"NTK Gram blocks by per-example Jacobians, P={P}")
    if p0 is None:  # nothing trained: Theta = 0
        bar.finish()
        like = next(iter(model.parameters()), xs[0])
        return [like.new_zeros(len(xs[i]), len(xs[j])) for i, j in pairs]
    item = p0.element_size()
    block = max(1, min(block, memory_budget // (4 * P * item)))
    cache = {}

    def blocks(i):
        x = xs[i]
        if i in cache:
            return cache[i]
        out = (jacobian(x[k:k + block]) for k in range(0, len(x), block))
        if len(x) * P * item <= memory_budget // 2:
            cache[i] = out = list(out)
        return out

    results = []
    for i, j in pairs:
        rows = []
        for a in blocks(i):
            rows.append(torch.cat([a @ b.t() for b in blocks(j)], dim=1))
            bar.advance(len(a) * len(xs[j]))
        results.append(torch.cat(rows, dim=0))
    bar.finish()
    return results
