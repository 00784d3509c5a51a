"""Speed and memory of memgen's empirical NTK (issue 3, "Performance").

    bash benchmarks/setup_bench_env.sh            # once: separate venv with nngeometry
    /tmp/memgen-bench-venv/bin/python benchmarks/ntk.py [--threads 2 --n 1024 --repeats 7]

(``.venv/bin/python benchmarks/ntk.py`` also works; the nngeometry row is then skipped.)
Everything is measured in one process with ``torch.set_num_threads(--threads)``, on
FC d=30, h=1024, L=3 (relu, "ntk" last layer, no bias), n=1024 points, float32:

- ``memgen fast``: :func:`memgen.kernels.empirical_ntk` on memgen's ``FC`` (structured
  path), and on the equivalent ``nn.Sequential`` of ``nn.Linear`` + ``nn.ReLU`` (weights
  W * s_l, the same function; structured path too);
- ``seed loop``: a faithful re-implementation of seed 000's ``compute_kernels``: the
  parameters sorted by size and grouped under 2e9 // (8 (n_tr + n_te)) entries; for each
  group one autograd backward per example fills J, then K += J J^T (train/train only:
  n_te = 0);
- ``nngeometry``: ``nngeometry.GramMatrix`` on the ``nn.Sequential`` (one batch of n,
  and batches of 256), from the separate benchmark venv only;
- the machine's float32 matmul rate: the faster of ``torch.mm`` (MKL) and oneDNN (the
  GEMM memgen's ``_mm_nt`` runs on CPU) on 4096 x 4096, and the fast path's rate on its
  structured FLOP count (what it executes: forward, backward signals, and the per-layer
  Grams over the upper-triangle blocks of the symmetric Gram, counted by
  ``torch.profiler`` and, for oneDNN's products, from their shapes);
- peak RSS (VmHWM) of a fresh process that builds the 8192 x 8192 float64 train Gram of the same
  FC (h=1024, L=3), and of one that only imports torch + memgen;
- the generic path (torch.func, ``memgen.kernels.empirical_ntk(..., path="generic")``) against a
  per-example gradient loop on a small CNN.

Times are the best of ``--repeats`` runs, the matmul, the fast paths and nngeometry timed
in turn in each round (the loop runs once: it takes about a minute); on a shared machine the
minimum of interleaved runs is the least load-dependent estimate. Results: stdout table and benchmarks/results/ntk.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from time import perf_counter

import torch
from torch import nn

from memgen.kernels import empirical_ntk
from memgen.kernels.gemm import _mm_nt, _one_by_one, _uses_onednn
from memgen.kernels.gram import _tiles_of, symmetric_tiles
from memgen.models import FC


def timed(fn, repeats=1):
    out, times = None, []
    for _ in range(repeats):
        t0 = perf_counter()
        out = fn()
        times.append(perf_counter() - t0)
    return out, min(times)


def interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Results and best times of several functions timed in turn, ``repeats`` rounds:
    load drift on a shared machine then hits every candidate alike."""
    times = {k: [] for k in fns}
    outs = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = perf_counter()
            outs[k] = fn()
            times[k].append(perf_counter() - t0)
    return outs, {k: min(v) for k, v in times.items()}


MATMUL_SIZE = 4096


