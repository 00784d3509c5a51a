"""The NTK's matrix products a @ b^T: oneDNN for float32 on CPU, ``torch.mm`` otherwise.

``ONEDNN_LINEAR`` is torch's oneDNN linear op (the op torch.compile lowers CPU linear
layers to) when this build has one and it computes right, else None; set
``memgen.kernels.gemm.ONEDNN_LINEAR = None`` to run every product on ``torch.mm``. On the
2-core AVX-512 machine of benchmarks/ntk.py it runs the NTK's float32 products 15-20%
faster than ``torch.mm`` (MKL).
"""

from __future__ import annotations

import torch


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
