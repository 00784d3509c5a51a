"""Per-step cost of memgen's training loop against the seed notebook's ``train_regular``.

    python benchmarks/train_step.py [--n 200 --d 10 --k 3 --h 64 --L 3 --alpha 1
                                     --steps 2000 --threads 2 1 --repeats 3]

The baseline is a re-implementation of seed 000's loop (``FC`` with its weights in
``ParameterList`` chunks joined by ``torch.cat`` in forward, ``ContinuousMomentum``,
``copy.deepcopy`` of the model and optimizer state before every step, the dgrad / dout
checks, dt *= 1.1 when both are under half their limits, dt /= 10 and retry otherwise),
with the deprecated ``add_(scalar, tensor)`` calls written as ``add_(tensor, alpha=...)``.

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
import copy
import itertools
import json
import math
import platform
import statistics
import sys
from pathlib import Path
from time import perf_counter, process_time

import torch
import torch.nn as nn
import torch.nn.functional as F

from memgen import training
from memgen.data import sparse_parity
from memgen.dynamics import flow
from memgen.losses import Loss
from memgen.models import FC as MemgenFC
from memgen.models import activation_constant
from memgen.training import FlowConfig, NetworkProblem

LOSS_BETA = 20.0
ACT_BETA = 5.0
BIG = 30.0  # softplus threshold on beta*z, as memgen (memgen.models.SOFTPLUS_THRESHOLD)


# --------------------------------------------------------------------------------------
# Baseline: the seed notebook's model, optimizer and loop (rewritten, same operations)
# --------------------------------------------------------------------------------------

class SeedFC(nn.Module):
    """The seed's FC: W_i ~ N(0,1) in ParameterList row chunks, x W^T / sqrt(fan_in), last / h."""

    def __init__(self, d, h, L, act, bias=False):
        super().__init__()
        hh = d
        for i in range(L):
            W = torch.randn(h, hh)
            n = max(1, 128 * 256 // hh)  # the seed's chunking (memory of kernel computations)
            W = nn.ParameterList([nn.Parameter(W[j: j + n]) for j in range(0, len(W), n)])
            setattr(self, f"W{i}", W)
            if bias:
                self.register_parameter(f"B{i}", nn.Parameter(torch.zeros(h)))
            hh = h
        self.register_parameter(f"W{L}", nn.Parameter(torch.randn(1, hh)))
        if bias:
            self.register_parameter(f"B{L}", nn.Parameter(torch.zeros(1)))
        self.L, self.act, self.bias = L, act, bias

    def forward(self, x):
        for i in range(self.L + 1):
            W = getattr(self, f"W{i}")
            if isinstance(W, nn.ParameterList):
                W = torch.cat(list(W))
            B = self.bias * getattr(self, f"B{i}") if self.bias else 0
            h = x.size(1)
            if i < self.L:
                x = x @ (W.t() / h ** 0.5)
                x = self.act(x + B)
            else:
                x = x @ (W.t() / h) + B
        return x.view(-1)

    def load_matrices(self, mats):
        """Copy full weight matrices (W0..WL) into the (chunked) parameters."""
        with torch.no_grad():
            for i, M in enumerate(mats):
                W = getattr(self, f"W{i}")
                if isinstance(W, nn.ParameterList):
                    j = 0
                    for p in W:
                        p.copy_(M[j: j + len(p)])
                        j += len(p)
                else:
                    W.copy_(M)
        return self


def gradient(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False):
    """Flat gradient of ``outputs`` with respect to ``inputs`` (zeros for unused ones)."""
    inputs = [inputs] if torch.is_tensor(inputs) else list(inputs)
    grads = torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True,
                                retain_graph=retain_graph, create_graph=create_graph)
    grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, inputs)]
    return torch.cat([g.contiguous().view(-1) for g in grads])


def loglinspace(rate, step, end=None):
    t = 0
    while end is None or t <= end:
        yield t
        t = int(t + 1 + step * (1 - math.exp(-t * rate / step)))


