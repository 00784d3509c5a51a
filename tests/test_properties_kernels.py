"""Property-based contract tests (Hypothesis) of memgen.kernels (and its studies),
memgen.models and memgen.data: random shapes and dtypes give either the right answer
(against a slow reference) or a MemgenError naming the broken argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

from contract_cases import Case, assert_finite, close, property_tests, sizes, tensor
from memgen import data as mdata
from memgen import kernels
from memgen.kernels import studies
from memgen.models import FC, Activation, FCSpec, FlatFC, activation_constant


def _net(draw, dtype, d=None, L=None):
    d = d or draw(sizes, label="d")
    return FC(d, draw(st.integers(2, 4), label="h"), L or draw(st.integers(1, 2), label="L"), activation="tanh",
              bias=draw(st.booleans(), label="bias"), seed=draw(st.integers(0, 99), label="net seed"), dtype=dtype)


def _jacobian(model, x):
    """Per-example gradients (n, P) of a scalar-output module: the slow reference."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(model(x[i:i + 1]).sum(), params)]) for i in range(len(x))]
    return torch.stack(rows)


def _ntk_args(draw, dtype):
    net = _net(draw, dtype)
    n1, n2 = draw(sizes, label="n1"), draw(sizes, label="n2")
    xdtype = draw(st.sampled_from((torch.float32, torch.float64)), label="x dtype")  # mixed: converted
    return {"model": net, "x1": tensor(draw, (n1, net.spec.d), xdtype), "x2": tensor(draw, (n2, net.spec.d), xdtype),
            "path": draw(st.sampled_from(kernels.PATHS), label="path")}


def _check_ntk(a, K):
    dtype = a["model"].W0.dtype
    assert K.dtype == dtype
    J1, J2 = _jacobian(a["model"], a["x1"].to(dtype)), _jacobian(a["model"], a["x2"].to(dtype))
    close(K, J1 @ J2.T, dtype, 10)


def _blocks_args(draw, dtype):
    a = _ntk_args(draw, dtype)
    return {"model": a["model"], "x_train": a["x1"], "x_test": a["x2"], "path": a["path"]}


def _check_blocks(a, out):
    dtype = a["model"].W0.dtype
    Jn, Jm = _jacobian(a["model"], a["x_train"].to(dtype)), _jacobian(a["model"], a["x_test"].to(dtype))
    for K, ref in zip(out, (Jn @ Jn.T, Jm @ Jn.T, Jm @ Jm.T)):
        close(K, ref, dtype, 10)


def _vjp_args(draw, dtype):
    net = _net(draw, dtype)
    return {"model": net, "x": tensor(draw, (draw(sizes), net.spec.d), dtype)}


def _check_vjp(a, f):
    g = torch.linspace(-1, 1, len(a["x"]), dtype=a["x"].dtype)
    close(f(g), _jacobian(a["model"], a["x"]).T @ g, a["x"].dtype, 10)


def _pair_args(draw, dtype):
    shape = (draw(sizes), draw(sizes))
    return {"K0": tensor(draw, shape, dtype, 0.5, 1.0), "K1": tensor(draw, shape, dtype)}


def _check_relative(a, out):
    assert out == pytest.approx(float((a["K1"].double() - a["K0"].double()).norm() / a["K0"].double().norm()), rel=1e-4)


def _analytic_args(draw, dtype):
    d = draw(sizes, label="d")
    x1 = tensor(draw, (draw(sizes), d), dtype)
    return {"x1": x1, "x2": draw(st.sampled_from([None, tensor(draw, (draw(sizes), d), dtype)])),
            "depth": draw(st.integers(1, 3)), "activation": draw(st.sampled_from(kernels.ANALYTIC_ACTIVATIONS))}


