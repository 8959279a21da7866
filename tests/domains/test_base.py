"""Shared helpers of the domains (``rnnguard.domains.base``): the affine map's row independence."""

from __future__ import annotations

import pathlib

import pytest
import torch

from rnnguard import LpBall, Perturbation
from rnnguard.certify import margin_specification
from rnnguard.checkpoints import load_checkpoint
from rnnguard.domains import DOMAINS, _margins_of
from rnnguard.domains.base import linear
from rnnguard.models import lower

MODEL = pathlib.Path(__file__).resolve().parents[2] / "models" / "mnist" / "r2recipe" / "04F_032H_1L.pt"


@pytest.mark.parametrize("n,m", [(196, 128), (32, 128), (128, 10), (784, 64)])
def test_linear_gives_each_row_the_bits_of_a_large_batch(n, m):
    """BLAS sums a product of very few rows in another order; ``linear`` pads them, so a row's
    result is the same bits whatever else shares the call."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, n, generator=gen, dtype=torch.float64)
    w = torch.randn(m, n, generator=gen, dtype=torch.float64)
    full = linear(x, w)
    for rows in (1, 2, 3, 5):
        assert torch.equal(linear(x[:rows], w), full[:rows])
    assert linear(x[:0], w).shape == (0, m)


def test_a_region_certified_alone_gets_its_batch_bounds():
    """Back-substitution margins of one image alone equal its margins in a batch, bit for bit, on
    a real checkpoint (the R2-recipe 04F_032H_1L LSTM, eps 0.01); the optimised domains amplified
    the former few-ulp differences to 1e-3 in the margins."""
    model, _ = load_checkpoint(MODEL)
    program = lower(model).to(torch.float64, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(5, 4, 196, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        labels = model(x.float()).argmax(1)
        regions = Perturbation(LpBall(0.01), clip=(0.0, 1.0)).regions(x, torch.full((5,), 4))
        weight, bias = margin_specification(program, labels[regions.sample_index])
        start = DOMAINS["backsub"].start
        together = _margins_of(program, start, regions, weight, bias)
        for i in (0, 3):
            alone = _margins_of(program, start, regions.select(slice(i, i + 1)), weight[i:i + 1], bias[i:i + 1])
            assert torch.equal(alone[0], together[i])
