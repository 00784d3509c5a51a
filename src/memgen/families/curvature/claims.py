"""Claims of the curvature family (Koh & Liang 2017; seed 003), checked from its summary
tables (memgen.claims): ``toy`` (the seed's toy: solutions per method and damping, the
LiSSA scale study) and ``models`` (influence vs leave-one-out per model)."""

from __future__ import annotations

import numpy as np

from memgen.claims import NotApplicable, Result, claim, correlation_interval

TOY_SOLUTION = (1.25, -1.0 / 12.0)  # H^{-1} (1, 1) for H = [[8/9, 4/3], [4/3, 8]] (seed 003)
TOY_TOL = 1e-8
MIN_R = 0.9


@claim(paper="seed 003 (Koh & Liang 2017)", where="toy y = w1 w2 x", figure="lissa_scale",
       statement="On the seed's toy the inverse Hessian-vector product H^{-1}(1, 1) is (1.25, -1/12), found by "
                 "every method: exact solve, conjugate gradient and LiSSA.",
       expected=f"(1.25, -1/12) by every method, error <= {TOY_TOL:g}",
       tables={"toy": ["kind", "method", "damping", "x1", "x2"]})
def toy_inverse_hvp(toy):
    """The undamped solutions of the toy (rows ``solve`` at damping 0): the largest
    Euclidean distance of any method's (x1, x2) from (1.25, -1/12) (measured); the
    methods compared are named in the reason."""
    rows = toy[(toy["kind"] == "solve") & (toy["damping"] == 0)]
    if rows.empty:
        raise NotApplicable("no undamped solve in the toy table (curvature.toy.dampings lacks 0)")
    err = np.hypot(rows["x1"] - TOY_SOLUTION[0], rows["x2"] - TOY_SOLUTION[1])
    return Result(measured=float(err.max()), reproduced=bool(err.max() <= TOY_TOL),
                  reason="methods: " + ", ".join(rows["method"]))


@claim(paper="seed 003 (Koh & Liang 2017)", where="LiSSA's scale", figure="lissa_scale",
       statement="LiSSA diverges unless its scale exceeds lambda_max / 2 and converges above it.",
       expected="diverged exactly for the scales <= lambda_max / 2",
       tables={"toy": ["kind", "scale", "damping", "diverged", "error", "lambda_max"]})
def lissa_scale_threshold(toy):
    """The LiSSA runs of the scale study (no damping): those the divergence guard stopped
    must be exactly those with scale <= lambda_max / 2, and the others must end at a
    finite distance below 1 from the solution (|x*| = 1.25). Measured: the scales on each
    side; the reason gives lambda_max / 2."""
    rows = toy[(toy["kind"] == "scale_study")].sort_values("scale")
    if rows.empty:
        raise NotApplicable("no scale study in the toy table")
    half = float(rows["lambda_max"].iloc[0]) / 2
    below = rows["scale"] <= half
    fmt = lambda s: ", ".join(f"{v:g}" for v in s) or "none"  # noqa: E731
    ok = rows[~rows["diverged"]]
    converged = np.isfinite(ok["error"]) & (ok["error"] < 1.0)
    text = f"diverged at s = {fmt(rows[rows['diverged']]['scale'])}; converged at s = {fmt(ok['scale'])}"
    return Result(measured=text, reason=f"lambda_max / 2 = {half:.3g}",
                  reproduced=bool((rows["diverged"] == below).all() and converged.all()))


@claim(paper="Koh & Liang 2017", where="Fig. 2 (influence vs leave-one-out)", figure="influence_vs_loo",
       statement="For a convex model (logistic regression) the influence function predicts the change of a test "
                 "loss after removing a training point as leave-one-out retraining measures it.",
       expected=f"Pearson R >= {MIN_R} (logistic regression)",
       tables={"models": ["model", "pearson_r", "n_checked"]})
def influence_matches_loo(models):
    """Pearson R of predicted vs retrained loss change over the checked training points
    of the logistic regression (measured), with its 95% Fisher-z interval; reproduced when
    R >= MIN_R."""
    rows = models[models["model"] == "logreg"]
    if rows.empty:
        raise NotApplicable("no logistic-regression row in the models table")
    r, n = float(rows["pearson_r"].iloc[0]), int(rows["n_checked"].iloc[0])
    return Result(measured=r, interval=correlation_interval(r, n), reproduced=bool(r >= MIN_R),
                  reason=f"{n} retrained points")
