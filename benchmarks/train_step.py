"""Per-step cost of memgen's training loop against the seed notebook's ``train_regular``.

    python benchmarks/train_step.py [--n 200 --d 10 --k 3 --h 64 --L 3 --alpha 1
                                     --steps 2000 --threads 2 1 --repeats 3]

The baseline is ``benchmarks/seed_loop.py``'s re-implementation of seed 000's
``train_regular`` (its docstring says what it keeps of the seed's loop).

Both sides solve the same problem: ``memgen.data.sparse_parity``, float64, the same
initial weights (memgen's ``FC`` W matrices copied into the seed ``FC``), softplus
(beta 5) times ``memgen.models.activation_constant`` (E[phi^2] = 1), mean-field last
layer (1/h), no bias, loss = soft hinge (beta 20) with memgen's "article" normalisation
``mean l(alpha (f - f0) y) / alpha^2``, max_dgrad 1e-4, max_dout 0.1 on alpha*|df|,
tau = 0. Both run the same number of ACCEPTED steps (the margin stop is disabled; the
margin test itself is still evaluated every step, as in both loops), and the script
checks they followed the same trajectory: same number of accepted and rejected steps,
same t (relative 1e-9), same final outputs (1e-8).

Timings are interleaved in one process (baseline, memgen ``run``, bare ``flow``, per
repeat) and the ratio is the median over repeats of baseline / memgen; the machine may
be shared, so read ratios rather than absolute times. ``memgen run`` is
:func:`memgen.training.run` (records at checkpoints, progress, resume bookkeeping);
``memgen flow`` drives :func:`memgen.dynamics.flow` with a :class:`NetworkProblem`
directly (the bare integrator). Results go to stdout and to
benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from pathlib import Path
from time import perf_counter, process_time

import torch

from memgen import training
from memgen.dynamics import flow
from memgen.training import FlowConfig, NetworkProblem
from seed_loop import setup, train_regular  # the seed loop and the shared problem, once


# --------------------------------------------------------------------------------------
# The three timed runs
# --------------------------------------------------------------------------------------

def run_baseline(seed_fc, seed_loss, data, cfg, steps):
    t0 = perf_counter()
    last = None
    for f, state, _ in train_regular(seed_fc, data.x_train, data.y_train, cfg.tau, math.inf, cfg.alpha, seed_loss,
                                     True, cfg.max_dgrad, cfg.max_dout, max_steps=steps, margin_stop=False):
        last = (f, state)
    wall = perf_counter() - t0
    f, state = last
    with torch.no_grad():
        F_final = cfg.alpha * (f(data.x_train) - seed_fc(data.x_train))
    return wall, dict(steps=state["steps"], rejected=state["rejected"], t=state["t"], F=F_final)


def run_memgen(net, data, cfg, steps):
    """memgen.training.run; the margin test is still evaluated every step but never stops the run."""
    problem = NetworkProblem(net.flat(), net.flat_parameters(), data.x_train, data.y_train, data.x_test, cfg)
    run_cfg = FlowConfig(**{**cfg.__dict__, "max_steps": steps})
    orig = training._margin_reached
    training._margin_reached = lambda *a, **k: (orig(*a, **k), False)[1]
    try:
        t0 = perf_counter()
        res = training.run(problem, run_cfg, data.y_test)
        wall = perf_counter() - t0
    finally:
        training._margin_reached = orig
    rec = res.records
    # rejected steps: sum over accepted steps of the dt ratio is not recorded by run(); take t only
    return wall, dict(steps=int(rec["step"][-1]), rejected=None, t=float(rec["t"][-1]),
                      F=torch.from_numpy(res.F_train[-1]))


def run_flow(net, data, cfg, steps):
    """The bare integrator: dynamics.flow with NetworkProblem.prepare / make_step and run()'s compare."""
    problem = NetworkProblem(net.flat(), net.flat_parameters(), data.x_train, data.y_train, data.x_test, cfg)
    limits = (cfg.max_dgrad, cfg.max_dout)
    from memgen.dynamics import relative_change

    def compare(old, new):
        if not new.finite:
            return False, False
        dgrad = relative_change(old.direction, new.direction)
        dout = float((new.F - old.F).abs().max())
        return (dgrad < limits[0] and dout < limits[1]), (dgrad < limits[0] / 2 and dout < limits[1] / 2)

    t0 = perf_counter()
    rejected = 0
    for fs in flow(problem.initial_state(), problem.prepare, lambda s, p, h: problem.make_step(s, p, h, cfg.tau),
                   compare):
        rejected += fs.rejected
        if fs.step >= steps:
            break
    wall = perf_counter() - t0
    return wall, dict(steps=fs.step, rejected=rejected, t=fs.t, F=fs.data.F.clone())


def check_same(ref, other, name):
    problems = []
    if ref["steps"] != other["steps"]:
        problems.append(f"accepted steps {ref['steps']} vs {other['steps']}")
    if other["rejected"] is not None and ref["rejected"] != other["rejected"]:
        problems.append(f"rejected steps {ref['rejected']} vs {other['rejected']}")
    rel_t = abs(ref["t"] - other["t"]) / abs(ref["t"])
    dF = float((ref["F"] - other["F"]).abs().max())
    if rel_t > 1e-9:
        problems.append(f"t {ref['t']!r} vs {other['t']!r} (rel {rel_t:.2e})")
    if dF > 1e-8:
        problems.append(f"max |F_base - F_{name}| = {dF:.2e}")
    return dict(ok=not problems, rel_t=rel_t, max_dF=dF, problems=problems)


