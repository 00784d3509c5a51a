"""What every gradient-flow run keeps besides its integrator (:mod:`memgen.training`):
the records at checkpoints, the status, SIGTERM handling, the ETA bound of the progress
lines and the resume file."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memgen import h5io
from memgen.faults import pause_point
from memgen.progress import Progress, format_duration
from memgen.resume import _TERM, Terminated, install_sigterm_handler  # noqa: F401 (re-exported)


@contextmanager
def deferred_sigterm(active: bool):
    """While integrating with a resume file (``active``), SIGTERM only sets a flag
    (memgen.resume's handler): the run saves after its step, then raises Terminated."""
    _TERM["deferred"] = active
    try:
        yield
    finally:
        _TERM["deferred"] = _TERM["requested"] = False


def save_point(resume_path, every_s: float, now: float, last_save: float, save) -> float:
    """Call ``save()`` when a resume save is due (``every_s`` since ``last_save``, or a
    SIGTERM arrived), then raise Terminated after a SIGTERM; returns the last save time."""
    if resume_path is None or (now - last_save < every_s and not _TERM["requested"]):
        return last_save
    step = save()
    if _TERM["requested"]:
        raise Terminated(f"terminated by SIGTERM; saved {resume_path} at step {step}")
    return now


def resume_or_pause(resume_path, every_s: float, now: float, last_save: float, label: str | None, step: int,
                    save) -> float:
    """After each accepted step: :func:`save_point`, then the tests' pause at a step count
    (memgen.faults: a resume point is saved there first); returns the last save time."""
    last_save = save_point(resume_path, every_s, now, last_save, save)
    pause_point(label, step, save if resume_path is not None else None)
    return last_save


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


class Recorder:
    """Records at checkpoints and the run's status."""

    def __init__(self, problem, cfg, y_test: torch.Tensor):
        self.problem, self.cfg, self.y_test = problem, cfg, y_test
        self.history: dict[str, list] = {k: [] for k in RECORD_KEYS}
        self.F_train: list = []
        self.F_test: list = []
        self.status = {"converged": False, "diverged": False, "stop_reason": "", "t_fit": math.nan, "step_fit": -1,
                       "t_memorize": math.nan, "step_memorize": -1}

    def record(self, step, t, dt, state, prep) -> None:
        loss, norm, history = self.cfg.loss, self.cfg.norm, self.history
        Ft = self.problem.test_outputs(state)
        zt = Ft * self.y_test
        history["step"].append(step)
        history["t"].append(t)
        history["dt"].append(dt)
        history["loss"].append(norm * float(loss.value(prep.z).mean()))
        history["train_err"].append(float((prep.z <= 0).double().mean()))
        history["test_err"].append(float((zt <= 0).double().mean()) if len(zt) else math.nan)
        history["test_loss"].append(norm * float(loss.value(zt).mean()) if len(zt) else math.nan)
        history["margin_min"].append(float(prep.z.min()))
        history["dnorm"].append(self.problem.dnorm(state, prep))
        history["grad_norm"].append(self.problem.grad_norm(state, prep))
        self.F_train.append(prep.F.detach().cpu().numpy().copy())
        self.F_test.append(Ft.detach().cpu().numpy().copy())

    def diverged(self, step, t, state, prep) -> None:
        """The dynamics diverged: the last accepted (finite) state is the last record."""
        self.status.update(diverged=True, stop_reason="diverged")
        self.record(step, t, 0.0, state, prep)

    def no_steps(self) -> None:
        """The run did not step: diverged at the start, or at the margin from the start."""
        s = self.status
        s["stop_reason"] = s["stop_reason"] or "converged"
        if s["stop_reason"] == "converged":
            s.update(converged=True, t_fit=0.0, step_fit=0)

    def restore(self, saved: dict) -> None:
        for k in RECORD_KEYS:
            self.history[k] = list(saved["history"][k])
        self.F_train, self.F_test = list(saved["F_train"]), list(saved["F_test"])
        self.status.update(saved["status"])

    def finish(self, bar, step: int, t: float, state) -> RunResult:
        """The last progress line and the run's result."""
        bar.finish(step, f"stopped: {self.status['stop_reason']} at t={t:.4g}")
        records = {k: np.asarray(v, dtype=np.int64 if k == "step" else np.float64) for k, v in self.history.items()}
        final = {k: v.detach().cpu().numpy() for k, v in self.problem.final(state).items()}
        return RunResult(records, np.stack(self.F_train), np.stack(self.F_test), final, self.status)


def eta_to_limit(cfg, step: int, t: float, wall: float, step_rate: float, t_rate: float) -> tuple[float | None, str]:
    """Seconds until the first hard limit stops the run, and its name (training's module
    doc): an upper bound on the time left, as a run that converges stops earlier."""
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


def start_progress(label, every_s, cfg, step, t, n_train, resumed: bool):
    """The run's progress bar (its first line) and the mark (wall clock, t) of the last line."""
    bar = Progress(label, every=every_s, unit="step", initial=step, bound=True,
                   message=f"{n_train} points to margin 1, limits max_steps={cfg.max_steps} "
                           f"max_time={cfg.max_time:g} max_wall={format_duration(cfg.max_wall)}"
                           + (f", resumed at t={t:.4g}" if resumed else ""))
    return bar, (time.perf_counter(), t)


def progress_line(bar, mark, cfg, step, t, dt, prep, wall0, now, extra: str = ""):
    """Print a progress line when one is due; returns the new mark."""
    if not bar.due():  # build the line only when it is printed
        return mark
    t_rate = (t - mark[1]) / (now - mark[0]) if now > mark[0] else math.nan
    eta, limit = eta_to_limit(cfg, step, t, now - wall0, bar.rate(step, now), t_rate)
    bar.update(step, f"t={t:.4g} dt={dt:.2g} margin_min={float(prep.z.min()):.3f} "
                     f"fit={int((prep.z >= 1).sum())}/{len(prep.z)} "
                     f"train_err={float((prep.z <= 0).double().mean()):.3f}{extra}",
               force=True, eta=eta, eta_note=f"({limit})" if limit else "")
    return (now, t)


def save_resume(path, params, state, t, dt, step, rec: Recorder, next_ckpt, arrays=None, attrs=None) -> None:
    """Atomically save what a run needs to continue; ``arrays``/``attrs``: the integrator's own."""
    out = {f"state/{i}": s for i, s in enumerate(state)}
    out.update({f"history/{k}": np.asarray(v) for k, v in rec.history.items()})
    out["history/F_train"] = np.stack(rec.F_train)
    out["history/F_test"] = np.stack(rec.F_test)
    out.update({f"method/{k}": v for k, v in (arrays or {}).items()})
    # "flow_step", not "step": the root attribute "step" is h5io's provenance (= "resume")
    meta = {"t": t, "dt": dt, "flow_step": step, "next_checkpoint": next_ckpt,
            **{f"status_{k}": v for k, v in rec.status.items()}, **{f"method_{k}": v for k, v in (attrs or {}).items()}}
    h5io.write(path, out, step="resume", params=params or {}, attrs=meta)


def load_resume(path, params, like_state, arrays: tuple[str, ...] = ()) -> dict | None:
    """The saved run (state, t, dt, step, history, F_train, F_test, status, next_checkpoint,
    method arrays and attrs), or None when there is no usable file."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = h5io.read(path, {}, step="resume", expect_params=params or {})
        keys = [f"state/{i}" for i in range(len(like_state))] + [f"history/{k}" for k in RECORD_KEYS]
        keys += ["history/F_train", "history/F_test"] + [f"method/{k}" for k in arrays]
        data = h5io.read(path, {k: None for k in keys}, step="resume")
    except h5io.H5Error as exc:  # unusable leftovers are ignored, not fatal
        print(f"ignoring resume file: {exc}", flush=True)
        return None
    a = data.attrs
    state = tuple(torch.from_numpy(np.asarray(data[f"state/{i}"])).to(like_state[i])
                  for i in range(len(like_state)))
    status = {k[len("status_"):]: (v.item() if hasattr(v, "item") else v) for k, v in a.items()
              if k.startswith("status_")}
    for key in ("converged", "diverged"):
        status[key] = bool(status[key])
    print(f"resuming from {path} at step {int(a['flow_step'])}, t={float(a['t']):.6g}", flush=True)
    return {"state": state, "t": float(a["t"]), "dt": float(a["dt"]), "step": int(a["flow_step"]),
            "history": {k: data[f"history/{k}"].tolist() for k in RECORD_KEYS},
            "F_train": list(data["history/F_train"]), "F_test": list(data["history/F_test"]), "status": status,
            "next_checkpoint": int(a["next_checkpoint"]),
            "arrays": {k: torch.from_numpy(np.asarray(data[f"method/{k}"])).to(like_state[0]) for k in arrays},
            "attrs": {k[len("method_"):]: (v.item() if hasattr(v, "item") else v) for k, v in a.items()
                      if k.startswith("method_")}}
