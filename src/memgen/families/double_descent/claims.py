"""Claims of the double-descent family (Heckel & Yilmaz 2021; Advani & Saxe 2020; seed
004), checked from its summary tables (memgen.claims): ``key_numbers`` (metric, where,
value) and ``modelwise`` (test risk vs n/p, empirical and theory, per SNR)."""

from __future__ import annotations

import numpy as np

from memgen.claims import NotApplicable, Result, claim

HY, AS = "Heckel & Yilmaz 2021", "Advani & Saxe 2020"
MAX_DEV = 0.05  # the mean risk within 5% of the closed form
BUMP, NO_BUMP = 0.05, 0.01  # a bump: a rise of >= 5% after the first minimum; none: < 1%


def _metric(key_numbers, metric: str) -> dict[str, float]:
    rows = key_numbers[key_numbers["metric"] == metric]
    if rows.empty:
        raise NotApplicable(f"no {metric} in the key numbers")
    return dict(zip(rows["where"], rows["value"].astype(float)))


@claim(paper=HY, where="risk of GD on a linear model", figure="epochwise_risk",
       statement="The closed form R(k) gives the expected risk of linear GD after k steps.",
       expected=f"mean empirical risk within {MAX_DEV:.0%} of the closed form at every logged step",
       tables={"key_numbers": ["metric", "where", "value"]})
def risk_matches_closed_form(key_numbers):
    """The largest relative deviation |mean over draws / closed form - 1| over the logged
    steps and both step-size schedules (measured); the reason gives it per schedule."""
    dev = _metric(key_numbers, "max_rel_dev_risk")
    worst = max(dev.values())
    return Result(measured=worst, reproduced=worst <= MAX_DEV,
                  reason=", ".join(f"{k} {v:.2g}" for k, v in sorted(dev.items())))


@claim(paper=HY, where="epoch-wise double descent", figure="epochwise_risk",
       statement="With one step size, features on two time scales give an epoch-wise double descent; "
                 "per-group step sizes that put them on one time scale remove it.",
       expected=f"bump (rise after the first minimum) >= {BUMP:.0%} with one step size, < {NO_BUMP:.0%} "
                "with per-group step sizes",
       tables={"key_numbers": ["metric", "where", "value"]})
def bump_removed_by_per_group_steps(key_numbers):
    """The bump height of the mean empirical excess risk (largest rise after a local
    minimum, relative to it; 0 without one) with one step size and with per-group step
    sizes (measured); the reason gives the closed form's."""
    emp, th = _metric(key_numbers, "bump_height_empirical"), _metric(key_numbers, "bump_height_theory")
    if not {"uniform", "per_group"} <= set(emp):
        raise NotApplicable("the key numbers lack a schedule")
    return Result(measured=f"{emp['uniform']:.1%} one step size, {emp['per_group']:.1%} per group",
                  reason=f"closed form: {th.get('uniform', np.nan):.1%}, {th.get('per_group', np.nan):.1%}",
                  reproduced=emp["uniform"] >= BUMP and emp["per_group"] < NO_BUMP)


def _empirical(modelwise, method: str):
    rows = modelwise[(modelwise["source"] == "empirical") & (modelwise["method"] == method)]
    rows = rows[np.isfinite(rows["risk"].astype(float))]
    if rows.empty:
        raise NotApplicable(f"no finite empirical {method} risk")
    return rows


@claim(paper=AS, where="model-wise double descent", figure="modelwise",
       statement="The test risk of min-norm least squares peaks where the number of samples equals the number "
                 "of parameters, n/p = 1.",
       expected="largest mean risk at the ratio closest to n/p = 1, for every SNR",
       tables={"modelwise": ["source", "method", "snr", "ratio", "risk"]})
def modelwise_peak_at_interpolation(modelwise):
    """Per SNR, the n/p of the largest mean empirical min-norm risk (measured); reproduced
    when it is, for every SNR, the sampled ratio closest to 1."""
    rows = _empirical(modelwise, "min_norm")
    ratios = np.unique(rows["ratio"].astype(float))
    nearest = float(ratios[np.argmin(np.abs(ratios - 1))])
    peaks = {snr: float(g["ratio"].iloc[int(np.argmax(g["risk"].to_numpy(float)))]) for snr, g in rows.groupby("snr")}
    text = ", ".join(f"{p:g}" for p in peaks.values()) + " at SNR " + ", ".join(f"{s:g}" for s in peaks)
    return Result(measured=text, reason=f"closest sampled n/p: {nearest:g}",
                  reproduced=all(np.isclose(p, nearest) for p in peaks.values()))


@claim(paper=AS, where="early stopping", figure="modelwise",
       statement="Optimally early-stopped gradient descent has no peak at n/p = 1: its risk does not rise "
                 "with more samples.",
       expected=f"mean early-stopped risk never rises by more than {BUMP:.0%} as n/p grows, for every SNR",
       tables={"modelwise": ["source", "method", "snr", "ratio", "risk"]})
def early_stopping_removes_peak(modelwise):
    """Per SNR, the largest rise of the mean empirical early-stopped risk along increasing
    n/p, relative to the lowest risk before it (0 for a curve that never rises);
    measured: the largest over SNRs; the reason gives the min-norm curve's for comparison."""
    def rise(method):
        out = {}
        for snr, g in _empirical(modelwise, method).groupby("snr"):
            c = g.sort_values("ratio")["risk"].to_numpy(float)
            out[snr] = float(np.max(c / np.minimum.accumulate(c) - 1))
        return out

    stopped, min_norm = rise("early_stopped"), rise("min_norm")
    worst = max(stopped.values())
    return Result(measured=worst, reproduced=worst <= BUMP,
                  reason=f"min-norm risk rises by {max(min_norm.values()):.3g}")