def _check_analytic(a, out):
    nngp, ntk = out
    x1 = a["x1"]
    assert_finite(out)
    assert nngp.shape == ntk.shape == (len(x1), len(x1 if a["x2"] is None else a["x2"])) and ntk.dtype == x1.dtype
    if a["x2"] is None:  # the diagonal in closed form: Sigma_{l+1} = c2/2 Sigma_l, Theta_{l+1} = Sigma_{l+1} + c2/2 Theta_l
        c2 = 1.0 if a["activation"] == "relu" else 2.0
        s = theta = (x1.double() ** 2).sum(1) / x1.shape[1]
        for _ in range(a["depth"]):
            s = c2 * s / 2
            theta = s + c2 / 2 * theta
        close(nngp.diagonal(), s, x1.dtype, 0.01)
        close(ntk.diagonal(), theta, x1.dtype, 0.01)


def _regression_args(draw, dtype):
    n, m = draw(st.integers(2, 4), label="n"), draw(sizes, label="m")  # n >= 2: an asymmetric K exists
    F = tensor(draw, (n + m, draw(sizes)), dtype)
    K = F @ F.T + torch.eye(n + m, dtype=dtype)
    return {"k_train_train": K[:n, :n], "k_test_train": K[n:, :n], "y_train": tensor(draw, (n,), dtype),
            "ridge": draw(st.sampled_from([0.0, 0.1]))}


def _check_regression(a, out):
    K = a["k_train_train"].double() + a["ridge"] * torch.eye(len(a["y_train"]), dtype=torch.float64)
    close(out, a["k_test_train"].double() @ torch.linalg.solve(K, a["y_train"].double()), a["y_train"].dtype, 100)


def _predictor_args(draw, dtype):
    net = _net(draw, dtype)
    n = draw(sizes, label="n")
    return {"model": net, "x_train": tensor(draw, (n, net.spec.d), dtype), "y_train": tensor(draw, (n,), dtype),
            "x_test": tensor(draw, (draw(sizes), net.spec.d), dtype), "ridge": 0.1}


def _check_shapes(*shapes):
    def check(a, out):
        assert_finite(out)
        outs = out if isinstance(out, tuple) else (out,)
        for o, key in zip(outs, shapes):
            assert o.shape[0] == len(a[key]), (o.shape, key)
    return check


def _study_args(draw, dtype):
    a = _predictor_args(draw, dtype)
    return {"net": a["model"], "x": a["x_train"], "y": torch.sign(a["y_train"]), "x_test": a["x_test"],
            "y_test": torch.ones(len(a["x_test"]), dtype=dtype)}


def _flat_args(draw, dtype):
    net = _net(draw, dtype)
    return {"self": net.flat(), "w": net.flat_parameters(), "x": tensor(draw, (draw(sizes), net.spec.d), dtype),
            "net": net}


def _check_flat(a, out):
    f, cache = out
    close(f, a["net"](a["x"]), a["x"].dtype)
    g = torch.ones_like(f)
    close(a["self"].vjp(cache, g), _jacobian(a["net"], a["x"]).T @ g, a["x"].dtype, 10)


def _h5data(draw):
    import json

    from memgen.h5io import H5Data

    ds = mdata.sparse_parity(draw(sizes), 2, 1, 3, draw(st.integers(0, 9)))
    arrays = {k: v.numpy() for k, v in ds.arrays().items()}
    return H5Data("in-memory.h5", arrays, {"params": json.dumps({"n_train": len(ds.y_train), "d": 3})})


def _flat_forward(self, w, x, net=None):
    return self.forward(w, x)


def _vjp_of(self, w, x, g, net=None):
    return self.vjp(self.forward(w, x)[1], g)


