import pytest
import torch

from memgen import MemgenError
from memgen.losses import Loss


@pytest.mark.parametrize("loss", [Loss("soft_hinge", 0.5), Loss("soft_hinge", 5.0), Loss("soft_hinge", 20.0),
                                  Loss("hinge"), Loss("mse")])
def test_derivative_matches_autograd(loss):
    z = torch.linspace(-3, 3, 61, dtype=torch.float64)
    if loss.name == "hinge":
        z = z[(z - 1).abs() > 1e-6]  # away from the kink at z = 1
    z.requires_grad_(True)
    (grad,) = torch.autograd.grad(loss.value(z).sum(), z)
    # atol 1e-8: F.softplus's default threshold (20) linearizes value() where
    # beta (1 - z) > 20, an O(exp(-20)) difference from the exact derivative
    torch.testing.assert_close(loss.derivative(z.detach()), grad, rtol=1e-12, atol=1e-8)
    value, deriv = loss.value_and_derivative(z.detach())
    torch.testing.assert_close(deriv, grad, rtol=1e-12, atol=1e-8)
    torch.testing.assert_close(value, loss.value(z.detach()))


def test_values():
    z = torch.tensor([-1.0, 0.0, 1.0, 2.5], dtype=torch.float64)
    torch.testing.assert_close(Loss("hinge").value(z), torch.tensor([2.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(Loss("mse").value(z), torch.tensor([2.0, 0.5, 0.0, 1.125], dtype=torch.float64))
    # soft hinge tends to the hinge as beta grows; at z = 1 it is log(2)/beta
    sh = Loss("soft_hinge", 1000.0).value(z)
    torch.testing.assert_close(sh, Loss("hinge").value(z), rtol=0, atol=1e-3)
    assert float(Loss("soft_hinge", 4.0).value(torch.tensor([1.0]))) == pytest.approx(0.6931471805599453 / 4)


@pytest.mark.parametrize("kwargs", [{"name": "logistic"}, {"name": "soft_hinge", "beta": 0.0}])
def test_invalid(kwargs):
    with pytest.raises(MemgenError):
        Loss(**kwargs)
