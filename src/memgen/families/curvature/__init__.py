"""Inverse Hessian-vector products and influence functions (Koh & Liang 2017; seed 003).

    cv_toy (exact / CG / LiSSA, LiSSA paths)                                 \\
    cv_digits -> cv_train (model) -> cv_influence -> {cv_loo, cv_solvers}    -> cv_summary (CSV) -> figures
"""

from memgen.declare import Cost, Each, Family, Step
from memgen.families.curvature import params as P

# memgen.provenance: declarations are not in code hashes; what they change (paths, params)
# reaches the rules directly, and Job.write checks the datasets they name
OUTPUT_NEUTRAL = True

N, K = ("n_train",), ("k",)

TOY = Step("cv_toy", "steps:toy", "data/curvature/toy.h5", P.toy,
           writes={"H": ("P", "P"), "eigenvalues": ("P",), "v": ("P",), "w": ("P",), "dampings": ("nd",),
                   "solutions/x": ("nd", 3, "P"), "solutions/hvps": ("nd", 3), "solutions/residual": ("nd", 3),
                   "solutions/exact": ("nd", "P"), "scale_study/scale": ("ns",),
                   "scale_study/path": ("ns", "depth", "P"), "scale_study/diverged": ("ns",),
                   "scale_study/steps": ("ns",), "damping_study/path": ("nd", "depth", "P"),
                   "damping_study/diverged": ("nd",), "damping_study/steps": ("nd",)},
           attrs=("methods", "scale_messages", "damping_messages", "lambda_max"))
DIGITS = Step("cv_digits", "steps:digits", "data/datasets/curvature_digits.h5", P.digits,
              writes={"x_train": ("n_train", "d"), "y_train": N, "x_test": ("n_test", "d"), "y_test": ("n_test",),
                      "index_train": N, "index_test": ("n_test",)})
TRAIN = Step("cv_train", "steps:train", "data/curvature/train/{cv_model}.h5", P.train, inputs={"dataset": DIGITS},
             writes={"w": ("P",), "train_logits": N, "test_logits": ("n_test",), "train_losses": N,
                     "test_losses": ("n_test",)},
             attrs=("grad_norm", "iterations", "objective", "train_acc", "test_acc"), heavy=True,
             cost=Cost(seconds=7.4))
INFLUENCE = Step("cv_influence", "steps:influence", "data/curvature/influence/{cv_model}.h5", P.influence,
                 inputs={"dataset": DIGITS, "train": TRAIN},
                 writes={"predicted": N, "up_loss": N, "s_test": ("P",), "test_grad": ("P",), "selected": K,
                         "selected_top": K, "cg_residual_history": ("r",)},
                 attrs=("test_index", "test_loss", "test_label", "cg_iterations", "cg_residual", "cg_true_residual"),
                 heavy=True, cost=Cost(seconds=6.9))
LOO = Step("cv_loo", "steps:loo", "data/curvature/loo/{cv_model}.h5", P.loo,
           inputs={"dataset": DIGITS, "train": TRAIN, "influence": INFLUENCE},
           writes={"selected": K, "actual": K, "predicted": K, "selected_top": K, "grad_norm": K, "iterations": K},
           attrs=("test_index", "max_grad_norm"), heavy=True, resumable=True, cost=Cost(seconds=15.4))
SOLVERS = Step("cv_solvers", "steps:solvers", "data/curvature/solvers/{cv_model}.h5", P.solvers,
               inputs={"dataset": DIGITS, "train": TRAIN, "influence": INFLUENCE},
               writes={"method_code": ("r",), "hvps": ("r",), "rel_error": ("r",), "reference": ("P",)},
               attrs=("methods", "lambda_max", "cg_iterations", "cg_true_residual", "P"), heavy=True,
               cost=Cost(seconds=12.3))
SUMMARY = Step("cv_summary", "summary:summary", {k: f"data/summary/curvature_{k}.csv" for k in P.SUMMARIES},
               P.summary, inputs={"toy": TOY, "dataset": DIGITS, "train": Each(TRAIN, P.model_points),
                                  "influence": Each(INFLUENCE, P.model_points), "loo": Each(LOO, P.model_points),
                                  "solvers": Each(SOLVERS, P.model_points)})

FAMILY = Family(
    name="curvature", prefix="cv", package=__name__,
    title="Curvature: inverse Hessian-vector products and influence functions (Koh & Liang 2017)",
    steps=(TOY, DIGITS, TRAIN, INFLUENCE, LOO, SOLVERS, SUMMARY), summary=SUMMARY, check=P.check,
    constraints={"cv_model": "|".join(P.MODELS)})
