"""Continuous-time dynamics with an adaptive time step.

One generic integrator, :func:`flow` (after mariogeiger/gradientflow): it knows nothing
about networks or kernels. A user supplies

- ``prepare(state) -> data``: what the step control needs at a state (outputs, gradient);
- ``make_step(state, data, dt) -> new_state``: one explicit step of size ``dt``;
- ``compare(data, new_data) -> (ok, relaxed)``: accept the step (``ok``) and whether
  every criterion is under half its limit (``relaxed``, then dt grows by ``grow``).

A rejected step is retried from the same state with dt / ``shrink``. The network
gradient flow, the frozen-kernel flow and any ODE in memgen are thin users of it.

:func:`momentum_step` is the continuous momentum of feature_lazy:
dv/dt = -(v + grad) / tau, dw/dt = v (tau = 0: plain gradient flow), integrated with
the exact exponential factor for v over one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Generator

import torch

from memgen import MemgenError


class FlowDiverged(MemgenError):
    """The step size collapsed below ``min_dt``: the state or its gradient is not finite."""


@dataclass
class FlowStep:
    """One accepted step: counters after it, the new state and its prepared data."""

    step: int
    t: float
    dt: float  # size of the step just taken
    next_dt: float  # size the next step will try first
    rejected: int  # rejected trials before it was accepted
    state: Any
    data: Any


def flow(
    state: Any,
    prepare: Callable[[Any], Any],
    make_step: Callable[[Any, Any, float], Any],
    compare: Callable[[Any, Any], tuple[bool, bool]],
    *,
    t: float = 0.0,
    dt: float = 1.0,
    step: int = 0,
    grow: float = 1.1,
    shrink: float = 10.0,
    min_dt: float = 1e-20,
    data: Any = None,
) -> Generator[FlowStep, None, None]:
    """Integrate forever, yielding after every accepted step (the caller stops it).

    ``t``, ``dt``, ``step`` (and ``data`` = ``prepare(state)``, recomputed when None)
    let a run resume exactly where a saved one stopped.
    """
    if data is None:
        data = prepare(state)
    while True:
        rejected = 0
        while True:
            new_state = make_step(state, data, dt)
            new_data = prepare(new_state)
            ok, relaxed = compare(data, new_data)
            if ok:
                break
            rejected += 1
            dt /= shrink
            if dt < min_dt:
                raise FlowDiverged(f"time step fell below {min_dt:g} at t={t:g}, step {step}: non-finite dynamics")
        state, data = new_state, new_data
        step += 1
        t += dt
        taken = dt
        if relaxed:
            dt *= grow
        yield FlowStep(step, t, taken, dt, rejected, state, data)


def momentum_step(w: torch.Tensor, v: torch.Tensor | None, grad: torch.Tensor, dt: float, tau: float):
    """One step of dv/dt = -(v + grad)/tau, dw/dt = v; tau = 0 gives dw/dt = -grad.

    Returns the new (w, v); inputs are not modified.
    """
    if tau > 0:
        decay = math.exp(-dt / tau)
        v = v * decay - (1 - decay) * grad
    else:
        v = -grad
    return w + dt * v, v


def relative_change(g: torch.Tensor, g_new: torch.Tensor) -> float:
    """||g - g'||^2 / (||g|| ||g'||), 0 when either is zero (feature_lazy's dgrad)."""
    n1, n2 = g.norm(), g_new.norm()
    if n1 == 0 or n2 == 0:
        return 0.0
    return float((g - g_new).norm().pow(2) / (n1 * n2))


def loglinspace(rate: float, step: float, end: int | None = None):
    """Integers 0, 1, 2, ... dense at first, then every ~``step`` (upstream schedule)."""
    t = 0
    while end is None or t <= end:
        yield t
        t = int(t + 1 + step * (1 - math.exp(-t * rate / step)))
