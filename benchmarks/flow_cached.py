"""Gradient evaluations and accuracy of ``flow.method: rkc`` against the references that
``benchmarks/flow.py`` cached (no wall times, no new reference integration).

    python benchmarks/flow_cached.py SIZE ALPHA RTOL [RTOL ...]

SIZE and ALPHA as in flow.py (its run must have cached the reference first; the rtols of
that run, since the checkpoint grid starts at the first step's end, which depends on
rtol). Each rkc run is made twice: with 20 checkpoints per decade (the evaluations
counted, as flow.py counts them; "traj" is the error at those checkpoints) and with 400
("dense"). Only checkpoint times already in the cache are compared, so the record at the
run's own t_fit (a new time) is left out of both errors; t_fit's error is against the
cached reference t_fit. The seed loop's errors and evaluations, from flow.py's results
(benchmarks/results/flow.json), are printed for comparison: "OK" when both errors are at
most its.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flow as B  # noqa: E402


def measure(size: str, alpha: float, rtol: float) -> str:
    data, net, _, _, cfg = B.problem_for(size, alpha, 0.0)
    path, results = B.reference_path(size, alpha, cfg.tau), B.RESULTS / "flow.json"
    if not path.exists() or not results.exists():
        raise SystemExit(f"{path}: no cached reference; run benchmarks/flow.py --sizes {size} --alphas {alpha:g} first")
    table = dict(np.load(path))
    seed = next((r["methods"]["seed"] for r in json.loads(results.read_text())["rows"]
                 if (r["size"], r["alpha"], r["tau"]) == (size, alpha, cfg.tau)), None)
    if seed is None:
        raise SystemExit(f"{results}: no row for size {size}, alpha {alpha:g}; run benchmarks/flow.py for it first")
    rkc = {**cfg.__dict__, "method": "rkc", "rtol": rtol}
    dense = B.run_memgen(net, data, B.FlowConfig(**{**rkc, "checkpoints_per_decade": 400.0}))
    sparse = B.run_memgen(net, data, B.FlowConfig(**{**rkc, "checkpoints_per_decade": 20.0}))
    assert sparse["steps"] == dense["steps"]
    keep = np.isin(dense["t"], table["t"]) & (dense["t"] > 0)
    if not keep.any():
        raise SystemExit(f"rtol {rtol:g}: none of the checkpoint times is cached; use the rtols of flow.py's run")
    ref = {n: table[n][np.searchsorted(table["t"], dense["t"][keep])] for n in ("F_train", "F_test")}
    ref["t_fit"] = float(table["t_fit"])

    def err(mask):  # flow.py's errors on the cached checkpoints (mask: which of them)
        run = {"t": dense["t"][keep][mask], "t_fit": dense["t_fit"],
               **{n: dense[n][keep][mask] for n in ("F_train", "F_test")}}
        return B.errors(run, {**ref, **{n: ref[n][mask] for n in ("F_train", "F_test")}}, slice(None))

    traj, t_fit = err(np.isin(dense["t"][keep], sparse["t"])).values()
    dense_err = err(slice(None))["traj_err"]
    s_traj, s_fit, s_evals = seed["traj_err"], seed["t_fit_err"], seed["evals"]
    ok = "OK" if B.as_accurate({"traj_err": traj, "t_fit_err": t_fit}, seed) else "--"
    return (f"{size} alpha={alpha:g} rtol={rtol:g}: evals={sparse['evals']} (seed/rkc {s_evals / sparse['evals']:.2f}) "
            f"traj={traj:.2e} dense={dense_err:.2e} t_fit={t_fit:.2e} (seed {s_traj:.1e} / {s_fit:.1e}) {ok}")


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    for rtol in args[2:]:
        print(measure(args[0], float(args[1]), float(rtol)), flush=True)


if __name__ == "__main__":
    main()
