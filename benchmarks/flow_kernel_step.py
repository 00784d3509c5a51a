"""Steps on the slow time scale only: the kernel-linearized midpoint method, a prototype
of the one lever on the 10x the planning note left unmeasured, "exploiting near-linearity"
(issue 16). Counts and errors; nothing in it is timed but the one cost ratio below.

    python benchmarks/flow_kernel_step.py SIZE ALPHA TOL [TOL ...]

SIZE and ALPHA as in flow.py. Why it could win: the flow's fast time scale (1 / rho, the
soft hinge's curvature seen through the NTK) lives in the n training outputs, while the
network's parameters only need the slow one, on which the NTK moves. Over a step from
(t_n, w_n), the outputs follow dz/dt = -alpha y * Theta_m (l'(z) y coef) with the NTK
Theta_m frozen at the step's midpoint w_m, and w(t) = w_n - J_m^T (y * u(t)), u the
integral of l'(z) coef: the fast dynamics are an n-dimensional ODE (solved here by scipy's
Radau at rtol 1e-10, so that only the outer method's error is measured), and each step
costs one Gram (at w_m), two vector-Jacobian products and two forward passes of the network.
The midpoint comes from the same model over h / 2 with the previous step's (stale) kernel,
so the method is second order in the kernel's change, with an error estimate for free:
the largest |z(w_{n+1}) - z_model(t_{n+1})| over the training margins, the true forward
against the model's outputs, accepted below TOL (step factor 0.9 (TOL / est)^(1/3) in
[0.2, 5]). Steps land on the checkpoint times (flow.py's rkc rtol 1e-2 grid, 20 per decade;
the model's interior w(t) is only first order) and on the margin (a step in which the model
reaches it is retried to end there).

Printed per TOL: attempts (= Grams), accepted steps, checkpoints, trajectory / t_fit
errors against flow.py's DOP853 reference (its cache in benchmarks/results/flow_reference/,
extended as needed), and a lower bound of the cost in gradient evaluations (memgen's
``prepare``, the unit of flow.py's "evals"): attempts x (Gram / prepare + 1.5) + records,
with the n-dimensional solves counted as free and a fused Gram that reuses the midpoint's
forward. Gram / prepare is timed in this process (best of 3). Compare with flow.py's rkc
runs and flow_budget.py's "10x needs" at the seed loop's errors (benchmarks/README.md).
"""

from __future__ import annotations

import math
import sys
import timeit
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flow as B  # noqa: E402

from memgen.kernels.empirical import empirical_ntk  # noqa: E402
from memgen.models import FC  # noqa: E402
from memgen.training import FlowConfig  # noqa: E402

INNER_RTOL = 1e-10


