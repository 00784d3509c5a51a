"""The structured Gram from per-layer features, in tiles under a memory budget.

Per layer l the features of n examples are A_l (n, in_l), the inputs of the layer (None
when its weight is frozen), and D_l (n, out_l), the back-propagated signals df/dz_{l+1}
(None at the output layer, where they are ones); the Gram is

    K = sum_l s_l^2 (A_l A_l'^T + [bias] / s_l^2) o (D_l D_l'^T)

(a frozen weight with a trainable bias leaves D_l D_l'^T). For a symmetric Gram
(x2 = None) only the upper triangle is computed, as batches of equal tiles
(:func:`symmetric_tiles`, one batched product per level), and mirrored.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from memgen.kernels.gemm import _mm_nt, _one_by_one
from memgen.progress import Progress

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of temporaries the Gram builders may use
# Diagonal blocks of a symmetric Gram at most this size are computed whole; larger ones
# are split (see symmetric_tiles). With the equal tiles of a level in one batched product,
# 64 keeps BLAS near full rate while skipping all but n * 32 entries of the lower half
# (at n = h = 1024, leaves of 128 or 32 measured 1-3% slower; benchmarks/ntk.py).
SYMMETRIC_LEAF = 64


class Features(NamedTuple):
    """The Gram features of ``n`` examples: ``terms`` (A_l or None, D_l or None, bias
    trained, s_l) per layer with trained parameters; ``like``: a tensor of their dtype and
    device."""

    n: int
    like: torch.Tensor
    terms: list


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


def _gram_block(fa: Features, fb: Features, r0, c0, J, step, rows, cols) -> torch.Tensor:
    """(J, rows, cols): the tiles (r0, c0, J, step, rows, cols) of the Gram, one product
    per feature (batched for J > 1)."""
    acc = None
    one = fa.like.new_ones(())

    def products(f1, f2, beta):  # f1 f2^T + beta on the tiles
        if J == 1:
            bias = f1.new_full((cols,), beta) if beta else None
            return _mm_nt(f1[r0:r0 + rows], f2[c0:c0 + cols], bias).unsqueeze(0)
        return torch.baddbmm(one, _tiles_of(f1, r0, J, step, rows),
                             _tiles_of(f2, c0, J, step, cols).transpose(1, 2), beta=beta)

    for (a1, d1, bias, s), (a2, d2, _, _) in zip(fa.terms, fb.terms):
        if a1 is None:  # a trained bias alone: D D'^T (ones at the output layer)
            w, signals = 1.0, None
            term = fa.like.new_ones((J, rows, cols)) if d1 is None else products(d1, d2, 0.0)
        else:  # s^2 (A A'^T + 1/s^2 with a bias) o (D D'^T): the bias inside the product
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
    return fa.like.new_zeros((J, rows, cols)) if acc is None else acc


def gram_entries(n1: int, n2: int, symmetric: bool = False) -> int:
    """Number of entries the structured Gram computes for an n1 x n2 block (symmetric:
    the tiles of :func:`symmetric_tiles`): the progress total of the Gram builders."""
    return sum(J * rows * cols for _, _, J, _, rows, cols in symmetric_tiles(n1)) if symmetric else n1 * n2


def _gram(fa: Features, fb: Features, memory_budget: int = DEFAULT_MEMORY_BUDGET, symmetric: bool = False,
          bar: Progress | None = None) -> torch.Tensor:
    """sum_l (A_l A'_l^T + b) o (D_l D'_l^T) (b = 1 with biases), in pieces of at most
    ``memory_budget`` bytes of temporaries (several tiles of a batch, or row panels of
    one tile). ``symmetric`` (fa is fb): only the tiles of :func:`symmetric_tiles` are
    computed and mirrored, about half the products of the full square, in batched
    products large enough for BLAS to run at full rate (in float32 on CPU, tiles of
    ``ONEDNN_MIN_ROWS`` rows or more one by one on oneDNN); the result is exactly symmetric.
    ``bar`` advances by the entries of each piece."""
    bar = bar or Progress(None)
    a0 = fa.like
    n1, n2 = fa.n, fb.n
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
