"""Soundness of every registered relaxation, checked against the exact function in float64.

Parametrised over ``RELAXATIONS`` x input families (all ordered pairs for two-input operations)
x {float32, float64}.  Each case checks uniform samples, a dense grid (corners and edges
included) and a projected gradient search for the four violation objectives
(``f - upper plane``, ``lower plane - f``, ``f - interval hi``, ``interval lo - f``).
"""

from __future__ import annotations

import functools
import zlib

import pytest
import torch

from rnnguard import testing as T
from rnnguard.relaxations import RELAXATIONS

DTYPES = (torch.float32, torch.float64)
N_BOXES = 64  # intervals per family
SAMPLES = {1: 2000, 2: 256}  # uniform points per box: 128k per unary case, 1M per binary op+dtype
GRID = {1: 257, 2: 17}  # grid nodes per axis
MONOTONE = ("tanh", "sigmoid", "relu")


def _cases() -> list:
    out = []
    for name, op in RELAXATIONS.items():
        combos = [(f,) for f in T.FAMILY_NAMES] if op.arity == 1 else T.family_pairs()
        for combo in combos:
            for dtype in DTYPES:
                ident = f"{name}-{'*'.join(combo)}-{str(dtype).removeprefix('torch.')}"
                out.append(pytest.param(name, combo, dtype, id=ident))
    return out


CASES = _cases()



@functools.lru_cache(maxsize=None)
def _families(dtype: torch.dtype) -> dict:
    return T.interval_families(dtype, n=N_BOXES, generator=torch.Generator().manual_seed(1234))


def _bounds(combo: tuple[str, ...], dtype: torch.dtype) -> list[torch.Tensor]:
    fams = _families(dtype)
    out: list[torch.Tensor] = []
    for name in combo:
        out += [t.clone() for t in fams[name]]
    return out


def _gen(*key: object) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _tight_tol(name: str, dtype: torch.dtype) -> float:
    # the gradient search converges to ~1e-9 on 1-D boxes; on very elongated 2-D boxes the
    # sign steps stop ~1e-4 short of the true extremum, so only gross looseness is flagged there
    return max(T.tol(dtype), 1e-8) if RELAXATIONS[name].arity == 1 else 1e-3


