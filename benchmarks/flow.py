"""Wall time to the margin and accuracy of the gradient-flow integrators (issue 16).

    python benchmarks/flow.py [--sizes default paper] [--alphas 1e-2 1 1e2] [--repeats 2]
                              [--rtol 1e-3 3e-3 1e-2] [--float32-max-alpha 1] [--threads 1]
                              [--tau-over-h 0]
    python benchmarks/flow.py --report       # the tables again, from benchmarks/results/flow.json

For each size and alpha, runs from the same initial weights to the margin (every
training margin >= 1): seed 000's ``train_regular`` (the re-implementation in
``benchmarks/seed_loop.py``; max_dgrad 1e-4, max_dout 0.1), memgen's
``flow.method: euler`` (the same scheme), memgen's ``flow.method: rkc`` at each ``--rtol``
("rkc 0.003", deflation on: the default), the same with ``flow.deflate: false`` ("rkc-plain
0.003"; ``--no-plain`` skips it), and with ``flow.gradient_dtype: float32`` ("rkc-f32
0.003": state in float64, the network evaluated in float32, so no deflation) at alphas up
to ``--float32-max-alpha`` (``--no-float32`` skips it). Why the cap: the gradient is evaluated at the state rounded
to float32, and a stabilized step of h rho ~ s^2 amplifies that rounding (~1e-7 |w|)
s^2-fold in the error estimate; at large alpha w moves little per step, the estimate is
rounding noise and the step size collapses (paper size, alpha 1e2, rtol 1e-3: 125156
steps against 435 in float64, 0.14x the seed loop's speed).
Problem: (k, d)-sparse parity, FC with L = 3, softplus beta 5 normalised, mean-field
last layer, soft hinge beta 20, article normalisation, float64; sizes "default"
(k=3, d=10, 200 / 800 points, h=64: config/config.yaml) and "paper" (k=3, d=30,
700 / 1400, h=100). ``--tau-over-h`` > 0 adds the continuous momentum tau = tau_over_h h.

Wall times are interleaved in one process (seed, euler, rkc, in a rotating order, per
repeat), and the ratios are medians over repeats of seed / method and euler / method;
read ratios, not absolute times (shared machine). What is timed: for the seed loop, the
loop itself (its checkpoint yields included; the outputs this script evaluates at them
for the accuracy are not); for memgen, the whole ``training.run`` (records of train and
test outputs, loss, norms at every checkpoint included).

Accuracy against a reference trajectory: scipy's DOP853 at rtol 1e-10 (atol 1e-13) on
y = alpha (w - w0) (and alpha v with momentum) with memgen's gradient, stepped to the
last checkpoint of the three runs, each checkpoint time read from its dense output and
the reference t_fit located on it (brentq). Error of a run = the largest over its
checkpoints (t > 0) of max |F - F_ref| / max |F_ref| on train and on test ("traj err";
seed and euler record ~10^2 checkpoints per decade of steps, rkc 20 per decade of time,
so the rkc runs are repeated, untimed, with ``--dense-per-decade`` checkpoints: the same
steps, since records do not feed back, and "dense" is the error over those); t_fit error
= |t_fit / t_fit_ref - 1|. The reference outputs at those times are cached in
benchmarks/results/flow_reference/ (keyed by problem and times): a rerun with the same
trajectories reuses them. Gradient evaluations: seed and euler, one per trial step
(accepted and rejected); rkc, every ``prepare`` (stages, spectral radius iterations, the
records at interior checkpoint times), plus the forward-only evaluations of the margin
root finding counted apart. Results: stdout and benchmarks/results/flow.json. The
output ends with the fastest run of each rkc variant whose trajectory and t_fit errors
are both at most the seed loop's (the issue's "equal accuracy").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
from scipy.integrate import DOP853
from scipy.optimize import brentq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seed_loop as seed  # noqa: E402  (the seed loop and the shared problem, once)
from train_step import write_results  # noqa: E402

from memgen import training  # noqa: E402
from memgen.training import FlowConfig, NetworkProblem  # noqa: E402

SIZES = {"default": dict(k=3, d=10, n_train=200, n_test=800, h=64),
         "paper": dict(k=3, d=30, n_train=700, n_test=1400, h=100)}
L = 3
REF_RTOL = 1e-10
RESULTS = Path(__file__).resolve().parent / "results"


def problem_for(size: str, alpha: float, tau_over_h: float):
    s = SIZES[size]
    tau = tau_over_h * s["h"]
    data, net, seed_fc, seed_loss, cfg = seed.setup(s["n_train"], s["d"], s["k"], s["h"], L, alpha,
                                                    n_test=s["n_test"], tau=tau)
    return data, net, seed_fc, seed_loss, cfg


def network_problem(net, data, cfg) -> NetworkProblem:
    return NetworkProblem(net.flat(), net.flat_parameters(), data.x_train, data.y_train, data.x_test, cfg)


def run_seed(seed_fc, seed_loss, data, cfg) -> dict:
    """The seed loop to the margin; outputs at its checkpoints (not timed)."""
    alpha = cfg.alpha
    with torch.no_grad():
        f0_train, f0_test = seed_fc(data.x_train), seed_fc(data.x_test)
    ts, F_train, F_test = [], [], []
    paused, t_fit, last = 0.0, math.nan, None
    t0 = perf_counter()
    for f, state, converged in seed.train_regular(seed_fc, data.x_train, data.y_train, cfg.tau, math.inf, alpha,
                                                  seed_loss, True, cfg.max_dgrad, cfg.max_dout):
        p0 = perf_counter()
        with torch.no_grad():
            ts.append(state["t"])
            F_train.append((alpha * (f(data.x_train) - f0_train)).numpy())
            F_test.append((alpha * (f(data.x_test) - f0_test)).numpy())
        last = state
        if converged:
            t_fit = state["t"]
        paused += perf_counter() - p0
        if converged:
            break
    wall = perf_counter() - t0 - paused
    return dict(wall=wall, evals=last["steps"] + last["rejected"], steps=last["steps"], t=np.array(ts),
                F_train=np.stack(F_train), F_test=np.stack(F_test), t_fit=t_fit)


def run_memgen(net, data, cfg) -> dict:
    problem = network_problem(net, data, cfg)
    counts = {"prepare": 0, "forward": 0}
    prepare, margins = problem.prepare, problem.margins

    def counted_prepare(state):
        counts["prepare"] += 1
        return prepare(state)

    def counted_margins(w):
        counts["forward"] += 1
        return margins(w)

    problem.prepare, problem.margins = counted_prepare, counted_margins
    t0 = perf_counter()
    res = training.run(problem, cfg, data.y_test)
    wall = perf_counter() - t0
    assert res.status["converged"], res.status
    return dict(wall=wall, evals=counts["prepare"], forward=counts["forward"], steps=int(res.records["step"][-1]),
                t=res.records["t"], F_train=res.F_train, F_test=res.F_test, t_fit=res.status["t_fit"])


def reference_path(size: str, alpha: float, tau: float) -> Path:
    """The cache file of the reference for one problem (size, alpha, tau)."""
    key = json.dumps([size, SIZES[size], alpha, tau, REF_RTOL])
    return RESULTS / "flow_reference" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"


def reference(net, data, cfg, times: np.ndarray, path: Path) -> dict:
    """DOP853 (rtol 1e-10) outputs at ``times`` and its t_fit (module doc). Cached per
    problem in ``path``: a table of the times computed so far, extended when new times are asked for."""
    table = dict(np.load(path)) if path.exists() else None
    if table is None or not np.isin(times, table["t"]).all():
        wanted = np.unique(np.concatenate([times] + ([table["t"]] if table is not None else [])))
        table = _integrate(net, data, cfg, wanted)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **table)
    idx = np.searchsorted(table["t"], times)
    return dict(F_train=table["F_train"][idx], F_test=table["F_test"][idx], t_fit=float(table["t_fit"]),
                evals=int(table["evals"]))


def outputs_at(problem: NetworkProblem, w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The outputs alpha (f(w) - f(w0)) on the training and the test points."""
    return (problem.margins(w) * problem.y).numpy(), problem.test_outputs((w, None)).numpy()


