"""Benchmark of memgen.curvature (CPU, 2 threads).

1. Cost of one exact HVP (double backward) relative to one gradient on an MLP
   64-128-128-1 (tanh) with 512 examples; median of interleaved repeats.
2. Conjugate gradient to relative residual 1e-8 on the Hessian of L2-regularized
   logistic regression on sklearn digits, 3 vs 8.
3. LiSSA (full-batch and mini-batch) on the same system: HVPs and time until the
   relative error against the CG solution is below 1e-2 and 1e-4.
4. Relative error of the central finite-difference HVP against the exact one for
   r = 1e-2 ... 1e-8, in float32 and float64.

Run:  .venv/bin/python benchmarks/curvature.py [--quick]
Writes benchmarks/results/curvature.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memgen.curvature import (
    finite_difference_hvp,
    flat_params,
    hessian_matrix,
    inverse_hvp,
    make_batch_hvps,
    make_module_hvp,
    module_gradient,
    set_flat_params,
    top_eigenvalue,
)

RESULTS = Path(__file__).resolve().parent / "results" / "curvature.json"


def _mse(out, y):
    return F.mse_loss(out.squeeze(-1), y)


def _bce(out, y):
    return F.binary_cross_entropy_with_logits(out.squeeze(-1), y)


def _mlp(dtype, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(),
                         nn.Linear(128, 1)).to(dtype)


def _mlp_data(dtype, n=512, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, generator=g).to(dtype)
    y = torch.randn(n, generator=g).to(dtype)
    return x, y


def bench_hvp_ratio(repeats: int) -> dict:
    """Median time of one HVP / one gradient, interleaved (rotating order), float32.

    "hvp": forward + backward(create_graph) + backward per call; "hvp_cached":
    make_module_hvp(cache_graph=True), the gradient graph built once, one backward per call.
    """
    model = _mlp(torch.float32)
    x, y = _mlp_data(torch.float32)
    batches = [(x, y)]
    v = torch.randn(flat_params(model).numel())
    fns = {"grad": lambda: module_gradient(model, _mse, batches),
           "hvp": (lambda f: lambda: f(v))(make_module_hvp(model, _mse, batches)),
           "hvp_cached": (lambda f: lambda: f(v))(make_module_hvp(model, _mse, batches, cache_graph=True))}
    for _ in range(3):  # warm-up
        for f in fns.values():
            f()
    names = list(fns)
    times = {k: [] for k in names}
    for i in range(repeats):
        for k in names[i % 3:] + names[:i % 3]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(t) for k, t in times.items()}
    return {"params": int(flat_params(model).numel()), "examples": len(x), "repeats": repeats,
            "grad_ms": 1e3 * med["grad"], "hvp_ms": 1e3 * med["hvp"], "hvp_cached_ms": 1e3 * med["hvp_cached"],
            "ratio": med["hvp"] / med["grad"], "ratio_cached": med["hvp_cached"] / med["grad"],
            "median_pair_ratio": statistics.median(h / g for h, g in zip(times["hvp"], times["grad"]))}


def _digits(lam: float):
    """Logistic regression, digits 3 (label 0) vs 8 (label 1), features / 16, trained
    by Newton's method on mean BCE + lam/2 ||w||^2 (weights and bias)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = (d.target == 3) | (d.target == 8)
    X = torch.tensor(d.data[keep] / 16.0, dtype=torch.float64)
    y = torch.tensor(d.target[keep] == 8, dtype=torch.float64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    X, y = X[perm], y[perm]
    ntr = 250
    Xtr, ytr, Xte, yte = X[:ntr], y[:ntr], X[ntr:], y[ntr:]
    Xa = torch.cat([Xtr, torch.ones(ntr, 1, dtype=torch.float64)], 1)
    th = torch.zeros(65, dtype=torch.float64)
    for _ in range(100):
        p = torch.sigmoid(Xa @ th)
        g = Xa.T @ (p - ytr) / ntr + lam * th
        H = (Xa.T * (p * (1 - p))) @ Xa / ntr + lam * torch.eye(65, dtype=torch.float64)
        step = torch.linalg.solve(H, g)
        th -= step
        if step.norm() < 1e-14:
            break
    model = nn.Linear(64, 1).double()
    set_flat_params(model, th)
    return model, (Xtr, ytr), (Xte, yte), float(g.norm())


def bench_cg_lissa(lam: float, max_depth: int) -> dict:
    model, (Xtr, ytr), (Xte, yte), gnorm = _digits(lam)
    data_hvp = make_module_hvp(model, _bce, [(Xtr, ytr)], cache_graph=True)

    def hvp_fn(u):  # Hessian of the regularized objective
        return data_hvp(u) + lam * u

    v = module_gradient(model, _bce, [(Xte, yte)])  # gradient of the mean test loss
    A = hessian_matrix(hvp_fn, v)
    eig = np.linalg.eigvalsh(A.numpy())
    ref = torch.linalg.solve(A, v)
    out = {"lambda": lam, "train": len(ytr), "test": len(yte), "params": 65, "train_grad_norm": gnorm,
           "lambda_min": float(eig[0]), "lambda_max": float(eig[-1]), "condition": float(eig[-1] / eig[0])}

    t0 = time.perf_counter()
    x, info = inverse_hvp(hvp_fn, v, method="cg", tol=1e-8)
    out["cg"] = {"tol": 1e-8, "iterations": info["iterations"], "hvps": info["hvps"],
                 "seconds": time.perf_counter() - t0, "true_residual": info["true_residual"],
                 "rel_error_vs_dense": float((x - ref).norm() / ref.norm())}
    x_cg, _ = inverse_hvp(hvp_fn, v, method="cg", tol=1e-12)

    # time of one HVP on this problem, for the LiSSA time column
    for _ in range(3):
        hvp_fn(v)
    t0 = time.perf_counter()
    for _ in range(20):
        hvp_fn(v)
    out["hvp_ms"] = 1e3 * (time.perf_counter() - t0) / 20

    def lissa_run(name, batch_hvps, scale, depth, every):
        hits = {}

        def cb(j, xj):
            e = float((xj - x_cg).norm() / x_cg.norm())
            for target in (1e-2, 1e-4):
                if e < target and target not in hits:
                    hits[target] = (j, time.perf_counter() - t0)
            cb.last = e
            return 1e-4 in hits

        cb.last = float("nan")
        t0 = time.perf_counter()
        _, inf = inverse_hvp(hvp_fn, v, method="lissa", scale=scale, depth=depth, record_every=every,
                             batch_hvps=batch_hvps, lambda_max=float(eig[-1]) - lam, callback=cb, seed=0)
        res = {"scale": inf["scale"], "steps_run": inf["steps"][0], "final_rel_error": cb.last,
               "seconds": time.perf_counter() - t0}
        for target in (1e-2, 1e-4):
            j, t = hits.get(target, (None, None))
            res[f"hvps_to_{target:g}"] = j
            res[f"seconds_to_{target:g}"] = t
        out[name] = res

    # full-batch: the default scale 1.1 lambda_max
    lissa_run("lissa_full", None, None, max_depth, 10)
    # mini-batches of 25: each batch Hessian is an unbiased estimate; the scale must
    # exceed half the largest batch eigenvalue
    batches = [(Xtr[i:i + 25], ytr[i:i + 25]) for i in range(0, len(ytr), 25)]
    bh = [lambda u, f=f: f(u) + lam * u for f in make_batch_hvps(model, _bce, batches, cache_graph=True)]
    lam_b = max(top_eigenvalue(f, v) for f in bh)
    lissa_run("lissa_batch25", bh, 1.1 * lam_b, max_depth // 4, 10)
    out["lissa_batch25"]["batch_lambda_max"] = lam_b
    return out


def bench_fd(dtype) -> list[dict]:
    model = _mlp(dtype)
    x, y = _mlp_data(dtype)
    batches = [(x, y)]
    w0 = flat_params(model)
    g = torch.Generator().manual_seed(2)
    v = torch.randn(w0.numel(), generator=g).to(dtype)
    v /= v.norm()
    exact = make_module_hvp(model, _mse, batches)(v)

    def grad_fn(w):
        set_flat_params(model, w)
        return module_gradient(model, _mse, batches)

    rows = []
    for k in range(2, 9):
        r = 10.0 ** -k
        fd = finite_difference_hvp(grad_fn, w0, v, r)
        rows.append({"r": r, "rel_error": float((fd - exact).norm() / exact.norm())})
    set_flat_params(model, w0)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, shallower LiSSA")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lam", type=float, default=1e-3, help="L2 coefficient of the logistic regression")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t_all = time.perf_counter()
    res = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads": torch.get_num_threads()}
    res["hvp_vs_grad"] = bench_hvp_ratio(10 if args.quick else 30)
    res["inverse_hvp"] = bench_cg_lissa(args.lam, 8000 if args.quick else 20000)
    res["finite_difference"] = {"float32": bench_fd(torch.float32), "float64": bench_fd(torch.float64)}
    res["total_seconds"] = time.perf_counter() - t_all

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    print_table(res)
    print(f"\nwrote {RESULTS}")


def _f(x, spec):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_table(res):
    h = res["hvp_vs_grad"]
    print(f"torch {res['torch']}, {res['threads']} threads\n")
    print(f"1. MLP 64-128-128-1 tanh, {h['examples']} examples, P={h['params']}, float32, "
          f"median of {h['repeats']} interleaved repeats")
    print(f"   {'':<28}{'ms':>9}{'/ gradient':>12}")
    print(f"   {'gradient':<28}{h['grad_ms']:>9.2f}{1.0:>12.2f}")
    print(f"   {'HVP (double backward)':<28}{h['hvp_ms']:>9.2f}{h['ratio']:>12.2f}")
    print(f"   {'HVP, cache_graph=True':<28}{h['hvp_cached_ms']:>9.2f}{h['ratio_cached']:>12.2f}")
    print(f"   (target <= 3x; median of per-pair ratios {h['median_pair_ratio']:.2f}x)")
    c = res["inverse_hvp"]
    print(f"\n2-3. (H + lambda I)^-1 g_test, logistic regression digits 3 vs 8, n={c['train']}, P={c['params']}, "
          f"lambda={c['lambda']:g}")
    print(f"   eigenvalues [{c['lambda_min']:.3g}, {c['lambda_max']:.3g}], condition {c['condition']:.3g}; "
          f"one HVP {c['hvp_ms']:.2f} ms")
    print(f"   {'solver':<16}{'scale':>9}{'HVPs->1e-2':>12}{'s->1e-2':>10}{'HVPs->1e-4/1e-8':>17}"
          f"{'s->1e-4/1e-8':>14}{'final err':>11}")
    cg = c["cg"]
    print(f"   {'CG (res 1e-8)':<16}{'-':>9}{'-':>12}{'-':>10}{cg['hvps']:>17}{cg['seconds']:>14.3f}"
          f"{cg['rel_error_vs_dense']:>11.1e}")
    print(f"   CG iterations {cg['iterations']}, true relative residual {cg['true_residual']:.1e}")
    for name in ("lissa_full", "lissa_batch25"):
        r = c[name]
        print(f"   {name:<16}{r['scale']:>9.3g}{_f(r['hvps_to_0.01'], 'd'):>12}{_f(r['seconds_to_0.01'], '.3f'):>10}"
              f"{_f(r['hvps_to_0.0001'], 'd'):>17}{_f(r['seconds_to_0.0001'], '.3f'):>14}"
              f"{_f(r['final_rel_error'], '.1e'):>11}")
    print("   (CG: error column is vs a dense solve; LiSSA: vs CG at residual 1e-12; "
          "lissa_batch25 HVPs are on 25-example batches; '-' = not reached)")
    print("\n4. finite-difference HVP relative error vs exact (MLP above)")
    print(f"   {'r':>8}{'float32':>12}{'float64':>12}")
    for a, b in zip(res["finite_difference"]["float32"], res["finite_difference"]["float64"]):
        print(f"   {a['r']:>8.0e}{a['rel_error']:>12.2e}{b['rel_error']:>12.2e}")
    print(f"\ntotal {res['total_seconds']:.1f} s")


if __name__ == "__main__":
    main()
