import math

import numpy as np
import pytest
import torch
from scipy import integrate
from torch.func import functional_call

from conftest import gauss_expect
from memgen.models import FC, Activation, activation_constant

ACTS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "softplus": lambda z: np.logaddexp(0.0, 5.0 * z) / 5.0,  # beta = 5
}


def phi(name):
    c = activation_constant(name, 5.0)
    return lambda z: c * ACTS[name](z)


@pytest.mark.parametrize("name", list(ACTS))
def test_activation_constant_normalizes(name):
    c = activation_constant(name, 5.0)
    m2, _ = integrate.quad(lambda z: ACTS[name](z) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi),
                           -np.inf, np.inf, epsabs=1e-13)
    assert c == pytest.approx(1 / math.sqrt(m2), rel=1e-8)
    z = np.random.default_rng(0).standard_normal(10**6)
    assert np.mean((c * ACTS[name](z)) ** 2) == pytest.approx(1.0, abs=1e-2)
    if name == "relu":
        assert c == pytest.approx(math.sqrt(2), rel=1e-10)


@pytest.mark.parametrize("last_layer", ["mean_field", "ntk"])
@pytest.mark.parametrize("name", list(ACTS))
def test_output_variance_one_hidden_layer(name, last_layer):
    """E[f(x)^2] = E_z[phi(sqrt(q) z)^2] / h (mean_field) or * 1 (ntk), q = |x|^2/d."""
    d, h, n_init = 5, 8, 2000
    x = torch.tensor([[1.0, -1.0, 1.0, 1.0, -1.0], [2.0, 0.0, 0.5, 0.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        f = torch.stack([FC(d, h, 1, activation=name, normalize=True, last_layer=last_layer, seed=s)(x)
                         for s in range(n_init)]).numpy()
    for i, xi in enumerate(x):
        q = float(xi @ xi) / d
        expect = gauss_expect(lambda z: phi(name)(math.sqrt(q) * z) ** 2)
        if last_layer == "mean_field":
            expect /= h
        se = np.std(f[:, i] ** 2) / math.sqrt(n_init)
        got = float(np.mean(f[:, i] ** 2))
        assert abs(got - expect) < 4 * se, (i, got, expect, se)


@pytest.mark.parametrize("last_layer", ["mean_field", "ntk"])
@pytest.mark.parametrize("name", ["relu", "softplus"])
def test_output_variance_deep_matches_nngp(name, last_layer):
    """L=3, h=512: E over the readout is |df/dW_3|^2 (f is linear in W_3); averaged over
    inits and inputs it follows q_{l+1} = E[phi(sqrt(q_l) z)^2]."""
    d, h, L = 6, 512, 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(1.5 * d)  # q_1 = 1.5
    q = 1.5
    for _ in range(L):
        q = gauss_expect(lambda z: phi(name)(math.sqrt(q) * z) ** 2)
    expect = q / h if last_layer == "mean_field" else q
    vals = []
    for seed in range(4):
        model = FC(d, h, L, activation=name, normalize=True, last_layer=last_layer, seed=seed)
        params = dict(model.named_parameters())
        W3 = params.pop("W3").detach()
        jac = torch.autograd.functional.jacobian(lambda W: functional_call(model, {**params, "W3": W}, (x,)), W3)
        vals.append((jac.reshape(len(x), -1) ** 2).sum(1))
        assert torch.allclose(model(x), jac.reshape(len(x), -1) @ W3.reshape(-1))  # linear in W3
    assert float(torch.cat(vals).mean()) == pytest.approx(expect, rel=0.05)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("last_layer", ["mean_field", "ntk"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("name", ["relu", "tanh", "softplus"])
def test_flat_forward_and_vjp_match_autograd(name, bias, last_layer, normalize):
    d, h, L, n = 4, 7, 2, 9
    g = torch.Generator().manual_seed(3)
    model = FC(d, h, L, activation=name, normalize=normalize, bias=bias, last_layer=last_layer, seed=1)
    flat = model.flat()
    w = torch.randn(flat.numel, generator=g, dtype=torch.float64)  # random biases too
    model.load_flat(w)
    assert torch.equal(model.flat_parameters(), w)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    coef = torch.randn(n, generator=g, dtype=torch.float64)
    f_flat, cache = flat.forward(w, x)
    f = model(x)
    torch.testing.assert_close(f_flat, f.detach(), rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad((coef * f).sum(), list(model.parameters()))
    expect = torch.cat([gr.reshape(-1) for gr in grads])
    torch.testing.assert_close(flat.vjp(cache, coef), expect, rtol=1e-12, atol=1e-12)
    out = torch.full((flat.numel,), float("nan"), dtype=torch.float64)
    flat.vjp(cache, coef, out=out)
    torch.testing.assert_close(out, expect, rtol=1e-12, atol=1e-12)


def test_names_mean_what_they_say():
    """FC(..., activation="relu") is max(0, z) (normalize=False, the default); the
    variance-preserving sqrt(2) max(0, z) is asked for with normalize=True."""
    z = torch.linspace(-3, 3, 13, dtype=torch.float64)
    torch.testing.assert_close(Activation("relu")(z), z.clamp_min(0), rtol=0, atol=0)
    torch.testing.assert_close(Activation("relu", normalize=True)(z), math.sqrt(2) * z.clamp_min(0))
    torch.testing.assert_close(Activation("softplus", beta=2.0)(z), torch.log1p(torch.exp(2 * z)) / 2)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain, scaled = FC(3, 4, 1, activation="relu", seed=0), FC(3, 4, 1, activation="relu", normalize=True, seed=0)
    W0, W1 = plain.W0.detach(), plain.W1.detach()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), (torch.relu(x @ W0.t() / math.sqrt(3)) @ W1.t() / 4).reshape(-1))
        torch.testing.assert_close(scaled(x), math.sqrt(2) * plain(x))


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("name", ["relu", "tanh", "softplus"])
def test_every_activation_path_gives_the_same_numbers(name, normalize):
    """The one definition per activation: its derivative is autograd's of its value, and
    the differentiable, in-place (consume) and FlatFC fast paths agree (to rounding for the
    fast path, which folds the constants into the matrix products)."""
    act = Activation(name, beta=3.0, normalize=normalize)
    z = torch.linspace(-4, 4, 41, dtype=torch.float64) + 0.01  # no kink at 0 exactly
    zg = z.clone().requires_grad_(True)
    value, deriv = act.value_and_derivative(zg)
    (auto,) = torch.autograd.grad(value.sum(), zg)
    torch.testing.assert_close(deriv.detach(), auto, rtol=1e-12, atol=1e-14)
    v2, d2 = act.value_and_derivative(z.clone(), consume=True)
    assert torch.equal(v2, value.detach()) and torch.equal(d2, deriv.detach()) and torch.equal(act(z), v2)
    model = FC(3, 6, 2, activation=name, beta=3.0, normalize=normalize, bias=True, seed=2)
    flat, w = model.flat(), model.flat_parameters()
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f, cache = flat.forward(w, x)
    work = {}
    f_fast, cache_fast = flat._forward(w, x, True, work)
    g = torch.ones(8, dtype=torch.float64)
    torch.testing.assert_close(f_fast, f, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(flat._vjp(cache_fast, g, None, work), flat.vjp(cache, g), rtol=1e-12, atol=1e-14)
