"""Gradient evaluations and accuracy of ``flow.method: rkc`` against the references that
``benchmarks/flow.py`` cached (no wall times, no new reference integration).

    python benchmarks/flow_cached.py SIZE ALPHA RTOL [RTOL ...]

SIZE and ALPHA as in flow.py (its run must have cached the reference first; the rtols of
that run, since the checkpoint grid starts at the first step's end, which depends on
rtol). Each rkc run is made twice: with 20 checkpoints per decade (the evaluations
counted, as flow.py counts them; "traj" is the error at those checkpoints) and with 400
("dense"). Only checkpoint times already in the cache are compared, so the record at the
run's own t_fit (a new time) is left out of both errors; t_fit's error is against the
cached reference t_fit. The seed loop's errors and evaluations (flow.py's last table,
benchmarks/README.md) are printed for comparison: "OK" when both errors are at most its.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flow as B  # noqa: E402

# the seed loop's (trajectory error, t_fit error, evaluations): benchmarks/README.md's table
SEED = {("default", 0.01): (4.8e-1, 2.6e-3, 3805), ("default", 1.0): (4.7e-2, 4.6e-4, 1678),
        ("default", 100.0): (2.4e-3, 4.2e-4, 2442), ("paper", 0.01): (3.7e-1, 3.0e-3, 4728),
        ("paper", 1.0): (2.1e-2, 3.0e-3, 7082), ("paper", 100.0): (1.5e-3, 1.5e-4, 23710)}


def measure(size: str, alpha: float, rtol: float) -> str:
    data, net, _, _, cfg = B.problem_for(size, alpha, 0.0)
    key = json.dumps([size, B.SIZES[size], alpha, cfg.tau, B.REF_RTOL])
    path = B.RESULTS / "flow_reference" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
    if not path.exists():
        raise SystemExit(f"{path}: no cached reference; run benchmarks/flow.py --sizes {size} --alphas {alpha:g} first")
    table = dict(np.load(path))
    rkc = {**cfg.__dict__, "method": "rkc", "rtol": rtol}
    dense = B.run_memgen(net, data, B.FlowConfig(**{**rkc, "checkpoints_per_decade": 400.0}))
    sparse = B.run_memgen(net, data, B.FlowConfig(**{**rkc, "checkpoints_per_decade": 20.0}))
    assert sparse["steps"] == dense["steps"]
    keep = np.isin(dense["t"], table["t"]) & (dense["t"] > 0)
    if not keep.any():
        raise SystemExit(f"rtol {rtol:g}: none of the checkpoint times is cached; use the rtols of flow.py's run")
    idx = np.searchsorted(table["t"], dense["t"][keep])

    def err(mask):
        return max(float(np.max(np.abs(dense[n][keep][mask] - table[n][idx][mask]).max(axis=1)
                                / np.abs(table[n][idx][mask]).max(axis=1))) for n in ("F_train", "F_test"))

    traj, dense_err = err(np.isin(dense["t"][keep], sparse["t"])), err(slice(None))
    t_fit = abs(dense["t_fit"] / float(table["t_fit"]) - 1)
    s_traj, s_fit, s_evals = SEED[(size, alpha)]
    ok = "OK" if traj <= s_traj and t_fit <= s_fit else "--"
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
