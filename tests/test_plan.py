"""memgen.plan's cost model: runs priced per step of their own flow.method, and
--calibrate recovering planted per-step costs and step counts from a run's benchmarks."""

from __future__ import annotations

import numpy as np
import pytest

from memgen import h5io, plan

N_TRAIN, D, H, L = 700, 30, 100, 3
WEIGHTS = D * H + (L - 1) * H * H + H  # FC(d, h, L), one output, no biases: 23100


def _params(method: str, max_steps: int = 10**9) -> dict:
    return {"dataset": {"n_train": N_TRAIN}, "init": {"model": {"d": D, "h": H, "L": L, "bias": False}},
            "flow": {"method": method, "max_steps": max_steps}}


def _train(method: str, **kw) -> plan.DryJob:
    return plan.DryJob("ts_train", {"alpha": "1", "h": str(H), "seed": "0"}, params=_params(method, **kw))


def test_each_method_is_priced_per_its_own_step_and_assumed_steps():
    rkc = plan.OVERHEAD + plan.UNIT["train:rkc"] * plan.DEFAULT_STEPS["train:rkc"] * WEIGHTS * N_TRAIN
    euler = plan.OVERHEAD + plan.UNIT["train"] * plan.DEFAULT_STEPS["train"] * WEIGHTS * N_TRAIN
    assert plan.job_seconds(_train("rkc")) == pytest.approx(rkc, rel=1e-12)
    assert plan.job_seconds(_train("euler")) == pytest.approx(euler, rel=1e-12)
    # --steps N: N accepted steps of either method; flow.max_steps caps them
    assert plan.job_seconds(_train("rkc"), 10) == pytest.approx(
        plan.OVERHEAD + plan.UNIT["train:rkc"] * 10 * WEIGHTS * N_TRAIN, rel=1e-12)
    assert plan.job_seconds(_train("euler", max_steps=50)) == pytest.approx(
        plan.OVERHEAD + plan.UNIT["train"] * 50 * WEIGHTS * N_TRAIN, rel=1e-12)
    # a kind without a per-method unit (the NTK) does not depend on the method
    ntk = [plan.DryJob("ts_ntk_final", params={**_params(m), "dataset": {"n_train": N_TRAIN, "n_test": 0}})
           for m in ("rkc", "euler")]
    assert plan.job_seconds(ntk[0]) == plan.job_seconds(ntk[1]) > plan.OVERHEAD


def _bench(root, step: str, stem: str, seconds: float) -> None:
    tsv = root / "logs" / "benchmark" / "time_scale" / step / f"{stem}.tsv"
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tsv.write_text(f"s\th:m:s\n{seconds}\t0:00:00\n")


def test_calibrate_recovers_planted_costs_and_steps(tmp_path):
    overhead, unit = 2.0, {"train:rkc": 3e-9, "train": 7e-10}
    for seed in range(4):  # quick fixed-cost jobs set the overhead (the quickest quarter)
        _bench(tmp_path, "ts_init", f"h~{H}_seed~{seed}", overhead)
    runs = [("rkc", 0, 500), ("rkc", 1, 900), ("rkc", 2, 600), ("euler", 0, 20000), ("euler", 1, 30000)]
    for i, (method, seed, steps) in enumerate(runs):
        key = "train:rkc" if method == "rkc" else "train"
        stem = f"alpha~{i}_h~{H}_seed~{seed}"
        out = tmp_path / "data" / "runs" / "time_scale" / f"{stem}.h5"
        h5io.write(out, {"trajectory/step": np.array([0, steps // 2, steps])}, step="ts_train",
                   params=_params(method))
        _bench(tmp_path, "ts_train", stem, overhead + unit[key] * steps * WEIGHTS * N_TRAIN)
    fitted, oh, used, taken = plan.calibrate(tmp_path)
    assert oh == overhead
    assert fitted["train:rkc"] == pytest.approx(unit["train:rkc"], rel=1e-9)
    assert fitted["train"] == pytest.approx(unit["train"], rel=1e-9)
    assert fitted["ts_init"] == overhead and used == {"train:rkc": 3, "train": 2, "ts_init": 4}
    assert taken == {"train:rkc": 600, "train": 25000}
    # planning with the calibration prices an rkc run at the median run's seconds
    median = overhead + unit["train:rkc"] * 600 * WEIGHTS * N_TRAIN
    assert plan.job_seconds(_train("rkc"), taken, fitted, oh) == pytest.approx(median, rel=1e-9)
