"""Kernels at speed (issue 3; seeds 001 and 002): empirical vs infinite-width NTK,
kernel regression vs the trained network, and linearized vs real gradient descent.

This module: the ``kernels`` config block's checks, sweep points and every step's own
params (the only code that knows its layout; pure functions, no torch).

The network everywhere is memgen's ``FC(d, h, L, activation="relu", normalize=False,
last_layer="ntk", bias=False)``, the network whose infinite-width kernels
:func:`memgen.kernels.analytic_kernels` gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

Wildcards = Mapping[str, str]
DIMS = {"digits": 64, "cifar2": 3072}
DIGIT_IMAGES = 170  # scikit-learn's digits hold 174 to 183 images of each digit
METHODS = ("ntk", "nngp", "ntk_inf", "nngp_inf", "trained")  # of kn_accuracy: acc_METHOD
# of kn_linearized, at checkpoints: GD and the linearized network on train / test
LIN_KEYS = ("step", "t", "loss_train", "loss_test", "lin_loss_train", "lin_loss_test", "w_dist", "w_move",
            "f_dist_train", "f_dist_test")


def check(kb: dict) -> list[str]:
    """Problems a schema cannot express (keys relative to the ``kernels`` block)."""
    out = []
    dg = kb["digits"]
    a, b = (set(g) for g in class_groups(dg["classes"]))
    if a & b:
        out.append(f"digits.classes: need two different digits or disjoint lists of digits, got {dg['classes']}")
    need = max(max(kb["accuracy"]["n_train"]), kb["linearized"]["n_train"], kb["convergence"]["n_points"])
    images = DIGIT_IMAGES * len(a | b)
    if need + max(dg["n_test"], 1) > images:
        out.append(f"accuracy.n_train / linearized.n_train / convergence.n_points: {need} training points plus "
                   f"digits.n_test={dg['n_test']} exceed the ~{images} images of the digits {sorted(a | b)}")
    for key in ("accuracy.n_train", "accuracy.seeds", "convergence.widths", "convergence.seeds",
                "linearized.widths"):
        a, b = key.split(".")
        if len(set(kb[a][b])) != len(kb[a][b]):
            out.append(f"{key}: contains duplicates {kb[a][b]}")
    if len(set(kb["cifar"]["classes"])) != 2:
        out.append(f"cifar.classes: need two different classes, got {kb['cifar']['classes']}")
    out += _cifar_problems(kb["cifar"])
    return out


def class_groups(classes) -> list[list[int]]:
    """The two classes of ``digits.classes`` as lists of digits (a class is a digit or a list)."""
    return [[int(c) for c in (g if isinstance(g, list) else [g])] for g in classes]


def _cifar_problems(c: dict) -> list[str]:
    """``cifar.enabled: true`` needs every batch under ``root`` (``auto`` skips CIFAR
    without them; nothing is downloaded)."""
    from memgen.data import CIFAR_FILES, cifar_missing

    if c["enabled"] is not True:
        return []
    root = Path(c["root"])
    missing = cifar_missing(c["root"])
    if not missing:
        return []
    what = "does not exist" if not root.is_dir() else f"lacks {', '.join(missing)}"
    return [f"cifar.root: {str(root)!r} ({root.resolve()}) {what}; cifar.enabled: true expects the CIFAR-10 "
            f"python batches {', '.join(CIFAR_FILES)} there (extract cifar-10-python.tar.gz; memgen does not "
            "download), or set cifar.enabled: auto to skip CIFAR when they are missing"]


def cifar_enabled(kb: dict) -> bool:
    """``cifar.enabled``: true, false, or "auto" (when the batches are under ``root``)."""
    from memgen.data import cifar_available

    e = kb["cifar"]["enabled"]
    return cifar_available(kb["cifar"]["root"]) if e == "auto" else bool(e)


def datasets(kb: dict) -> list[str]:
    return ["digits"] + (["cifar2"] if cifar_enabled(kb) else [])


def dataset_params(kb: dict, name: str) -> dict:
    if name == "digits":
        dg = kb["digits"]
        n = max(max(kb["accuracy"]["n_train"]), kb["linearized"]["n_train"], kb["convergence"]["n_points"])
        return {"name": "digits", "n_train": int(n), "n_test": int(dg["n_test"]),
                "classes": [g if len(g) > 1 else g[0] for g in class_groups(dg["classes"])], "seed": int(dg["seed"])}
    c = kb["cifar"]
    return {"name": "cifar2", "n_train": int(max(c["n_train"])), "n_test": int(c["n_test"]),
            "classes": [int(v) for v in c["classes"]], "seed": int(c["seed"]), "root": str(c["root"])}


def _model(d: int, h: int, L: int) -> dict:
    return {"d": int(d), "h": int(h), "L": int(L), "activation": "relu", "beta": 5.0, "normalize": False,
            "bias": False, "last_layer": "ntk"}




def accuracy_points(kb: dict) -> list[dict[str, str]]:
    """(data set, training points, seed) of the kn_accuracy jobs."""
    seeds = kb["accuracy"]["seeds"]
    out = [{"ds": "digits", "n": str(n), "seed": str(s)} for n in kb["accuracy"]["n_train"] for s in seeds]
    if cifar_enabled(kb):
        out += [{"ds": "cifar2", "n": str(n), "seed": str(s)} for n in kb["cifar"]["n_train"] for s in seeds]
    return out


def convergence_points(kb: dict) -> list[dict[str, str]]:
    """Widths of the kn_convergence jobs (one job per width, all seeds inside)."""
    return [{"h": str(h)} for h in kb["convergence"]["widths"]]


def linearized_points(kb: dict) -> list[dict[str, str]]:
    """Widths of the kn_linearized jobs (one job per width)."""
    return [{"h": str(h)} for h in kb["linearized"]["widths"]]


def dataset(kb: dict, wc: Wildcards) -> dict:
    return dataset_params(kb, wc["ds"])


def accuracy(kb: dict, wc: Wildcards) -> dict:
    """kernel_accuracy on the first n training points of data set ds, network seed."""
    ds, n, seed = wc["ds"], int(wc["n"]), int(wc["seed"])
    a = kb["accuracy"]
    net = kb["cifar"] if ds == "cifar2" else a
    return {"n_train": int(n), "seed": int(seed), "dtype": kb["dtype"],
            "model": _model(DIMS[ds], net["h"], net["L"]), "ridge_ntk": float(a["ridge_ntk"]),
            "ridge_nngp": float(a["ridge_nngp"]), "ridge_inf": float(a["ridge_inf"]),
            "train": {"lr": float(a["lr"]), "steps": int(a["steps"])}}


def convergence(kb: dict, wc: Wildcards) -> dict:
    h = int(wc["h"])
    c = kb["convergence"]
    return {"n_points": int(c["n_points"]), "dtype": kb["dtype"],
            "model": _model(DIMS["digits"], h, c["L"]), "seeds": [int(s) for s in c["seeds"]]}


def linearized(kb: dict, wc: Wildcards) -> dict:
    h = int(wc["h"])
    li = kb["linearized"]
    return {"n_train": int(li["n_train"]), "seed": int(li["seed"]),
            "dtype": kb["dtype"], "model": _model(DIMS["digits"], h, li["L"]), "lr": float(li["lr"]),
            "steps": int(li["steps"]), "checkpoints": int(li["checkpoints"])}