class ContinuousMomentum(torch.optim.Optimizer):
    """dv/dt = -(v + grad)/tau (tau > 0) or -mu/t (v + grad) (tau = -mu < 0); dw/dt = v."""

    def __init__(self, params, dt, tau):
        super().__init__(params, dict(dt=dt, tau=tau))

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            tau, dt = group["tau"], group["dt"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                param_state = self.state[p]
                if "t" not in param_state:
                    t = param_state["t"] = 0
                else:
                    t = param_state["t"]
                if tau != 0:
                    if "velocity" not in param_state:
                        v = param_state["velocity"] = torch.zeros_like(p.data)
                    else:
                        v = param_state["velocity"]
                if tau > 0:
                    x = math.exp(-dt / tau)
                    v.mul_(x).add_(p.grad.data, alpha=-(1 - x))
                elif tau < 0:
                    x = (t / (t + dt)) ** (-tau)
                    v.mul_(x).add_(p.grad.data, alpha=-(1 - x))
                else:
                    v = -p.grad.data
                p.data.add_(v, alpha=dt)
                param_state["t"] += dt
        return loss


def make_step(f, optimizer, dt, grad):
    i = 0
    for p in f.parameters():
        n = p.numel()
        p.grad = grad[i: i + n].view_as(p)
        i += n
    for group in optimizer.param_groups:
        group["dt"] = dt
    optimizer.step()
    for p in f.parameters():
        p.grad = None


def train_regular(f0, x, y, tau, max_walltime, alpha, loss, subf0, max_dgrad=math.inf, max_dout=math.inf,
                  max_steps=None, margin_stop=True, log=None):
    """The seed's loop; yields (f, state, converged) at checkpoints, convergence and the end.

    Additions for the benchmark: ``max_steps`` (stop after that many accepted steps, with a
    final yield), ``margin_stop=False`` (keep going past the margin), ``log`` (where the
    seed's print of rejected steps goes; None: the line is formatted and dropped), and the
    totals ``rejected`` / ``steps`` in the yielded state.
    """
    f = copy.deepcopy(f0)
    with torch.no_grad():
        out0 = f0(x) if subf0 else 0
    dt = 1
    step_change_dt = 0
    optimizer = ContinuousMomentum(f.parameters(), dt=dt, tau=tau)
    checkpoint_generator = loglinspace(0.01, 100)
    checkpoint = next(checkpoint_generator)
    wall = perf_counter()
    t = 0
    converged = False
    rejected = 0

    out = f(x)
    grad = gradient(loss((out - out0) * y).mean(), f.parameters())

    for step in itertools.count():
        state = copy.deepcopy((f.state_dict(), optimizer.state_dict(), t))
        while True:
            make_step(f, optimizer, dt, grad)
            t += dt
            current_dt = dt
            new_out = f(x)
            new_grad = gradient(loss((new_out - out0) * y).mean(), f.parameters())
            dout = (out - new_out).mul(alpha).abs().max().item()
            if grad.norm() == 0 or new_grad.norm() == 0:
                dgrad = 0
            else:
                dgrad = (grad - new_grad).norm().pow(2).div(grad.norm() * new_grad.norm()).item()
            if dgrad < max_dgrad and dout < max_dout:
                if dgrad < 0.5 * max_dgrad and dout < 0.5 * max_dout:
                    dt *= 1.1
                break
            dt /= 10
            rejected += 1
            line = "[{} +{}] [dt={:.1e} dgrad={:.1e} dout={:.1e}]".format(
                step, step - step_change_dt, dt, dgrad, dout)
            if log is not None:
                print(line, file=log, flush=True)
            step_change_dt = step
            f.load_state_dict(state[0])
            optimizer.load_state_dict(state[1])
            t = state[2]

        out = new_out
        grad = new_grad
        save = False
        if step == checkpoint:
            checkpoint = next(checkpoint_generator)
            assert checkpoint > step
            save = True
        if (alpha * (out - out0) * y >= 1).all() and not converged:
            converged = True
            save = True
        last = max_steps is not None and step + 1 >= max_steps
        if save or last:
            state = {
                "step": step, "steps": step + 1, "rejected": rejected,
                "wall": perf_counter() - wall, "t": t, "dt": current_dt, "dgrad": dgrad, "dout": dout,
                "norm": sum(p.norm().pow(2) for p in f.parameters()).sqrt().item(),
                "dnorm": sum((p0 - p).norm().pow(2) for p0, p in zip(f0.parameters(), f.parameters())).sqrt().item(),
                "grad_norm": grad.norm().item(),
            }
            yield f, state, converged
        if last or (converged and margin_stop):
            break
        if perf_counter() > wall + max_walltime:
            break
        if torch.isnan(out).any():
            break


# --------------------------------------------------------------------------------------
# The shared problem and the three timed runs
# --------------------------------------------------------------------------------------

def setup(n, d, k, h, L, alpha, seed=0, n_test=0, tau=0.0):
    """The problem both sides solve: n training (and n_test test) points, memgen's FC, the
    seed's FC with the same weights, the seed's loss and memgen's FlowConfig."""
    data = sparse_parity(n, n_test, k, d, seed)
    net = MemgenFC(d, h, L, activation="softplus", beta=ACT_BETA, normalize=True, bias=False,
                   last_layer="mean_field", seed=seed)
    c = activation_constant("softplus", ACT_BETA)

    def act(z):
        return F.softplus(z, beta=ACT_BETA, threshold=BIG).mul(c)

    seed_fc = SeedFC(d, h, L, act).double().load_matrices([getattr(net, f"W{i}").detach() for i in range(L + 1)])

    def seed_loss(fy):  # article normalisation: l(alpha (f - f0) y) / alpha^2
        return F.softplus(LOSS_BETA * (1 - alpha * fy), threshold=BIG).div(LOSS_BETA * alpha**2)

    cfg = FlowConfig(alpha=alpha, loss=Loss("soft_hinge", LOSS_BETA), normalization="article",
                     max_dgrad=1e-4, max_dout=0.1, tau=tau)
    return data, net, seed_fc, seed_loss, cfg


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