def gemm_skeleton(n: int, d: int, h: int, L: int, *, passes: int, to_inputs: bool, symmetric: bool,
                  mm_nt=lambda a, b: a @ b.t()):
    """The matrix products alone of an NTK Gram of FC(d, h, L) on n points, on random
    matrices of the same shapes: ``passes`` forward + backward passes (back to the inputs
    too with ``to_inputs``), then the d-wide and 2L h-wide Gram products, over the tiles
    of :func:`memgen.kernels.gram.symmetric_tiles` (the large ones singly, by ``mm_nt``, where
    the library does so; the others batched) or the full square; every 2-d product a @ b^T
    by ``mm_nt``. Timed against the real code, it separates the FLOP count from everything
    else: the fast path is passes=1 over the triangle with memgen's ``_mm_nt``;
    nngeometry's ``GramMatrix`` with one batch is passes=2 (outer and inner loop,
    gradients back to the inputs) over the full square with torch's matmul."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=g)
    Ws = [torch.randn(h, d, generator=g)] + [torch.randn(h, h, generator=g) for _ in range(L - 1)]
    v = torch.randn(1, h, generator=g)
    feats = [torch.randn(n, d, generator=g)] + [torch.randn(n, h, generator=g) for _ in range(2 * L)]
    batches = list(symmetric_tiles(n)) if symmetric else [(0, 0, 1, n, n, n)]
    library = symmetric and mm_nt is _mm_nt  # the library's rule for which tiles go one by one

    def run():
        for _ in range(passes):
            a = mm_nt(x, Ws[0])
            for W in Ws[1:]:
                a = mm_nt(a, W)
            mm_nt(a, v)
            s = a
            for W in Ws[:0:-1]:
                s = mm_nt(s, W.t())
            if to_inputs:
                mm_nt(s, Ws[0].t())
        for f in feats:
            for r0, c0, J, step, rows, cols in batches:
                if J == 1 or (library and _one_by_one(f, rows)):
                    for j in range(J):
                        r, c = r0 + j * step, c0 + j * step
                        mm_nt(f[r:r + rows], f[c:c + cols])
                else:
                    torch.bmm(_tiles_of(f, r0, J, step, rows), _tiles_of(f, c0, J, step, cols).transpose(1, 2))

    return run


def counted_gflop(fn) -> float:
    """GFLOP of the matrix products (and elementwise ops) in fn(): what torch's profiler
    counts, plus 2 m n k for each oneDNN product (mkldnn::_linear_pointwise, for which
    it counts none)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True) as prof:
        fn()
    flops = 0
    for e in prof.events():
        if e.name == "mkldnn::_linear_pointwise":
            (m, k), (n, _) = e.input_shapes[:2]
            flops += 2 * m * n * k
        else:
            flops += e.flops or 0
    return flops / 1e9


# ---------------------------------------------------------------- seed 000 baseline


def gradient(output, params):
    """seed 000's hessian.gradient: flat concatenated d output / d params."""
    grads = torch.autograd.grad(output, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def compute_kernels(f, xtr, xte):
    """seed 000's compute_kernels (per-example gradients, parameter groups by memory)."""
    ktrtr = xtr.new_zeros(len(xtr), len(xtr))
    ktetr = xtr.new_zeros(len(xte), len(xtr))
    ktete = xtr.new_zeros(len(xte), len(xte))
    params, current = [], []
    for p in sorted(f.parameters(), key=lambda p: p.numel(), reverse=True):
        current.append(p)
        if sum(p.numel() for p in current) > 2e9 // (8 * (len(xtr) + len(xte))):
            if len(current) > 1:
                params.append(current[:-1])
                current = current[-1:]
            else:
                params.append(current)
                current = []
    if len(current) > 0:
        params.append(current)
    for p in params:
        jtr = xtr.new_empty(len(xtr), sum(u.numel() for u in p))
        jte = xte.new_empty(len(xte), sum(u.numel() for u in p))
        for j, x in enumerate(xtr):
            jtr[j] = gradient(f(x[None]), p)
        for j, x in enumerate(xte):
            jte[j] = gradient(f(x[None]), p)
        ktrtr.add_(jtr @ jtr.t())
        ktetr.add_(jte @ jtr.t())
        ktete.add_(jte @ jte.t())
        del jtr, jte
    return ktrtr, ktetr, ktete


def as_sequential(model: FC) -> nn.Sequential:
    """nn.Sequential with the same function as a bias-free relu FC (weights W * s_l)."""
    mods = []
    for i, s in enumerate(model.spec.scales()):
        W = getattr(model, f"W{i}").detach()
        lin = nn.Linear(W.shape[1], W.shape[0], bias=False).to(W.dtype)
        with torch.no_grad():
            lin.weight.copy_(W * s)
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods[:-1])


def nngeometry_gram(model, x, batch):
    from nngeometry import GramMatrix

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x))), batch_size=batch)
    G = GramMatrix(model, loader)
    return G.data.reshape(len(x), len(x))


# ---------------------------------------------------------------- memory (fresh process)

RSS_SNIPPET = """
import sys, time, torch
from memgen.kernels import empirical_ntk
from memgen.models import FC
torch.set_num_threads({threads})
n = {n}
if n:
    model = FC({d}, {h}, {L}, activation="relu", normalize=False, last_layer="ntk", seed=0, dtype=torch.float64)
    x = torch.randn(n, {d}, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    K = empirical_ntk(model, x)
    t = time.perf_counter() - t0
    assert K.shape == (n, n) and K.dtype == torch.float64 and bool(torch.isfinite(K).all())
else:
    t = 0.0
# VmHWM (peak RSS of this process image; unlike ru_maxrss it is not inherited from the parent)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(int(hwm) / 2**20, t)
"""


def peak_rss(n, d, h, L, threads):
    code = textwrap.dedent(RSS_SNIPPET.format(n=n, d=d, h=h, L=L, threads=threads))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    gib, t = out.stdout.split()
    return float(gib), float(t)


