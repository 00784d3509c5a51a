"""Epoch-wise and model-wise double descent (Heckel & Yilmaz 2021; Advani & Saxe 2020;
seed 004), experiment and theory on the same axes.

    dd_linear (schedule)   -> dd_theory_linear            \\
    dd_two_layer (init)    -> dd_theory_two_layer (init)   -> dd_summary (CSV) -> figures
    dd_modelwise,             dd_theory_modelwise         /
    dd_vector_field (seed 004's d = 2 examples)          /
"""

from memgen.declare import Cost, Each, Family, Step
from memgen.families.double_descent import params as P
from memgen.phase_plane import PLANES

# memgen.provenance: declarations are not in code hashes; what they change (paths, params)
# reaches the rules directly, and Job.write checks the datasets they name
OUTPUT_NEUTRAL = True

K, T2 = ("K",), ("K", 2)

LINEAR = Step("dd_linear", "steps:linear", "data/runs/double_descent/linear_{schedule}.h5", P.linear,
              writes={"step": K, "risk": ("K", "draws"), "werr": ("K", "draws", 2), "s": ("d",), "theta": ("d",),
                      "lr": ("d",)},
              heavy=True, cost=Cost(seconds=13.7))
THEORY_LINEAR = Step("dd_theory_linear", "steps:theory_linear", "data/theory/double_descent/linear.h5",
                     P.theory_linear,
                     writes={"step": K, "noise_var": (), **{f"{k}_{s}": K for s in P.SCHEDULES
                                                              for k in ("risk", "risk_fast", "risk_slow")},
                             **{f"werr_{s}": T2 for s in P.SCHEDULES}})
TWO_LAYER = Step("dd_two_layer", "steps:two_layer", "data/runs/double_descent/two_layer_{init}.h5", P.two_layer,
                 writes={"step": K, "risk": K, "loss": K, "w": ("K", "d"), "werr": T2, "X": ("n", "d"), "y": ("n",),
                         "W0": ("p", "d"), "v0": ("p",), "W": ("p", "d"), "v": ("p",), "s": ("d",), "theta": ("d",),
                         **{f"jac_{k}_{w}": ("J",) for k in ("sv", "share") for w in ("init", "final")}},
                 attrs=("diverged",), heavy=True, resumable=True, cost=Cost(seconds=13.0))
THEORY_TWO_LAYER = Step("dd_theory_two_layer", "steps:theory_two_layer",
                        "data/theory/double_descent/two_layer_{init}.h5", inputs={"run": TWO_LAYER},
                        writes={"step": K, **{f"{k}_{m}": shape for m in ("ode", "lazy")
                                              for k, shape in (("risk", K), ("werr", T2), ("w", ("K", "d")))}})
MODELWISE = Step("dd_modelwise", "steps:modelwise", "data/runs/double_descent/modelwise.h5", P.modelwise,
                 writes={"ratio": ("R",), "snr": ("S",), "risk_min_norm": ("S", "R", "draws"),
                         "risk_early_stopped": ("S", "R", "draws"), "t_stop": ("S", "R"), "times": ("T",)},
                 heavy=True, cost=Cost(seconds=14.9))
THEORY_MODELWISE = Step("dd_theory_modelwise", "steps:theory_modelwise", "data/theory/double_descent/modelwise.h5",
                        P.theory_modelwise,
                        writes={"snr": ("S",), "ratio": ("G",), "risk_min_norm": ("S", "G"), "ratio_asym": ("H",),
                                "risk_min_norm_asym": ("S", "H"), "risk_early_stopped": ("S", "H"),
                                "t_stop": ("S", "H")})
EKG = ("E", "G", "G")
VECTOR_FIELD = Step("dd_vector_field", "steps:vector_field", "data/runs/double_descent/vector_field.h5",
                    P.vector_field,
                    writes={"kappa": ("E",), "scale": ("E",), "step": K, "u_ode": ("E", "K"), "z_ode": ("E", "K", 2),
                            "u_net": ("E", "K"), "z_net": ("E", "K", 2), "invariant": ("E",),
                            **{f"{plane}/{k}": ("E", "G") for plane in PLANES for k in ("x", "y")},
                            **{f"{plane}/{k}": EKG for plane in PLANES for k in ("third", "dx", "dy")}},
                    heavy=True, cost=Cost(seconds=30.0))
SUMMARY = Step("dd_summary", "summary:summary",
               {k: f"data/summary/double_descent_{k}.csv"
                for k in ("epochwise", "two_layer", "jacobian", "modelwise", "key_numbers", "vector_field")},
               inputs={"linear": Each(LINEAR, P.schedule_points), "theory_linear": THEORY_LINEAR,
                       "two_layer": Each(TWO_LAYER, P.init_points),
                       "theory_two_layer": Each(THEORY_TWO_LAYER, P.init_points),
                       "modelwise": MODELWISE, "theory_modelwise": THEORY_MODELWISE, "vector_field": VECTOR_FIELD})

FAMILY = Family(
    name="double_descent", prefix="dd", package=__name__,
    title="Epoch-wise and model-wise double descent (Heckel & Yilmaz 2021; Advani & Saxe 2020)",
    steps=(LINEAR, THEORY_LINEAR, TWO_LAYER, THEORY_TWO_LAYER, MODELWISE, THEORY_MODELWISE, VECTOR_FIELD, SUMMARY),
    summary=SUMMARY, check=P.check,
    constraints={"schedule": "|".join(P.SCHEDULES), "init": "|".join(P.INITS)})
