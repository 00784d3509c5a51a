"""Where the gradient evaluations of ``flow.method: rkc`` go, and what a 10x over the seed
loop would need (issue 16; the wall times and errors themselves are flow.py's).

    python benchmarks/flow_budget.py [--sizes default paper] [--alphas 1e-2 1 1e2]
                                     [--rtol R] [--repeats 2] [--threads 1]

For each size and alpha (flow.py's problems), one rkc run at the rtol flow.py found
fastest at the seed loop's accuracy (read from benchmarks/results/flow.json; ``--rtol``
overrides, and is needed without that file), then:

- evaluations by purpose: the stages of accepted steps, the stages of rejected trial
  steps, the spectral radius estimates, and the rest (records at checkpoints, the start);
- accepted steps by stage count, and the share of stage evaluations in steps with at
  most 3 stages with their median h rho (rho: the radius the step was planned with). A
  step planned with 2-3 stages at h rho of order 1 is set by accuracy at the flow's own
  fastest time scale: no stabilization makes it longer, and an explicit method of higher
  order is stable only to h rho ~ 3 (classical RK4 2.8, DOP5 3.3) with 4-6 evaluations;
- the cost of one evaluation: the wall time per evaluation of the seed loop and of rkc
  (both runs timed in this process, ``--repeats`` interleaved, medians), and one
  ``prepare`` (forward and gradient) against the time its matrix products take at the
  rate this machine reaches on the largest of them (best times, ntk.py's ``timed``;
  torch's FlopCounterMode counts the FLOPs of the matrix products only; "of peak" =
  FLOPs / rate / time);
- "10x needs": the most evaluations rkc could spend for 10x the seed loop's speed at
  today's cost per evaluation, seed evaluations x (seed cost / rkc cost) / 10;
- when: the accepted stage evaluations by the time t / t_fit at the end of their step
  (bands up to 0.3, 0.6, 0.9, 1), each band's share and median h rho: where the
  evaluations go, and whether steps there are set by accuracy at the flow's fastest time
  scale (h rho of order 1) or stabilized (h rho >> 1);
- idle points: the mean, over the evaluations, of the share of training points whose
  loss weight |l'(z_i)| is below 1e-12 and 1e-8 of the largest (fitted far past the
  margin): the most a gradient over the other points alone could save is that share of
  the backward pass (the forward still needs every margin).

Results: stdout and benchmarks/results/flow_budget.json. To label the evaluations and
log the steps it wraps ``memgen.chebyshev``'s ``step_once``, ``step_deflated``,
``estimate`` and ``Memory.plan`` and ``memgen.rkc_run``'s ``rkc_flow`` for that run
(``mock.patch.object``); the wrappers only count, so the steps are flow.py's (checked:
the same evaluations as the timed runs).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flow as B  # noqa: E402
from ntk import timed  # noqa: E402

from memgen import chebyshev, rkc_run, training  # noqa: E402
from memgen.training import FlowConfig  # noqa: E402

BANDS = (0.3, 0.6, 0.9, 1.0)  # upper ends of the t / t_fit bands
IDLE_LEVELS = (1e-12, 1e-8)  # loss weights, relative to the largest, counted as idle


@contextlib.contextmanager
def labelled(problem, counts: collections.Counter, log: list, idle: list):
    """Count ``problem.prepare`` calls under the purpose running them; log (stages, h rho,
    t at its end) of each accepted step and, per evaluation, the shares of training points
    whose loss weight is below each of IDLE_LEVELS times the largest."""
    purpose, planned = ["other"], [None]

    def under(label, fn):
        def call(*a, **k):
            old, purpose[0] = purpose[0], label
            try:
                return fn(*a, **k)
            finally:
                purpose[0] = old
        return call

    def planning(memory, h, plan=chebyshev.Memory.plan):  # the last plan before a yield is the accepted step's
        h_p, s, deflated = plan(memory, h)
        planned[0] = (s, h_p * (memory.rho_e if deflated else memory.rho))
        return h_p, s, deflated

    def flow(*a, _flow=rkc_run.rkc_flow, **k):
        for st in _flow(*a, **k):
            log.append((*planned[0], st.t))
            yield st

    def counted(state, prepare=problem.prepare):
        counts[purpose[0]] += 1
        prep = prepare(state)
        weight = problem.cfg.loss.derivative(prep.z).abs()
        idle.append([float((weight < level * weight.max()).double().mean()) for level in IDLE_LEVELS])
        return prep

    with contextlib.ExitStack() as stack:
        for target, name, new in ((problem, "prepare", counted), (chebyshev.Memory, "plan", planning),
                                  (rkc_run, "rkc_flow", flow),
                                  *((chebyshev, n, under(label, getattr(chebyshev, n)))
                                    for n, label in (("step_once", "stage"), ("step_deflated", "stage"),
                                                     ("estimate", "spectral")))):
            stack.enter_context(mock.patch.object(target, name, new))
        yield


def best_rtol(size: str, alpha: float) -> float | None:
    path = B.RESULTS / "flow.json"
    if not path.exists():
        return None
    for r in json.loads(path.read_text())["rows"]:
        if (r["size"], r["alpha"], r["tau"]) == (size, alpha, 0.0):
            best = B.at_seed_accuracy(r).get("rkc")
            return float(best[0].split()[1]) if best else None
    return None


def eval_cost(problem, state, n: int = 30) -> dict:
    """Best time of one prepare (of n), its FLOPs and the machine's rate on its largest product."""
    _, t = timed(lambda: problem.prepare(state), n)
    with FlopCounterMode(display=False) as fc:
        problem.prepare(state)
    rows = problem.x.shape[0]
    out, inner = max((W.shape for W, _ in problem.model.views(problem.w0)), key=lambda s: s[0] * s[1])
    a, b = (torch.randn(m, k, dtype=problem.w0.dtype) for m, k in ((rows, inner), (inner, out)))
    _, t_mm = timed(lambda: torch.mm(a, b), 50)
    rate = 2 * rows * inner * out / t_mm
    return dict(prepare_s=t, flops=fc.get_total_flops(), rate=rate, of_peak=fc.get_total_flops() / rate / t)