def _integrate(net, data, cfg, times: np.ndarray) -> dict:
    """The reference integration at sorted, distinct ``times``."""
    problem = network_problem(net, data, cfg)
    alpha, tau, w0 = cfg.alpha, cfg.tau, problem.w0
    P = w0.numel()
    evals = [0]

    def rhs(t, y):
        evals[0] += 1
        g = problem.prepare((w0 + torch.from_numpy(y[:P]) / alpha, None)).grad.numpy()
        if tau == 0:
            return -alpha * g
        av = y[P:]
        return np.concatenate([av, -(av + alpha * g) / tau])

    def outputs(y):
        return outputs_at(problem, w0 + torch.from_numpy(y[:P]) / alpha)

    def margin(y):
        return float(problem.margins(w0 + torch.from_numpy(y[:P]) / alpha).min()) - 1

    F_train = np.zeros((len(times), len(data.y_train)))
    F_test = np.zeros((len(times), len(data.y_test)))
    solver = DOP853(rhs, 0.0, np.zeros(2 * P if tau > 0 else P), np.inf, rtol=REF_RTOL, atol=REF_RTOL * 1e-3)
    i, t_fit = 0, math.nan
    while i < len(times) and times[i] <= 0:
        F_train[i], F_test[i] = outputs(solver.y)
        i += 1
    while i < len(times) or math.isnan(t_fit):
        solver.step()
        if solver.status == "failed":
            raise RuntimeError(f"reference integration failed at t={solver.t}")
        dense = solver.dense_output()
        while i < len(times) and times[i] <= solver.t:
            F_train[i], F_test[i] = outputs(dense(times[i]))
            i += 1
        if math.isnan(t_fit) and margin(solver.y) >= 0:
            t_fit = brentq(lambda s: margin(dense(s)), solver.t_old, solver.t, xtol=1e-13 * solver.t, rtol=1e-14)
    return dict(t=times, F_train=F_train, F_test=F_test, t_fit=t_fit, evals=evals[0])


