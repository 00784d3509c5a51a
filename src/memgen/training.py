"""Training the centred model F = alpha * (f(w, x) - f(w0, x)) to a margin.

The objective is ``norm * mean_i l(F(x_i) y_i)`` with ``norm = 1/alpha^2``
(``normalization="article"``, Geiger et al.'s paper, the default) or ``1/alpha``
(``"code"``, the feature_lazy code). Gradient flow (optionally with continuous
momentum tau) runs through :func:`memgen.dynamics.flow` with the step control of
feature_lazy: accept when dgrad < max_dgrad and max |dF| < max_dout, grow dt by 1.1
when both are under half their limits, else shrink by 10 and retry. Training stops
when every training margin F(x_i) y_i >= 1 ("converged"), or at a time / step / wall
limit, or when the dynamics diverge (non-finite values).

Two problems share the loop:

- :class:`NetworkProblem`: the network itself, state (w, v) in parameter space;
- :class:`KernelProblem`: the frozen-kernel (linearized) model with the NTK K0 at
  initialisation, state (c, v) with F_train = K0 c and F_test = K0_test,train c, which
  is exactly the linearized network's dynamics (w - w0 = J^T c / alpha).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memgen import MemgenError, h5io
from memgen.dynamics import FlowDiverged, flow, loglinspace, momentum_step, relative_change
from memgen.faults import pause_point
from memgen.resume import _TERM, Terminated, install_sigterm_handler  # noqa: F401 (re-exported)
from memgen.losses import Loss
from memgen.progress import Progress, format_duration

NORMALIZATIONS = ("article", "code")


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

    def __post_init__(self):
        if not self.alpha > 0:
            raise MemgenError(f"alpha: must be > 0, got {self.alpha}")
        if self.normalization not in NORMALIZATIONS:
            raise MemgenError(f"normalization: unknown '{self.normalization}'; allowed: {', '.join(NORMALIZATIONS)}")

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
    """Gradient flow of the network; ``model`` is a :class:`memgen.models.FlatFC`."""

    def __init__(self, model, w0, x_train, y_train, x_test, cfg: FlowConfig):
        self.model, self.cfg = model, cfg
        self.w0 = w0
        self.x, self.y, self.x_test = x_train, y_train, x_test
        with torch.no_grad():
            self.f0 = model.forward(w0, x_train, keep=False)[0]
            self.f0_test = model.forward(w0, x_test, keep=False)[0]
        self.coef = cfg.norm * cfg.alpha / len(y_train)
        # scratch buffers for the forward / backward pass of prepare (FlatFC internals)
        self._work = {} if hasattr(model, "_forward") and hasattr(model, "_vjp") else None
        self._y_coef = y_train * self.coef

    def initial_state(self):
        return (self.w0.clone(), torch.zeros_like(self.w0))

    def prepare(self, state) -> Prep:
        w = state[0]
        if self._work is None:
            out, cache = self.model.forward(w, self.x)
        else:  # the cache lives in self._work, consumed by the vjp below
            out, cache = self.model._forward(w, self.x, True, self._work)
        F = (out - self.f0).mul_(self.cfg.alpha)
        z = F * self.y
        g = self.cfg.loss.derivative(z).mul_(self._y_coef)
        grad = self.model.vjp(cache, g) if self._work is None else self.model._vjp(cache, g, None, self._work)
        finite = bool(torch.isfinite(F).all()) and bool(torch.isfinite(grad).all())
        return Prep(F, grad, grad, z, finite)

    def make_step(self, state, prep: Prep, dt: float, tau: float):
        return momentum_step(state[0], state[1], prep.grad, dt, tau)

    def test_outputs(self, state) -> torch.Tensor:
        return self.cfg.alpha * (self.model.forward(state[0], self.x_test, keep=False)[0] - self.f0_test)

    def dnorm(self, state, prep: Prep) -> float:
        return float((state[0] - self.w0).norm())

    def grad_norm(self, state, prep: Prep) -> float:
        return float(prep.grad.norm())

    def final(self, state) -> dict[str, torch.Tensor]:
        return {"w_final": state[0]}


class KernelProblem:
    """Frozen-kernel flow: F_train = K c, F_test = K_test c, K the NTK of f at w0."""

    def __init__(self, k_train, k_test_train, y_train, cfg: FlowConfig):
        self.K, self.K_test, self.y, self.cfg = k_train, k_test_train, y_train, cfg
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

    def test_outputs(self, state) -> torch.Tensor:
        return self.K_test @ state[0]

    def dnorm(self, state, prep: Prep) -> float:  # ||w - w0|| = sqrt(c K c) / alpha
        return math.sqrt(max(float(state[0] @ prep.F), 0.0)) / self.cfg.alpha

    def grad_norm(self, state, prep: Prep) -> float:  # ||J^T g|| / alpha
        return math.sqrt(max(float(prep.grad @ prep.direction), 0.0)) / self.cfg.alpha

    def final(self, state) -> dict[str, torch.Tensor]:
        return {"c_final": state[0]}


RECORD_KEYS = ("step", "t", "dt", "loss", "train_err", "test_err", "test_loss", "margin_min",
               "dnorm", "grad_norm")


@dataclass
class RunResult:
    records: dict[str, np.ndarray]
    F_train: np.ndarray  # (n_checkpoints, n_train)
    F_test: np.ndarray  # (n_checkpoints, n_test)
    final: dict[str, np.ndarray]
    status: dict[str, Any] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"trajectory/{k}": v for k, v in self.records.items()}
        out["trajectory/F_train"] = self.F_train
        out["trajectory/F_test"] = self.F_test
        out.update(self.final)
        return out


def run(problem, cfg: FlowConfig, y_test: torch.Tensor, *, resume_path: Path | None = None,
        resume_every_s: float = 300.0, resume_params: dict | None = None,
        progress_every_s: float | None = None, progress: str | None = None) -> RunResult:
    """Integrate ``problem`` until the margin is reached or a limit hits; progress lines
    labelled ``progress`` (None: silent) every ``progress_every_s`` seconds (module doc)."""
    loss = cfg.loss
    history: dict[str, list] = {k: [] for k in RECORD_KEYS}
    F_train, F_test = [], []
    status = {"converged": False, "diverged": False, "stop_reason": "", "t_fit": math.nan, "step_fit": -1,
              "t_memorize": math.nan, "step_memorize": -1}

    def record(step, t, dt, state, prep):
        Ft = problem.test_outputs(state)
        zt = Ft * y_test
        history["step"].append(step)
        history["t"].append(t)
        history["dt"].append(dt)
        history["loss"].append(cfg.norm * float(loss.value(prep.z).mean()))
        history["train_err"].append(float((prep.z <= 0).double().mean()))
        history["test_err"].append(float((zt <= 0).double().mean()) if len(zt) else math.nan)
        history["test_loss"].append(cfg.norm * float(loss.value(zt).mean()) if len(zt) else math.nan)
        history["margin_min"].append(float(prep.z.min()))
        history["dnorm"].append(problem.dnorm(state, prep))
        history["grad_norm"].append(problem.grad_norm(state, prep))
        F_train.append(prep.F.detach().cpu().numpy().copy())
        F_test.append(Ft.detach().cpu().numpy().copy())

    schedule = loglinspace(cfg.checkpoint_rate, cfg.checkpoint_step)
    next_ckpt = next(schedule)
    state, t, dt, step = problem.initial_state(), 0.0, 1.0, 0
    resumed = _load_resume(resume_path, resume_params, state) if resume_path else None
    if resumed is not None:
        state, t, dt, step, saved_hist, saved_F, saved_Ft, saved_status, next_ckpt_saved = resumed
        for k in RECORD_KEYS:
            history[k] = list(saved_hist[k])
        F_train, F_test = list(saved_F), list(saved_Ft)
        status.update(saved_status)
        while next_ckpt < next_ckpt_saved:
            next_ckpt = next(schedule)
    prep = problem.prepare(state)
    if resumed is None:
        record(0, 0.0, 0.0, state, prep)
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
    n_train = len(prep.z)
    bar = Progress(progress, every=progress_every_s, unit="step", initial=step, bound=True,
                   message=f"{n_train} points to margin 1, limits max_steps={cfg.max_steps} "
                           f"max_time={cfg.max_time:g} max_wall={format_duration(cfg.max_wall)}"
                           + (f", resumed at t={t:.4g}" if resumed is not None else ""))
    wall0 = time.perf_counter()
    last_save = wall0
    mark = (wall0, t)  # wall clock and t at the previous progress line: the recent rate of t
    if not status["diverged"] and not _margin_reached(prep):
        _TERM["deferred"] = resume_path is not None
        stepper = flow(state, problem.prepare, lambda s, p, h: problem.make_step(s, p, h, tau), compare,
                       t=t, dt=dt, step=step, data=prep)
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
                    record(step, t, fs.dt, state, prep)
                    while next_ckpt <= step:
                        next_ckpt = next(schedule)
                if status["stop_reason"]:
                    break
                now = time.perf_counter()
                if bar.due():  # build the line only when it is printed
                    t_rate = (t - mark[1]) / (now - mark[0]) if now > mark[0] else math.nan
                    eta, limit = _eta_to_limit(cfg, step, t, now - wall0, bar.rate(step, now), t_rate)
                    bar.update(step, f"t={t:.4g} dt={fs.dt:.2g} margin_min={float(prep.z.min()):.3f} "
                                     f"fit={int((prep.z >= 1).sum())}/{n_train} "
                                     f"train_err={float((prep.z <= 0).double().mean()):.3f}",
                               force=True, eta=eta, eta_note=f"({limit})" if limit else "")
                    mark = (now, t)
                def save():
                    _save_resume(resume_path, resume_params, state, t, fs.next_dt, step,
                                 history, F_train, F_test, status, next_ckpt)

                if resume_path is not None and (now - last_save >= resume_every_s or _TERM["requested"]):
                    save()
                    last_save = now
                    if _TERM["requested"]:
                        raise Terminated(f"terminated by SIGTERM; saved {resume_path} at step {step}")
                # tests: pause at a step count (memgen.faults), with a resume point saved there
                pause_point(progress, step, save if resume_path is not None else None)
        except FlowDiverged:
            status.update(diverged=True, stop_reason="diverged")
            record(step, t, 0.0, state, prep)
        finally:
            _TERM["deferred"] = _TERM["requested"] = False
    else:
        status["stop_reason"] = status["stop_reason"] or "converged"
        if status["stop_reason"] == "converged":
            status.update(converged=True, t_fit=0.0, step_fit=0)
    bar.finish(step, f"stopped: {status['stop_reason']} at t={t:.4g}")
    records = {k: np.asarray(v, dtype=np.int64 if k == "step" else np.float64) for k, v in history.items()}
    final = {k: v.detach().cpu().numpy() for k, v in problem.final(state).items()}
    return RunResult(records, np.stack(F_train), np.stack(F_test), final, status)


def _eta_to_limit(cfg: FlowConfig, step: int, t: float, wall: float, step_rate: float,
                  t_rate: float) -> tuple[float | None, str]:
    """Seconds until the first hard limit stops the run, and its name (module doc): an
    upper bound on the time left, as a run that converges stops earlier."""
    left = {"max_wall": cfg.max_wall - wall}
    if step_rate > 0:
        left["max_steps"] = (cfg.max_steps - step) / step_rate
    if t_rate > 0:
        left["max_time"] = (cfg.max_time - t) / t_rate
    finite = {k: max(v, 0.0) for k, v in left.items() if math.isfinite(v)}
    if not finite:
        return None, ""
    name = min(finite, key=finite.get)
    return finite[name], name


def _margin_reached(prep: Prep) -> bool:
    return bool((prep.z >= 1).all())


def _save_resume(path, params, state, t, dt, step, history, F_train, F_test, status, next_ckpt) -> None:
    arrays = {f"state/{i}": s for i, s in enumerate(state)}
    arrays.update({f"history/{k}": np.asarray(v) for k, v in history.items()})
    arrays["history/F_train"] = np.stack(F_train)
    arrays["history/F_test"] = np.stack(F_test)
    # "flow_step", not "step": the root attribute "step" is h5io's provenance (= "resume")
    attrs = {"t": t, "dt": dt, "flow_step": step, "next_checkpoint": next_ckpt,
             **{f"status_{k}": v for k, v in status.items()}}
    h5io.write(path, arrays, step="resume", params=params or {}, attrs=attrs)


def _load_resume(path, params, like_state):
    """Saved (state, t, dt, step, history, F_train, F_test, status, next_checkpoint) or None."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = h5io.read(path, {}, step="resume", expect_params=params or {})
        keys = [f"state/{i}" for i in range(len(like_state))] + [f"history/{k}" for k in RECORD_KEYS]
        data = h5io.read(path, {k: None for k in keys + ["history/F_train", "history/F_test"]}, step="resume")
    except h5io.H5Error as exc:  # unusable leftovers are ignored, not fatal
        print(f"ignoring resume file: {exc}", flush=True)
        return None
    a = data.attrs
    state = tuple(torch.from_numpy(np.asarray(data[f"state/{i}"])).to(like_state[i])
                  for i in range(len(like_state)))
    history = {k: data[f"history/{k}"].tolist() for k in RECORD_KEYS}
    status = {k[len("status_"):]: (v.item() if hasattr(v, "item") else v) for k, v in a.items()
              if k.startswith("status_")}
    for key in ("converged", "diverged"):
        status[key] = bool(status[key])
    print(f"resuming from {path} at step {int(a['flow_step'])}, t={float(a['t']):.6g}", flush=True)
    return (state, float(a["t"]), float(a["dt"]), int(a["flow_step"]), history,
            list(data["history/F_train"]), list(data["history/F_test"]), status, int(a["next_checkpoint"]))
