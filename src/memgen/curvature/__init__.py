"""Curvature of a loss: Hessian-vector products, inverse HVPs and influence functions.

Everything works on one flat parameter vector w of shape (P,) (a module's trainable
parameters, ``requires_grad``) and on callables ``hvp_fn(u) -> H u`` with u, H u of
shape (P,); H is never formed unless asked for (:func:`hessian_matrix`, method
``"exact"``). The parts:

- :mod:`~memgen.curvature.hvp`: :func:`gradient`, :func:`hvp` (exact H v of a scalar
  f(w) by double backward), :func:`finite_difference_hvp` (kept to measure its error),
  :func:`hessian_matrix`, :func:`top_eigenvalue` (power iteration);
- :mod:`~memgen.curvature.modules`: the mean loss of an ``nn.Module`` over mini-batches,
  H = sum_b (n_b / N) H_b: :func:`module_gradient`, :func:`make_module_hvp` /
  :func:`module_hvp`, :func:`make_batch_hvps` (unbiased per-batch estimates for LiSSA),
  :func:`per_example_gradients`, flat parameters (:func:`flat_params`,
  :func:`set_flat_params`, :func:`unflatten`, :func:`module_params`);
- :mod:`~memgen.curvature.solvers`: :func:`inverse_hvp`, x = (H + damping I)^{-1} v by
  a dense solve, conjugate gradient or LiSSA (Agarwal et al. 2017, as used by Koh &
  Liang 2017), with guards (:class:`NotPositiveDefinite`, :class:`LissaDiverged`);
- :mod:`~memgen.curvature.fitting`: :func:`fit` to the optimum of
  :func:`regularized_loss`;
- :mod:`~memgen.curvature.influence`: :func:`influence_on_test_loss` (Koh & Liang's
  I_up,loss(z_i, z_test) for every training point and the predicted change of the test
  loss on removing it) and :func:`leave_one_out` (the actual change, by retraining);
- :mod:`~memgen.curvature.studies`: the curvature family's experiments (the seed's toy,
  the digits classifiers, the solvers' accuracy per HVP).
"""

from memgen.curvature.fitting import fit, regularized_loss
from memgen.curvature.hvp import HVPFn, finite_difference_hvp, gradient, hessian_matrix, hvp, top_eigenvalue
from memgen.curvature.influence import Influence, influence_on_test_loss, leave_one_out
from memgen.curvature.modules import (
    flat_params,
    make_batch_hvps,
    make_module_hvp,
    module_gradient,
    module_hvp,
    module_params,
    per_example_gradients,
    set_flat_params,
    unflatten,
)
from memgen.curvature.studies import (
    LissaPaths,
    SolverAccuracy,
    SolverComparison,
    classifier,
    compare_solvers,
    evaluate_classifier,
    lissa_paths,
    logistic_loss,
    select_for_retraining,
    solver_accuracy,
    toy_hvp,
)
from memgen.curvature.solvers import (
    LissaDiverged,
    NotPositiveDefinite,
    cg_solve,
    exact_solve,
    inverse_hvp,
    lissa_scale,
    lissa_solve,
    lissa_unguarded_path,
)

__all__ = [
    "HVPFn", "Influence", "LissaDiverged", "NotPositiveDefinite", "cg_solve", "exact_solve", "finite_difference_hvp",
    "fit", "flat_params", "gradient", "hessian_matrix", "hvp", "influence_on_test_loss", "inverse_hvp",
    "leave_one_out", "lissa_scale", "lissa_solve", "lissa_unguarded_path", "make_batch_hvps", "make_module_hvp",
    "module_gradient", "module_hvp", "module_params", "per_example_gradients", "regularized_loss",
    "set_flat_params", "top_eigenvalue", "unflatten",
    # the family's studies
    "LissaPaths", "SolverAccuracy", "SolverComparison", "classifier", "compare_solvers", "evaluate_classifier",
    "lissa_paths", "logistic_loss", "select_for_retraining", "solver_accuracy", "toy_hvp",
]
