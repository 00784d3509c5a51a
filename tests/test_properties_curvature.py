"""Property-based contract tests (Hypothesis) of memgen.curvature: random shapes and
dtypes give either the right answer (dense Hessians, explicit solves, autograd loops) or
a MemgenError naming the broken argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import strategies as st
from torch import nn

import memgen.curvature as cv
from contract_cases import Case, assert_finite, close, property_tests, sizes, spd, tensor


def _quadratic(draw, dtype):
    """f(w) = 1/2 w^T A w + b.w with A SPD (eigenvalues in [1, 2]): H = A."""
    P = draw(sizes, label="P")
    A = spd(draw, P, dtype)
    return A, tensor(draw, (P,), dtype)


def _hvp_args(draw, dtype):
    A, w = _quadratic(draw, dtype)
    return {"fn": lambda u: 0.5 * u @ (A @ u) + u.sum(), "w": w, "v": tensor(draw, w.shape, dtype), "A": A}


def _grad_args(draw, dtype):
    a = _hvp_args(draw, dtype)
    return {"fn": a["fn"], "w": a["w"], "A": a["A"]}


def _solve_args(draw, dtype):
    A, v = _quadratic(draw, dtype)
    hdtype = draw(st.sampled_from((torch.float32, torch.float64)), label="hvp dtype")  # mixed: cast to v's
    Ah = A.to(hdtype)  # the operator's own matrix is the reference
    return {"hvp_fn": lambda u: Ah @ u.to(hdtype), "v": v, "damping": draw(st.sampled_from([0.0, 0.5])), "A": Ah}


def _check_solve(a, out):
    x = out[0]
    assert x.dtype == a["v"].dtype and x.shape == a["v"].shape  # the reference dtype: v's, every method
    M = a["A"].double() + a["damping"] * torch.eye(len(x), dtype=torch.float64)
    close(x, torch.linalg.solve(M, a["v"].double()), _low(a["A"], a["v"]), 100)


def _low(*ts):
    """The lower precision of the tensors' dtypes (float32 rounding on any path)."""
    return torch.float32 if any(t.dtype == torch.float32 for t in ts) else torch.float64


OMIT = object()  # a build's placeholder for an argument the function does not take


def _drop_A(fn):
    return lambda A=None, **kw: fn(**{k: v for k, v in kw.items() if v is not OMIT})


def _model(draw, dtype, kind=None):
    d = draw(sizes, label="d")
    torch.manual_seed(draw(st.integers(0, 99), label="init seed"))
    net = (nn.Linear(d, 1) if (kind or draw(st.sampled_from(["logreg", "mlp"]))) == "logreg"
           else nn.Sequential(nn.Linear(d, 2), nn.Tanh(), nn.Linear(2, 1))).to(dtype)
    n = draw(st.integers(2, 5), label="n")
    x, y = tensor(draw, (n, d), dtype), (tensor(draw, (n,), dtype) > 0).to(dtype)
    return {"model": net, "loss_fn": cv.logistic_loss, "x": x, "y": y}


def _grad_ref(model, loss_fn, x, y):
    params = [p for p in model.parameters()]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(model(x), y), params)])


def _batches_args(draw, dtype):
    m = _model(draw, dtype)
    k = draw(st.integers(1, len(m["x"]) - 1), label="split")
    return {"model": m["model"], "loss_fn": m["loss_fn"], "batches": [(m["x"][:k], m["y"][:k]), (m["x"][k:], m["y"][k:])],
            "_xy": (m["x"], m["y"])}


def _hessian_ref(model, loss_fn, x, y):
    w0 = cv.flat_params(model)
    params = list(model.parameters())

    def f(w):
        chunks = cv.unflatten(w, params)
        out = torch.func.functional_call(model, {n: c for (n, _), c in zip(model.named_parameters(), chunks)}, (x,))
        return loss_fn(out, y)

    return torch.autograd.functional.hessian(f, w0)


