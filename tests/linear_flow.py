"""The linear gradient flow G(w) = A w as the prepare / gradient / valid triple of
memgen.chebyshev, counting gradient evaluations (test_chebyshev, test_deflation)."""

import torch


class LinearFlow:
    def __init__(self, a: torch.Tensor):
        self.a, self.calls = a, 0

    def prepare(self, w):
        self.calls += 1
        return self.a @ w

    @staticmethod
    def gradient(g):
        return g

    @staticmethod
    def valid(g):
        return bool(torch.isfinite(g).all())
