"""Figures of the time-scale family drawn from small synthetic summary CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memgen import MemgenError
from memgen.families import registry, step
from memgen.figures import draw, specs

FIGURES = list(specs("time_scale"))

ALPHAS = [1e-3, 1e-1, 1e1, 1e3]
WIDTHS = [16, 64]
SEEDS = [0, 1]
OPTIONS = {"h": None, "seed": 0, "formats": ["pdf", "png"]}


def synthetic() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A table shaped like the time-scale summary's, with one run that never fit
    (NaN times) and one that diverged."""
    rng = np.random.default_rng(0)
    rows, curves = [], []
    for h in WIDTHS:
        for seed in SEEDS:
            for a in ALPHAS:
                x = np.sqrt(h) * a
                t_fit = 10 * (1 + x) ** 0.5 * (1 + 0.1 * rng.random())
                rows.append({
                    "alpha": a, "alpha_article": a, "h": h, "seed": seed, "sqrt_h_alpha": x, "t_fit": t_fit, "step_fit": 100,
                    "train_err": 0.0, "test_err": 0.1 + 0.2 * x / (1 + x) + 0.02 * rng.random(),
                    "diverged": False, "converged": True, "stop_reason": "fit",
                    "t_memorize": 0.8 * t_fit, "t_best_test": 0.5 * t_fit, "best_test_err": 0.1,
                    "dnorm": 1 / (1 + x), "steps": 1000, "ntk_rel_change": 1 / (1 + x),
                    "ntk_shape_change": 1.5 / (1 + x), "ntk_norm_ratio": 1 + 1 / (1 + x),
                    "frozen_test_err": 0.3, "frozen_t_fit": t_fit, "frozen_diverged": False,
                    "frozen_best_test_err": 0.28,
                })
                t = np.concatenate([[0.0], np.logspace(-1, np.log10(t_fit), 20)])
                alpha2_loss = (1 + 10 * t / t_fit) ** -2
                curves.append(pd.DataFrame({"seed": seed, "h": h, "alpha": a, "t": t, "step": np.arange(len(t)),
                                            "alpha2_loss": alpha2_loss, "train_err": 0.0, "test_err": 0.2}))
    table = pd.DataFrame(rows)
    never = (table["alpha"] == 1e-3) & (table["h"] == 64) & (table["seed"] == 1)
    table.loc[never, ["t_fit", "t_memorize", "converged", "stop_reason"]] = [np.nan, np.nan, False, "max_steps"]
    bad = (table["alpha"] == 1e3) & (table["h"] == 16) & (table["seed"] == 1)
    table.loc[bad, ["t_fit", "t_memorize", "test_err", "ntk_rel_change", "diverged", "converged"]] = \
        [np.nan, np.nan, np.nan, np.inf, True, False]
    return table, pd.concat(curves, ignore_index=True)


@pytest.fixture
def inputs(tmp_path):
    table, curves = synthetic()
    from memgen.families.time_scale.summary import crossover_tables

    paths = {name: tmp_path / Path(path).name for name, path in step("ts_summary").outputs.items()}
    for name, frame in {"table": table, "curves": curves, **crossover_tables(table)}.items():
        frame.to_csv(paths[name], index=False)
    return paths


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_is_drawn_deterministically(name, inputs, tmp_path):
    out = [tmp_path / "a" / f"{name}.pdf", tmp_path / "a" / f"{name}.png"]
    draw("time_scale", name, inputs, out, OPTIONS)
    for p in out:
        assert p.is_file() and p.stat().st_size > 0
    assert not list((tmp_path / "a").glob("*.tmp.*"))
    again = tmp_path / "b" / f"{name}.pdf"
    draw("time_scale", name, inputs, [again], OPTIONS)
    assert again.read_bytes() == out[0].read_bytes()


def test_loss_vs_time_honours_h_and_seed(inputs, tmp_path):
    draw("time_scale", "loss_vs_time", inputs, [tmp_path / "f.png"], {"h": 64, "seed": 1})
    with pytest.raises(MemgenError, match="h=32"):
        draw("time_scale", "loss_vs_time", inputs, [tmp_path / "g.png"], {"h": 32, "seed": 0})


def test_missing_column_is_named(inputs, tmp_path):
    pd.read_csv(inputs["table"]).drop(columns="t_fit").to_csv(inputs["table"], index=False)
    with pytest.raises(MemgenError, match="t_fit") as exc:
        draw("time_scale", "time_to_fit", inputs, [tmp_path / "f.pdf"], OPTIONS)
    assert str(inputs["table"]) in str(exc.value)


def test_unknown_name_and_family(inputs, tmp_path):
    with pytest.raises(MemgenError, match="unknown time_scale figure"):
        draw("time_scale", "nope", inputs, [tmp_path / "f.pdf"], OPTIONS)
    with pytest.raises(MemgenError, match="unknown experiment family"):
        draw("nope", "loss_vs_time", inputs, [tmp_path / "f.pdf"], OPTIONS)


def test_the_readme_names_every_figure():
    """The README's figure lists are prose beside the registry: each declared figure of
    each family must appear there by name."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [f"{fam}/{name}" for fam in registry() for name in specs(fam) if f"`{name}`" not in readme]
    assert not missing, f"figures the README does not name: {missing}"