class KernelSteps:
    """The method of the module doc on one flow.py problem (tau = 0)."""

    def __init__(self, net, data, cfg):
        self.problem = p = B.network_problem(net, data, cfg)
        if cfg.loss.name != "soft_hinge":
            raise ValueError(f"flow_kernel_step models the soft hinge only, got loss {cfg.loss.name!r}")
        self.spec, self.model, self.alpha, self.coef = net.spec, p.model, cfg.alpha, p.coef
        self.y, self.loss = p.y.numpy(), cfg.loss

    def gram(self, w):
        """The NTK of f on the training set at w, (n, n)."""
        return empirical_ntk(FC.from_flat(self.spec, w), self.problem.x).numpy()

    def forward(self, w):
        out, cache = self.model.forward(w, self.problem.x)
        return (self.alpha * (out - self.problem.f0)).numpy() * self.y, cache

    def pullback(self, w, cache, u):
        return w - self.model.vjp(cache, torch.from_numpy(self.y * u))

    def inner(self, z0, K, T):
        """u(t) on [0, T] from the margins z0 with kernel K; stops where every z reaches 1."""
        A = self.alpha * K * np.outer(self.y, self.y)

        def slopes(u):  # du/dt = l'(z) coef and its derivative in z, l''(z) coef = beta s (1 - s) coef, s = -l'(z)
            s = -self.loss.derivative(torch.from_numpy(z0 - A @ u)).numpy()
            return -s * self.coef, self.loss.beta * s * (1 - s) * self.coef

        def margin(t, u):
            return float((z0 - A @ u).min()) - 1

        margin.terminal, margin.direction = True, 1
        sol = solve_ivp(lambda t, u: slopes(u)[0], (0, T), np.zeros(len(z0)), method="Radau", dense_output=True,
                        jac=lambda t, u: -slopes(u)[1][:, None] * A, rtol=INNER_RTOL, atol=1e-14, events=margin)
        if not sol.success:
            raise RuntimeError(f"inner Radau solve failed: {sol.message}")
        return sol, A

    def run(self, times: np.ndarray, tol: float) -> dict:
        w = self.problem.w0.clone()
        z, cache = self.forward(w)
        K = self.gram(w)
        rho = self.alpha * self.coef * self.loss.beta / 4 * float(np.linalg.eigvalsh(K)[-1])
        t, h, i = 0.0, 0.1 / rho, 0
        rec = {"t": [], "F_train": [], "F_test": []}
        attempts = steps = 0
        while True:
            if i < len(times):
                h = min(h, times[i] - t)
            half, _ = self.inner(z, K, h / 2)
            w_m = self.pullback(w, cache, half.y[:, -1])
            _, cache_m = self.forward(w_m)
            K_m = self.gram(w_m)
            attempts += 1
            sol, A = self.inner(z, K_m, h)
            T, u = sol.t[-1], sol.y[:, -1]
            w_new = self.pullback(w, cache_m, u)
            z_new, cache_new = self.forward(w_new)
            est = float(np.abs(z_new - (z - A @ u)).max())
            if est > tol:
                h *= max(0.2, 0.9 * (tol / est) ** (1 / 3))
                continue
            if sol.status == 1 and T < 0.99 * h:  # reached the margin inside: end the step there
                h = T
                continue
            steps += 1
            while i < len(times) and times[i] <= t + T * (1 + 1e-12):
                F_train, F_test = B.outputs_at(self.problem, self.pullback(w, cache_m, sol.sol(times[i] - t)))
                rec["F_train"].append(F_train)
                rec["F_test"].append(F_test)
                rec["t"].append(times[i])
                i += 1
            t, w, z, cache, K = t + T, w_new, z_new, cache_new, K_m
            if sol.status == 1:
                break
            h *= min(5.0, 0.9 * (tol / max(est, 1e-300)) ** (1 / 3))
        return dict(t=np.array(rec["t"]), F_train=np.stack(rec["F_train"]), F_test=np.stack(rec["F_test"]),
                    t_fit=t, attempts=attempts, steps=steps, z_min=float(z.min()))


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    size, alpha, tols = args[0], float(args[1]), [float(a) for a in args[2:]]
    data, net, _, _, cfg = B.problem_for(size, alpha, 0.0)
    grid = B.run_memgen(net, data, FlowConfig(**{**cfg.__dict__, "method": "rkc", "rtol": 1e-2}))
    times = grid["t"][(grid["t"] > 0) & (grid["t"] < grid["t_fit"] * (1 - 1e-3))]
    ks = KernelSteps(net, data, cfg)
    w0 = ks.problem.w0
    prepare = min(timeit.repeat(lambda: ks.problem.prepare((w0, None)), number=20, repeat=3)) / 20
    gram = min(timeit.repeat(lambda: ks.gram(w0), number=5, repeat=3)) / 5
    print(f"{size} alpha={alpha:g}: Gram / prepare {gram / prepare:.2f} ({gram * 1e3:.2f} / {prepare * 1e3:.2f} ms)",
          flush=True)
    runs = [ks.run(times, tol) for tol in tols]
    ref = B.reference(net, data, cfg, np.concatenate([r["t"] for r in runs]), B.reference_path(size, alpha, cfg.tau))
    offset = 0
    for tol, r in zip(tols, runs):
        m = len(r["t"])
        e = B.errors(r, ref, slice(offset, offset + m))
        offset += m
        bound = r["attempts"] * (gram / prepare + 1.5) + m
        print(f"{size} alpha={alpha:g} tol {tol:g}: attempts {r['attempts']} steps {r['steps']} checkpoints {m} "
              f"traj {e['traj_err']:.2e} t_fit {e['t_fit_err']:.2e} (margin {r['z_min']:.6f}) "
              f"cost >= {math.ceil(bound)} evaluations", flush=True)


if __name__ == "__main__":
    main()
