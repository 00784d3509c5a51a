"""The reproduction scorecard (memgen.claims): claims are found from each family's source,
every claim function gives the right verdict on synthetic summaries whose answer is known
(reproduced and not), absent inputs give "not applicable" with the reason, a broken claim
is a verdict and never an exception, and ``memgen claims --strict`` fails on a summary
doctored to break a claim."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest

from memgen import claims as C
from memgen.cli import main
from memgen.families import registry
from memgen.figures import specs as figure_specs

CLAIMS = {f: C.specs(f) for f in registry()}


def _module(family: str):
    return importlib.import_module(C.claim_module(registry()[family]))


def _call(family: str, name: str, **tables):
    """The claim function on DataFrames, as memgen.claims.evaluate calls it: a Result, or
    the reason it is not applicable (a string)."""
    try:
        return getattr(_module(family), name)(**tables)
    except C.NotApplicable as exc:
        return str(exc)


# ---------------------------------------------------------------- declarations


@pytest.mark.parametrize("family", sorted(registry()))
def test_claims_are_found_from_source_with_their_text(family):
    module = _module(family)
    decorated = [n for n, f in vars(module).items() if callable(f) and hasattr(f, "claim")]
    assert sorted(CLAIMS[family]) == sorted(decorated) and len(decorated) >= 3
    fam = registry()[family]
    for name, spec in CLAIMS[family].items():
        fn = getattr(module, name)
        assert spec.statement == fn.claim["statement"] and spec.expected == fn.claim["expected"]
        assert spec.paper and spec.where and spec.how == " ".join(fn.__doc__.split())
        assert spec.figure in figure_specs(fam)  # each row links a figure of the family
        assert list(spec.tables) == list(fn.claim["tables"])
        # a table no summary step declares is only allowed where the claim says why it may be absent
        for table, columns in spec.tables.items():
            assert table in fam.summary.outputs or spec.absent, (name, table)


def test_the_issue_lists_these_claims():
    assert {"lazy_error_is_frozen_kernel_error", "feature_kernel_change", "lazy_kernel_change", "widths_collapse",
            "crossover_exponent"} <= set(CLAIMS["time_scale"])
    assert {"ntk_error_slope", "linearized_tracks_gd", "cifar2_nngp_accuracy", "cifar2_ntk_accuracy"} \
        <= set(CLAIMS["kernels"])
    assert {"toy_inverse_hvp", "lissa_scale_threshold", "influence_matches_loo"} <= set(CLAIMS["curvature"])
    assert {"risk_matches_closed_form", "bump_removed_by_per_group_steps", "modelwise_peak_at_interpolation",
            "early_stopping_removes_peak"} <= set(CLAIMS["double_descent"])


def test_rule_inputs_and_code_hash_follow_the_declarations():
    inputs = C.rule_inputs(["time_scale", "curvature"])
    assert inputs["time_scale__table"] == "data/summary/time_scale.csv"
    assert set(inputs) == {"time_scale__table", "time_scale__phase", "curvature__toy", "curvature__models"}
    assert C.code_hash(["time_scale"]) != C.code_hash(["curvature"]) == C.code_hash(["curvature"])


# ---------------------------------------------------------------- time scale


def _ts_table(change_small=1.5, change_large=0.02, frozen_gap=0.0, width_shift=0.0):
    """Two widths, two seeds, four sqrt(h) alpha: the kernel change falls from
    ``change_small`` to ``change_large`` (width 256 shifted by ``width_shift`` decades),
    the frozen kernel's test error is the network's plus ``frozen_gap`` at the largest."""
    rows = []
    x = np.array([0.01, 1.0, 100.0, 1e4])
    change = np.geomspace(change_small, change_large, len(x))
    for h in (64, 256):
        for seed in (0, 1):
            for i, xi in enumerate(x):
                err = 0.3 - 0.05 * i + 0.01 * seed
                rows.append({"h": h, "seed": seed, "sqrt_h_alpha": xi, "diverged": False, "test_err": err,
                             "frozen_test_err": err + (frozen_gap if i == len(x) - 1 else 0.1),
                             "ntk_rel_change": change[i] * 10 ** (width_shift if h == 256 else 0.0),
                             "ntk_shape_change": min(change[i], 1.2)})
    return pd.DataFrame(rows)


def test_time_scale_claims_on_synthetic_tables():
    ok, bad = _ts_table(), _ts_table(change_small=0.05, change_large=0.5, frozen_gap=0.05, width_shift=0.8)
    for name in ("lazy_error_is_frozen_kernel_error", "feature_kernel_change", "lazy_kernel_change",
                 "widths_collapse"):
        assert _call("time_scale", name, table=ok).reproduced, name
        assert not _call("time_scale", name, table=bad).reproduced, name
    turned = _ts_table(change_small=1e6).assign(ntk_shape_change=0.05)  # a kernel that only grows has not turned
    assert not _call("time_scale", "feature_kernel_change", table=turned).reproduced
    r = _call("time_scale", "lazy_error_is_frozen_kernel_error", table=_ts_table(frozen_gap=0.005))
    assert r.reproduced and r.measured == pytest.approx(0.005)  # within the seeds' spread of 0.01
    assert _call("time_scale", "widths_collapse", table=_ts_table()).measured == pytest.approx(0.0, abs=1e-12)
    # a diverged run is left out; with a single width there is nothing to collapse
    one = _ts_table()[lambda d: d["h"] == 64]
    assert "fewer than two widths" in _call("time_scale", "widths_collapse", table=one)


def test_crossover_exponent_needs_the_phase_diagram(tmp_path):
    phase = lambda a, lo, hi: pd.DataFrame({"h": [64, 128, 256], "alpha_star": [0.1, 0.07, 0.05],  # noqa: E731
                                            "exponent": a, "exponent_lo": lo, "exponent_hi": hi})
    assert _call("time_scale", "crossover_exponent", phase=phase(0.48, 0.41, 0.55)).reproduced
    assert not _call("time_scale", "crossover_exponent", phase=phase(0.9, 0.8, 1.0)).reproduced
    wide = _call("time_scale", "crossover_exponent", phase=phase(0.28, -0.95, 1.5))  # (two widths)
    assert "the interval holds 0" in wide and "3 widths" in wide
    # this run has no phase-diagram table: not applicable, with the reason the claim gives
    summary = tmp_path / "data" / "summary"
    summary.mkdir(parents=True)
    _ts_table().to_csv(summary / "time_scale.csv", index=False)
    rows = {r["id"]: r for r in C.evaluate("time_scale", tmp_path)}
    assert rows["crossover_exponent"]["verdict"] == C.NOT_APPLICABLE
    assert rows["crossover_exponent"]["reason"] == "no phase-diagram table in this run"
    assert rows["feature_kernel_change"]["verdict"] == C.REPRODUCED
    # with the phase table (time_scale_phase.csv), the same claim is checked from it
    assert C.table_paths("time_scale")["phase"] == "data/summary/time_scale_phase.csv"
    phase(0.52, 0.45, 0.6).to_csv(summary / "time_scale_phase.csv", index=False)
    row = {r["id"]: r for r in C.evaluate("time_scale", tmp_path)}["crossover_exponent"]
    assert (row["verdict"], row["measured"], row["interval"]) == (C.REPRODUCED, "0.52", "[0.45, 0.6]")
    pd.DataFrame({"h": [64], "alpha_star": [0.1]}).to_csv(summary / "time_scale_phase.csv", index=False)
    row = {r["id"]: r for r in C.evaluate("time_scale", tmp_path)}["crossover_exponent"]
    assert row["verdict"] == C.NOT_APPLICABLE and row["reason"] == "no phase-diagram table in this run"


# ---------------------------------------------------------------- kernels


def test_kernels_claims_on_synthetic_tables(monkeypatch):
    h = np.repeat([64, 128, 256, 512, 1024], 3)
    noise = np.tile([0.97, 1.0, 1.03], 5)
    conv = lambda k: pd.DataFrame({"h": h, "seed": np.tile([0, 1, 2], 5), "ntk_rel_err": 2 * h ** k * noise})  # noqa
    r = _call("kernels", "ntk_error_slope", convergence=conv(-0.5))
    assert r.reproduced and r.measured == pytest.approx(-0.5, abs=0.02) and r.interval[0] < -0.5 < r.interval[1]
    assert not _call("kernels", "ntk_error_slope", convergence=conv(-0.2)).reproduced
    lin = lambda ratios: pd.DataFrame([{"h": hh, "t": t, "w_ratio": ratio * t / 10, "diverged": False}  # noqa
                                       for hh, ratio in zip((64, 256, 1024), ratios) for t in (1, 10)])
    assert _call("kernels", "linearized_tracks_gd", linearized=lin([0.4, 0.2, 0.1])).reproduced
    assert not _call("kernels", "linearized_tracks_gd", linearized=lin([0.4, 0.5, 0.1])).reproduced
    digits = pd.DataFrame({"dataset": "digits", "n_train": 128, "seed": [0, 1], "method": "ntk", "accuracy": 0.9})
    import memgen.data

    monkeypatch.setattr(memgen.data, "cifar_available", lambda root="": False)
    for name in ("cifar2_nngp_accuracy", "cifar2_ntk_accuracy"):
        assert _call("kernels", name, accuracy=digits) == "CIFAR-10 files absent"
    cifar = lambda nngp, ntk: pd.DataFrame([{"dataset": "cifar2", "n_train": 128, "seed": s, "method": m,  # noqa
                                             "accuracy": a[s]} for m, a in (("nngp", nngp), ("ntk", ntk))
                                            for s in (0, 1)])
    good = cifar([0.70, 0.73], [0.78, 0.80])
    assert _call("kernels", "cifar2_nngp_accuracy", accuracy=good).reproduced
    assert _call("kernels", "cifar2_ntk_accuracy", accuracy=good).reproduced
    low = cifar([0.60, 0.62], [0.70, 0.71])
    assert not _call("kernels", "cifar2_nngp_accuracy", accuracy=low).reproduced
    assert not _call("kernels", "cifar2_ntk_accuracy", accuracy=low).reproduced


# ---------------------------------------------------------------- curvature


def _toy(x2=-1 / 12, diverged=(True, False, False, False)):
    solve = [{"kind": "solve", "method": m, "damping": 0.0, "scale": np.nan, "x1": 1.25, "x2": x2, "diverged": False,
              "error": 0.0, "lambda_max": 8.24} for m in ("exact", "cg", "lissa")]
    scale = [{"kind": "scale_study", "method": "lissa", "damping": 0.0, "scale": s, "x1": 1.25, "x2": -1 / 12,
              "diverged": d, "error": np.inf if d else 1e-3, "lambda_max": 8.24}
             for s, d in zip((1.0, 5.0, 10.0, 20.0), diverged)]
    return pd.DataFrame(solve + scale)


def test_curvature_claims_on_synthetic_tables():
    assert _call("curvature", "toy_inverse_hvp", toy=_toy()).reproduced
    assert not _call("curvature", "toy_inverse_hvp", toy=_toy(x2=-0.08)).reproduced
    r = _call("curvature", "lissa_scale_threshold", toy=_toy())
    assert r.reproduced and r.measured == "diverged at s = 1; converged at s = 5, 10, 20"
    assert not _call("curvature", "lissa_scale_threshold", toy=_toy(diverged=(True, True, False, False))).reproduced
    assert not _call("curvature", "lissa_scale_threshold", toy=_toy(diverged=(False,) * 4)).reproduced
    models = lambda r: pd.DataFrame({"model": ["logreg", "mlp"], "pearson_r": [r, 0.5], "n_checked": 60})  # noqa
    r = _call("curvature", "influence_matches_loo", models=models(0.99))
    assert r.reproduced and r.interval[0] < 0.99 < r.interval[1] < 1
    assert not _call("curvature", "influence_matches_loo", models=models(0.8)).reproduced


# ---------------------------------------------------------------- double descent


def _key_numbers(dev=0.01, bump_uniform=0.2, bump_per_group=0.0):
    rows = [("max_rel_dev_risk", "uniform", dev), ("max_rel_dev_risk", "per_group", dev / 2)]
    for sched, b in (("uniform", bump_uniform), ("per_group", bump_per_group)):
        rows += [("bump_height_empirical", sched, b), ("bump_height_theory", sched, b)]
    return pd.DataFrame(rows, columns=["metric", "where", "value"])


def _modelwise(peak=1.0, stopped_bump=0.0):
    ratios = np.array([0.5, 0.9, 1.0, 1.1, 2.0])
    rows = []
    for snr in (1.0, 4.0):
        min_norm = 1 + 10 / (1 + 50 * (ratios - peak) ** 2)
        stopped = np.linspace(2, 1, len(ratios)) * np.where(ratios == 1.1, 1 + stopped_bump, 1)
        for method, risk in (("min_norm", min_norm), ("early_stopped", stopped)):
            rows += [{"source": "empirical", "method": method, "snr": snr, "ratio": r, "risk": v}
                     for r, v in zip(ratios, risk)]
        rows += [{"source": "theory", "method": "min_norm", "snr": snr, "ratio": 0.7, "risk": 3.0}]
    return pd.DataFrame(rows)


def test_double_descent_claims_on_synthetic_tables():
    assert _call("double_descent", "risk_matches_closed_form", key_numbers=_key_numbers()).reproduced
    assert not _call("double_descent", "risk_matches_closed_form", key_numbers=_key_numbers(dev=0.08)).reproduced
    name = "bump_removed_by_per_group_steps"
    assert _call("double_descent", name, key_numbers=_key_numbers()).reproduced
    assert not _call("double_descent", name, key_numbers=_key_numbers(bump_per_group=0.1)).reproduced
    assert not _call("double_descent", name, key_numbers=_key_numbers(bump_uniform=0.0)).reproduced
    assert _call("double_descent", "modelwise_peak_at_interpolation", modelwise=_modelwise()).reproduced
    assert not _call("double_descent", "modelwise_peak_at_interpolation", modelwise=_modelwise(peak=0.9)).reproduced
    r = _call("double_descent", "early_stopping_removes_peak", modelwise=_modelwise())
    assert r.reproduced and r.measured == 0.0
    assert not _call("double_descent", "early_stopping_removes_peak", modelwise=_modelwise(stopped_bump=0.3)).reproduced


# ---------------------------------------------------------------- evaluation, the CSV and the CLI


def _write_curvature(root, r=0.99):
    summary = root / "data" / "summary"
    summary.mkdir(parents=True, exist_ok=True)
    _toy().to_csv(summary / "curvature_toy.csv", index=False)
    pd.DataFrame({"model": ["logreg"], "pearson_r": [r], "n_checked": [60]}).to_csv(summary / "curvature_models.csv",
                                                                                   index=False)


def test_evaluate_never_raises(tmp_path, monkeypatch):
    rows = C.evaluate("curvature", tmp_path)  # nothing has run: every claim not applicable, naming the table
    assert {r["verdict"] for r in rows} == {C.NOT_APPLICABLE}
    assert "no summary table data/summary/curvature_toy.csv in this run" in {r["reason"] for r in rows}
    _write_curvature(tmp_path)
    module = _module("curvature")

    def broken(models):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(module, "influence_matches_loo", broken)
    rows = {r["id"]: r for r in C.evaluate("curvature", tmp_path)}
    assert rows["influence_matches_loo"]["verdict"] == C.NOT_REPRODUCED
    assert rows["influence_matches_loo"]["reason"] == "could not be computed: ZeroDivisionError: oops"
    assert rows["toy_inverse_hvp"]["verdict"] == C.REPRODUCED


def test_claims_cli_prints_writes_and_is_strict(tmp_path, capsys):
    _write_curvature(tmp_path)
    out = tmp_path / "claims.csv"
    args = ["claims", "--families", "curvature", "--root", str(tmp_path)]
    assert main(args + ["--output", str(out), "--strict"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == "Reproduction scorecard (3 claims: 3 reproduced, 0 not reproduced, 0 not applicable)"
    assert len(text) == 1 + len(CLAIMS["curvature"]) and all(t.startswith("REPRODUCED ") for t in text[1:])
    rows = C.read_csv(out)
    assert list(rows[0]) == list(C.COLUMNS) and [r["id"] for r in rows] == list(CLAIMS["curvature"])
    assert rows[2]["measured"] == "0.99" and rows[2]["expected"] == "Pearson R >= 0.9 (logistic regression)"
    _write_curvature(tmp_path, r=0.5)  # doctored: influence no longer matches leave-one-out
    assert main(args) == 0  # (without --strict a failed claim is a line, not an error)
    with pytest.raises(SystemExit) as exc:
        main(args + ["--strict"])
    assert exc.value.code == 1
    out_lines = capsys.readouterr()
    assert "NOT REPRODUCED  curvature/influence_matches_loo" in out_lines.out
    assert "1 claim(s) not reproduced (--strict)" in out_lines.err
