"""Neural tangent kernels (empirical and infinite-width) and kernel predictors.

Theta(x, x') = sum_p df(x)/dw_p df(x')/dw_p for a scalar-output network f.

Empirical NTK, two paths with one answer (tested against a per-example gradient loop):

- **structured** (:func:`fc_ntk`, :func:`sequential_ntk`): for a chain of linear layers
  z_{l+1} = s_l a_l W_l^T + b_l and elementwise activations a_{l+1} = phi(z_{l+1}) --
  memgen's :class:`FC` (either last-layer scaling, with or without bias) and a plain
  ``nn.Sequential`` of ``nn.Linear`` and elementwise activation modules (s_l = 1:
  ``nn.Linear`` has no 1/sqrt(fan_in)). With a_l the input of layer l and
  delta_l = df/dz_{l+1} its back-propagated signal (one batched backward pass; example
  i's output depends on row i only),

      Theta(x, x') = sum_l s_l^2 (a_l(x) . a_l(x')) (delta_l(x) . delta_l(x'))
                     [+ sum_l delta_l(x) . delta_l(x')   with biases],

  matrix products only, never per-example Jacobians; the Gram is built in pieces under a
  memory budget and, for x2 = None, only the upper triangle is computed, as batches of
  equal tiles (:func:`symmetric_tiles`, one batched product per level; then mirrored).
  In float32 on CPU the 2-d products run on oneDNN where torch has it (``ONEDNN_LINEAR``:
  15-20% faster than ``torch.mm``'s MKL on the AVX-512 AMD machine of benchmarks/ntk.py);
  float64 and GPU tensors use ``torch.mm``.
- **generic** (:func:`generic_ntk`): any module, per-example Jacobians from
  ``torch.func`` (vmap of jacrev), ``block`` examples at a time, the block size capped by
  a memory budget.

:func:`empirical_ntk` dispatches (FC / matching Sequential -> structured, else generic);
:func:`ntk_gram_blocks` returns train/train, test/train and test/test from one forward
pass per set. :func:`analytic_kernels` gives the infinite-width NNGP and NTK of the FC
(relu, "ntk" last layer, no bias). Predictors: :func:`kernel_regression`,
:func:`nngp_predictor` (seed 002: random hidden layers, last layer fitted by ridge),
:func:`ntk_regression`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from memgen import MemgenError
from memgen.models import FC, Activation, FlatFC
from memgen.progress import Progress

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of temporaries the Gram builders may use
# Diagonal blocks of a symmetric Gram at most this size are computed whole; larger ones
# are split (see symmetric_tiles). With the equal tiles of a level in one batched product,
# 64 keeps BLAS near full rate while skipping all but n * 32 entries of the lower half
# (at n = h = 1024, leaves of 128 or 32 measured 1-3% slower; benchmarks/ntk.py).
SYMMETRIC_LEAF = 64

# ---------------------------------------------------------------- structured path
#
# A chain is a list of layers (W (out, in), b (out,) or None, scale s) and, between
# consecutive layers, an activation ``act(z) -> (phi(z), phi'(z))``; the last layer has
# one output.


def _consuming(act: Activation):
    """``act(z) -> (phi(z), phi'(z))``, phi' written over z (not needed after)."""
    return lambda z: act.value_and_derivative(z, consume=True)


def _fc_chain(model: FlatFC, weights):
    """The chain of an FC from its (W, B or None) per layer."""
    layers = [(W, B, s) for (W, B), s in zip(weights, model.scales)]
    return layers, [_consuming(model.act)] * (len(layers) - 1)


def _autograd_act(module: nn.Module):
    """(phi(z), phi'(z)) of an elementwise module by one backward pass of sum(phi(z))."""

    def act(z):
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            a = module(zz)
            (da,) = torch.autograd.grad(a.sum(), zz)
        return a.detach(), da

    return act


ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Softplus, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
               nn.SiLU, nn.Mish, nn.Hardtanh, nn.ReLU6, nn.Softsign, nn.Tanhshrink, nn.Identity)


def _compose(acts):
    if not acts:
        return lambda z: (z, torch.ones_like(z))

    def act(z):
        a, d = acts[0](z)
        for f in acts[1:]:
            a, d2 = f(a)
            d = d * d2
        return a, d

    return act


def sequential_chain(model: nn.Module):
    """The chain of a plain ``nn.Sequential`` [Flatten] Linear (act* Linear)* with one
    output, or None when ``model`` has another structure (then use the generic path)."""
    if type(model) is not nn.Sequential:
        return None
    mods = list(model)
    if mods and isinstance(mods[0], nn.Flatten) and mods[0].start_dim == 1 and mods[0].end_dim == -1:
        mods = mods[1:]
    layers, acts, pending = [], [], None
    for m in mods:
        if type(m) is nn.Linear:
            if pending is not None:
                acts.append(_compose(pending))
            elif layers:
                acts.append(_compose([]))
            layers.append((m.weight.detach(), None if m.bias is None else m.bias.detach(), 1.0))
            pending = None
        elif isinstance(m, ELEMENTWISE) and type(m) in ELEMENTWISE and layers:
            native = {nn.ReLU: "relu", nn.Tanh: "tanh"}.get(type(m))  # memgen's own (phi, phi') pass
            f = _consuming(Activation(native, normalize=False)) if native else _autograd_act(m)
            pending = (pending or []) + [f]
        else:
            return None
    if not layers or pending is not None or layers[-1][0].shape[0] != 1:
        return None
    return layers, acts


def _onednn_linear():
    """torch's oneDNN linear op if this build has one and it computes a small a @ b^T + c
    right, else None."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        a, b, c = torch.arange(6.0).view(2, 3), torch.arange(9.0).view(3, 3) - 4, torch.tensor([1.0, 2.0, 3.0])
        return op if torch.backends.mkldnn.is_available() and torch.equal(op(a, b, c, "none", [], ""),
                                                                             torch.addmm(c, a, b.t())) else None
    except (AttributeError, RuntimeError):  # a torch built without oneDNN, or a CPU it cannot run on
        return None


# oneDNN's float32 GEMM (the op torch.compile lowers CPU linear layers to), used by
# _mm_nt on CPU; None (set it to switch oneDNN off): torch.mm everywhere. On the 2-core
# AVX-512 machine of benchmarks/ntk.py it runs the NTK's products 15-20% faster than
# torch.mm (MKL).
ONEDNN_LINEAR = _onednn_linear()
# In the symmetric Gram, float32 tiles of at least this many rows take one oneDNN product
# each; smaller ones stay batched (torch.baddbmm), faster than many small oneDNN calls.
ONEDNN_MIN_ROWS = 128


def _uses_onednn(a: torch.Tensor) -> bool:
    return ONEDNN_LINEAR is not None and a.dtype == torch.float32 and a.device.type == "cpu"


def _one_by_one(a: torch.Tensor, rows: int) -> bool:
    """Whether the symmetric Gram of features like ``a`` takes its tiles of ``rows`` rows
    one product each (oneDNN) rather than batched."""
    return _uses_onednn(a) and rows >= ONEDNN_MIN_ROWS


def _mm_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b^T (+ bias, a vector over the columns), outside autograd."""
    if _uses_onednn(a) and a.numel() and b.numel():
        return ONEDNN_LINEAR(a, b, bias, "none", [], "")
    return torch.mm(a, b.t()) if bias is None else torch.addmm(bias, a, b.t())


def _chain_features(chain, x: torch.Tensor):
    """Per layer (a_l, delta_l, has_bias, s_l) for every example in x (n, ...)."""
    layers, acts = chain
    a = x.reshape(x.shape[0], -1).to(layers[0][0].dtype)
    inputs, derivs = [], []
    scaled = [W if s == 1.0 else W * s for W, _, s in layers]  # z = a (s W)^T + b: one small copy, no pass over a
    for i, (W, B, s) in enumerate(layers):
        inputs.append(a)
        if i == len(layers) - 1:
            break
        a, da = acts[i](_mm_nt(a, scaled[i], B))
        derivs.append(da)
    out = []
    delta = None  # None = ones (n, 1) at the output
    for i in range(len(layers) - 1, -1, -1):
        W, B, s = layers[i]
        out.append((inputs[i], delta, B is not None, s))
        if i > 0:
            if delta is None:  # ones (n, 1) @ s W (1, h): every row is s W
                delta = derivs[i - 1].mul_(scaled[i])
            else:
                delta = _mm_nt(delta, scaled[i].t()).mul_(derivs[i - 1])
    return out[::-1]


def symmetric_tiles(n: int, leaf: int = SYMMETRIC_LEAF):
    """Batches (r0, c0, J, step, rows, cols) of equal tiles covering the upper triangle of
    an n x n symmetric matrix: tile j < J of a batch is rows r0 + j*step + [0, rows) by
    columns c0 + j*step + [0, cols). c0 == r0 marks diagonal tiles (computed whole), else
    the tiles lie above the diagonal (and are mirrored). Recursively: the off-diagonal half
    of each diagonal block, down to diagonal blocks of at most ``leaf`` rows; blocks of
    equal size at equal spacing stay one batch (one batched product per feature), so a
    power-of-two n takes one batch per level. Work: n^2 / 2 + n * leaf / 2 entries at most."""
    yield from _split_diagonal(0, 1, n, n, leaf)


def _split_diagonal(r0: int, J: int, step: int, size: int, leaf: int):
    step = size if J == 1 else step
    if size <= leaf:
        yield (r0, r0, J, step, size, size)
        return
    m = size // 2
    yield (r0, r0 + m, J, step, m, size - m)
    if 2 * m == size and step == size:  # the halves of adjacent blocks: one batch, twice as long
        yield from _split_diagonal(r0, 2 * J, m, m, leaf)
    else:
        yield from _split_diagonal(r0, J, step, m, leaf)
        yield from _split_diagonal(r0 + m, J, step, size - m, leaf)


def _tiles_of(F: torch.Tensor, r0: int, J: int, step: int, rows: int) -> torch.Tensor:
    """(J, rows, width) view of the rows r0 + j*step + [0, rows) of the matrix F."""
    s0, s1 = F.stride()
    return F.as_strided((J, rows, F.shape[1]), (step * s0, s0, s1), F.storage_offset() + r0 * s0)


def _gram_block(fa, fb, r0, c0, J, step, rows, cols) -> torch.Tensor:
    """(J, rows, cols): the tiles (r0, c0, J, step, rows, cols) of the Gram, one product
    per feature (batched for J > 1)."""
    acc = None
    one = fa[0][0].new_ones(())

    def products(f1, f2, beta):  # f1 f2^T + beta on the tiles
        if J == 1:
            bias = f1.new_full((cols,), beta) if beta else None
            return _mm_nt(f1[r0:r0 + rows], f2[c0:c0 + cols], bias).unsqueeze(0)
        return torch.baddbmm(one, _tiles_of(f1, r0, J, step, rows),
                             _tiles_of(f2, c0, J, step, cols).transpose(1, 2), beta=beta)

    for (a1, d1, bias, s), (a2, d2, _, _) in zip(fa, fb):
        # s^2 (A A'^T + 1/s^2 with a bias) o (D D'^T): the bias inside the product
        w = s * s
        term = products(a1, a2, 1.0 / w if bias else 0.0)
        signals = None if d1 is None else products(d1, d2, 0.0)  # (the output layer has D D'^T = 1)
        if acc is None:
            acc = term if signals is None else term.mul_(signals)
            if w != 1.0:
                acc.mul_(w)
        elif signals is None:
            acc.add_(term, alpha=w)
        else:  # one fused pass: acc += w term (D D'^T)
            acc.addcmul_(term, signals, value=w)
    return acc


def gram_entries(n1: int, n2: int, symmetric: bool = False) -> int:
    """Number of entries the structured Gram computes for an n1 x n2 block (symmetric:
    the tiles of :func:`symmetric_tiles`): the progress total of the Gram builders."""
    return sum(J * rows * cols for _, _, J, _, rows, cols in symmetric_tiles(n1)) if symmetric else n1 * n2


def _gram(fa, fb, memory_budget: int = DEFAULT_MEMORY_BUDGET, symmetric: bool = False,
          bar: Progress | None = None) -> torch.Tensor:
    """sum_l (A_l A'_l^T + b) o (D_l D'_l^T) (b = 1 with biases), in pieces of at most
    ``memory_budget`` bytes of temporaries (several tiles of a batch, or row panels of
    one tile). ``symmetric`` (fa is fb): only the tiles of :func:`symmetric_tiles` are
    computed and mirrored, about half the products of the full square, in batched
    products large enough for BLAS to run at full rate (in float32 on CPU, tiles of
    ``ONEDNN_MIN_ROWS`` rows or more one by one on oneDNN); the result is exactly symmetric.
    ``bar`` advances by the entries of each piece."""
    bar = bar or Progress(None)
    a0 = fa[0][0]
    n1, n2 = a0.shape[0], fb[0][0].shape[0]
    K = a0.new_empty(n1, n2)
    per_entry = 3 * a0.element_size()  # bytes: the term, the signals' product and the sum
    for r0, c0, J, step, rows, cols in symmetric_tiles(n1) if symmetric else [(0, 0, 1, n1, n1, n2)]:
        tile_bytes = max(1, per_entry * rows * cols)
        # tiles per piece (one when oneDNN takes them singly); a tile too big: row panels
        tiles = 1 if _one_by_one(a0, rows) else max(1, memory_budget // tile_bytes)
        panel = max(1, rows if tile_bytes <= memory_budget else memory_budget // (per_entry * cols))
        jump = step * (n2 + 1)  # from one tile to the next in K
        for j0 in range(0, J, tiles):
            jn = min(tiles, J - j0)
            for q0 in range(0, rows, panel):
                q = min(panel, rows - q0)
                r, c = r0 + j0 * step + q0, c0 + j0 * step
                block = _gram_block(fa, fb, r, c, jn, step, q, cols)
                K.as_strided((jn, q, cols), (jump, n2, 1), r * n2 + c).copy_(block)
                if symmetric and c0 != r0:  # above the diagonal: mirrored below it
                    K.as_strided((jn, q, cols), (jump, 1, n2), c * n2 + r).copy_(block)
                bar.advance(jn * q * cols)
        if symmetric and c0 == r0:  # diagonal tiles computed whole: make them exactly symmetric
            D = K.as_strided((J, rows, rows), (jump, n2, 1), r0 * (n2 + 1))
            D.copy_((D + D.transpose(1, 2)).mul_(0.5))
    return K


def fc_ntk(model: FlatFC, w: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor | None = None,
           memory_budget: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
    """NTK Gram matrix (n1, n2) of :class:`FlatFC` at parameters ``w`` (structured)."""
    chain = _fc_chain(model, model.views(w))
    return _chain_gram(chain, x1, x2, memory_budget)


def _chain_gram(chain, x1, x2, memory_budget):
    with torch.no_grad():
        f1 = _chain_features(chain, x1)
        if x2 is None:
            return _gram(f1, f1, memory_budget, symmetric=True)
        return _gram(f1, _chain_features(chain, x2), memory_budget)


def sequential_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None,
                   memory_budget: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
    """NTK Gram of a plain ``nn.Sequential`` of Linear + elementwise activations
    (structured path); raises MemgenError for other structures."""
    chain = sequential_chain(model)
    if chain is None:
        raise MemgenError("sequential_ntk: model is not nn.Sequential([Flatten,] Linear, (activation, Linear)*) "
                          "with one output; use generic_ntk")
    return _chain_gram(chain, x1, x2, memory_budget)


# ---------------------------------------------------------------- generic path


def _jacobian_fn(model: nn.Module):
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    numel = sum(p.numel() for p in params.values())

    def f_single(p, x):
        return functional_call(model, (p, buffers), (x.unsqueeze(0),)).reshape(())

    jac = vmap(jacrev(f_single), in_dims=(None, 0))

    def jacobian(x):
        return torch.cat([g.reshape(g.shape[0], -1) for g in jac(params, x).values()], dim=1)

    return jacobian, numel, next(iter(params.values()))


def generic_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None,
                block: int = 256, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
    """NTK Gram of any scalar-output module via per-example Jacobians (torch.func),
    ``block`` examples at a time (fewer if a block's Jacobian would exceed a quarter of
    ``memory_budget`` bytes). The Jacobians of x2 are kept when they fit in half the
    budget, else recomputed per block of x1."""
    return generic_ntk_blocks(model, [x1] if x2 is None else [x1, x2],
                              [(0, 0)] if x2 is None else [(0, 1)], block, memory_budget)[0]


def generic_ntk_blocks(model, xs, pairs, block=256, memory_budget=DEFAULT_MEMORY_BUDGET):
    """Gram blocks J(xs[i]) J(xs[j])^T for each (i, j) in ``pairs``, Jacobians of each
    set computed once when they fit in half of ``memory_budget``."""
    jacobian, P, p0 = _jacobian_fn(model)
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
        results.append(torch.cat(rows, dim=0))
    return results


# ---------------------------------------------------------------- dispatch


def _structured(model: nn.Module):
    if isinstance(model, FC):
        return _fc_chain(model.flat(), model.layers())
    return sequential_chain(model)


def empirical_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
                  path: str = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
    """n1 x n2 NTK Gram matrix of a scalar-output module (x2=None: x1 with itself).

    ``path``: "auto" (structured for FC and plain Linear/activation Sequentials, generic
    otherwise), "structured" or "generic"."""
    chain = _structured(model) if path in ("auto", "structured") else None
    if chain is not None:
        return _chain_gram(chain, x1, x2, memory_budget)
    if path == "structured":
        raise MemgenError("empirical_ntk: no structured path for this model (FC or Sequential of Linear + "
                          "elementwise activations); use path='generic'")
    if path not in ("auto", "generic"):
        raise MemgenError(f"empirical_ntk: unknown path '{path}'; allowed: auto, structured, generic")
    return generic_ntk(model, x1, x2, memory_budget=memory_budget)


def ntk_gram_blocks(model: nn.Module, x_train: torch.Tensor, x_test: torch.Tensor, *,
                    path: str = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET):
    """(K_train_train, K_test_train, K_test_test) of any module, one forward pass (or one
    Jacobian computation) per set."""
    chain = _structured(model) if path in ("auto", "structured") else None
    if chain is None:
        if path == "structured":
            raise MemgenError("ntk_gram_blocks: no structured path for this model")
        return tuple(generic_ntk_blocks(model, [x_train, x_test], [(0, 0), (1, 0), (1, 1)],
                                        memory_budget=memory_budget))
    return _chain_blocks(chain, x_train, x_test, memory_budget)


def ntk_blocks(model: FlatFC, w: torch.Tensor, x_train: torch.Tensor, x_test: torch.Tensor,
               progress: str | None = None):
    """(K_train_train, K_test_train, K_test_test), sharing one forward pass per set.
    ``progress``: label of progress lines (memgen.progress, Gram entries) on stderr."""
    return _chain_blocks(_fc_chain(model, model.views(w)), x_train, x_test, progress=progress)


def _chain_blocks(chain, x_train, x_test, memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: str | None = None):
    """The three Gram blocks of a structured chain, one forward pass per set."""
    n, m = len(x_train), len(x_test)
    bar = Progress(progress, gram_entries(n, n, True) + m * n + gram_entries(m, m, True), unit="entry",
                   message=f"NTK Gram blocks of {n} train, {m} test points")
    with torch.no_grad():
        ftr, fte = _chain_features(chain, x_train), _chain_features(chain, x_test)
        out = (_gram(ftr, ftr, memory_budget, True, bar), _gram(fte, ftr, memory_budget, bar=bar),
               _gram(fte, fte, memory_budget, True, bar))
    bar.finish()
    return out


def relative_change(K0: torch.Tensor, K1: torch.Tensor) -> float:
    """||K1 - K0||_F / ||K0||_F."""
    return float((K1 - K0).norm() / K0.norm())


def shape_change(K0: torch.Tensor, K1: torch.Tensor) -> float:
    """|| K1/||K1|| - K0/||K0|| ||_F, in [0, 2]: how much the kernel turned."""
    return float((K1 / K1.norm() - K0 / K0.norm()).norm())


# ---------------------------------------------------------------- vector-Jacobian products


def model_vjp(model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """g (n,) -> J^T g (P,), the flat gradient of sum_i g_i f(x_i) in the order of
    ``model.parameters()``; one forward pass, J never formed. FC uses its hand-written
    backward, other modules ``torch.func.vjp``."""
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


# ---------------------------------------------------------------- infinite width

ANALYTIC_ACTIVATIONS = ("relu", "relu_normalized")


def analytic_kernels(x1: torch.Tensor, x2: torch.Tensor | None = None, depth: int = 1,
                     activation: str = "relu") -> tuple[torch.Tensor, torch.Tensor]:
    """(NNGP, NTK) of the infinite-width ``FC(d, h, L=depth, activation="relu",
    normalize=False, last_layer="ntk", bias=False)`` as h -> infinity.

    Conventions (memgen's FC): N(0, 1) weights, z_1 = W_0 x / sqrt(d), hidden layers
    divided by sqrt(h), output f = W_L a_L / sqrt(h), no biases. With
    Sigma_1 = Theta_1 = x.x'/d and, for l = 1..depth, the arc-cosine maps of
    (u, v) ~ N(0, [[Sigma_l(x,x), Sigma_l(x,x')], [., Sigma_l(x',x')]]):

        Sigma_{l+1} = c^2 E[relu(u) relu(v)] = c^2 sqrt(Sxx Sx'x') (sin t + (pi - t) cos t) / (2 pi)
        Sdot_{l+1}  = c^2 E[relu'(u) relu'(v)] = c^2 (pi - t) / (2 pi),  cos t = Sigma_l(x,x') / sqrt(Sxx Sx'x')
        Theta_{l+1} = Sigma_{l+1} + Sdot_{l+1} Theta_l

    NNGP = Sigma_{depth+1}, NTK = Theta_{depth+1} (so the NTK includes the x.x'/d of the
    first layer). ``activation="relu"`` is plain max(0, z) (c = 1: the variance halves
    at every layer); ``"relu_normalized"`` is sqrt(2) relu (c^2 = 2), memgen's relu
    with ``normalize=True``. Computed in x1's dtype; shapes (n1, n2).
    """
    if activation not in ANALYTIC_ACTIVATIONS:
        raise MemgenError(f"analytic_kernels: activation '{activation}' not supported; "
                          f"allowed: {', '.join(ANALYTIC_ACTIVATIONS)}")
    if depth < 1:
        raise MemgenError(f"analytic_kernels: depth must be >= 1, got {depth}")
    c2 = 1.0 if activation == "relu" else 2.0
    x1 = x1.reshape(x1.shape[0], -1)
    x2 = x1 if x2 is None else x2.reshape(x2.shape[0], -1).to(x1.dtype)
    d = x1.shape[1]
    s12 = x1 @ x2.t() / d
    s11 = (x1 * x1).sum(1) / d
    s22 = (x2 * x2).sum(1) / d
    theta = s12.clone()
    for _ in range(depth):
        norms = torch.sqrt(torch.outer(s11, s22))
        cos = torch.where(norms > 0, s12 / norms.clamp_min(torch.finfo(s12.dtype).tiny), torch.zeros_like(s12))
        t = torch.arccos(cos.clamp(-1.0, 1.0))
        s12 = c2 * norms * (torch.sin(t) + (math.pi - t) * torch.cos(t)) / (2 * math.pi)
        sdot = c2 * (math.pi - t) / (2 * math.pi)
        theta = s12 + sdot * theta
        s11, s22 = c2 * s11 / 2, c2 * s22 / 2  # E[relu(u)^2] = Var(u) / 2
    return s12, theta


# ---------------------------------------------------------------- predictors


def kernel_regression(k_train_train: torch.Tensor, k_test_train: torch.Tensor, y_train: torch.Tensor,
                      ridge: float = 0.0) -> torch.Tensor:
    """K(test, train) (K(train, train) + ridge I)^{-1} y: kernel (ridge) regression
    predictions on the test points (y may be (n,) or (n, k)). Cholesky when the
    regularised Gram is positive definite, least squares (minimum norm) otherwise."""
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
    """Input of the last linear layer (n, h), times its scale for FC."""
    chain = _structured(model)
    if chain is None:
        raise MemgenError("last_hidden_features: needs FC or a plain Sequential of Linear + activations")
    with torch.no_grad():
        a, _, _, s = _chain_features(chain, x)[-1]
    return a * s if s != 1.0 else a


def nngp_predictor(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                   ridge: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed 002's NNGP predictor: the random hidden layers are kept and the last layer
    is fitted by ridge regression on the last hidden features G (n, h):
    w = (G^T G + ridge I)^{-1} G^T y (no bias). Returns (train, test) predictions."""
    with torch.no_grad():
        G = last_hidden_features(model, x_train)
        Gt = last_hidden_features(model, x_test)
        A = G.t() @ G + ridge * torch.eye(G.shape[1], dtype=G.dtype, device=G.device)
        w = torch.linalg.solve(A, G.t() @ y_train.to(G.dtype))
        return G @ w, Gt @ w


def ntk_regression(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                   ridge: float = 1e-4, centered: bool = False) -> torch.Tensor:
    """Kernel regression with the empirical NTK at the model's parameters (seed 002,
    ridge 1e-4). ``centered``: predict f0(test) + K (K + ridge)^-1 (y - f0(train)), the
    infinite-time linearized network, instead of the seed's plain K (K + ridge)^-1 y."""
    Ktt, Kst = empirical_ntk(model, x_train), empirical_ntk(model, x_test, x_train)
    if not centered:
        return kernel_regression(Ktt, Kst, y_train, ridge)
    with torch.no_grad():
        f0tr, f0te = model(x_train).reshape(-1), model(x_test).reshape(-1)
    return f0te + kernel_regression(Ktt, Kst, y_train.to(f0tr.dtype) - f0tr, ridge)
