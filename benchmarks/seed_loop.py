"""Seed 000's training loop, rewritten with the same operations, and the problem the
benchmarks share (``benchmarks/train_step.py``, ``flow.py`` and ``flow_budget.py``).

``train_regular`` is the baseline every speed-up in benchmarks/README.md is measured
against: ``FC`` with its weights in ``ParameterList`` chunks joined by ``torch.cat`` in
forward, ``ContinuousMomentum``, ``copy.deepcopy`` of the model and optimizer state before
every step, the dgrad / dout checks, dt *= 1.1 when both are under half their limits,
dt /= 10 and retry otherwise, with the deprecated ``add_(scalar, tensor)`` calls written
as ``add_(tensor, alpha=...)``. :func:`setup` builds memgen's ``FC`` and the seed ``FC``
with the same weights, the seed's loss and memgen's ``FlowConfig`` for one problem.
"""

from __future__ import annotations

import copy
import itertools
import math
from time import perf_counter

import torch
import torch.nn as nn
import torch.nn.functional as F

from memgen.data import sparse_parity
from memgen.losses import Loss
from memgen.models import FC as MemgenFC
from memgen.models import activation_constant
from memgen.training import FlowConfig

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
# The problem the benchmarks share
# --------------------------------------------------------------------------------------

def setup(n, d, k, h, L, alpha, seed=0, n_test=1, tau=0.0):
    """The problem both sides solve: n training and n_test test points, memgen's FC, the
    seed's FC with the same weights, the seed's loss and memgen's FlowConfig. n_test >= 1:
    memgen's run records test outputs at its checkpoints, and its input contract rejects an
    empty test set (the seed loop uses none)."""
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