@pytest.mark.parametrize("name, combo, dtype", CASES)
def test_no_violation(name: str, combo: tuple[str, ...], dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    op = RELAXATIONS[name]
    bounds = _bounds(combo, dtype)
    lows, highs = bounds[0::2], bounds[1::2]
    tol = T.soundness_tol(dtype)
    g = _gen(name, combo, str(dtype))

    sampled = T.worst_violation(op, bounds, T.sample_box(lows, highs, SAMPLES[op.arity], g))
    gridded = T.worst_violation(op, bounds, T.grid_box(lows, highs, GRID[op.arity]))
    best = T.gradient_search(op, bounds, generator=g, reduce=False)
    assert sampled <= tol, f"uniform samples leave the relaxation by {sampled:.3e}"
    assert gridded <= tol, f"grid points leave the relaxation by {gridded:.3e}"
    assert float(best.max()) <= tol, f"gradient search leaves the relaxation by {float(best.max()):.3e}"

    # tightness: plane offsets and interval ends are attained (up to search accuracy)
    gap = float(-best.min())
    assert gap <= _tight_tol(name, dtype), f"relaxation looser than needed by {gap:.3e}"


@pytest.mark.parametrize("name, combo, dtype", CASES)
def test_well_formed(name: str, combo: tuple[str, ...], dtype: torch.dtype) -> None:
    op = RELAXATIONS[name]
    bounds = _bounds(combo, dtype)
    lows, highs = bounds[0::2], bounds[1::2]
    lo, hi = op.interval(*bounds)
    pl = op.planes(*bounds)
    m = lows[0].shape
    for t in (lo, hi, pl.lower, pl.upper, *pl.slopes):
        assert t.dtype == dtype and t.shape == m
        assert torch.isfinite(t).all()
    assert len(pl.slopes) == op.arity
    assert (lo <= hi).all()
    assert (pl.lower <= pl.upper).all()

    # at every corner the plane band and the interval overlap (both contain f there)
    cs = T.corners(lows, highs)
    lin = sum(s.to(torch.float64).unsqueeze(-1) * c for s, c in zip(pl.slopes, cs))
    band_lo, band_hi = lin + pl.lower.to(torch.float64).unsqueeze(-1), lin + pl.upper.to(torch.float64).unsqueeze(-1)
    scale = 1 + lin.abs() + pl.upper.abs().to(torch.float64).unsqueeze(-1)
    slack = T.soundness_tol(dtype) * scale
    assert (torch.maximum(band_lo, lo.to(torch.float64).unsqueeze(-1))
            <= torch.minimum(band_hi, hi.to(torch.float64).unsqueeze(-1)) + slack).all()

    # exactness: the extrema of every registered op over a box lie at its corners
    # (monotone 1-D ops: interval == (f(l), f(u)); the products are monotone per coordinate)
    # (outward rounding is relative to the largest magnitude at the corners, hence that scale)
    fc = op.fn(*cs)
    f_lo, f_hi = fc.amin(-1), fc.amax(-1)
    allowed = T.tol(dtype) * (1 + fc.abs().amax(-1))
    assert ((lo.to(torch.float64) - f_lo).abs() <= allowed).all()
    assert ((hi.to(torch.float64) - f_hi).abs() <= allowed).all()
    if name in MONOTONE:
        f_l, f_u = op.fn(lows[0].to(torch.float64)), op.fn(highs[0].to(torch.float64))
        assert ((lo.to(torch.float64) - f_l).abs() <= allowed).all()
        assert ((hi.to(torch.float64) - f_u).abs() <= allowed).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", list(RELAXATIONS))
def test_degenerate_box_is_a_point(name: str, dtype: torch.dtype) -> None:
    """With every input degenerate, interval and plane band shrink to f(x) (up to rounding)."""
    op = RELAXATIONS[name]
    pts = _families(dtype)["degenerate"][0]
    g = _gen("degenerate", name)
    bounds = []
    for i in range(op.arity):
        p = pts if i == 0 else pts[torch.randperm(pts.numel(), generator=g)]
        bounds += [p, p.clone()]
    lo, hi = op.interval(*bounds)
    pl = op.planes(*bounds)
    x64 = [b.to(torch.float64) for b in bounds[0::2]]
    f = op.fn(*x64)
    lin = sum(s.to(torch.float64).abs() * x.abs() for s, x in zip(pl.slopes, x64))
    t = T.tol(dtype)
    assert ((hi.to(torch.float64) - lo.to(torch.float64)) <= 2 * t * (1 + f.abs())).all()
    assert ((pl.upper.to(torch.float64) - pl.lower.to(torch.float64)) <= 2 * t * (1 + f.abs() + lin)).all()
    assert torch.isfinite(torch.stack(pl.slopes)).all()


def _grad_bounds(arity: int, dtype: torch.dtype) -> list[torch.Tensor]:
    fams = _families(dtype)
    names = ("degenerate", "tiny", "narrow", "wide", "positive", "negative", "straddling", "large")
    out = []
    for i in range(arity):
        order = names if i == 0 else names[::-1]
        out += [torch.cat([fams[n][j][:4] for n in order]) for j in (0, 1)]
    return [b.clone().requires_grad_(True) for b in out]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", list(RELAXATIONS))
def test_differentiable(name: str, dtype: torch.dtype) -> None:
    """Certified training backpropagates through the relaxations: gradients exist and are finite."""
    op = RELAXATIONS[name]
    bounds = _grad_bounds(op.arity, dtype)
    lo, hi = op.interval(*bounds)
    pl = op.planes(*bounds)
    outs = [lo, hi, pl.lower, pl.upper, *pl.slopes]
    w = torch.linspace(0.5, 1.5, lo.numel(), dtype=dtype)
    loss = sum((o * w).sum() for o in outs)
    grads = torch.autograd.grad(loss, bounds, allow_unused=True)
    assert any(gr is not None for gr in grads)
    for gr in grads:
        if gr is not None:
            assert torch.isfinite(gr).all()


@pytest.mark.parametrize("name", list(RELAXATIONS))
def test_offset_gradients_match_finite_differences(name: str) -> None:
    """Envelope theorem: d(offset)/d(bounds) is the partial derivative at the extreme point."""
    op = RELAXATIONS[name]
    g = _gen("fd", name)
    m = 16
    bounds = []
    for _ in range(op.arity):
        c = -3 + 6 * torch.rand(m, generator=g, dtype=torch.float64)
        w = 0.2 + 2 * torch.rand(m, generator=g, dtype=torch.float64)
        bounds += [c - w / 2, c + w / 2]
    bounds = [b.requires_grad_(True) for b in bounds]

    def outputs(*bs: torch.Tensor) -> torch.Tensor:
        lo, hi = op.interval(*bs)
        pl = op.planes(*bs)
        return torch.stack([lo, hi, pl.lower, pl.upper, *pl.slopes])

    out = outputs(*bounds)
    eps = 1e-6
    for i, b in enumerate(bounds):
        for k in range(out.shape[0]):
            (gk,) = torch.autograd.grad(out[k].sum(), b, retain_graph=True)
            with torch.no_grad():
                plus = [x + eps * (j == i) for j, x in enumerate(bounds)]
                minus = [x - eps * (j == i) for j, x in enumerate(bounds)]
                fd = (outputs(*plus)[k] - outputs(*minus)[k]) / (2 * eps)
            torch.testing.assert_close(gk, fd, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", list(RELAXATIONS))
def test_tightest_points_hold_in_exact_arithmetic(name: str, dtype: torch.dtype) -> None:
    """Where the gradient search gets closest to each bound, re-check with 200-bit arithmetic:
    the relaxation must enclose the real function, not just its float64 evaluation."""
    refs = T.mp_references()
    assert name in refs, f"add an mpmath reference for {name!r} to rnnguard.testing.mp_references"
    op = RELAXATIONS[name]
    names = T.FAMILY_NAMES
    combos = [(f,) for f in names] if op.arity == 1 else [*zip(names, names), *zip(names, names[1:] + names[:1])]
    g = _gen("exact", name, str(dtype))
    for combo in combos:
        bounds = [b[:12] for b in _bounds(combo, dtype)]
        _, pts = T.gradient_search(op, bounds, steps=60, generator=g, return_points=True)
        pts = tuple(p.T for p in pts)  # (m, 4): each box's tightest point for each objective
        exact = T.exact_violations(op, refs[name], bounds, pts)
        assert float(exact.max()) <= 0.0, f"{combo}: exact violation {float(exact.max()):.3e}"
