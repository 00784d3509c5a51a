"""Lazy vs feature training time scales on sparse parity (Geiger, Spigler, Jacot, Wyart
2019, "Disentangling feature and lazy training in deep neural networks"; seed 000).

    ts_dataset -> ts_init (h, seed) -> ts_train (alpha, h, seed) -> ts_ntk_final
                                    -> ts_ntk_init (h, seed)      -> ts_frozen (alpha, h, seed)
               -> ts_summary (CSV tables) -> figures (memgen.families.time_scale.figures)
"""

from memgen.declare import Cost, Each, Family, Step
from memgen.families.shared import DATASET_WRITES
from memgen.families.time_scale import params as P

# memgen.provenance: declarations are not in code hashes; what they change (paths, params)
# reaches the rules directly, and Job.write checks the datasets they name
OUTPUT_NEUTRAL = True

POINT = "alpha~{alpha}_h~{h}_seed~{seed}"


def _run_writes(final: dict):
    """What a run file holds: memgen.runstate.RunResult's records at log-linear
    checkpoints c, the outputs there, and the final state ``final``."""
    def writes():
        from memgen.runstate import RECORD_KEYS

        return {**{f"trajectory/{k}": ("c",) for k in RECORD_KEYS},
                "trajectory/F_train": ("c", "n_train"), "trajectory/F_test": ("c", "n_test"), **final}
    return writes


RUN_ATTRS = ("converged", "diverged", "stop_reason", "t_fit", "step_fit", "t_memorize", "step_memorize")
GRAM_WRITES = {"K_train_train": ("n_train", "n_train"), "K_test_train": ("n_test", "n_train"),
               "K_test_test": ("n_test", "n_test")}


def n_weights(m: dict) -> int:
    """Weights of FC(d, h, L) with one output: d*h + (L-1)*h^2 + h (+ L*h + 1 biases)."""
    d, h, L = m["d"], m["h"], m["L"]
    return d * h + (L - 1) * h * h + h + ((L * h + 1) if m["bias"] else 0)


def _train_work(p: dict, steps: int) -> float:  # forward + backward per step
    ds = p["dataset"]
    return min(steps, p["flow"]["max_steps"]) * n_weights(p["init"]["model"]) * ds["n_train"]


def _ntk_work(p: dict, steps: int) -> float:  # Gram of the layer features (memgen.kernels)
    ds, m = p["dataset"], p["init"]["model"]
    n = ds["n_train"] + ds["n_test"]
    return n * n * (m["L"] + 1) * m["h"] + n * n_weights(m)


def _kernel_train_work(p: dict, steps: int) -> float:  # K @ c per step
    return min(steps, p["flow"]["max_steps"]) * p["dataset"]["n_train"] ** 2


DATASET = Step("ts_dataset", "memgen.families.shared:dataset", "data/datasets/time_scale.h5", P.dataset,
               writes=DATASET_WRITES)
INIT = Step("ts_init", "steps:init", "data/init/time_scale/h~{h}_seed~{seed}.h5", P.init,
            inputs={"dataset": DATASET}, writes={"w0": ("P",), "f0_train": ("n_train",), "f0_test": ("n_test",)})
TRAIN = Step("ts_train", "steps:train", f"data/runs/time_scale/{POINT}.h5", P.train,
             inputs={"dataset": DATASET, "init": INIT}, writes=_run_writes({"w_final": ("P",)}), attrs=RUN_ATTRS,
             device=True, heavy=True, resumable=True, cost=Cost("train", _train_work))
NTK_INIT = Step("ts_ntk_init", "steps:ntk", "data/kernels/time_scale/init/h~{h}_seed~{seed}.h5",
                inputs={"dataset": DATASET, "init": INIT}, writes=GRAM_WRITES, device=True, heavy=True,
                cost=Cost("ntk", _ntk_work))
NTK_FINAL = Step("ts_ntk_final", "steps:ntk", f"data/kernels/time_scale/final/{POINT}.h5",
                 inputs={"dataset": DATASET, "init": INIT, "run": TRAIN}, writes=GRAM_WRITES, device=True,
                 heavy=True, cost=Cost("ntk", _ntk_work))
FROZEN = Step("ts_frozen", "steps:kernel_train", f"data/runs/time_scale_frozen/{POINT}.h5", P.kernel_train,
              inputs={"dataset": DATASET, "ntk": NTK_INIT}, writes=_run_writes({"c_final": ("n_train",)}),
              attrs=RUN_ATTRS, device=True, heavy=True, cost=Cost("kernel_train", _kernel_train_work))
SUMMARY = Step("ts_summary", "summary:summary",
               {"table": "data/summary/time_scale.csv", "curves": "data/summary/time_scale_curves.csv",
                "phase": "data/summary/time_scale_phase.csv", "levels": "data/summary/time_scale_levels.csv"},
               inputs={"runs": Each(TRAIN, P.points), "ntk_init": Each(NTK_INIT, P.points),
                       "ntk_final": Each(NTK_FINAL, P.points), "frozen": Each(FROZEN, P.frozen_points)})

FAMILY = Family(
    name="time_scale", prefix="ts", package=__name__,
    title="Lazy vs feature training: time scales on sparse parity (Geiger et al. 2019)",
    steps=(DATASET, INIT, TRAIN, NTK_INIT, NTK_FINAL, FROZEN, SUMMARY), summary=SUMMARY, check=P.check,
    constraints={"alpha": r"[0-9.eE+-]+", "h": r"\d+", "seed": r"\d+"})
