"""The curvature family's experiments (Koh & Liang 2017; seed 003), as library calls.

- the seed's toy L(w) = (y - w1 w2 x)^2 (:func:`toy_hvp`): every solver at every damping
  (:func:`compare_solvers`) and LiSSA's iterate paths per scale and damping, divergent
  ones included (:func:`lissa_paths`);
- the digits classifiers (:func:`classifier`, :func:`logistic_loss`,
  :func:`evaluate_classifier`) and the training points to check by retraining
  (:func:`select_for_retraining`);
- the accuracy of CG and LiSSA against a dense solve per Hessian-vector product
  (:func:`solver_accuracy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from memgen import MemgenError
from memgen.contracts import array, choice, fail, integer, module_dtype, number, tensor
from memgen.curvature.hvp import HVPFn, hvp, top_eigenvalue
from memgen.curvature.modules import _sizes, make_batch_hvps, make_module_hvp
from memgen.curvature.solvers import LissaDiverged, inverse_hvp, lissa_unguarded_path
from memgen.progress import sublabel

D = torch.float64

# ---------------------------------------------------------------- the seed's toy


def toy_hvp(x: float, y: float, w: torch.Tensor) -> HVPFn:
    """u -> H u, H the Hessian at w (2,) of the seed's toy L(w) = (y - w1 w2 x)^2 on one point
    (x, y finite numbers; w a finite tensor of shape (2,)).
    Contract: x, y finite numbers; w a finite tensor (2,).
    """
    x, y = number("toy_hvp", "x", x), number("toy_hvp", "y", y)
    w = tensor("toy_hvp", "w", w, shape=(2,), finite=True)
    return lambda u: hvp(lambda ww: (y - ww[0] * ww[1] * x) ** 2, w, u)


@dataclass
class SolverComparison:
    """Solutions of (H + d I) x = v per damping d (D of them) and method (M): ``x``
    (D, M, P), ``hvps`` (D, M) used, ``residual`` (D, M) ||(H + d I) x - v|| / ||v|| with
    the dense H, ``exact`` (D, P) by numpy's dense solve."""

    x: np.ndarray
    hvps: np.ndarray
    residual: np.ndarray
    exact: np.ndarray


def compare_solvers(hvp_fn: HVPFn, v: torch.Tensor, H: torch.Tensor, dampings: Sequence[float],
                    options: dict[str, dict]) -> SolverComparison:
    """Every :func:`inverse_hvp` method of ``options`` (method -> its options) at every
    damping, checked against the dense (P, P) matrix ``H`` of hvp_fn. Contract: v finite
    (P,), H finite (P, P) in v's dtype, ``dampings`` a non-empty list of numbers >= 0,
    ``options`` a non-empty dict whose keys are inverse_hvp methods."""
    v = tensor("compare_solvers", "v", v, ndim=1, finite=True)
    P = len(v)
    H = tensor("compare_solvers", "H", H, shape=(P, P), finite=True, dtype=v.dtype)
    dampings = [number("compare_solvers", "dampings", d, lo=0) for d in array("compare_solvers", "dampings", dampings, ndim=1)]
    if not isinstance(options, dict) or not options:
        raise fail("compare_solvers", "options", repr(options), "a non-empty dict method -> options")
    for method in options:
        choice("compare_solvers", "options", method, ("exact", "cg", "lissa"))
    sol = np.full((len(dampings), len(options), P), np.nan)
    hvps, resid = np.zeros((len(dampings), len(options))), np.full((len(dampings), len(options)), np.nan)
    exact = np.stack([np.linalg.solve(H.numpy() + d * np.eye(P), v.numpy()) for d in dampings])
    for i, d in enumerate(dampings):
        for j, method in enumerate(options):
            x, info = inverse_hvp(hvp_fn, v, method=method, damping=float(d), **options[method])
            sol[i, j], hvps[i, j] = x.numpy(), info["hvps"]
            A = H + float(d) * torch.eye(P, dtype=H.dtype)
            resid[i, j] = float((A @ x - v).norm() / v.norm())
    return SolverComparison(sol, hvps, resid, exact)


@dataclass
class LissaPaths:
    """LiSSA's iterates x_j, j = 1..depth, per run (scale, damping): ``path`` (R, depth, P)
    (NaN after a run's last step), ``diverged`` (R,), ``steps`` (R,) recorded, and
    ``messages`` (the guard's message for a diverged run, else "")."""

    path: np.ndarray
    diverged: np.ndarray
    steps: np.ndarray
    messages: list = field(default_factory=list)


