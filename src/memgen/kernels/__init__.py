"""Neural tangent kernels (empirical and infinite-width) and kernel predictors.

Theta(x, x') = sum_p df(x)/dw_p df(x')/dw_p for a scalar-output network f, the sum over
its trained parameters (``requires_grad``; frozen ones contribute nothing).

Public API (this package; the modules below hold the parts):

- :func:`empirical_ntk` (model, x1, x2=None, *, path, memory_budget, progress): the
  Gram (n1, n2); :func:`empirical_ntk_blocks` (model, x_train, x_test, ...): train/train,
  test/train and test/test from one forward pass per set. ``path="auto"`` takes the
  structured path (:mod:`~memgen.kernels.structured`: layer-wise matrix products, never
  per-example Jacobians, the symmetric Gram's upper triangle in tiles,
  :mod:`~memgen.kernels.gram`; float32 products on CPU on oneDNN,
  :mod:`~memgen.kernels.gemm`) for memgen's :class:`~memgen.models.FC` and plain
  ``nn.Sequential`` of ``nn.Linear`` + elementwise activations, and the generic one
  (:mod:`~memgen.kernels.generic`: torch.func per-example Jacobians in blocks under a
  memory budget) for anything else. Both agree (tested against a per-example gradient
  loop). A flat parameter vector w of :class:`~memgen.models.FlatFC` becomes a module
  without a copy by ``FC.from_flat(spec, w)``.
- :func:`analytic_kernels`: infinite-width NNGP and NTK of the FC (relu, "ntk" last
  layer, no bias) (:mod:`~memgen.kernels.infinite`).
- Predictors (:mod:`~memgen.kernels.predictors`): :func:`kernel_regression`,
  :func:`nngp_predictor` (seed 002: random hidden layers, last layer fitted by ridge),
  :func:`ntk_regression`, :func:`last_hidden_features`.
- :func:`relative_change`, :func:`shape_change` (kernel distances) and
  :func:`model_vjp` (g -> J^T g).

The kernels family's experiments, which its steps call, are in
:mod:`memgen.kernels.studies` (not imported here: it needs :mod:`memgen.dynamics`).
"""

from memgen.kernels.empirical import (
    PATHS,
    empirical_ntk,
    empirical_ntk_blocks,
    model_vjp,
    relative_change,
    shape_change,
)
from memgen.kernels.gram import DEFAULT_MEMORY_BUDGET
from memgen.kernels.infinite import ANALYTIC_ACTIVATIONS, analytic_kernels
from memgen.kernels.predictors import kernel_regression, last_hidden_features, nngp_predictor, ntk_regression

__all__ = [
    "ANALYTIC_ACTIVATIONS", "DEFAULT_MEMORY_BUDGET", "PATHS", "analytic_kernels", "empirical_ntk",
    "empirical_ntk_blocks", "kernel_regression", "last_hidden_features", "model_vjp", "nngp_predictor",
    "ntk_regression", "relative_change", "shape_change",
]