CASES = [
    Case("empirical_ntk", kernels.empirical_ntk, _ntk_args, {"x1": ("nan", "empty", "wide", "1d"), "x2": ("nan", "wide"),
                                                                "path": ("bogus",), "model": ("notcallable",)}, _check_ntk),
    Case("empirical_ntk_blocks", kernels.empirical_ntk_blocks, _blocks_args,
         {"x_train": ("nan", "empty", "wide"), "x_test": ("nan", "wide", "empty")}, _check_blocks),
    Case("model_vjp", kernels.model_vjp, _vjp_args, {"x": ("nan", "empty", "wide", "1d")}, _check_vjp),
    Case("relative_change", kernels.relative_change, _pair_args, {"K1": ("col", "nan"), "K0": ("zeros", "nan")},
         _check_relative),
    Case("shape_change", kernels.shape_change, _pair_args, {"K1": ("col", "zeros"), "K0": ("zeros", "nan")},
         lambda a, out: 0 <= out <= 2 + 1e-6),
    Case("analytic_kernels", kernels.analytic_kernels, _analytic_args,
         {"x1": ("1d", "nofeat", "nan", "empty", "int"), "depth": ("zero", "frac"), "activation": ("bogus",)},
         _check_analytic),
    Case("kernel_regression", kernels.kernel_regression, _regression_args,
         {"k_train_train": ("asym", "nan", "col"), "k_test_train": ("wide", "nan"), "y_train": ("drop", "nan", "empty"),
          "ridge": ("neg", "nanum")}, _check_regression),
    Case("last_hidden_features", kernels.last_hidden_features, _vjp_args, {"x": ("nan", "wide", "empty")},
         _check_shapes("x")),
    Case("nngp_predictor", kernels.nngp_predictor, _predictor_args,
         {"y_train": ("drop", "nan"), "ridge": ("neg",), "x_test": ("wide",)}, _check_shapes("x_train", "x_test")),
    Case("ntk_regression", kernels.ntk_regression, _predictor_args,
         {"y_train": ("drop", "nan"), "ridge": ("neg",), "x_test": ("wide", "nan")}, _check_shapes("x_test")),
    Case("sign_accuracy", studies.sign_accuracy, lambda draw, dt: {"pred": tensor(draw, (3,), dt), "y": torch.ones(3, dtype=dt)},
         {"y": ("drop", "nan"), "pred": ("empty",)}, lambda a, out: 0 <= out <= 1),
    Case("accuracy_comparison", studies.accuracy_comparison,
         lambda draw, dt: {**_study_args(draw, dt), "ridge_ntk": 1e-3, "ridge_nngp": 0.1, "ridge_inf": 1e-3,
                           "lr": 0.5, "steps": 2},
         {"ridge_ntk": ("neg",), "lr": ("zero",), "steps": ("frac",), "y": ("drop",)}, lambda a, out: None),
    Case("convergence_errors", studies.convergence_errors,
         lambda draw, dt: {"model": {"d": 2, "h": 3, "L": 1, "activation": "relu", "last_layer": "ntk"}, "seeds": [0, 1],
                           "x": tensor(draw, (3, 2), dt), "dtype": dt},
         {"seeds": ("emptylist",), "model": ("zero",), "x": ("nan", "1d")}, None),
    Case("linearized_vs_gd", studies.linearized_vs_gd,
         lambda draw, dt: {**_study_args(draw, dt), "lr": 0.1, "steps": 3, "record": [0, 2, 3]},
         {"record": ("neg", "emptylist"), "lr": ("zero",), "steps": ("frac",), "y_test": ("drop",)},
         lambda a, out: assert_finite(out.loss_train)),
    # memgen.models
    Case("FC", FC, lambda draw, dt: {"d": draw(sizes), "h": draw(sizes), "L": draw(sizes), "dtype": dt, "seed": 1,
                                     "activation": "relu"},
         {"d": ("zero", "frac"), "h": ("neg",), "dtype": ("bogus", "int64dtype"), "seed": ("frac",),
          "activation": ("bogus",)},
         lambda a, net: net.flat_parameters().dtype == a["dtype"]),
    Case("FCSpec", FCSpec, lambda draw, dt: {"d": draw(sizes), "h": draw(sizes), "L": 1, "last_layer": "ntk"},
         {"d": ("zero", "frac"), "L": ("neg",), "last_layer": ("bogus",)}, lambda a, s: None),
    Case("FC.forward", lambda net, x: net(x), lambda draw, dt: {k: v for k, v in _flat_args(draw, dt).items() if k in "net x"},
         {"x": ("wide", "1d", "int")}, lambda a, f: close(f, a["net"].flat().forward(a["net"].flat_parameters(), a["x"])[0],
                                                          a["x"].dtype)),
    Case("FlatFC", FlatFC, lambda draw, dt: {"spec": _net(draw, dt).spec}, {"spec": ("notcallable", "none")},
         lambda a, flat: flat.numel == sum(p.numel() for p in FC(**a["spec"].to_dict()).parameters())),
    Case("FlatFC.forward", _flat_forward, _flat_args, {"x": ("wide", "1d", "int"), "w": ("drop", "col")}, _check_flat),
    Case("FlatFC.vjp", _vjp_of, lambda draw, dt: {**(a := _flat_args(draw, dt)), "g": torch.ones(len(a["x"]), dtype=dt)},
         {"g": ("drop", "empty")}, lambda a, out: out.shape == a["w"].shape),
    Case("FC.from_flat", FC.from_flat, lambda draw, dt: {"spec": (n := _net(draw, dt)).spec, "w": n.flat_parameters()},
         {"w": ("drop", "col", "int")}, lambda a, net: close(net.flat_parameters(), a["w"], a["w"].dtype)),
    Case("FC.load_flat", lambda net, w: net.load_flat(w), lambda draw, dt: {"net": (n := _net(draw, dt)),
                                                                             "w": n.flat_parameters() * 2},
         {"w": ("drop", "nan", "col")}, lambda a, net: close(net.flat_parameters(), a["w"], a["w"].dtype)),
    Case("Activation", Activation, lambda draw, dt: {"name": "softplus", "beta": draw(st.floats(0.5, 10))},
         {"beta": ("zero", "nanum", "inf"), "name": ("bogus",)}, lambda a, act: None, says={"name": "activation"}),
    Case("activation_constant", activation_constant,
         lambda draw, dt: {"name": draw(st.sampled_from(("relu", "tanh", "softplus"))), "beta": 2.0},
         {"beta": ("zero", "nanum"), "name": ("bogus",)}, lambda a, out: out > 0, says={"name": "activation"}),
    # memgen.data
    Case("sparse_parity", mdata.sparse_parity,
         lambda draw, dt: {"n_train": draw(sizes), "n_test": draw(st.integers(0, 3)), "k": 1, "d": 3, "seed": 0},
         {"n_train": ("zero", "frac"), "k": ("zero", "frac"), "d": ("frac",), "seed": ("frac",)},
         lambda a, ds: np.testing.assert_array_equal(ds.y_train, 2 * (ds.x_train[:, 0] % 2) - 1)),
    Case("make", mdata.make, lambda draw, dt: {"params": {"name": "sparse_parity", "n_train": 2, "n_test": 1, "k": 1,
                                                          "d": 3, "seed": 0}},
         {"params": ("none", "emptylist")}, lambda a, ds: None),
    Case("digits", mdata.digits, lambda draw, dt: {"n_train": draw(sizes), "n_test": 2, "seed": 0, "labels": "sign",
                                                   "classes": (3, 8)},
         {"n_train": ("zero", "frac"), "n_test": ("neg",), "labels": ("bogus",), "classes": ("emptylist",)},
         lambda a, ds: assert_finite(ds.x_train)),
    Case("cifar2", mdata.cifar2, lambda draw, dt: {"root": "/nonexistent/cifar", "n_train": draw(sizes)},
         {"root": ("notcallable",), "n_train": ("frac",)}, "raises"),  # no CIFAR here: a MemgenError naming the files
    Case("cifar_missing", mdata.cifar_missing, lambda draw, dt: {"root": "/nonexistent"}, {"root": ("notcallable",)},
         lambda a, out: len(out) == 6),
    Case("cifar_available", mdata.cifar_available, lambda draw, dt: {"root": "/nonexistent"}, {"root": ("none",)},
         lambda a, out: out is False),
    Case("from_h5", mdata.from_h5, lambda draw, dt: {"data": _h5data(draw)}, {"data": ("notcallable", "none")},
         lambda a, ds: close(ds.x_train, a["data"]["x_train"])),
    Case("Dataset.to", lambda ds, dtype: ds.to(dtype=dtype),
         lambda draw, dt: {"ds": mdata.sparse_parity(2, 1, 1, 3, 0), "dtype": dt}, {"dtype": ("bogus", "int64dtype")},
         lambda a, ds: ds.x_train.dtype == a["dtype"]),
]


test_valid_inputs_give_the_reference_answer, test_a_broken_argument_raises_a_memgen_error_naming_it = \
    property_tests(CASES)
