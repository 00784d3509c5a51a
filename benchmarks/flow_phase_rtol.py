"""Where rkc's t_fit error is made: rkc with one rtol while many training points are
unfitted and another once few are (issue 16).

    python benchmarks/flow_phase_rtol.py SIZE ALPHA BULK:END:SHARE [BULK:END:SHARE ...]

SIZE and ALPHA as in flow.py. Each spec runs ``flow.method: rkc`` at ``flow.rtol`` BULK
while more than SHARE of the training margins are below 1, and with its error estimate
scaled by BULK / END (an rtol of END) once SHARE or fewer are: SHARE 0 is plain rkc at
BULK. The scaling wraps ``memgen.chebyshev``'s step and error estimate for this process
only (``unittest.mock``); no library option does this. Printed per spec: gradient
evaluations (flow.py's count: every ``prepare``), the share of them made after the switch,
flow.py's trajectory error (20 checkpoints per decade) and t_fit error against its DOP853
reference (cached in benchmarks/results/flow_reference/, extended to new checkpoint
times as needed). Errors and evaluations are deterministic; nothing is timed.

If the t_fit error were made near the margin, a tight END would cut it at little cost,
and a coarser BULK would buy the 10x; if the end phase's steps were accuracy-bound, a
loose END would save evaluations there.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flow as B  # noqa: E402

from memgen import chebyshev  # noqa: E402
from memgen.training import FlowConfig  # noqa: E402


def phase_rtol_run(net, data, cfg, bulk: float, end: float, share: float) -> dict:
    """One rkc run with the error estimate scaled by bulk / end once at most ``share`` of the
    training margins are below 1 (at the last finite trial state); evals after the switch counted."""
    state = {"unfitted": 1.0, "late": 0}
    step_once, step_deflated, estimate = chebyshev.step_once, chebyshev.step_deflated, chebyshev.error_estimate

    def tracked(step):
        def wrapper(*args, **kwargs):
            out = step(*args, **kwargs)
            if out[2] is not None:
                state["unfitted"] = float((out[2].z < 1).double().mean())
            return out
        return wrapper

    def scaled(*args, **kwargs):
        return estimate(*args, **kwargs) * (bulk / end if state["unfitted"] <= share else 1.0)

    def counted(self, s, prepare=B.NetworkProblem.prepare):
        state["late"] += state["unfitted"] <= share
        return prepare(self, s)

    c = FlowConfig(**{**cfg.__dict__, "method": "rkc", "rtol": bulk, "checkpoints_per_decade": 20.0})
    with ExitStack() as stack:
        for target, name, new in ((chebyshev, "step_once", tracked(step_once)),
                                  (chebyshev, "step_deflated", tracked(step_deflated)),
                                  (chebyshev, "error_estimate", scaled), (B.NetworkProblem, "prepare", counted)):
            stack.enter_context(mock.patch.object(target, name, new))
        run = B.run_memgen(net, data, c)
    run["late_share"] = state["late"] / run["evals"]
    return run


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    size, alpha = args[0], float(args[1])
    specs = [tuple(float(x) for x in spec.split(":")) for spec in args[2:]]
    if any(len(s) != 3 or not 0 <= s[2] < 1 for s in specs):
        raise SystemExit(f"specs are BULK:END:SHARE with 0 <= SHARE < 1, got {args[2:]}")
    data, net, _, _, cfg = B.problem_for(size, alpha, 0.0)
    runs = [phase_rtol_run(net, data, cfg, *spec) for spec in specs]
    ref = B.reference(net, data, cfg, np.concatenate([r["t"] for r in runs]), B.reference_path(size, alpha, cfg.tau))
    offset = 0
    for (bulk, end, share), run in zip(specs, runs):
        e = B.errors(run, ref, slice(offset, offset + len(run["t"])))
        offset += len(run["t"])
        print(f"{size} alpha={alpha:g} rtol {bulk:g}, {end:g} once <= {share:g} unfitted: evals {run['evals']} "
              f"({100 * run['late_share']:.0f}% after the switch) traj {e['traj_err']:.2e} "
              f"t_fit {e['t_fit_err']:.2e}", flush=True)


if __name__ == "__main__":
    main()