def _check_module_hvp(a, hvp_fn):
    P = sum(p.numel() for p in a["model"].parameters())
    u = torch.linspace(-1, 1, P, dtype=a["_xy"][0].dtype)
    close(hvp_fn(u), _hessian_ref(a["model"], a["loss_fn"], *a["_xy"]) @ u, u.dtype, 10)


def _without(*keys):
    def wrap(fn):
        return lambda **kw: fn(**{k: v for k, v in kw.items() if k not in keys})
    return wrap


def _influence_args(draw, dtype):
    m = _model(draw, dtype, "logreg")
    return {**{k: m[k] for k in ("model", "loss_fn")}, "train_x": m["x"], "train_y": m["y"], "test_x": m["x"][:1],
            "test_y": m["y"][:1], "l2": 0.1, "method": draw(st.sampled_from(["exact", "cg"])), "damping": 0.0,
            "batch_size": None, "vectorized": False}


CASES = [
    Case("gradient", _drop_A(cv.gradient), _grad_args, {"w": ("nan", "empty", "col", "int"), "fn": ("notcallable",)},
         lambda a, g: close(g, a["A"] @ a["w"] + 1, a["w"].dtype, 10)),
    Case("hvp", _drop_A(cv.hvp), _hvp_args, {"v": ("col", "scalar", "nan", "drop"), "w": ("nan", "empty")},
         lambda a, hv: close(hv, a["A"] @ a["v"], a["w"].dtype, 10)),
    Case("finite_difference_hvp", _drop_A(cv.finite_difference_hvp),
         lambda draw, dt: {**(a := _hvp_args(draw, torch.float64)), "grad_fn": lambda u, A=a["A"]: A @ u, "fn": OMIT,
                           "r": 1e-4},
         {"v": ("col", "nan"), "r": ("zero", "neg", "nanum"), "grad_fn": ("notcallable",)},
         lambda a, hv: close(hv, a["A"] @ a["v"], torch.float64, 1e3)),
    Case("hessian_matrix", _drop_A(cv.hessian_matrix),
         lambda draw, dt: {**(a := _solve_args(draw, dt)), "like": a["v"], "v": OMIT, "damping": OMIT},
         {"like": ("empty", "zero", "frac"), "hvp_fn": ("notcallable",)},
         lambda a, H: close(H, a["A"], _low(a["A"], a["like"]), 10)),
    Case("top_eigenvalue", _drop_A(cv.top_eigenvalue),
         lambda draw, dt: {"hvp_fn": (a := _solve_args(draw, torch.float64))["hvp_fn"], "like": a["v"], "A": a["A"],
                           "iters": 500, "tol": 1e-12},
         {"iters": ("zero", "frac"), "tol": ("neg", "nanum"), "like": ("empty",)},
         lambda a, lam: abs(lam) <= float(torch.linalg.eigvalsh(a["A"]).abs().max()) * (1 + 1e-6)),
    Case("inverse_hvp", _drop_A(cv.inverse_hvp),
         lambda draw, dt: {**_solve_args(draw, dt), "method": draw(st.sampled_from(["exact", "cg", "lissa"]))},
         {"v": ("nan", "col", "empty", "int"), "method": ("bogus",), "damping": ("neg", "nanum"),
          "hvp_fn": ("notcallable",)}, _check_solve),
    Case("exact_solve", _drop_A(cv.exact_solve), lambda draw, dt: {**_solve_args(draw, dt), "max_dim": 100}, {"v": ("nan", "col"), "max_dim": ("zero",)}, _check_solve),
    Case("cg_solve", _drop_A(cv.cg_solve), lambda draw, dt: {**_solve_args(draw, dt), "max_iter": 200, "tol": 1e-10}, {"v": ("nan", "col"), "tol": ("neg",), "max_iter": ("zero",)},
         _check_solve),
    Case("lissa_solve", _drop_A(cv.lissa_solve), lambda draw, dt: {**_solve_args(draw, dt), "depth": 200, "batch_hvps": None, "scale": 3.0,
                                                                  "record": "norm", "record_every": 1, "repeats": 1},
         {"v": ("nan", "col"), "depth": ("zero", "frac"), "record_every": ("zero",), "scale": ("zero", "neg"),
          "record": ("bogus",), "repeats": ("zero",), "batch_hvps": ("emptylist",)}, _check_solve),
    Case("lissa_scale", cv.lissa_scale, lambda draw, dt: {"lambda_max": 2.0, "damping": 0.5},
         {"lambda_max": ("nanum", "inf"), "damping": ("neg",)}, lambda a, s: s == pytest.approx(2.75)),
    Case("lissa_unguarded_path", _drop_A(cv.lissa_unguarded_path),
         lambda draw, dt: {**_solve_args(draw, dt), "scale": 3.0, "depth": 5, "bound": 10.0},
         {"scale": ("zero", "neg"), "depth": ("zero",), "bound": ("zero",), "v": ("nan",)},
         lambda a, path: path.shape[1:] == a["v"].shape),
    Case("module_params", cv.module_params, lambda draw, dt: {"model": _model(draw, dt)["model"]},
         {"model": ("notcallable", "none")}, lambda a, ps: len(ps) >= 2),
    Case("flat_params", cv.flat_params, lambda draw, dt: {"model": _model(draw, dt)["model"]}, {"model": ("notcallable",)},
         lambda a, w: w.numel() == sum(p.numel() for p in a["model"].parameters())),
    Case("set_flat_params", cv.set_flat_params,
         lambda draw, dt: {"model": (m := _model(draw, dt)["model"]), "w": cv.flat_params(m) + 1},
         {"w": ("drop", "col", "nan")}, lambda a, _: close(cv.flat_params(a["model"]), a["w"], a["w"].dtype)),
    Case("unflatten", cv.unflatten,
         lambda draw, dt: {"vec": cv.flat_params(m := _model(draw, dt)["model"]), "like": list(m.parameters())},
         {"vec": ("drop", "int")}, lambda a, parts: [p.shape for p in parts] == [p.shape for p in a["like"]]),
    Case("module_gradient", _without("_xy")(cv.module_gradient), _batches_args,
         {"batches": ("emptylist", "none"), "loss_fn": ("notcallable",), "model": ("notcallable",)},
         lambda a, g: close(g, _grad_ref(a["model"], a["loss_fn"], *a["_xy"]), a["_xy"][0].dtype, 10)),
    Case("make_module_hvp", _without("_xy")(cv.make_module_hvp), _batches_args,
         {"batches": ("emptylist",), "loss_fn": ("notcallable",)}, _check_module_hvp),
    Case("module_hvp", _without("_xy")(cv.module_hvp),
         lambda draw, dt: {**(a := _batches_args(draw, dt)), "v": cv.flat_params(a["model"]) * 0 + 1},
         {"v": ("col", "nan", "drop")},
         lambda a, hv: close(hv, _hessian_ref(a["model"], a["loss_fn"], *a["_xy"]) @ a["v"], a["v"].dtype, 10)),
    Case("make_batch_hvps", _without("_xy")(cv.make_batch_hvps), _batches_args, {"batches": ("emptylist",)},
         lambda a, fs: len(fs) == 2),
    Case("per_example_gradients", cv.per_example_gradients,
         lambda draw, dt: {**_model(draw, dt), "vectorized": False}, {"y": ("drop",), "x": ("empty",)},
         lambda a, G: close(G[0], _grad_ref(a["model"], a["loss_fn"], a["x"][:1], a["y"][:1]), a["x"].dtype, 10)),
    Case("regularized_loss", cv.regularized_loss, lambda draw, dt: {**_model(draw, dt), "l2": 0.1},
         {"l2": ("neg", "nanum"), "y": ("drop",)}, lambda a, r: assert_finite(r.detach())),
    Case("fit", cv.fit, lambda draw, dt: {**_model(draw, dt, "logreg"), "l2": 0.1, "max_iter": 8, "method": "lbfgs", "tol": 1e-8},
         {"method": ("bogus",), "max_iter": ("zero", "frac"), "l2": ("neg",), "tol": ("nanum",)},
         lambda a, info: np.isfinite(info["grad_norm"])),
    Case("influence_on_test_loss", cv.influence_on_test_loss, _influence_args,
         {"method": ("bogus",), "damping": ("neg",), "batch_size": ("zero",), "train_y": ("drop",)},
         lambda a, inf: inf.up_loss.shape == (len(a["train_x"]),) and assert_finite(inf.up_loss) is None),
    Case("leave_one_out", cv.leave_one_out,
         lambda draw, dt: {k: v for k, v in _influence_args(draw, dt).items() if k not in ("method", "damping", "batch_size",
                                                                                            "vectorized")}
                           | {"indices": [0], "max_iter": 5},
         {"indices": ("neg",), "l2": ("neg",), "test_y": ("drop",)}, lambda a, out: out[0].shape == (1,)),
    Case("toy_hvp", cv.toy_hvp, lambda draw, dt: {"x": 1.0, "y": 2.0, "w": tensor(draw, (2,), torch.float64)},
         {"w": ("col", "nan", "drop"), "x": ("nanum",)}, lambda a, f: f(torch.ones(2, dtype=torch.float64)).shape == (2,)),
    Case("compare_solvers", _drop_A(cv.compare_solvers),
         lambda draw, dt: {**(a := _solve_args(draw, torch.float64)), "H": a["A"], "dampings": [0.0, 0.5], "damping": OMIT,
                           "options": {"exact": {}, "cg": {}}},
         {"dampings": ("neg", "emptylist"), "options": ("emptylist", "none"), "H": ("col", "nan"), "v": ("nan",)},
         lambda a, out: np.isfinite(out.x).all()),
    Case("lissa_paths", _drop_A(cv.lissa_paths),
         lambda draw, dt: {**_solve_args(draw, torch.float64), "runs": [(3.0, 0.0), (0.5, 0.0)], "depth": 20,
                           "bound": 10.0, "damping": OMIT},
         {"runs": ("neg", "emptylist"), "depth": ("zero",), "bound": ("zero",), "v": ("nan",)},
         lambda a, out: bool(out.diverged[1]) and not out.diverged[0]),
    Case("logistic_loss", cv.logistic_loss, lambda draw, dt: {"out": tensor(draw, (3, 1), dt), "y": torch.ones(3, dtype=dt)},
         {"y": ("drop", "col"), "out": ("wide", "empty")}, lambda a, out: out > 0),
    Case("classifier", cv.classifier, lambda draw, dt: {"kind": "mlp", "d": draw(sizes), "hidden": 2, "seed": 0},
         {"d": ("zero", "frac"), "hidden": ("zero",), "seed": ("frac",), "kind": ("bogus",)},
         lambda a, net: isinstance(net, nn.Module)),
    Case("evaluate_classifier", cv.evaluate_classifier, lambda draw, dt: {k: v for k, v in _model(draw, dt).items()
                                                                            if k != "loss_fn"},
         {"y": ("drop",), "x": ("empty",), "model": ("notcallable",)}, lambda a, out: 0 <= out[2] <= 1),
    Case("select_for_retraining", cv.select_for_retraining,
         lambda draw, dt: {"predicted": tensor(draw, (5,), torch.float64).numpy(), "n_top": 2, "n_random": 2, "seed": 0},
         {"predicted": ("nan", "empty"), "n_top": ("neg", "frac"), "n_random": ("neg",)},
         lambda a, out: len(out[0]) == 4),
    Case("solver_accuracy", cv.solver_accuracy,
         lambda draw, dt: {**(m := _model(draw, torch.float64, "logreg")),
                           "v": torch.ones(len(cv.flat_params(m["model"])), dtype=torch.float64),
                           "l2": 0.1, "damping": 0.0, "cg_tol": 1e-8, "scale_factors": [1.5], "batch_size": 2,
                           "depth": 10, "record_every": 5, "seed": 0},
         {"depth": ("zero",), "scale_factors": ("emptylist", "neg"), "batch_size": ("zero",), "v": ("nan", "col"),
          "cg_tol": ("zero",)}, lambda a, out: np.isfinite(out.rel_error).all()),
]


test_valid_inputs_give_the_reference_answer, test_a_broken_argument_raises_a_memgen_error_naming_it = \
    property_tests(CASES)