def lissa_paths(hvp_fn: HVPFn, v: torch.Tensor, runs: Sequence[tuple[float, float]], depth: int,
                bound: float) -> LissaPaths:
    """The guarded LiSSA recursion for each (scale, damping) of ``runs``; a scale the guard
    rejects (:class:`LissaDiverged`) is recorded as diverged, with the unguarded iterates
    until they leave max |x_j| <= ``bound`` (:func:`lissa_unguarded_path`): never a crash.
    Contract: v finite (P,); ``runs`` non-empty pairs (scale > 0, damping >= 0); depth >= 1;
    bound > 0."""
    v = tensor("lissa_paths", "v", v, ndim=1, finite=True)
    runs = array("lissa_paths", "runs", runs, shape=(None, 2))
    if not ((runs[:, 0] > 0).all() and (runs[:, 1] >= 0).all()):
        raise fail("lissa_paths", "runs", repr(runs.tolist()), "pairs (scale > 0, damping >= 0)")
    depth, bound = integer("lissa_paths", "depth", depth, lo=1), number("lissa_paths", "bound", bound, lo=0, lo_open=True)
    paths = np.full((len(runs), depth, len(v)), np.nan)
    diverged, steps, messages = np.zeros(len(runs), bool), np.zeros(len(runs), int), []
    for k, (s, d) in enumerate(runs):
        try:
            _, info = inverse_hvp(hvp_fn, v, method="lissa", scale=float(s), damping=float(d), depth=depth,
                                  record="iterate")
            path, msg = info["path"][0].numpy(), ""
        except LissaDiverged as exc:
            path = lissa_unguarded_path(hvp_fn, v, float(s), float(d), depth, bound).numpy()
            diverged[k], msg = True, str(exc)
        paths[k, :len(path)], steps[k] = path, len(path)
        messages.append(msg)
    return LissaPaths(paths, diverged, steps, messages)


# ---------------------------------------------------------------- the digits classifiers

CLASSIFIERS = ("logreg", "mlp")


