""":func:`memgen.training.run` for ``flow.method: rkc`` (:mod:`memgen.chebyshev`).

Steps jump over checkpoint times and margin crossings, so both come from the dense
output of the step that contains them:

- checkpoints at t_1 10^(k / checkpoints_per_decade), k = 0, 1, ..., t_1 the end of the
  first accepted step (plus t = 0 and the stop); a record at an interior time costs one
  gradient evaluation (its loss, gradient norm) and the test outputs;
- t_memorize (every z_i > 0) and t_fit (every z_i >= 1): after the first step whose end
  satisfies the condition, the crossing of min_i z_i(t) inside that step (Illinois on
  forward passes of the interpolated state, to 1e-10 relative); the run stops at t_fit,
  recorded there, and ``final`` is that state. step_fit / step_memorize are the number of
  that step. max_time stops exactly at max_time (interpolated); max_steps and max_wall
  at the end of a step.

Deflation (:mod:`memgen.chebyshev`) runs only with ``flow.deflate``, on a problem whose
Jacobian is symmetric (``problem.symmetric_jacobian``: the network, not the frozen
kernel; :mod:`memgen.training`) and without ``gradient_dtype: float32``: the deflated
mode's h lam (10^2-10^3) multiplies the rounding of the state to float32 in the error
estimate, and the steps shrink (paper size, alpha 1: 5x the gradient evaluations).

Resume files add the integrator's memory (spectral radii, the deflated eigenvalue, both
power-iteration vectors, the controller's previous error and step, the checkpoint grid's
t_1 and index), so a resumed run gives the arrays of an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from memgen.chebyshev import Memory, rkc_flow
from memgen.dense_output import crossing, interpolate
from memgen.dynamics import FlowDiverged
from memgen.runstate import (Recorder, RunResult, deferred_sigterm, load_resume, progress_line, resume_or_pause,
                             save_resume, start_progress)


def _deflates(problem, cfg, state_dtype) -> bool:
    """Whether rkc deflates the outlier eigenvalue for ``problem`` (module doc)."""
    return cfg.deflate and problem.symmetric_jacobian and problem.eval_dtype == state_dtype


def _margin_event(problem, st, level: float, strict: bool):
    """Time where min z first reaches ``level`` inside step ``st`` (its end reaches it), and
    the interpolated w there (None: the step's end)."""
    def value(t):
        w = interpolate(st, t)
        return float(problem.margins(w).min()) - level, w

    def reached(x):
        return x > 0 if strict else x >= 0

    fa, fb = float(st.data0.z.min()) - level, float(st.data.z.min()) - level
    if reached(fa):  # already there at the start (only possible at t = 0)
        return st.t0, st.w0
    t, w = crossing(value, st.t0, fa, st.t, fb, reached)
    return t, w


def run_rkc(problem, cfg, y_test: torch.Tensor, *, resume_path: Path | None = None, resume_every_s: float = 300.0,
            resume_params: dict | None = None, progress_every_s: float | None = None,
            progress: str | None = None) -> RunResult:
    rec = Recorder(problem, cfg, y_test)
    status = rec.status
    state = problem.initial_state()
    t, dt, step, memory, t_first, k = 0.0, None, 0, None, math.nan, 0
    resumed = load_resume(resume_path, resume_params, state, arrays=Memory.array_names()) if resume_path else None
    if resumed is not None:
        state, t, dt, step, k = (resumed[key] for key in ("state", "t", "dt", "step", "next_checkpoint"))
        rec.restore(resumed)
        memory = Memory.from_resume(resumed["arrays"], resumed["attrs"])
        t_first = float(resumed["attrs"]["t_first"])
    prep = problem.prepare(state)
    if resumed is None:
        rec.record(0, 0.0, 0.0, state, prep)
    if not prep.finite:
        status.update(diverged=True, stop_reason="diverged")
    per_decade = cfg.checkpoints_per_decade

    def grid(i):
        return t_first * 10.0 ** (i / per_decade)

    def record_at(st, when):
        if when == st.t:
            rec.record(st.step, when, st.dt, (st.w, st.v), st.data)
        else:
            w = interpolate(st, when)
            rec.record(st.step, when, st.dt, (w, None), problem.prepare((w, None)))

    def save(state, t, st, step, k, t_first):
        arrays, attrs = st.memory.resume_parts()
        save_resume(resume_path, resume_params, state, t, st.next_dt, step, rec, k, arrays=arrays,
                    attrs={**attrs, "t_first": t_first})
        return step

    bar, mark = start_progress(progress, progress_every_s, cfg, step, t, len(prep.z), resumed is not None)
    wall0, last_save = mark[0], mark[0]
    if not status["diverged"] and not bool((prep.z >= 1).all()):
        stepper = rkc_flow(state[0], state[1], lambda w: problem.prepare((w, None)), lambda p: p.grad,
                           lambda p: p.finite, tau=cfg.tau, rtol=cfg.rtol, t=t, dt=dt, step=step, data=prep,
                           memory=memory, eps=torch.finfo(problem.eval_dtype).eps,
                           deflate=_deflates(problem, cfg, state[0].dtype))
        with deferred_sigterm(resume_path is not None):
            try:
                for st in stepper:
                    state, prep, t, step = (st.w, st.v), st.data, st.t, st.step
                    if math.isnan(t_first):
                        t_first = st.t
                    end, w_end, stop = st.t, None, ""
                    if bool((prep.z >= 1).all()):
                        end, w_end = _margin_event(problem, st, 1.0, strict=False)
                        stop = "converged"
                    if st.t >= cfg.max_time and (not stop or end > cfg.max_time):
                        end, w_end, stop = cfg.max_time, None, "max_time"
                    elif not stop and step >= cfg.max_steps:
                        stop = "max_steps"
                    elif not stop and time.perf_counter() - wall0 >= cfg.max_wall:
                        stop = "max_wall"
                    if status["step_memorize"] < 0 and bool((prep.z > 0).all()):
                        t_mem, _ = _margin_event(problem, st, 0.0, strict=True)
                        if t_mem <= end:
                            status.update(t_memorize=t_mem, step_memorize=step)
                    while grid(k) < end or (grid(k) == end and not stop):
                        record_at(st, grid(k))
                        k += 1
                    if stop:
                        status["stop_reason"] = stop
                        if stop == "converged":
                            status.update(converged=True, t_fit=end, step_fit=step)
                        if end != st.t:
                            w = w_end if w_end is not None else interpolate(st, end)
                            state, prep = (w, None), problem.prepare((w, None))
                        rec.record(step, end, st.dt, state, prep)
                        t = end
                        break
                    now = time.perf_counter()
                    mark = progress_line(bar, mark, cfg, step, t, st.dt, prep, wall0, now, f" stages={st.stages}")
                    last_save = resume_or_pause(resume_path, resume_every_s, now, last_save, progress, step,
                                                lambda: save(state, t, st, step, k, t_first))
            except FlowDiverged:
                rec.diverged(step, t, state, prep)
    else:
        rec.no_steps()
    return rec.finish(bar, step, t, state)