def errors(run: dict, ref: dict, sl: slice) -> dict:
    keep = run["t"] > 0
    err = 0.0
    for name in ("F_train", "F_test"):
        F, R = run[name][keep], ref[name][sl][keep]
        err = max(err, float(np.max(np.abs(F - R).max(axis=1) / np.abs(R).max(axis=1))))
    return dict(traj_err=err, t_fit_err=abs(run["t_fit"] / ref["t_fit"] - 1))


def bench_point(size, alpha, args) -> dict:
    data, net, seed_fc, seed_loss, cfg = problem_for(size, alpha, args.tau_over_h)
    configs = {"euler": cfg}
    for rtol in args.rtol:
        rkc = {**cfg.__dict__, "method": "rkc", "rtol": rtol}
        configs[f"rkc {rtol:g}"] = FlowConfig(**rkc)
        if args.plain:
            configs[f"rkc-plain {rtol:g}"] = FlowConfig(**{**rkc, "deflate": False})
        if args.float32 and alpha <= args.float32_max_alpha:
            configs[f"rkc-f32 {rtol:g}"] = FlowConfig(**{**rkc, "gradient_dtype": "float32"})
    runners = {"seed": lambda: run_seed(seed_fc, seed_loss, data, cfg)}
    runners.update({name: (lambda c=c: run_memgen(net, data, c)) for name, c in configs.items()})
    names = list(runners)
    walls = {n: [] for n in names}
    out = {}
    for r in range(args.repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:  # rotate the order between repeats
            res = runners[n]()
            walls[n].append(res["wall"])
            out.setdefault(n, res)
    # the rkc runs once more, untimed, with --dense-per-decade checkpoints: the same steps
    # (records are side computations), so its error is read between its own checkpoints too
    dense = {}
    for n in names:
        if n.startswith("rkc"):
            dense[n] = run_memgen(net, data, FlowConfig(**{**configs[n].__dict__,
                                                           "checkpoints_per_decade": args.dense_per_decade}))
            assert (dense[n]["steps"], dense[n]["t_fit"]) == (out[n]["steps"], out[n]["t_fit"]), n
    runs = [out[n] for n in names] + list(dense.values())
    times = np.concatenate([r["t"] for r in runs])
    sizes = np.cumsum([0] + [len(r["t"]) for r in runs])
    ref = reference(net, data, cfg, times, reference_path(size, alpha, cfg.tau))
    row = dict(size=size, alpha=alpha, tau=cfg.tau, rtols=args.rtol, ref_t_fit=ref["t_fit"], ref_evals=ref["evals"],
               methods={})
    for j, n in enumerate(names):
        ratios_seed = [a / b for a, b in zip(walls["seed"], walls[n])]
        ratios_euler = [a / b for a, b in zip(walls["euler"], walls[n])]
        row["methods"][n] = dict(
            walls_s=walls[n], vs_seed=statistics.median(ratios_seed), vs_euler=statistics.median(ratios_euler),
            vs_seed_range=[min(ratios_seed), max(ratios_seed)], evals=out[n]["evals"],
            forward=out[n].get("forward", 0), steps=out[n]["steps"], checkpoints=len(out[n]["t"]),
            t_fit=out[n]["t_fit"], **errors(out[n], ref, slice(sizes[j], sizes[j + 1])))
    for j, n in enumerate(dense, start=len(names)):
        row["methods"][n]["traj_err_dense"] = errors(dense[n], ref, slice(sizes[j], sizes[j + 1]))["traj_err"]
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["default", "paper"])
    p.add_argument("--alphas", type=float, nargs="+", default=[1e-2, 1.0, 1e2])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rtol", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2],
                   help="flow.rtol of the rkc runs (one run per value)")
    p.add_argument("--float32-max-alpha", type=float, default=1.0,
                   help="largest alpha with a float32-gradient rkc run (module doc: why)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tau-over-h", type=float, default=0.0)
    p.add_argument("--dense-per-decade", type=float, default=400.0,
                   help="checkpoints per decade of the untimed rkc runs that measure the error between checkpoints")
    p.add_argument("--no-plain", dest="plain", action="store_false", help="skip the rkc runs without deflation")
    p.add_argument("--no-float32", dest="float32", action="store_false",
                   help="skip the rkc run with flow.gradient_dtype float32")
    p.add_argument("--out", type=Path, default=RESULTS / "flow.json")
    p.add_argument("--report", action="store_true", help="print the tables of the results in --out; run nothing")
    args = p.parse_args(argv)
    if args.report:
        saved = json.loads(args.out.read_text())
        print(f"from {args.out} ({saved['meta']['command']})")
        report(saved["rows"], saved["meta"]["command"], saved["meta"]["torch"])
        return
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        for alpha in args.alphas:
            rows.append(bench_point(size, alpha, args))
            print(f"  done {size} alpha={alpha:g}", file=sys.stderr, flush=True)
    report(rows, f"{args.threads} thread(s), {args.repeats} interleaved repeats", torch.__version__)
    write_results(args.out, "benchmarks/flow.py", argv, rows)