def logistic_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean logistic loss of logits ``out`` (n, 1) or (n,) against labels y (n,) in [0, 1]
    (n >= 1; y converted to out's dtype).
    Contract: out a float tensor (n, 1) or (n,), n >= 1; y (n,), converted to out's dtype.
    """
    out = tensor("logistic_loss", "out", out, ndim=(1, 2))
    if out.dim() == 2 and out.shape[1] != 1:
        raise fail("logistic_loss", "out", f"of shape {tuple(out.shape)}", "shape (n, 1) or (n,)")
    y = tensor("logistic_loss", "y", y, shape=(out.shape[0],), dtype=out.dtype)
    return torch.nn.functional.binary_cross_entropy_with_logits(out.squeeze(-1), y)


def classifier(kind: str, d: int, hidden: int | None = None, seed: int = 0) -> nn.Module:
    """``logreg``: Linear(d, 1); ``mlp``: Linear(d, hidden) - tanh - Linear(hidden, 1);
    PyTorch's default init under ``torch.manual_seed(seed)``, float64. ``d`` >= 1,
    ``hidden`` >= 1 for the MLP.
    Contract: kind logreg or mlp; d an integer >= 1; hidden an integer >= 1 (mlp); seed an
    integer.
    """
    if kind not in CLASSIFIERS:
        raise MemgenError(f"curvature model kind: unknown '{kind}' ({', '.join(CLASSIFIERS)})")
    d = integer("classifier", "d", d, lo=1)
    torch.manual_seed(integer("classifier", "seed", seed))
    if kind == "logreg":
        net = nn.Linear(d, 1)
    else:
        net = nn.Sequential(nn.Linear(d, integer("classifier", "hidden", hidden, lo=1)), nn.Tanh(), nn.Linear(hidden, 1))
    return net.double()


def evaluate_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """(logits (n,), per-point logistic losses (n,), accuracy of logit > 0 against y in {0, 1}).
    Contract: x (n, ...) and y (n,) tensors, n >= 1, y converted to the model's dtype."""
    dtype = module_dtype("evaluate_classifier", "model", model)
    x = tensor("evaluate_classifier", "x", x, dtype=dtype)
    y = tensor("evaluate_classifier", "y", y, shape=(x.shape[0],) if x.dim() else (None,), dtype=dtype)
    with torch.no_grad():
        out = model(x).squeeze(-1)
        losses = torch.nn.functional.binary_cross_entropy_with_logits(out, y, reduction="none")
    return out, losses, float(((out > 0).double() == y).double().mean())


def select_for_retraining(predicted: np.ndarray, n_top: int, n_random: int, seed: int):
    """The training points whose removal to check: the ``n_top`` largest |predicted| and
    ``n_random`` of the others drawn with ``seed`` (sorted). Returns (indices (k,) int64,
    is_top (k,) bool). Contract: ``predicted`` finite (n,), n >= 1; n_top, n_random >= 0."""
    predicted = array("select_for_retraining", "predicted", predicted, ndim=1)
    n_top = integer("select_for_retraining", "n_top", n_top, lo=0)
    n_random = integer("select_for_retraining", "n_random", n_random, lo=0)
    n = len(predicted)
    top = np.argsort(-np.abs(predicted), kind="stable")[:min(n_top, n)]
    rest = np.setdiff1d(np.arange(n), top)
    rnd = np.sort(np.random.default_rng(seed).choice(rest, min(n_random, len(rest)), replace=False))
    return np.concatenate([top, rnd]).astype(np.int64), np.r_[np.ones(len(top)), np.zeros(len(rnd))].astype(bool)


# ---------------------------------------------------------------- solver accuracy per HVP


@dataclass
class SolverAccuracy:
    """Rows (``method``, ``hvps``, ``rel_error`` = ||x - x*|| / ||x*||) of every solver's
    iterates against the dense solution ``reference`` x*; ``methods``: the sorted method
    names, ``method_code``: each row's index into them; ``lambda_max`` (power iteration)
    and CG's info."""

    method: list
    hvps: np.ndarray
    rel_error: np.ndarray
    reference: torch.Tensor
    lambda_max: float
    cg_info: dict

    @property
    def methods(self) -> list[str]:
        return sorted(set(self.method))

    @property
    def method_code(self) -> np.ndarray:
        return np.array([self.methods.index(m) for m in self.method])


def solver_accuracy(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, *,
                    l2: float, damping: float, cg_tol: float, scale_factors: Sequence[float], batch_size: int,
                    depth: int, record_every: int, seed: int, progress: str | None = None) -> SolverAccuracy:
    """Accuracy vs number of HVPs of CG and LiSSA on (H + damping I) x = v, with H the
    Hessian of the mean loss + (l2/2)||w||^2 over (x, y): the relative error against a
    dense solve after every CG iteration and every ``record_every`` LiSSA steps, full
    batch at scale f (lambda_max + damping) for each f of ``scale_factors``, and with
    mini-batch Hessians of ``batch_size`` points (if fewer than n; at the first factor
    times the largest batch eigenvalue), each mini-batch HVP counted as batch_size / n of
    a full one. The power iteration that sets the scale is counted too. Contract: the
    module contract of :mod:`memgen.curvature.modules` for (x, y); v finite (P,); l2,
    damping >= 0; cg_tol > 0; ``scale_factors`` non-empty, > 0; batch_size, depth,
    record_every >= 1."""
    ((x, y),), _, n = _sizes("solver_accuracy", model, loss_fn, [(x, y)], ("x", "y"))
    v = tensor("solver_accuracy", "v", v, ndim=1, finite=True)
    l2, damping = number("solver_accuracy", "l2", l2, lo=0), number("solver_accuracy", "damping", damping, lo=0)
    cg_tol = number("solver_accuracy", "cg_tol", cg_tol, lo=0, lo_open=True)
    scale_factors = [number("solver_accuracy", "scale_factors", f, lo=0, lo_open=True)
                     for f in array("solver_accuracy", "scale_factors", scale_factors, ndim=1)]
    for key, value in (("batch_size", batch_size), ("depth", depth), ("record_every", record_every)):
        integer("solver_accuracy", key, value, lo=1)
    data_hvp = make_module_hvp(model, loss_fn, [(x, y)], cache_graph=True)
    hvp_fn = lambda u: data_hvp(u) + l2 * u  # noqa: E731  (Hessian of the regularized objective)
    ref, _ = inverse_hvp(hvp_fn, v, method="exact", damping=damping, progress=sublabel(progress, "exact"))
    err = lambda z: float((z - ref).norm() / ref.norm())  # noqa: E731
    rows = {"method": [], "hvps": [], "rel_error": []}

    def add(method, hvps, e):
        rows["method"].append(method)
        rows["hvps"].append(float(hvps))
        rows["rel_error"].append(e)

    add("cg", 0, 1.0)
    _, cg_info = inverse_hvp(hvp_fn, v, method="cg", damping=damping, tol=cg_tol,
                             callback=lambda k, z: add("cg", k, err(z)), progress=sublabel(progress, "cg"))
    lam, pinfo = top_eigenvalue(hvp_fn, v, iters=200, tol=1e-6, return_info=True)
    runs = [(f"lissa_full_x{f:g}", None, f * (lam + damping), 1.0) for f in scale_factors]
    bs = int(batch_size)
    if bs < n:
        batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)]
        bh = [lambda u, f=f: f(u) + l2 * u for f in make_batch_hvps(model, loss_fn, batches, cache_graph=True)]
        lam_b = max(top_eigenvalue(f, v, iters=200, tol=1e-6) for f in bh)
        runs.append((f"lissa_batch{bs}_x{scale_factors[0]:g}", bh, scale_factors[0] * (lam_b + damping), bs / n))
    for name, batch_hvps, scale, cost in runs:
        add(name, pinfo["hvps"], 1.0)
        _, info = inverse_hvp(hvp_fn, v, method="lissa", damping=damping, scale=scale, depth=int(depth),
                              batch_hvps=batch_hvps, lambda_max=lam, record="iterate",
                              record_every=int(record_every), seed=int(seed), progress=sublabel(progress, name))
        for j, xj in zip(info["path_steps"], info["path"][0]):
            add(name, pinfo["hvps"] + cost * j, err(xj))
    return SolverAccuracy(rows["method"], np.asarray(rows["hvps"]), np.asarray(rows["rel_error"]), ref, float(lam),
                          cg_info)