# ---------------------------------------------------------------- small CNN


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 12 * 12, 1))


def loop_ntk(model, x):
    params = list(model.parameters())
    J = torch.stack([gradient(model(xi[None]).sum(), params) for xi in x])
    return J @ J.t()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--d", type=int, default=30)
    p.add_argument("--h", type=int, default=1024)
    p.add_argument("--L", type=int, default=3)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--rss-n", type=int, default=8192)
    p.add_argument("--cnn-n", type=int, default=256)
    p.add_argument("--skip-loop", action="store_true", help="skip the ~1 minute seed loop")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "ntk.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, d, h, L = args.n, args.d, args.h, args.L
    res = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads": args.threads, "n": n, "d": d, "h": h, "L": L, "dtype": "float32"}

    model = FC(d, h, L, activation="relu", normalize=False, last_layer="ntk", seed=0, dtype=torch.float32)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    seqm = as_sequential(model)

    ma, mb = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    fns = {"matmul": lambda: torch.mm(ma, mb), "fast_fc": lambda: empirical_ntk(model, x),
           "fast_seq": lambda: empirical_ntk(seqm, x, path="structured")}
    if _uses_onednn(ma):
        fns["matmul_onednn"] = lambda: _mm_nt(ma, mb)
    try:
        import nngeometry  # noqa: F401

        have_nngeometry = True
    except ImportError:
        have_nngeometry = False
        print("nngeometry not importable: run benchmarks/setup_bench_env.sh and use its python", file=sys.stderr)
    if have_nngeometry:
        for batch in (n, 256):
            fns[f"nngeometry_b{batch}"] = lambda batch=batch: nngeometry_gram(seqm, x, batch)
        fns["gemm_fast"] = gemm_skeleton(n, d, h, L, passes=1, to_inputs=False, symmetric=True, mm_nt=_mm_nt)
        fns["gemm_nngeometry"] = gemm_skeleton(n, d, h, L, passes=2, to_inputs=True, symmetric=False)
    outs, best = interleaved(fns, args.repeats)
    K_fast, K_seq = outs["fast_fc"], outs["fast_seq"]
    res["fast_fc_s"], res["fast_seq_s"] = best["fast_fc"], best["fast_seq"]
    rate = {k: 2 * MATMUL_SIZE**3 / best[k] / 1e9 if k in best else None for k in ("matmul", "matmul_onednn")}
    res["matmul_torch_gflops"], res["matmul_onednn_gflops"] = rate["matmul"], rate["matmul_onednn"]
    res["matmul_gflops"] = max(r for r in rate.values() if r is not None)
    # the FLOPs the fast path executes (forward, backward signals, Gram tiles of the triangle)
    res["structured_gflop"] = counted_gflop(lambda: empirical_ntk(model, x))
    res["fast_gflops"] = res["structured_gflop"] / res["fast_fc_s"]
    res["fast_fraction_of_matmul"] = res["fast_gflops"] / res["matmul_gflops"]
    res["nngeometry_s"] = None
    if have_nngeometry:
        for batch in (n, 256):
            res[f"nngeometry_b{batch}_s"] = best[f"nngeometry_b{batch}"]
            G = outs[f"nngeometry_b{batch}"]
            res[f"nngeometry_b{batch}_relerr"] = float((G - K_seq).norm() / K_seq.norm())
        res["nngeometry_s"] = min(res[f"nngeometry_b{b}_s"] for b in (n, 256))
        res["speedup_vs_nngeometry"] = res["nngeometry_s"] / res["fast_seq_s"]
        res["speedup_vs_nngeometry_b256"] = res["nngeometry_b256_s"] / res["fast_seq_s"]
        res["nngeometry_counted_gflop"] = counted_gflop(lambda: nngeometry_gram(seqm, x, n))
        res["flop_ratio"] = res["nngeometry_counted_gflop"] / res["structured_gflop"]
        # the same matrix products alone: the speed-up the FLOP count allows at this machine's GEMM speed
        for side, real in (("fast", res["structured_gflop"]), ("nngeometry", res["nngeometry_counted_gflop"])):
            skeleton = counted_gflop(fns[f"gemm_{side}"])
            if abs(skeleton / real - 1) > 0.01:
                raise SystemExit(f"gemm_skeleton of {side} runs {skeleton:.2f} GFLOP, the real code "
                                 f"{real:.2f}: the skeleton no longer mirrors it")
        res["gemm_fast_s"], res["gemm_nngeometry_s"] = best["gemm_fast"], best["gemm_nngeometry"]
        res["gemm_ceiling"] = res["gemm_nngeometry_s"] / res["gemm_fast_s"]
        res["fast_gemm_share"] = res["gemm_fast_s"] / res["fast_seq_s"]
        res["nngeometry_gemm_share"] = res["gemm_nngeometry_s"] / res[f"nngeometry_b{n}_s"]

    if not args.skip_loop:
        (K_loop, _, _), res["seed_loop_s"] = timed(lambda: compute_kernels(model, x, x[:0]))
        res["loop_relerr"] = float((K_loop - K_fast).norm() / K_loop.norm())
        res["speedup_vs_loop"] = res["seed_loop_s"] / res["fast_fc_s"]
        del K_loop

    cnn = small_cnn()
    xc = torch.randn(args.cnn_n, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    Kg, res["cnn_generic_s"] = timed(lambda: empirical_ntk(cnn, xc, path="generic"), args.repeats)
    Kl, res["cnn_loop_s"] = timed(lambda: loop_ntk(cnn, xc), 1)
    res["cnn_relerr"] = float((Kg - Kl).norm() / Kl.norm())
    res["cnn_speedup"] = res["cnn_loop_s"] / res["cnn_generic_s"]

    res["rss_base_gib"], _ = peak_rss(0, d, h, L, args.threads)
    res["rss_gram_gib"], res["rss_gram_s"] = peak_rss(args.rss_n, d, h, L, args.threads)
    res["rss_n"] = args.rss_n

    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    rows = [
        ("float32 matmul rate, 4096^2 (torch.mm / oneDNN)",
         f"{res['matmul_torch_gflops']:.1f} / {f(res['matmul_onednn_gflops'], '.1f')} GFLOP/s",
         "the machine's rate: the faster of the two"),
        ("memgen fast path, FC", f(res["fast_fc_s"], ".3f") + " s",
         f"{res['fast_gflops']:.1f} GFLOP/s on {res['structured_gflop']:.1f} GFLOP = "
         f"{100 * res['fast_fraction_of_matmul']:.0f}% of matmul (need >= 50%)"),
        ("memgen fast path, nn.Sequential", f(res["fast_seq_s"], ".3f") + " s", ""),
        ("seed-000 compute_kernels loop", f(res.get("seed_loop_s"), ".1f") + " s",
         f"fast path {f(res.get('speedup_vs_loop'), '.0f')}x faster (need >= 200x), "
         f"rel. diff {f(res.get('loop_relerr'), '.1e')}"),
        (f"nngeometry GramMatrix, batch {n} / 256",
         f"{f(res.get(f'nngeometry_b{n}_s'), '.3f')} s / {f(res.get('nngeometry_b256_s'), '.3f')} s",
         f"fast path {f(res.get('speedup_vs_nngeometry'), '.2f')}x faster than the best batch (need >= 2x), "
         f"{f(res.get('speedup_vs_nngeometry_b256'), '.2f')}x than batch 256; rel. diff "
         f"{f(res.get(f'nngeometry_b{n}_relerr'), '.1e')}"),
        ("FLOPs executed (fast path / nngeometry)",
         f"{res['structured_gflop']:.1f} / {f(res.get('nngeometry_counted_gflop'), '.1f')} GFLOP",
         f"nngeometry (batch {n}) executes {f(res.get('flop_ratio'), '.2f')}x the FLOPs"),
        ("matrix products alone (fast path / nngeometry)",
         f"{f(res.get('gemm_fast_s'), '.3f')} s / {f(res.get('gemm_nngeometry_s'), '.3f')} s",
         f"ceiling on the speed-up: {f(res.get('gemm_ceiling'), '.2f')}x; memgen and nngeometry spend "
         f"{f(res.get('fast_gemm_share'), '.0%')} and {f(res.get('nngeometry_gemm_share'), '.0%')} "
         f"of their time (batch {n}) in them"),
        (f"generic path, small CNN (n={args.cnn_n})", f(res["cnn_generic_s"], ".3f") + " s",
         f"per-example loop {res['cnn_loop_s']:.3f} s: {res['cnn_speedup']:.1f}x (need >= 1x), "
         f"rel. diff {res['cnn_relerr']:.1e}"),
        (f"peak RSS, {args.rss_n}^2 float64 Gram", f"{res['rss_gram_gib']:.2f} GiB",
         f"built in {res['rss_gram_s']:.1f} s; python+torch+memgen alone {res['rss_base_gib']:.2f} GiB "
         "(need <= 4 GB)"),
    ]
    print(f"FC d={d} h={h} L={L}, n={n}, float32, {args.threads} threads, torch {torch.__version__}")
    print("| measurement | value | note |\n| --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
