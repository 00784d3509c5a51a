"""The lazy/feature crossover of the time-scale family: the crossing and power-law
estimators (memgen.scaling) on curves with a known answer, and the phase table and
figures of the summary on synthetic runs with a known alpha*(h) ~ h^(-1/2)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from memgen import MemgenError
from memgen.families.time_scale.summary import CROSSOVER_LEVEL, LEVELS, crossover_tables, levels_table, phase_table
from memgen.figures import draw
from memgen.scaling import crossing, power_law


def test_crossing_of_a_power_law_is_exact():
    x = np.geomspace(1e-3, 1e3, 13)
    for x0 in (2e-2, 0.7, 31.0):
        y = (x / x0) ** -1.5  # y = 1 at x0; log-log linear, so interpolation is exact
        assert crossing(x, y, 1.0) == pytest.approx(x0, rel=1e-12)
        assert crossing(x, 3 * y, 3.0) == pytest.approx(x0, rel=1e-12)
        assert crossing(x, 1 / y, 1.0, decreasing=False) == pytest.approx(x0, rel=1e-12)
    assert math.isnan(crossing(x, np.full_like(x, 5.0)))  # never crosses
    assert math.isnan(crossing(x, np.geomspace(0.5, 0.1, 13)))  # starts below
    y = (x / 0.7) ** -1.5
    y[3] = np.nan  # dropped, not crossed at
    assert crossing(x[::-1], y[::-1]) == pytest.approx(0.7, rel=1e-12)  # any order of samples
    with pytest.raises(MemgenError, match="level"):
        crossing(x, y, 0.0)
    with pytest.raises(MemgenError, match="shape"):
        crossing(x, y[:-1])


def test_power_law_exponent_and_interval():
    rng = np.random.default_rng(0)
    h = np.repeat([64.0, 128, 256, 512, 1024], 4)
    exact = power_law(h, 3.0 * h ** -0.5)
    assert exact.exponent == pytest.approx(0.5, abs=1e-12) and exact.prefactor == pytest.approx(3.0, rel=1e-12)
    assert exact.exponent_hi - exact.exponent_lo == pytest.approx(0.0, abs=1e-9)
    inside = 0
    for _ in range(200):  # the 95% interval holds the true exponent about 95% of the time
        fit = power_law(h, 3.0 * h ** -0.5 * np.exp(0.2 * rng.standard_normal(len(h))))
        inside += fit.exponent_lo <= 0.5 <= fit.exponent_hi
    assert 180 <= inside <= 199
    two = power_law([64.0, 256.0], [1.0, 0.5])
    assert two.exponent == pytest.approx(0.5) and math.isnan(two.exponent_lo)  # no interval from 2 points


def _synthetic(widths=(32, 64, 128, 256), seeds=(0, 1, 2), c=4.0, a=0.5, noise=0.05):
    """Runs whose kernel change is (alpha / alpha*(h))^-2 with alpha*(h) = c h^-a."""
    rng = np.random.default_rng(1)
    rows = []
    for h in widths:
        for s in seeds:
            star = c * h ** -a * math.exp(noise * rng.standard_normal())
            for alpha in np.geomspace(1e-3, 1e2, 11):
                change = (alpha / star) ** -2
                rows.append({"alpha": alpha, "alpha_article": alpha, "sqrt_h_alpha": math.sqrt(h) * alpha, "h": h,
                             "seed": s, "ntk_rel_change": change, "test_err": 0.1 + 0.3 / (1 + change),
                             "diverged": False})
    return pd.DataFrame(rows)


def test_phase_table_finds_the_crossover_and_its_exponent():
    table = _synthetic()
    phase = phase_table(table)
    assert list(phase["h"]) == [32, 64, 128, 256] and (phase["crossed"] == 3).all()
    assert np.allclose(phase["alpha_star"], 4.0 * phase["h"] ** -0.5, rtol=0.1)
    a, lo, hi = phase[["exponent", "exponent_lo", "exponent_hi"]].iloc[0]
    assert abs(a - 0.5) < 0.05 and lo < 0.5 < hi and hi - lo < 0.2
    assert np.allclose(phase["sqrt_h_alpha_star"], np.sqrt(phase["h"]) * phase["alpha_star"])
    steep = phase_table(_synthetic(a=1.0))  # another exponent is measured as such
    assert abs(steep["exponent"].iloc[0] - 1.0) < 0.05 and not steep["exponent_lo"].iloc[0] <= 0.5
    # a diverged run is left out; a width that never crosses has no alpha*
    t = table.copy()
    t.loc[t["h"] == 256, "ntk_rel_change"] = 50.0
    t.loc[(t["h"] == 32) & (t["alpha"] < 0.01), "diverged"] = True
    p = phase_table(t)
    assert p.loc[p["h"] == 256, "crossed"].item() == 0 and math.isnan(p.loc[p["h"] == 256, "alpha_star"].item())
    assert p["fit_points"].iloc[0] == 9


def test_levels_table_moves_the_crossover_with_the_level():
    """Kernel change (alpha / alpha*)^-2: at level L the crossing is alpha* L^(-1/2),
    exactly (log-log interpolation of a power law), so every level keeps the exponent."""
    table = _synthetic()
    levels = levels_table(table)
    assert CROSSOVER_LEVEL in LEVELS and sorted(levels["level"].unique()) == sorted(LEVELS)
    base = phase_table(table)
    pd.testing.assert_frame_equal(levels[levels["level"] == CROSSOVER_LEVEL].reset_index(drop=True), base)
    for level, g in levels.groupby("level"):
        ratio = g["alpha_star"].to_numpy() / base["alpha_star"].to_numpy()
        assert np.allclose(ratio, level ** -0.5, rtol=1e-12)
        assert g["exponent"].iloc[0] == pytest.approx(base["exponent"].iloc[0], abs=1e-12)
    # the widest curve steeper, (alpha / alpha*)^-4: it crosses level 10 at a larger alpha
    # and level 0.1 at a smaller one (alpha* L^(-1/4)), so the exponent falls with the level
    steeper = levels_table(table.assign(ntk_rel_change=np.where(table["h"] == 256, table["ntk_rel_change"] ** 2,
                                                                table["ntk_rel_change"])))
    by = steeper.set_index(["level", "h"])["alpha_star"]
    ref = levels.set_index(["level", "h"])["alpha_star"]
    assert by[(10.0, 256)] == pytest.approx(ref[(10.0, 256)] * 10 ** 0.25, rel=1e-12)
    assert by[(0.1, 256)] == pytest.approx(ref[(0.1, 256)] * 10 ** -0.25, rel=1e-12)
    assert by[(1.0, 256)] == pytest.approx(ref[(1.0, 256)], rel=1e-12)
    a = steeper.groupby("level")["exponent"].first()
    assert a[0.1] > a[1.0] > a[10.0]


@pytest.mark.parametrize("name", ["phase_diagram", "phase_collapse", "crossover_levels"])
def test_phase_figures_draw(name, tmp_path):
    table = _synthetic()
    paths = {"table": tmp_path / "t.csv"}
    table.to_csv(paths["table"], index=False)
    for key, frame in crossover_tables(table).items():
        paths[key] = tmp_path / f"{key}.csv"
        frame.to_csv(paths[key], index=False)
    out = tmp_path / f"{name}.png"
    draw("time_scale", name, paths, [out], {})
    assert out.stat().st_size > 5000
