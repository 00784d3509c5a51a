"""The ``curvature`` config block: its checks, the models and every step's own params.
The only code that knows the block's layout; pure functions, no torch."""

from __future__ import annotations

from typing import Mapping

from memgen import MemgenError

Wildcards = Mapping[str, str]

MODELS = ("logreg", "mlp")
SUMMARIES = ("toy", "paths", "models", "influence", "solvers", "images")


def check(cv: dict) -> list[str]:
    """Problems a schema cannot express (keys relative to the ``curvature`` block)."""
    out = []
    toy = cv["toy"]
    for key in ("scales", "dampings"):
        if len(set(toy[key])) != len(toy[key]):
            out.append(f"toy.{key}: contains duplicates {toy[key]}")
    d = cv["digits"]
    if d["classes"][0] == d["classes"][1]:
        out.append(f"digits.classes: must be two different digits, got {d['classes']}")
    # each digit has ~180 images in sklearn's data set; the step reports the exact count
    if d["n_train"] + d["n_test"] > 350:
        out.append(f"digits.n_train + n_test: {d['n_train'] + d['n_test']} exceeds the ~350 images of two classes")
    n_check = cv["influence"]["n_top"] + cv["influence"]["n_random"]
    if n_check > d["n_train"]:
        out.append(f"influence.n_top + n_random: {n_check} exceeds digits.n_train = {d['n_train']}")
    if cv["solvers"]["batch_size"] > d["n_train"]:
        out.append(f"solvers.batch_size: {cv['solvers']['batch_size']} exceeds digits.n_train = {d['n_train']}")
    return out


# ---------------------------------------------------------------- step params


def model_points(cv: dict) -> list[dict[str, str]]:
    return [{"cv_model": m} for m in MODELS]


def toy(cv: dict, wc: Wildcards) -> dict:
    return toy_params(cv)


def digits(cv: dict, wc: Wildcards) -> dict:
    return digits_params(cv)


def train(cv: dict, wc: Wildcards) -> dict:
    return train_params(cv, wc["cv_model"])


def influence(cv: dict, wc: Wildcards) -> dict:
    m, inf = wc["cv_model"], cv["influence"]
    return {"damping": float(cv[m]["damping"]), "test_index": inf["test_index"], "cg_tol": float(inf["cg_tol"]),
            "select": {k: inf[k] for k in ("n_top", "n_random", "seed")}}


def loo(cv: dict, wc: Wildcards) -> dict:
    return {"fit": dict(cv[wc["cv_model"]]["fit"])}


def solvers(cv: dict, wc: Wildcards) -> dict:
    s = cv["solvers"]
    return {"cg_tol": float(s["cg_tol"]),
            "lissa": {k: s[k] for k in ("depth", "record_every", "batch_size", "scale_factors", "seed")}}


def summary(cv: dict, wc: Wildcards) -> dict:
    return {"n_images": int(cv["figures"]["n_images"])}


def toy_params(cv: dict) -> dict:
    return {"x": 2.0, "y": 1.0, "w": [1.0, 1.0 / 3.0], "v": [1.0, 1.0], **cv["toy"]}


def digits_params(cv: dict) -> dict:
    return dict(cv["digits"])


def train_params(cv: dict, model: str) -> dict:
    if model not in MODELS:
        raise MemgenError(f"curvature: unknown model '{model}' ({', '.join(MODELS)})")
    m = cv[model]
    spec = {"kind": model, "seed": int(m["seed"])}
    if model == "mlp":
        spec["hidden"] = int(m["hidden"])
    return {"model": spec, "l2": float(m["l2"]), "fit": dict(m["fit"])}