def bench_row(n, d, k, h, L, alpha, steps, threads, repeats):
    torch.set_num_threads(threads)
    data, net, seed_fc, seed_loss, cfg = setup(n, d, k, h, L, alpha)
    # warm-up (allocator, thread pool), short
    run_baseline(seed_fc, seed_loss, data, cfg, 20)
    run_memgen(net, data, cfg, 20)
    run_flow(net, data, cfg, 20)
    walls = {"baseline": [], "memgen_run": [], "memgen_flow": []}
    ratios = {"memgen_run": [], "memgen_flow": []}
    checks = {}
    cpus = {key: [] for key in walls}
    cpu_ratios = {key: [] for key in ratios}

    def timed(fn, *a):
        c0 = process_time()
        wall, res = fn(*a)
        return wall, process_time() - c0, res

    for _ in range(repeats):
        wb, cb, base = timed(run_baseline, seed_fc, seed_loss, data, cfg, steps)
        wr, cr, mrun = timed(run_memgen, net, data, cfg, steps)
        wf, cf, mflow = timed(run_flow, net, data, cfg, steps)
        for key, w, c in (("baseline", wb, cb), ("memgen_run", wr, cr), ("memgen_flow", wf, cf)):
            walls[key].append(w)
            cpus[key].append(c)
        for key, w, c in (("memgen_run", wr, cr), ("memgen_flow", wf, cf)):
            ratios[key].append(wb / w)
            cpu_ratios[key].append(cb / c)
        checks = {"memgen_run": check_same(base, mrun, "run"), "memgen_flow": check_same(base, mflow, "flow")}
    ms = {key: 1e3 * statistics.median(v) / steps for key, v in walls.items()}
    cpu_ms = {key: 1e3 * statistics.median(v) / steps for key, v in cpus.items()}
    return dict(
        n=n, d=d, k=k, h=h, L=L, alpha=alpha, steps=steps, threads=threads, repeats=repeats,
        rejected=base["rejected"], t_final=base["t"],
        ms_per_step=ms, cpu_ms_per_step=cpu_ms,
        ratio_median={key: statistics.median(v) for key, v in ratios.items()},
        cpu_ratio_median={key: statistics.median(v) for key, v in cpu_ratios.items()},
        ratios=ratios, cpu_ratios=cpu_ratios, walls_s=walls, cpu_s=cpus, trajectory=checks,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--d", type=int, default=10)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--h", type=int, default=64)
    p.add_argument("--L", type=int, default=3)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--paper-steps", type=int, default=300,
                   help="accepted steps of the second row at the paper's size n=700, d=30, h=100 (0: skip it)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "train_step.json")
    args = p.parse_args(argv)

    sizes = [(args.n, args.d, args.k, args.h, args.L, args.steps)]
    if args.paper_steps > 0:
        sizes.append((700, 30, 3, 100, args.L, args.paper_steps))
    rows = []
    for threads in args.threads:
        for n, d, k, h, L, steps in sizes:
            row = bench_row(n, d, k, h, L, args.alpha, steps, threads, args.repeats)
            rows.append(row)
            print(f"  done n={n} h={h} threads={threads}", file=sys.stderr, flush=True)

    header = (f"{'n':>4} {'d':>3} {'h':>4} {'L':>2} {'alpha':>5} {'steps':>5} {'thr':>3} | {'baseline':>8} "
              f"{'run':>7} {'ratio':>5} {'flow':>7} {'ratio':>5} | {'cpu ratio run':>13} {'flow':>5} | trajectory")
    print(f"wall ms per accepted step (median of {args.repeats} interleaved repeats); ratio = median of "
          f"baseline / memgen per repeat, on wall time and on process CPU time; torch {torch.__version__}")
    print(header)
    print("-" * len(header))
    all_ok = True
    for r in rows:
        ok = r["trajectory"]["memgen_run"]["ok"] and r["trajectory"]["memgen_flow"]["ok"]
        all_ok &= ok
        tr = ("same" if ok else "DIFFERENT: " + "; ".join(r["trajectory"]["memgen_run"]["problems"]
                                                         + r["trajectory"]["memgen_flow"]["problems"]))
        tr += (f" (rej {r['rejected']}, rel t {max(r['trajectory'][k]['rel_t'] for k in r['trajectory']):.0e}, "
               f"dF {max(r['trajectory'][k]['max_dF'] for k in r['trajectory']):.0e})")
        ms, rt, cr = r["ms_per_step"], r["ratio_median"], r["cpu_ratio_median"]
        print(f"{r['n']:>4} {r['d']:>3} {r['h']:>4} {r['L']:>2} {r['alpha']:>5g} {r['steps']:>5} {r['threads']:>3} | "
              f"{ms['baseline']:>8.3f} {ms['memgen_run']:>7.3f} {rt['memgen_run']:>5.2f} "
              f"{ms['memgen_flow']:>7.3f} {rt['memgen_flow']:>5.2f} | "
              f"{cr['memgen_run']:>13.2f} {cr['memgen_flow']:>5.2f} | {tr}")
    write_results(args.out, "benchmarks/train_step.py", argv, rows)
    return 0 if all_ok else 1


def write_results(out: Path, script: str, argv, rows) -> None:
    """rows and the command / versions that produced them, as JSON in ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(command=" ".join(["python", script] + list(sys.argv[1:] if argv is None else argv)),
                torch=torch.__version__, python=platform.python_version(), machine=platform.machine())
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    sys.exit(main())
