"""Training the centred model F = alpha * (f(w, x) - f(w0, x)) to a margin.

The objective is ``norm * mean_i l(F(x_i) y_i)`` with ``norm = 1/alpha^2``
(``normalization="article"``, Geiger et al.'s paper, the default) or ``1/alpha``
(``"code"``, the feature_lazy code). Gradient flow (optionally with continuous
momentum tau) runs with one of two integrators, ``FlowConfig.method``:

- ``"euler"`` (the seed's scheme, the reference for comparisons): :func:`memgen.dynamics.flow`
  with the step control of feature_lazy: accept when dgrad < max_dgrad and max |dF| <
  max_dout, grow dt by 1.1 when both are under half their limits, else shrink by 10
  and retry; checkpoints at the accepted steps 0, 1, 2, ... of
  :func:`memgen.dynamics.loglinspace` (``checkpoint_rate``, ``checkpoint_step``); the
  margin times are the ends of the first steps that reach them.
- ``"rkc"``: second-order Runge-Kutta-Chebyshev with error control ``rtol``
  (:mod:`memgen.chebyshev`, run by :mod:`memgen.rkc_run`): checkpoints at the times
  t_1 10^(k / checkpoints_per_decade), k = 0, 1, ... (t_1 the end of the first step),
  from the dense output; t_fit and t_memorize located inside the step by root finding
  on it; max_time stops exactly there.

Training stops when every training margin F(x_i) y_i >= 1 ("converged"), or at a time
/ step / wall limit, or when the dynamics diverge (non-finite values).

Two problems share the loop:

- :class:`NetworkProblem`: the network itself, state (w, v) in parameter space;
- :class:`KernelProblem`: the frozen-kernel (linearized) model with the NTK K0 at
  initialisation, state (c, v) with F_train = K0 c and F_test = K0_test,train c, which
  is exactly the linearized network's dynamics (w - w0 = J^T c / alpha).

A problem's ``symmetric_jacobian`` says whether the Jacobian of its gradient in its own
state is symmetric (the Hessian, for the network). ``rkc``'s deflation
(:mod:`memgen.chebyshev`) removes the outlier with the orthogonal projector u u^T, the
spectral projector only of a symmetric Jacobian, so it runs only where this is True.
The frozen kernel's Jacobian in c is -coef diag(l'') K0, not symmetric: deflated there,
the split leaves a non-normal explicit part whose radius the power iteration misreads,
steps are rejected and the step size collapses (paper size, h = 25, alpha 10: 71198
steps to the margin; about 20x the wall time of the plain run).

Runs can resume: :func:`run` saves its full state to ``resume_path`` every
``resume_every_s`` seconds (atomically) and, given an existing resume file from the
same parameters, continues from it to the same arrays an uninterrupted run gives.

Progress (:mod:`memgen.progress`, on stderr): a line at the start (points, limits), one
every ``progress_every_s`` seconds (default ``$MEMGEN_PROGRESS_EVERY`` or 10) and one at
the end. The number of steps to convergence is unknown in advance, so the ETA printed
is an upper bound, ``eta <= X (limit)``: the time until the first hard limit stops the
run -- max_wall exactly, max_steps at this process's mean step rate, max_time at the
rate t advanced since the previous line (linear extrapolation; dt usually grows late in
a run, so t speeds up rather than slows down). A run that reaches the margin stops
earlier; how close it is shows in ``fit=k/n`` (training points at margin >= 1) and
``margin_min``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from memgen import MemgenError
from memgen.dynamics import FlowDiverged, flow, loglinspace, momentum_step, relative_change
from memgen.losses import Loss
from memgen.runstate import (Recorder, RunResult, Terminated, deferred_sigterm, install_sigterm_handler,
                             load_resume, progress_line, resume_or_pause, save_resume, start_progress)
from memgen.runstate import eta_to_limit as _eta_to_limit  # noqa: F401 (tests)

__all__ = ["FlowConfig", "KernelProblem", "NetworkProblem", "Prep", "RunResult", "Terminated",
           "install_sigterm_handler", "run", "METHODS", "NORMALIZATIONS"]

NORMALIZATIONS = ("article", "code")
METHODS = ("euler", "rkc")
GRADIENT_DTYPES = ("same", "float32")


@dataclass(frozen=True)
class FlowConfig:
    alpha: float
    loss: Loss = Loss()
    normalization: str = "article"
    max_dgrad: float = 1e-4
    max_dout: float = 0.1
    tau: float = 0.0
    max_time: float = math.inf
    max_steps: int = 10**9
    max_wall: float = math.inf
    checkpoint_rate: float = 0.01
    checkpoint_step: float = 100.0
    method: str = "euler"
    gradient_dtype: str = "same"  # "float32": forward / backward passes in float32, the state in its own dtype
    rtol: float = 1e-3  # rkc: local error per unit step, relative to the step's own change of w
    checkpoints_per_decade: float = 20.0  # rkc: checkpoint times log-spaced in t
    deflate: bool = True  # rkc, tau = 0, gradient_dtype same: implicit outlier eigenvalue (memgen.chebyshev)

    def __post_init__(self):
        if not self.alpha > 0:
            raise MemgenError(f"alpha: must be > 0, got {self.alpha}")
        if self.normalization not in NORMALIZATIONS:
            raise MemgenError(f"normalization: unknown '{self.normalization}'; allowed: {', '.join(NORMALIZATIONS)}")
        if self.method not in METHODS:
            raise MemgenError(f"flow.method: unknown '{self.method}'; allowed: {', '.join(METHODS)}")
        if self.gradient_dtype not in GRADIENT_DTYPES:
            raise MemgenError(f"flow.gradient_dtype: unknown '{self.gradient_dtype}'; "
                              f"allowed: {', '.join(GRADIENT_DTYPES)}")
        if not 0 < self.rtol < 1:
            raise MemgenError(f"flow.rtol: must be in (0, 1), got {self.rtol!r}")
        if not self.checkpoints_per_decade > 0:
            raise MemgenError(f"flow.checkpoints_per_decade: must be > 0, got {self.checkpoints_per_decade!r}")
        if not self.tau >= 0:
            raise MemgenError(f"flow.tau: must be >= 0, got {self.tau!r}")
        if not isinstance(self.deflate, bool):
            raise MemgenError(f"flow.deflate: must be true or false, got {self.deflate!r}")

    @property
    def norm(self) -> float:
        """Loss prefactor: 1/alpha^2 (article) or 1/alpha (code)."""
        return self.alpha**-2 if self.normalization == "article" else 1.0 / self.alpha


@dataclass
class Prep:
    """What the step control needs at one state."""

    F: torch.Tensor  # centred outputs on the training set
    grad: torch.Tensor  # the gradient that drives the state
    direction: torch.Tensor  # vector compared between steps (dgrad)
    z: torch.Tensor  # margins F * y
    finite: bool


class NetworkProblem:
    """Gradient flow of the network; ``model`` is a :class:`memgen.models.FlatFC`.

    ``cfg.gradient_dtype = "float32"`` evaluates the network (outputs, margins, gradient)
    in float32 from the state rounded to it, results cast back to the state's dtype:
    about 2x faster on CPU; relative errors of F about alpha * 1e-8 / |F| (the centring
    f - f0 cancels digits). With ``method: rkc`` meant for alpha <~ 1: the rounding of the
    state to float32 is amplified ~h rho-fold in the error estimate of a stabilized step,
    and at large alpha the step size collapses (README, "float32").
    """

    symmetric_jacobian = True  # the Hessian (module doc)

    def __init__(self, model, w0, x_train, y_train, x_test, cfg: FlowConfig):
        self.model, self.cfg = model, cfg
        self.w0 = w0
        self.eval_dtype = torch.float32 if cfg.gradient_dtype == "float32" else w0.dtype
        self._cast = self.eval_dtype != w0.dtype
        self.x, self.y, self.x_test = (t.to(self.eval_dtype) for t in (x_train, y_train, x_test))
        with torch.no_grad():
            self.f0 = model.forward(w0.to(self.eval_dtype), self.x, keep=False)[0]
            self.f0_test = model.forward(w0.to(self.eval_dtype), self.x_test, keep=False)[0]
        self.coef = cfg.norm * cfg.alpha / len(y_train)
        # scratch buffers for the forward / backward pass of prepare (FlatFC internals)
        self._work = {} if hasattr(model, "_forward") and hasattr(model, "_vjp") else None
        self._y_coef = self.y * self.coef

    def initial_state(self):
        return (self.w0.clone(), torch.zeros_like(self.w0))

    def prepare(self, state) -> Prep:
        w = state[0].to(self.eval_dtype)
        if self._work is None:
            out, cache = self.model.forward(w, self.x)
        else:  # the cache lives in self._work, consumed by the vjp below
            out, cache = self.model._forward(w, self.x, True, self._work)
        F = (out - self.f0).mul_(self.cfg.alpha)
        z = F * self.y
        g = self.cfg.loss.derivative(z).mul_(self._y_coef)
        grad = self.model.vjp(cache, g) if self._work is None else self.model._vjp(cache, g, None, self._work)
        finite = bool(torch.isfinite(F).all()) and bool(torch.isfinite(grad).all())
        if self._cast:
            F, grad, z = (t.to(self.w0.dtype) for t in (F, grad, z))
        return Prep(F, grad, grad, z, finite)

    def make_step(self, state, prep: Prep, dt: float, tau: float):
        return momentum_step(state[0], state[1], prep.grad, dt, tau)

    def margins(self, w: torch.Tensor) -> torch.Tensor:
        """z = F y on the training set at w (the forward of :meth:`prepare` alone, same numbers)."""
        x = w.to(self.eval_dtype)
        if self._work is None:
            out = self.model.forward(x, self.x, keep=False)[0]
        else:
            out = self.model._forward(x, self.x, False, self._work)[0]
        return ((out - self.f0).mul_(self.cfg.alpha) * self.y).to(w.dtype)

    def test_outputs(self, state) -> torch.Tensor:
        out = self.model.forward(state[0].to(self.eval_dtype), self.x_test, keep=False)[0]
        return (self.cfg.alpha * (out - self.f0_test)).to(state[0].dtype)

    def dnorm(self, state, prep: Prep) -> float:
        return float((state[0] - self.w0).norm())

    def grad_norm(self, state, prep: Prep) -> float:
        return float(prep.grad.norm())

    def final(self, state) -> dict[str, torch.Tensor]:
        return {"w_final": state[0]}


class KernelProblem:
    """Frozen-kernel flow: F_train = K c, F_test = K_test c, K the NTK of f at w0."""

    symmetric_jacobian = False  # -coef diag(l'') K in c: no rkc deflation (module doc)

    def __init__(self, k_train, k_test_train, y_train, cfg: FlowConfig):
        self.K, self.K_test, self.y, self.cfg = k_train, k_test_train, y_train, cfg
        self.eval_dtype = k_train.dtype  # (gradient_dtype does not apply: products with K are cheap)
        self.coef = cfg.norm * cfg.alpha**2 / len(y_train)

    def initial_state(self):
        z = self.K.new_zeros(len(self.y))
        return (z, z.clone())

    def prepare(self, state) -> Prep:
        F = self.K @ state[0]
        z = F * self.y
        g = self.cfg.loss.derivative(z).mul_(self.y).mul_(self.coef)
        direction = self.K @ g
        finite = bool(torch.isfinite(F).all() and torch.isfinite(g).all())
        return Prep(F, g, direction, z, finite)

    def make_step(self, state, prep: Prep, dt: float, tau: float):
        return momentum_step(state[0], state[1], prep.grad, dt, tau)

    def margins(self, c: torch.Tensor) -> torch.Tensor:
        return (self.K @ c) * self.y

    def test_outputs(self, state) -> torch.Tensor:
        return self.K_test @ state[0]

    def dnorm(self, state, prep: Prep) -> float:  # ||w - w0|| = sqrt(c K c) / alpha
        return math.sqrt(max(float(state[0] @ prep.F), 0.0)) / self.cfg.alpha

    def grad_norm(self, state, prep: Prep) -> float:  # ||J^T g|| / alpha
        return math.sqrt(max(float(prep.grad @ prep.direction), 0.0)) / self.cfg.alpha

    def final(self, state) -> dict[str, torch.Tensor]:
        return {"c_final": state[0]}


def run(problem, cfg: FlowConfig, y_test: torch.Tensor, *, resume_path: Path | None = None,
        resume_every_s: float = 300.0, resume_params: dict | None = None,
        progress_every_s: float | None = None, progress: str | None = None) -> RunResult:
    """Integrate ``problem`` with ``cfg.method`` until the margin is reached or a limit hits;
    progress lines labelled ``progress`` (None: silent) every ``progress_every_s`` seconds
    (module doc)."""
    if cfg.method == "rkc":
        from memgen.rkc_run import run_rkc

        return run_rkc(problem, cfg, y_test, resume_path=resume_path, resume_every_s=resume_every_s,
                       resume_params=resume_params, progress_every_s=progress_every_s, progress=progress)
    rec = Recorder(problem, cfg, y_test)
    status = rec.status
    schedule = loglinspace(cfg.checkpoint_rate, cfg.checkpoint_step)
    next_ckpt = next(schedule)
    state, t, dt, step = problem.initial_state(), 0.0, 1.0, 0
    resumed = load_resume(resume_path, resume_params, state) if resume_path else None
    if resumed is not None:
        state, t, dt, step = resumed["state"], resumed["t"], resumed["dt"], resumed["step"]
        rec.restore(resumed)
        while next_ckpt < resumed["next_checkpoint"]:
            next_ckpt = next(schedule)
    prep = problem.prepare(state)
    if resumed is None:
        rec.record(0, 0.0, 0.0, state, prep)
        next_ckpt = next(schedule)
    if not prep.finite:
        status.update(diverged=True, stop_reason="diverged")
    limits = (cfg.max_dgrad, cfg.max_dout)

    def compare(old: Prep, new: Prep):
        if not new.finite:
            return False, False
        dgrad = relative_change(old.direction, new.direction)
        dout = float(torch.dist(new.F, old.F, math.inf))  # max |F_new - F_old|
        return (dgrad < limits[0] and dout < limits[1]), (dgrad < limits[0] / 2 and dout < limits[1] / 2)

    tau = cfg.tau
    bar, mark = start_progress(progress, progress_every_s, cfg, step, t, len(prep.z), resumed is not None)
    wall0, last_save = mark[0], mark[0]
    if not status["diverged"] and not _margin_reached(prep):
        stepper = flow(state, problem.prepare, lambda s, p, h: problem.make_step(s, p, h, tau), compare,
                       t=t, dt=dt, step=step, data=prep)
        with deferred_sigterm(resume_path is not None):
            try:
                for fs in stepper:
                    state, prep, t, step = fs.state, fs.data, fs.t, fs.step
                    if status["step_memorize"] < 0 and bool((prep.z > 0).all()):
                        status.update(t_memorize=t, step_memorize=step)
                    done = _margin_reached(prep)
                    if done:
                        status.update(converged=True, stop_reason="converged", t_fit=t, step_fit=step)
                    elif t >= cfg.max_time:
                        status["stop_reason"] = "max_time"
                    elif step >= cfg.max_steps:
                        status["stop_reason"] = "max_steps"
                    elif time.perf_counter() - wall0 >= cfg.max_wall:
                        status["stop_reason"] = "max_wall"
                    if step == next_ckpt or status["stop_reason"]:
                        rec.record(step, t, fs.dt, state, prep)
                        while next_ckpt <= step:
                            next_ckpt = next(schedule)
                    if status["stop_reason"]:
                        break
                    now = time.perf_counter()
                    mark = progress_line(bar, mark, cfg, step, t, fs.dt, prep, wall0, now)
                    last_save = resume_or_pause(resume_path, resume_every_s, now, last_save, progress, step,
                                                lambda: save_resume(resume_path, resume_params, state, t,
                                                                    fs.next_dt, step, rec, next_ckpt) or step)
            except FlowDiverged:
                rec.diverged(step, t, state, prep)
    else:
        rec.no_steps()
    return rec.finish(bar, step, t, state)


def _margin_reached(prep: Prep) -> bool:
    return bool((prep.z >= 1).all())
