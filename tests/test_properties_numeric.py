"""Property-based contract tests (Hypothesis) of memgen.theory, memgen.modelwise,
memgen.linear and memgen.dynamics: random shapes and values give either the right
answer (against slow loops) or a MemgenError naming the broken argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

from contract_cases import Case, drop_args, assert_finite, close, property_tests, sizes, spd, tensor
from memgen import dynamics, linear, modelwise, theory
from memgen.models import FC

F64 = (torch.float64,)


def _gd_args(draw, dtype):
    d = draw(sizes, label="d")
    s = tensor(draw, (d,), torch.float64, 0.2, 1.5).numpy()
    s[draw(st.integers(0, d - 1))] *= draw(st.sampled_from([0.0, 1.0]))  # a zero-variance feature, sometimes
    return {"steps": draw(st.integers(0, 6)), "s": s, "theta": tensor(draw, (d,), torch.float64, 0.5, 2).numpy(),
            "noise_std": draw(st.sampled_from([0.0, 0.7])), "n": draw(st.integers(1, 50)),
            "lr": draw(st.sampled_from([0.3, 1.0, 1.7])), "w0": tensor(draw, (d,), torch.float64).numpy()}


def _weight_error_ref(a):
    """E_i(k) by iterating the bias factor (1 - lr s^2) k times; the noise term's
    (1 - (1 - a)^k)^2 sigma^2 / (n s^2) written as (sum_j (1 - a)^j lr)^2 s^2 sigma^2 / n."""
    s2, out = a["s"] ** 2, []
    for k in range(a["steps"] + 1):
        fac = np.ones_like(s2)
        geo = np.zeros_like(s2)
        for _ in range(k):
            geo += fac * a["lr"]
            fac *= 1 - a["lr"] * s2
        out.append(fac**2 * (a["theta"] - a["w0"]) ** 2 + geo**2 * s2 * a["noise_std"] ** 2 / a["n"])
    return np.array(out)


def _ode_args(draw, dtype):
    d = draw(sizes, label="d")
    A = spd(draw, d, torch.float64, 0.5, 1.5).numpy()
    return {"times": np.array([0.0, 0.5, 2.0]), "A": A, "b": A @ np.ones(d), "u0": 0.3, "z0": np.full(d, 0.3),
            "lr": 1.0, "rtol": 1e-9, "atol": 1e-12}


def _two_layer_args(draw, dtype):
    n, d, p = draw(st.integers(2, 5)), draw(sizes), draw(sizes)
    X = tensor(draw, (n, d), torch.float64).numpy()
    W, v = linear.two_layer_init(d, p, "gaussian", 0.3, draw(st.integers(0, 9)))
    return {"X": X, "y": X @ np.ones(d), "W": W.numpy(), "v": v.numpy()}


def _lin_args(draw, dtype):
    n, m = draw(sizes, label="n"), draw(sizes, label="m")
    F = tensor(draw, (n + m, draw(sizes)), dtype)
    K = F @ F.T
    cont = draw(st.booleans(), label="continuous")
    return {"k_train_train": K[:n, :n], "k_test_train": K[n:, :n], "f0_train": tensor(draw, (n,), dtype),
            "f0_test": tensor(draw, (m,), dtype), "y_train": tensor(draw, (n,), dtype), "continuous": cont,
            "t": torch.tensor([0.0, 1.0, 3.0], dtype=dtype), "lr": 0.5}


def _check_lin(a, out):
    """Against the matrix exponential / power of the (n + m) linear recursion in float64."""
    K, Kst = a["k_train_train"].double(), a["k_test_train"].double()
    n = len(K)
    r = (a["f0_train"] - a["y_train"]).double()
    for i, t in enumerate(a["t"].tolist()):
        E = torch.linalg.matrix_exp(-a["lr"] / n * K * t) if a["continuous"] else \
            torch.linalg.matrix_power(torch.eye(n, dtype=torch.float64) - a["lr"] / n * K, int(t))
        close(out[0][i], a["f0_train"].double() - (torch.eye(n, dtype=torch.float64) - E) @ r, a["f0_train"].dtype, 100)
    assert out[1].shape == (len(a["t"]), len(Kst))


def _gdmse_args(draw, dtype):
    net = FC(draw(sizes), 3, 1, activation="tanh", seed=draw(st.integers(0, 9)), dtype=dtype)
    n = draw(sizes)
    return {"model": net.flat(), "w": net.flat_parameters(), "x": tensor(draw, (n, net.spec.d), dtype),
            "y": tensor(draw, (n,), dtype), "lr": 0.1, "steps": draw(st.integers(0, 3)), "record": [0], "_net": net}


def _check_gdmse(a, out):
    net = a["_net"]
    w = a["w"].clone()
    for _ in range(a["steps"]):  # the slow reference: per-example autograd gradients of the module at w
        m = FC.from_flat(net.spec, w.clone())
        f = m(a["x"]).detach()
        J = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(m(a["x"][i:i + 1]).sum(), m.parameters())])
                         for i in range(len(f))])
        w = w - a["lr"] * J.T @ (f - a["y"]) / len(a["y"])
    close(out[0], w, a["w"].dtype, 100)


def _flow_args(draw, dtype):
    return {"state": 1.0, "prepare": lambda y: -y, "make_step": lambda y, g, dt: y + dt * g,
            "compare": lambda g, g2: (abs(g2 - g) < 0.1, abs(g2 - g) < 0.05), "dt": 0.01, "grow": 1.1, "shrink": 10.0,
            "min_dt": 1e-12, "step": 0, "t": 0.0}


def _without(args: dict, *keys) -> dict:
    return {k: v for k, v in args.items() if k not in keys}


def _ode_risk_args(a):
    d = a["X"].shape[1]
    return {"X": a["X"], "y": a["y"], "times": np.array([0.0, 1.0]), "s": np.ones(d), "theta": np.ones(d),
            "noise_std": 0.5, "u0": 0.3, "z0": np.full(d, 0.3)}


CASES = [
    # memgen.theory
    Case("linear_gd_weight_error", theory.linear_gd_weight_error, _gd_args,
         {"steps": ("neg", "frac"), "n": ("zero", "neg", "frac"), "s": ("nan", "neg", "col", "empty"), "theta": ("drop",),
          "noise_std": ("neg", "nanum"), "lr": ("neg", "nanum"), "w0": ("drop",)},
         lambda a, E: close(E, _weight_error_ref(a)), F64),
    Case("linear_gd_risk", theory.linear_gd_risk, _gd_args, {"steps": ("neg", "frac"), "n": ("zero", "neg"),
                                                            "s": ("nan", "neg")},
         lambda a, R: close(R, (a["s"] ** 2 * _weight_error_ref(a)).sum(-1) + a["noise_std"] ** 2), F64),
    Case("linear_gd_group_curves", theory.linear_gd_group_curves,
         lambda draw, dt: _without(a := _gd_args(draw, dt), "w0") | {"sizes": [len(a["s"])]},
         {"sizes": ("neg", "emptylist"), "theta": ("drop", "zeroentry"), "n": ("zero",)},
         lambda a, out: close(out[0], out[1].sum(-1) + a["noise_std"] ** 2), F64),
    Case("local_extrema", theory.local_extrema, lambda draw, dt: {"curve": np.array([3.0, 1.0, 2.0, 0.5, 4.0])},
         {"curve": ("nan", "col")}, lambda a, out: (list(out[0]), list(out[1])) == ([1, 3], [2]), F64),
    Case("rank_one_state", drop_args("X", "y")(theory.rank_one_state), _two_layer_args, {"W": ("nan", "1d"), "v": ("drop", "nan")},
         lambda a, out: close(out[0] * out[1], a["W"].T @ a["v"]), F64),
    Case("growing_mode_state", drop_args("X", "y")(theory.growing_mode_state),
         lambda draw, dt: {**(a := _two_layer_args(draw, dt)), "b": a["X"].T @ a["y"] / len(a["y"]) + 1},
         {"b": ("drop", "nan"), "W": ("nan",), "v": ("drop",)}, lambda a, out: np.isfinite(out[0]), F64),
    Case("two_layer_ode", theory.two_layer_ode, _ode_args,
         {"times": ("neg", "empty", "scalar", "nan"), "A": ("nan", "wide"), "b": ("drop",), "z0": ("drop",),
          "u0": ("nanum",), "lr": ("zero", "neg"), "rtol": ("zero",)},
         lambda a, out: out[1].shape == (3, len(a["b"])) and assert_finite(out) is None, F64),
    Case("two_layer_ode_risk", theory.two_layer_ode_risk,
         lambda draw, dt: _ode_risk_args(_two_layer_args(draw, dt)),
         {"X": ("nan", "1d"), "y": ("drop",), "s": ("drop",), "noise_std": ("neg",)},
         lambda a, R: R.shape == (2,) and np.isfinite(R).all(), F64),
    Case("two_layer_theory", theory.two_layer_theory,
         lambda draw, dt: {"X": (a := _two_layer_args(draw, dt))["X"], "y": a["y"], "W0": a["W"], "v0": a["v"],
                           "lr": 0.1, "steps": np.array([0, 2, 5]), "init": "gaussian"},
         {"init": ("bogus",), "steps": ("neg", "frac"), "W0": ("nan", "wide"), "y": ("drop",)},
         lambda a, out: out[0].shape == out[1].shape == (3, a["X"].shape[1]), F64),
    Case("lazy_two_layer", theory.lazy_two_layer,
         lambda draw, dt: {"A": (a := _ode_args(draw, dt))["A"], "b": a["b"], "W0": np.ones((2, len(a["b"]))),
                           "v0": np.ones(2), "lr": 0.1, "steps": 4},
         {"A": ("nan", "wide"), "b": ("drop",), "W0": ("wide",), "v0": ("drop",), "lr": ("zero",), "steps": ("neg", "frac")},
         lambda a, w: w.shape == (5, len(a["b"])) and np.isfinite(w).all(), F64),
    Case("modelwise_risk", theory.modelwise_risk,
         lambda draw, dt: {"ratios": np.array([0.5, 2.0]), "snr": 4.0, "noise_std": 1.0, "p": draw(st.sampled_from([None, 100]))},
         {"ratios": ("neg", "nan"), "snr": ("neg", "nanum"), "noise_std": ("neg",), "p": ("zero", "frac")},
         lambda a, R: R[1] == pytest.approx(2.0 if a["p"] is None else 1 + 100 / 99), F64),
    Case("gd_flow_risk_isotropic", theory.gd_flow_risk_isotropic,
         lambda draw, dt: {"times": np.array([0.0, 1.0]), "ratio": 1.7, "snr": 1.0, "noise_std": 1.0, "quad": 50},
         {"times": ("neg", "nan", "scalar"), "ratio": ("zero", "neg", "nanum"), "quad": ("zero", "frac")},
         lambda a, R: R[0] == pytest.approx(2.0), F64),
    Case("early_stopped_modelwise_risk", theory.early_stopped_modelwise_risk,
         lambda draw, dt: {"ratios": np.array([1.0]), "snr": 1.0, "noise_std": 1.0, "quad": 40},
         {"ratios": ("neg", "nan", "zeroentry"), "quad": ("zero",), "snr": ("neg",)},
         lambda a, R: np.isfinite(R).all(), F64),
    Case("time_grid", modelwise.time_grid, lambda draw, dt: {"t_min": 0.1, "t_max": 10.0, "n_times": draw(sizes)},
         {"t_min": ("zero", "neg"), "t_max": ("neg",), "n_times": ("zero", "frac")},
         lambda a, t: len(t) == a["n_times"] + 1, F64),
    Case("simulate", modelwise.simulate,
         lambda draw, dt: {"p": 4, "ratios": [0.5, 2.0], "snrs": [1.0], "noise_std": 1.0, "draws": 2, "seed": 0,
                           "times": np.array([0.0, 1.0])},
         {"p": ("zero",), "ratios": ("neg", "emptylist"), "draws": ("zero",), "noise_std": ("neg",), "times": ("neg",)},
         lambda a, out: np.isfinite(out.risk_min_norm).all(), F64),
    Case("theory_curves", modelwise.theory_curves,
         lambda draw, dt: {"p": 10, "snrs": [1.0], "noise_std": 1.0, "ratio_min": 0.5, "ratio_max": 2.0, "n_grid": 3,
                           "quad": 20},
         {"p": ("zero",), "ratio_min": ("zero", "neg"), "n_grid": ("zero",), "snrs": ("neg",)},
         lambda a, out: out.risk_early_stopped.shape == (1, 3), F64),
    # memgen.linear
    Case("two_group_scales", linear.two_group_scales, lambda draw, dt: {"d": draw(sizes), "kappa": 4.0, "frac": 0.5,
                                                                         "s_fast": 1.0},
         {"d": ("zero", "frac"), "kappa": ("zero", "nanum"), "frac": ("neg",), "s_fast": ("zero",)},
         lambda a, s: s.shape == (a["d"],), F64),
    Case("linear_teacher", linear.linear_teacher,
         lambda draw, dt: {"n": draw(sizes), "d": (d := draw(sizes)), "s": np.ones(d), "theta": np.ones(d),
                           "noise_std": 0.1, "seed": 0, "batch": None},
         {"n": ("zero", "frac"), "d": ("zero",), "s": ("drop", "nan", "neg"), "noise_std": ("neg",), "batch": ("zero",)},
         lambda a, out: out[0].shape == (a["n"], a["d"]) and out[1].shape == (a["n"],), F64),
    Case("population_risk", linear.population_risk,
         lambda draw, dt: {"w": np.zeros(3), "s": np.ones(3), "theta": np.ones(3), "noise_std": 0.5},
         {"w": ("empty",), "s": ("drop",), "theta": ("drop",), "noise_std": ("neg",)},  # (NaN w: a diverged run)
         lambda a, r: float(r) == pytest.approx(3.25), F64),
    Case("linear_gd", linear.linear_gd,
         lambda draw, dt: {"X": (a := _two_layer_args(draw, dt))["X"], "y": a["y"], "steps": draw(st.integers(0, 4)),
                           "lr": 0.2, "w0": None, "record": None},
         {"X": ("nan", "1d"), "y": ("drop", "nan"), "steps": ("neg", "frac"), "lr": ("neg", "nanum")},
         lambda a, W: close(W[-1], _linear_gd_ref(a)), F64),
    Case("per_group_step_sizes", linear.per_group_step_sizes, lambda draw, dt: {"s": np.array([1.0, 0.5]), "rate": 0.5},
         {"s": ("zeroentry", "nan", "empty"), "rate": ("zero", "nanum")},
         lambda a, lr: close(lr, 0.5 / a["s"] ** 2), F64),
    Case("two_layer_init", linear.two_layer_init,
         lambda draw, dt: {"d": draw(sizes), "p": draw(sizes), "init": draw(st.sampled_from(["gaussian", "fixed", "rank_one"])),
                           "scale": 0.1, "seed": 0},
         {"d": ("zero", "frac"), "p": ("neg",), "init": ("bogus",), "scale": ("neg", "nanum"), "seed": ("frac",)},
         lambda a, out: out[0].shape == (a["p"], a["d"]), F64),
    Case("train_two_layer", linear.train_two_layer,
         lambda draw, dt: {"X": (a := _two_layer_args(draw, dt))["X"], "y": a["y"], "s": 1.0, "theta": 1.0,
                           "noise_std": 0.0, "steps": 3, "lr": 0.05, "p": 2, "W0": None, "v0": None},
         {"X": ("nan",), "y": ("drop",), "steps": ("neg", "frac"), "lr": ("zero",), "noise_std": ("neg",)},
         lambda a, run: run.w.shape == (4, a["X"].shape[1]), F64),
    Case("group_weight_error", linear.group_weight_error,
         lambda draw, dt: {"w": np.zeros(3), "theta": np.ones(3), "sizes": (2, 1)},
         {"theta": ("drop", "nan"), "sizes": ("emptylist",)}, lambda a, e: close(e, np.ones(2)), F64),
    Case("two_layer_jacobian", drop_args("y")(linear.two_layer_jacobian), _two_layer_args,
         {"X": ("nan", "1d"), "W": ("wide", "nan"), "v": ("drop",)}, lambda a, J: J.shape[0] == len(a["X"]), F64),
    Case("jacobian_spectrum", drop_args("y")(linear.jacobian_spectrum), _two_layer_args,
         {"X": ("nan",), "W": ("wide",), "v": ("drop",)}, lambda a, out: bool(((out[1] >= 0) & (out[1] <= 1)).all()), F64),
    Case("jacobian_spectra", linear.jacobian_spectra,
         lambda draw, dt: {"X": (a := _two_layer_args(draw, dt))["X"],
                           "run": linear.train_two_layer(a["X"], a["y"], 1.0, 1.0, 0.0, 2, 0.05, p=2)},
         {"run": ("none", "notcallable"), "X": ("nan",)}, lambda a, out: out[-1] is False, F64),
    Case("two_group_teacher", linear.two_group_teacher,
         lambda draw, dt: {"d_fast": draw(sizes), "d_slow": draw(sizes), "kappa": 4.0, "theta_fast": 1.0, "theta_slow": 2.0},
         {"d_fast": ("neg", "frac"), "kappa": ("zero",), "theta_slow": ("nanum",)},
         lambda a, out: out[0].shape == (a["d_fast"] + a["d_slow"],), F64),
    Case("logged_steps", linear.logged_steps, lambda draw, dt: {"steps": draw(st.integers(0, 50)), "count": draw(sizes)},
         {"steps": ("neg", "frac"), "count": ("zero", "frac")},
         lambda a, k: k[0] == 0 and k[-1] == a["steps"] and (np.diff(k) > 0).all(), F64),
    # memgen.dynamics
    Case("linearized_predictions", dynamics.linearized_predictions, _lin_args,
         {"k_train_train": ("asym", "nan", "wide"), "k_test_train": ("wide", "nan"), "f0_train": ("drop", "nan", "col"),
          "f0_test": ("drop",), "y_train": ("drop", "nan"), "t": ("neg",), "lr": ("zero", "nanum")}, _check_lin),
    Case("linearized_weights", dynamics.linearized_weights,
         lambda draw, dt: _without(a := _lin_args(draw, dt), "k_test_train", "f0_test")
                           | {"w0": torch.zeros(len(a["y_train"]), dtype=dt), "vjp": lambda g: g},
         {"w0": ("nan", "col"), "vjp": ("notcallable",), "t": ("neg",), "f0_train": ("drop",)},
         lambda a, W: W.shape == (3, len(a["y_train"])) and assert_finite(W) is None),
    Case("gd_mse", drop_args("_net")(dynamics.gd_mse), _gdmse_args,
         {"w": ("drop", "nan", "col"), "x": ("nan", "wide"), "y": ("drop", "nan"), "lr": ("zero", "nanum"),
          "steps": ("neg", "frac"), "record": ("neg",), "model": ("notcallable",)}, _check_gdmse),
    Case("momentum_step", dynamics.momentum_step,
         lambda draw, dt: {"w": tensor(draw, (3,), dt), "v": tensor(draw, (3,), dt), "grad": tensor(draw, (3,), dt),
                           "dt": 0.1, "tau": draw(st.sampled_from([0.0, 0.5]))},
         {"grad": ("drop", "col"), "tau": ("neg", "nanum")},
         lambda a, out: close(out[0], a["w"] + 0.1 * out[1], a["w"].dtype)),
    Case("relative_change", dynamics.relative_change, lambda draw, dt: {"g": tensor(draw, (3,), dt), "g_new": tensor(draw, (3,), dt)},
         {"g_new": ("drop", "col")}, lambda a, r: r == pytest.approx(float((a["g"] - a["g_new"]).norm() ** 2
                                                                            / (a["g"].norm() * a["g_new"].norm())), rel=1e-4)),
    Case("loglinspace", lambda **kw: list(zip(range(8), dynamics.loglinspace(**kw))),
         lambda draw, dt: {"rate": 0.5, "step": 3.0, "end": 100},
         {"step": ("zero", "neg", "nanum"), "rate": ("neg",), "end": ("neg", "frac")},
         lambda a, ts: [t for _, t in ts][:3] == [0, 1, 2] and all(b > a for (_, a), (_, b) in zip(ts, ts[1:]))),
    Case("flow", lambda **kw: [s.state for _, s in zip(range(5), dynamics.flow(**kw))], _flow_args,
         {"dt": ("zero", "neg", "nanum"), "grow": ("zero",), "shrink": ("zero",), "min_dt": ("zero",),
          "prepare": ("notcallable",), "step": ("neg", "frac")},
         lambda a, states: 0 < states[-1] < 1),
]


def _linear_gd_ref(a):
    X, y = a["X"], a["y"]
    w = np.zeros(X.shape[1])
    for _ in range(a["steps"]):
        w = w - a["lr"] * X.T @ (X @ w - y) / len(y)
    return w


test_valid_inputs_give_the_reference_answer, test_a_broken_argument_raises_a_memgen_error_naming_it = \
    property_tests(CASES)