def budget(size: str, alpha: float, rtol: float, repeats: int) -> dict:
    data, net, seed_fc, seed_loss, cfg = B.problem_for(size, alpha, 0.0)
    rk = FlowConfig(**{**cfg.__dict__, "method": "rkc", "rtol": rtol})
    runners = {"seed": lambda: B.run_seed(seed_fc, seed_loss, data, cfg), "rkc": lambda: B.run_memgen(net, data, rk)}
    cost, evals_of = {"seed": [], "rkc": []}, {}
    for r in range(repeats):
        for name in (("seed", "rkc") if r % 2 == 0 else ("rkc", "seed")):
            res = runners[name]()
            cost[name].append(res["wall"] / res["evals"])
            evals_of[name] = res["evals"]
    problem = B.network_problem(net, data, rk)
    counts, log, idle = collections.Counter(), [], []
    with labelled(problem, counts, log, idle):
        res = training.run(problem, rk, data.y_test)
    stages, hrho, t_end = (np.array(c) for c in zip(*log))
    # (t_{i-1}, t_i] of t_i = BANDS[i] t_fit; the step that contains t_fit ends past it: the last band
    band = np.minimum(np.searchsorted(np.array(BANDS) * res.status["t_fit"], t_end), len(BANDS) - 1)
    when = [dict(upto=b, share=float(stages[band == i].sum() / stages.sum()),
                 hrho=float(np.median(hrho[band == i])) if (band == i).any() else None)
            for i, b in enumerate(BANDS)]
    few = stages <= 3
    evals = sum(counts.values())
    assert evals == evals_of["rkc"], (evals, evals_of["rkc"])  # the wrappers change no step
    stage_accepted = int(stages.sum())
    c_seed, c_rkc = statistics.median(cost["seed"]), statistics.median(cost["rkc"])
    seed_evals = evals_of["seed"]
    return dict(size=size, alpha=alpha, rtol=rtol, evals=evals, steps=len(log), seed_evals=seed_evals,
                accepted=stage_accepted, rejected=counts["stage"] - stage_accepted, spectral=counts["spectral"],
                other=counts["other"], by_stages=dict(sorted(collections.Counter(stages.tolist()).items())),
                few_share=float(stages[few].sum() / stage_accepted), few_hrho=float(np.median(hrho[few])),
                seed_cost_s=c_seed, rkc_cost_s=c_rkc, speedup=seed_evals * c_seed / (evals * c_rkc),
                evals_for_10x=seed_evals * c_seed / (10 * c_rkc), converged=bool(res.status["converged"]),
                when=when, idle=dict(zip(map(str, IDLE_LEVELS), np.mean(idle, axis=0).tolist())),
                **eval_cost(problem, problem.initial_state()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", choices=list(B.SIZES), default=["default", "paper"])
    p.add_argument("--alphas", type=float, nargs="+", default=[1e-2, 1.0, 1e2])
    p.add_argument("--rtol", type=float, default=None, help="flow.rtol of every rkc run (default: flow.py's best)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=B.RESULTS / "flow_budget.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        for alpha in args.alphas:
            rtol = args.rtol if args.rtol is not None else best_rtol(size, alpha)
            if rtol is None:
                raise SystemExit(f"--rtol: no flow.py result at the seed loop's accuracy for size {size}, alpha "
                                 f"{alpha:g} in {B.RESULTS / 'flow.json'}; run benchmarks/flow.py or pass --rtol")
            rows.append(budget(size, alpha, rtol, args.repeats))
            print(f"  done {size} alpha={alpha:g}", file=sys.stderr, flush=True)
    print(f"{args.threads} thread(s), {args.repeats} interleaved repeats; evaluations by purpose, stage counts, "
          f"cost per evaluation (seed / rkc), prepare at the start vs the matmul rate")
    for r in rows:
        print(f"{r['size']:>7} alpha={r['alpha']:<5g} rtol={r['rtol']:g}: {r['evals']} evals = {r['accepted']} "
              f"accepted stages + {r['rejected']} rejected + {r['spectral']} spectral + {r['other']} other; "
              f"{r['steps']} steps, stages {r['by_stages']}")
        print(f"{'':>15} {100 * r['few_share']:.0f}% of accepted stage evals in steps of <= 3 stages (median h rho "
              f"{r['few_hrho']:.2f}); cost/eval seed {1e6 * r['seed_cost_s']:.0f} us, rkc {1e6 * r['rkc_cost_s']:.0f} "
              f"us ({r['seed_cost_s'] / r['rkc_cost_s']:.2f}x); prepare {1e6 * r['prepare_s']:.0f} us, "
              f"{r['flops'] / 1e6:.1f} MFLOP, {100 * r['of_peak']:.0f}% of {r['rate'] / 1e9:.1f} GFLOP/s")
        print(f"{'':>15} speed-up here {r['speedup']:.2f}x; 10x needs <= {r['evals_for_10x']:.0f} evals "
              f"({r['evals_for_10x'] / r['evals']:.2f} of today's)")
        bands = ", ".join(f"<= {b['upto']:g}: {100 * b['share']:.0f}%"
                          + (f" (h rho {b['hrho']:.2f})" if b["hrho"] is not None else "") for b in r["when"])
        print(f"{'':>15} accepted stage evals by t / t_fit {bands}; idle points "
              + ", ".join(f"{100 * v:.1f}% below {k}" for k, v in r["idle"].items()))
    B.write_results(args.out, "benchmarks/flow_budget.py", argv, rows)


if __name__ == "__main__":
    main()
