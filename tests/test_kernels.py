import pytest
import torch
from torch import nn

from memgen.kernels import empirical_ntk, fc_ntk, generic_ntk, ntk_blocks
from memgen.models import FC


def loop_ntk(model, x1, x2):
    """J1 J2^T from one autograd backward pass per example."""
    params = [p for p in model.parameters()]

    def jac(x):
        rows = []
        for xi in x:
            grads = torch.autograd.grad(model(xi.unsqueeze(0)).sum(), params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        return torch.stack(rows)

    return jac(x1) @ jac(x2).t()


def _close(a, b, rtol=1e-10):
    assert a.shape == b.shape
    assert float((a - b).abs().max()) <= rtol * float(b.abs().max())


@pytest.mark.parametrize("last_layer", ["mean_field", "ntk"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", ["softplus", "relu"])
def test_fc_ntk_matches_per_example_gradients(activation, bias, last_layer):
    g = torch.Generator().manual_seed(0)
    model = FC(4, 6, 2, activation=activation, bias=bias, last_layer=last_layer, seed=1)
    model.load_flat(torch.randn(model.flat().numel, generator=g, dtype=torch.float64))  # nonzero biases
    x1 = torch.randn(7, 4, generator=g, dtype=torch.float64)
    x2 = torch.randn(5, 4, generator=g, dtype=torch.float64)
    K11, K21 = empirical_ntk(model, x1), empirical_ntk(model, x2, x1)
    _close(K11, loop_ntk(model, x1, x1))
    _close(K21, loop_ntk(model, x2, x1))
    torch.testing.assert_close(K11, K11.t(), rtol=0, atol=1e-12 * float(K11.abs().max()))
    eig = torch.linalg.eigvalsh(K11)
    assert eig.min() >= -1e-10 * eig.max()
    w = model.flat_parameters()
    Ktt, Kst, Kss = ntk_blocks(model.flat(), w, x1, x2)
    _close(Ktt, fc_ntk(model.flat(), w, x1))
    _close(Kst, fc_ntk(model.flat(), w, x2, x1))
    _close(Kss, fc_ntk(model.flat(), w, x2))
    _close(generic_ntk(model, x2, x1), K21)  # the generic path agrees with the structured one


def test_generic_ntk_conv_net_matches_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Tanh(), nn.Flatten(0), nn.Linear(3 * 6, 1)).double()
    x1 = torch.randn(7, 2, 8, dtype=torch.float64)
    x2 = torch.randn(4, 2, 8, dtype=torch.float64)

    def loop(a, b):  # module maps one example (2, 8) -> (1,)
        params = list(model.parameters())
        rows = lambda x: torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(  # noqa: E731
            model(xi).sum(), params)]) for xi in x])
        return rows(a) @ rows(b).t()

    batched = nn.Sequential(model[0], model[1], nn.Flatten(1), model[3])  # (1, 2, 8) -> (1, 1)
    K = generic_ntk(batched, x1, block=3)  # several blocks, last one partial
    _close(K, loop(x1, x1))
    _close(generic_ntk(batched, x2, x1, block=2), loop(x2, x1))
    _close(empirical_ntk(batched, x1), K)
    eig = torch.linalg.eigvalsh(K)
    assert eig.min() >= -1e-10 * eig.max()
