"""The ``time_scale`` config block: its checks, sweep points and every step's own params.

The only code that knows the block's layout. Pure functions of the (validated) block
and a job's wildcards (strings, as in the file names); no torch.
"""

from __future__ import annotations

import math
from typing import Mapping

Wildcards = Mapping[str, str]


def check(ts: dict) -> list[str]:
    """Problems a schema cannot express (keys relative to the ``time_scale`` block)."""
    out = []
    ds = ts["dataset"]
    if ds["k"] > ds["d"]:
        out.append(f"dataset.k: {ds['k']} must be <= dataset.d = {ds['d']}")
    n = ds["n_train"] + ds["n_test"]
    if ds["d"] < 63 and n > 2 ** ds["d"]:
        out.append(f"dataset.n_train + n_test: {n} exceeds the {2 ** ds['d']} distinct binary strings "
                   f"of length d = {ds['d']}")
    for key in ("alphas", "widths", "seeds"):
        if len(set(ts[key])) != len(ts[key]):
            out.append(f"{key}: contains duplicates {ts[key]}")
    for a in ts["alphas"]:
        if float(alpha_name(a)) != float(a):  # the file name is the run's alpha: it must round-trip
            out.append(f"alphas: {a!r} is not exactly {alpha_name(a)}, the name of its files (6 significant digits)")
    h = ts["figures"]["h"]
    if h is not None and h not in ts["widths"]:
        out.append(f"figures.h: {h} is not one of widths {ts['widths']}")
    return out


def alpha_name(alpha: float) -> str:
    return f"{float(alpha):g}"


def points(ts: dict) -> list[dict[str, str]]:
    """Every (alpha, h, seed) of the sweep, as file-name wildcards."""
    return [{"alpha": alpha_name(a), "h": str(h), "seed": str(s)}
            for h in ts["widths"] for s in ts["seeds"] for a in ts["alphas"]]


def frozen_points(ts: dict) -> list[dict[str, str]]:
    """The points with a frozen-kernel run (all of them, or none)."""
    return points(ts) if ts["frozen_kernel"] else []


def dataset(ts: dict, wc: Wildcards) -> dict:
    return dict(ts["dataset"])


def init(ts: dict, wc: Wildcards) -> dict:
    return {"model": {"d": ts["dataset"]["d"], "h": int(wc["h"]), **ts["model"]}, "seed": int(wc["seed"]),
            "dtype": ts["dtype"]}


# flow keys only one integrator reads: left out of the other's params (euler runs keep
# exactly the params they had before flow.method existed)
METHOD_KEYS = {"euler": ("max_dgrad", "max_dout", "checkpoint_step"),
               "rkc": ("method", "rtol", "checkpoints_per_decade", "deflate")}


def _flow(ts: dict, alpha: float, h: int) -> dict:
    f = dict(ts["flow"])
    tau = f.pop("tau_over_h") * h * min(1.0, f.pop("tau_alpha_crit") / alpha)
    if f.get("gradient_dtype", "same") == "same":
        f.pop("gradient_dtype", None)
    method = f.get("method", "euler")
    for key in {k for m, keys in METHOD_KEYS.items() if m != method for k in keys} - set(METHOD_KEYS[method]):
        f.pop(key, None)
    return {**f, "tau": tau}


def train(ts: dict, wc: Wildcards) -> dict:
    """Gradient flow of F = alpha (f - f0) at the point's alpha (memgen.training)."""
    alpha = float(wc["alpha"])
    return {"alpha": alpha, "loss": dict(ts["loss"]), "flow": _flow(ts, alpha, int(wc["h"]))}


# The frozen-kernel run has the same dynamics, on the NTK at init.
kernel_train = train


def article_units(alpha: float, h: int, last_layer: str, normalization: str) -> tuple[float, float]:
    """(alpha_article, t_article / t) for a run in memgen's conventions.

    The article (Geiger et al. 2019) uses the "ntk" last layer (1/sqrt(h)) and the loss
    (1/alpha^2) mean l. With the mean-field last layer (1/h) the same function F needs
    alpha_article = alpha / sqrt(h). Our objective is norm * mean l with norm = 1/alpha^2
    ("article") or 1/alpha ("code"); it equals c times the article's objective,
    c = norm * alpha_article^2, so t_article = c * t.
    """
    alpha_art = alpha / math.sqrt(h) if last_layer == "mean_field" else alpha
    norm = alpha**-2 if normalization == "article" else 1.0 / alpha
    return alpha_art, norm * alpha_art**2
