"""Kernels (seeds 001 and 002): empirical vs infinite-width NTK, kernel regression vs
the trained network, and linearized vs real gradient descent.

    kn_dataset (ds) -> kn_accuracy (ds, n, seed)   \\
    kn_dataset (digits) -> kn_convergence (h)        -> kn_summary (CSV) -> figures
                        -> kn_linearized (h)        /
"""

from memgen.declare import At, Cost, Each, Family, Step
from memgen.families.kernels import params as P
from memgen.families.shared import DATASET_WRITES

# memgen.provenance: declarations are not in code hashes; what they change (paths, params)
# reaches the rules directly, and Job.write checks the datasets they name
OUTPUT_NEUTRAL = True

DATASET = Step("kn_dataset", "memgen.families.shared:dataset", "data/datasets/kernels_{ds}.h5", P.dataset,
               writes=DATASET_WRITES)
DIGITS = At(DATASET, ds="digits")
ACCURACY = Step("kn_accuracy", "steps:accuracy", "data/runs/kernels/accuracy/{ds}/n~{n}_seed~{seed}.h5", P.accuracy,
                inputs={"dataset": DATASET}, writes={f"acc_{m}": () for m in P.METHODS}, attrs=("diverged",),
                device=True, heavy=True, cost=Cost(seconds=12.4))
CONVERGENCE = Step("kn_convergence", "steps:convergence", "data/kernels/kernels/convergence/h~{h}.h5", P.convergence,
                   inputs={"dataset": DIGITS}, writes={"ntk_rel_err": ("s",), "nngp_rel_err": ("s",), "seeds": ("s",)},
                   device=True, heavy=True, resumable=True, cost=Cost(seconds=3.2))
LINEARIZED = Step("kn_linearized", "steps:linearized", "data/runs/kernels/linearized/h~{h}.h5", P.linearized,
                  inputs={"dataset": DIGITS}, writes={k: ("c",) for k in P.LIN_KEYS}, attrs=("diverged",),
                  device=True, heavy=True, cost=Cost(seconds=15.0))
SUMMARY = Step("kn_summary", "summary:summary",
               {k: f"data/summary/kernels_{k}.csv" for k in ("accuracy", "convergence", "linearized")},
               inputs={"accuracy": Each(ACCURACY, P.accuracy_points),
                       "convergence": Each(CONVERGENCE, P.convergence_points),
                       "linearized": Each(LINEARIZED, P.linearized_points)})

FAMILY = Family(
    name="kernels", prefix="kn", package=__name__,
    title="Kernels: empirical and infinite-width NTK / NNGP, linearized dynamics (seeds 001, 002)",
    steps=(DATASET, ACCURACY, CONVERGENCE, LINEARIZED, SUMMARY), summary=SUMMARY, check=P.check,
    constraints={"ds": "|".join(P.DIMS), "n": r"\d+", "seed": r"\d+", "h": r"\d+"})