def as_accurate(m: dict, seed: dict) -> bool:
    """The issue's equal accuracy: trajectory and t_fit errors both at most the seed loop's."""
    return m["traj_err"] <= seed["traj_err"] and m["t_fit_err"] <= seed["t_fit_err"]


def at_seed_accuracy(row: dict) -> dict:
    """Per rkc variant (rkc, rkc-plain, rkc-f32): the fastest of its rtols whose trajectory
    and t_fit errors are both at most the seed loop's, or None."""
    s = row["methods"]["seed"]
    best = {}
    for n, m in row["methods"].items():
        if not n.startswith("rkc"):
            continue
        variant = n.split()[0]
        best.setdefault(variant, None)
        if as_accurate(m, s) and (best[variant] is None or m["vs_seed"] > best[variant][1]["vs_seed"]):
            best[variant] = (n, m)
    return best


def report(rows: list, how: str, torch_version: str) -> None:
    """The table of every run, then the best speed-up over the seed loop at its accuracy."""
    print(f"to the margin, {how}; wall ratio = median of seed / method and euler / method; errors against "
          f"DOP853 rtol {REF_RTOL:g}; torch {torch_version}")
    header = (f"{'size':>7} {'alpha':>5} {'method':>15} | {'vs seed':>7} {'vs euler':>8} | {'evals':>9} {'steps':>6} "
              f"| {'traj err':>8} {'dense':>8} {'t_fit err':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        for n, m in r["methods"].items():
            ev = f"{m['evals']}" + (f"+{m['forward']}f" if m["forward"] else "")
            de = f"{m['traj_err_dense']:.2e}" if "traj_err_dense" in m else "-"
            print(f"{r['size']:>7} {r['alpha']:>5g} {n:>15} | {m['vs_seed']:>7.2f} {m['vs_euler']:>8.2f} | {ev:>9} "
                  f"{m['steps']:>6} | {m['traj_err']:>8.2e} {de:>8} {m['t_fit_err']:>9.1e}")
    print("\nfastest at the seed loop's accuracy or better (both errors at most its):")
    for r in rows:
        s = r["methods"]["seed"]
        cells = [f"{v}: " + (f"{m['vs_seed']:.2f}x at rtol {n.split()[1]}" if n else "none")
                 for v, (n, m) in ((v, b or (None, None)) for v, b in at_seed_accuracy(r).items())]
        print(f"{r['size']:>7} {r['alpha']:>5g} (seed {s['traj_err']:.1e} / {s['t_fit_err']:.1e}): " + "; ".join(cells))


if __name__ == "__main__":
    main()
