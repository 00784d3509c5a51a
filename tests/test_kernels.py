import pytest
import torch
from torch import nn

from conftest import generic_ntk
from memgen.kernels import empirical_ntk, empirical_ntk_blocks
from memgen.models import FC


def loop_ntk(model, x1, x2):
    """J1 J2^T from one autograd backward pass per example, over the parameters with
    requires_grad."""
    params = [p for p in model.parameters() if p.requires_grad]

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
    viewed = FC.from_flat(model.spec, w)  # a flat vector as a module, no copy
    assert viewed.W0.data_ptr() == w.data_ptr()
    Ktt, Kst, Kss = empirical_ntk_blocks(viewed, x1, x2)
    assert torch.equal(Ktt, K11) and torch.equal(Kst, K21)  # one forward pass per set, the same numbers
    _close(Kss, loop_ntk(model, x2, x2))
    _close(empirical_ntk(model, x2, x1, path="generic"), K21)  # the generic path agrees with the structured one


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


def _sequential():
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def _fc():
    model = FC(4, 6, 2, activation="tanh", bias=True, last_layer="ntk", seed=3)
    model.load_flat(torch.randn(model.flat().numel, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    return model


FROZEN = {  # model, names of the parameters to freeze
    "seq_hidden_weight": (_sequential, ["2.weight"]),
    "seq_first_bias": (_sequential, ["0.bias"]),
    "seq_output_weight": (_sequential, ["4.weight"]),  # the output bias alone: a constant 1 term
    "seq_first_layer": (_sequential, ["0.weight", "0.bias"]),
    "fc_hidden_weight": (_fc, ["W1"]),
    "fc_biases": (_fc, ["B0", "B1", "B2"]),
    "fc_output_weight": (_fc, ["W2"]),
}


@pytest.mark.parametrize("path", ["auto", "generic"])
@pytest.mark.parametrize("case", sorted(FROZEN))
def test_empirical_ntk_differentiates_trained_parameters_only(case, path):
    make, names = FROZEN[case]
    model = make()
    g = torch.Generator().manual_seed(6)
    d = 5 if case.startswith("seq") else 4
    x1, x2 = torch.randn(9, d, generator=g, dtype=torch.float64), torch.randn(4, d, generator=g, dtype=torch.float64)
    full = empirical_ntk(model, x1)
    for name, p in model.named_parameters():
        if name in names:
            p.requires_grad_(False)
    K11, K21 = empirical_ntk(model, x1, path=path), empirical_ntk(model, x2, x1, path=path)
    _close(K11, loop_ntk(model, x1, x1))
    _close(K21, loop_ntk(model, x2, x1))
    assert float((full - K11).abs().max()) > 1e-3 * float(full.abs().max())  # freezing changed the kernel
    Ktt, Kst, Kss = empirical_ntk_blocks(model, x1, x2, path=path)
    _close(Ktt, K11), _close(Kst, K21), _close(Kss, loop_ntk(model, x2, x2))


@pytest.mark.parametrize("path", ["auto", "generic"])
def test_empirical_ntk_of_a_frozen_model_is_zero(path):
    model = _sequential().requires_grad_(False)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(empirical_ntk(model, x, path=path), torch.zeros(6, 6, dtype=torch.float64))


def test_generic_ntk_of_a_conv_net_with_a_frozen_layer():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Tanh(), nn.Flatten(1), nn.Linear(3 * 6, 1)).double()
    model[0].weight.requires_grad_(False)
    x = torch.randn(6, 2, 8, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    _close(empirical_ntk(model, x), loop_ntk(model, x, x))
