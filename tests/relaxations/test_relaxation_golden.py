"""Hand-checkable values of the relaxations; each expected value is derived in a comment.

Every value is checked in float64 and float32: close to the derivation within ``tol(dtype)``
and, for bounds, on the OUTWARD side of it (lower ends <= exact, upper ends >= exact).
"""

from __future__ import annotations

import math

import pytest
import torch

from rnnguard.relaxations import RELAXATIONS
from rnnguard.testing import tol

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
ROUND = 1e-15  # float64 rounding of the hand derivations themselves


def _t(x: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([x], dtype=dtype)


def _close(got: torch.Tensor, want: float, dtype: torch.dtype, scale: float = 1.0) -> None:
    g = float(got.to(torch.float64))
    assert abs(g - want) <= tol(dtype) * (scale + abs(want)), (g, want)


def _encloses(lo: torch.Tensor, hi: torch.Tensor, want_lo: float, want_hi: float, dtype: torch.dtype, scale: float = 1.0) -> None:
    """``[lo, hi]`` is ``[want_lo, want_hi]`` up to tolerance, and contains it."""
    _close(lo, want_lo, dtype, scale)
    _close(hi, want_hi, dtype, scale)
    assert float(lo) <= want_lo + ROUND * (scale + abs(want_lo))
    assert float(hi) >= want_hi - ROUND * (scale + abs(want_hi))


def _planes(name: str, dtype: torch.dtype, *bounds: float):
    return RELAXATIONS[name].planes(*(_t(b, dtype) for b in bounds))


def _interval(name: str, dtype: torch.dtype, *bounds: float):
    return RELAXATIONS[name].interval(*(_t(b, dtype) for b in bounds))


# tanh on [-1, 1]: chord slope k = (tanh 1 - tanh(-1)) / 2 = tanh 1.  g(x) = tanh x - k x is odd,
# g(+-1) = 0, and g'(x) = 1 - tanh^2 x - k = 0 at x* = +-atanh(sqrt(1 - k)) (|x*| ~ 0.534 < 1).
# So upper = g(x*) = sqrt(1 - k) - k atanh(sqrt(1 - k)) ~ 0.0817 and lower = -upper.
# A float32 relaxation uses k rounded to float32; its exact offsets are then +-G(k_32), because
# G(k) ~ 0.08 dwarfs g(+-1) = +-(tanh 1 - k_32) ~ 1e-8.
K_TANH1 = math.tanh(1.0)
X_STAR = math.atanh(math.sqrt(1 - K_TANH1))


def G(k: float) -> float:
    """max of tanh(x) - k x over [-1, 1] for k near tanh(1)."""
    return math.sqrt(1 - k) - k * math.atanh(math.sqrt(1 - k))


G_TANH1 = G(K_TANH1)


@DTYPES
def test_tanh_degenerate_at_zero(dtype: torch.dtype) -> None:
    # [0, 0] is narrower than any chord: the slope is tanh'(0) = 1, and g(0) = tanh 0 - 0 = 0,
    # so both offsets are 0 (outward rounding only adds the smallest subnormal).
    pl = _planes("tanh", dtype, 0.0, 0.0)
    assert float(pl.slopes[0]) == 1.0
    assert float(pl.lower) <= 0.0 <= float(pl.upper)
    assert abs(float(pl.lower)) < 1e-30 and abs(float(pl.upper)) < 1e-30
    lo, hi = _interval("tanh", dtype, 0.0, 0.0)
    _encloses(lo, hi, 0.0, 0.0, dtype)


@DTYPES
def test_tanh_planes_on_symmetric_interval(dtype: torch.dtype) -> None:
    assert 0.0817 < G_TANH1 < 0.0818 and 0.533 < X_STAR < 0.534  # the derivation itself
    pl = _planes("tanh", dtype, -1.0, 1.0)
    _close(pl.slopes[0], K_TANH1, dtype)
    _close(pl.upper, G_TANH1, dtype)
    k = float(pl.slopes[0])  # == K_TANH1 in float64
    _encloses(pl.lower, pl.upper, -G(k), G(k), dtype)
    lo, hi = _interval("tanh", dtype, -1.0, 1.0)
    _encloses(lo, hi, -K_TANH1, K_TANH1, dtype)  # tanh is increasing: (tanh(-1), tanh(1))


@DTYPES
def test_sigmoid_interval_at_zero(dtype: torch.dtype) -> None:
    # sigma(0) = 1 / (1 + e^0) = 1/2
    lo, hi = _interval("sigmoid", dtype, 0.0, 0.0)
    _encloses(lo, hi, 0.5, 0.5, dtype)


@DTYPES
def test_sigmoid_planes_are_rescaled_tanh_planes(dtype: torch.dtype) -> None:
    # sigma(x) = 1/2 + tanh(x/2) / 2.  On [-2, 2]: chord slope (sigma(2) - sigma(-2)) / 4 = tanh(1) / 4,
    # and sigma(x) - (tanh 1 / 4) x = 1/2 + (tanh(t) - tanh(1) t) / 2 with t = x/2 in [-1, 1],
    # so the offsets are 1/2 +- G_TANH1 / 2 (extremes at x = +-2 x*); for a slope s, 1/2 +- G(4s)/2.
    pl = _planes("sigmoid", dtype, -2.0, 2.0)
    _close(pl.slopes[0], K_TANH1 / 4, dtype)
    _close(pl.upper, 0.5 + G_TANH1 / 2, dtype)
    g = G(4 * float(pl.slopes[0]))
    _encloses(pl.lower, pl.upper, 0.5 - g / 2, 0.5 + g / 2, dtype)


@DTYPES
def test_relu_planes_on_straddling_interval(dtype: torch.dtype) -> None:
    # relu on [-1, 3]: chord slope (relu 3 - relu(-1)) / 4 = 3/4.  g = relu(x) - 3x/4 is piecewise
    # linear with its extremes among x = -1, 0 (kink), 3: g(-1) = 3/4, g(0) = 0, g(3) = 3/4.
    pl = _planes("relu", dtype, -1.0, 3.0)
    assert float(pl.slopes[0]) == 0.75
    _encloses(pl.lower, pl.upper, 0.0, 0.75, dtype)
    lo, hi = _interval("relu", dtype, -1.0, 3.0)
    _encloses(lo, hi, 0.0, 3.0, dtype)


@DTYPES
def test_mul_on_positive_box(dtype: torch.dtype) -> None:
    # x*y on [1, 2] x [3, 4]: range [1*3, 2*4] = [3, 8].  Slopes are the box centres
    # (c_y, c_x) = (3.5, 1.5), and xy - 3.5x - 1.5y = (x - 1.5)(y - 3.5) - 5.25 where
    # (x - 1.5)(y - 3.5) ranges over [-0.5*0.5, 0.5*0.5]: offsets -5.25 -+ 0.25 = [-5.5, -5.0].
    lo, hi = _interval("mul", dtype, 1.0, 2.0, 3.0, 4.0)
    _encloses(lo, hi, 3.0, 8.0, dtype)
    pl = _planes("mul", dtype, 1.0, 2.0, 3.0, 4.0)
    assert (float(pl.slopes[0]), float(pl.slopes[1])) == (3.5, 1.5)
    _encloses(pl.lower, pl.upper, -5.5, -5.0, dtype, scale=8.0)


@DTYPES
def test_mul_sigmoid_with_fixed_x_is_twice_sigmoid(dtype: torch.dtype) -> None:
    # x*sigma(y) with x = [2, 2]: A = (sigma(-1) + sigma(3)) / 2, B = 2 * chord(sigma on [-1, 3]).
    # On x = 2, g = 2 sigma(y) - 2A - B y = 2 (sigma(y) - k y) - 2A with k the sigmoid chord slope,
    # so B = 2k and 2A + offsets = 2 * (sigmoid offsets): the plane is exactly twice sigmoid's.
    # (Both slopes come from the same chord, and doubling commutes with rounding: B == 2k exactly.)
    pl = _planes("mul_sigmoid", dtype, 2.0, 2.0, -1.0, 3.0)
    ref = _planes("sigmoid", dtype, -1.0, 3.0)
    a = float(pl.slopes[0])
    _close(pl.slopes[0], (1 / (1 + math.e) + 1 / (1 + math.exp(-3))) / 2, dtype)
    assert float(pl.slopes[1]) == 2 * float(ref.slopes[0])
    _close(2 * a + pl.lower.double(), 2 * float(ref.lower), dtype, scale=4.0)
    _close(2 * a + pl.upper.double(), 2 * float(ref.upper), dtype, scale=4.0)
    # range: x > 0 fixed, sigma increasing: [2 sigma(-1), 2 sigma(3)]
    lo, hi = _interval("mul_sigmoid", dtype, 2.0, 2.0, -1.0, 3.0)
    _encloses(lo, hi, 2 / (1 + math.e), 2 / (1 + math.exp(-3)), dtype)


@DTYPES
def test_sigmoid_tanh_with_fixed_x_is_half_tanh(dtype: torch.dtype) -> None:
    # sigma(x) tanh(y) with x = [0, 0]: sigma(0) = 1/2, so f = tanh(y)/2 on y in [-1, 1].
    # A = sigma'(0) * (tanh(-1) + tanh 1) / 2 = 0, B = (1/2 + 1/2)/2 * chord(tanh) = tanh(1) / 2,
    # g = (tanh y - tanh(1) y) / 2: offsets +-G_TANH1 / 2 (for a slope B: +-G(2B)/2); range +-tanh(1) / 2.
    pl = _planes("sigmoid_tanh", dtype, 0.0, 0.0, -1.0, 1.0)
    assert abs(float(pl.slopes[0])) <= 1e-16
    _close(pl.slopes[1], K_TANH1 / 2, dtype)
    _close(pl.upper, G_TANH1 / 2, dtype)
    g = G(2 * float(pl.slopes[1]))
    _encloses(pl.lower, pl.upper, -g / 2, g / 2, dtype)
    lo, hi = _interval("sigmoid_tanh", dtype, 0.0, 0.0, -1.0, 1.0)
    _encloses(lo, hi, -K_TANH1 / 2, K_TANH1 / 2, dtype)


@DTYPES
def test_sigmoid_tanh_at_origin(dtype: torch.dtype) -> None:
    # Degenerate at (0, 0): f = 0, A = sigma'(0) * tanh(0) = 0, B = sigma(0) * tanh'(0) = 1/2;
    # g(0, 0) = 0 so both offsets are 0.
    pl = _planes("sigmoid_tanh", dtype, 0.0, 0.0, 0.0, 0.0)
    assert (float(pl.slopes[0]), float(pl.slopes[1])) == (0.0, 0.5)
    _encloses(pl.lower, pl.upper, 0.0, 0.0, dtype)
