"""Reusable soundness checks for the relaxations in :mod:`rnnguard.relaxations`.

A relaxation is checked against the EXACT operation: bounds may be float32 or float64, but the
points, the function and the bound expressions are always evaluated in float64 (float32 bounds are
widened to float64 exactly), so a float32 relaxation must enclose the real function, not its
float32 rounding.

Violations are reported *normalised*: the amount by which ``f`` leaves a bound divided by
``1 + scale`` (``scale = |f| + sum_i |s_i x_i|`` for the planes, ``|f|`` for the interval), i.e. an
absolute + relative error that the ``TOL*`` constants bound.  Positive = unsound, ``<= 0`` = sound.

Typical use::

    fams = interval_families(torch.float32)
    lo, hi = fams["wide"]
    pts = sample_box((lo,), (hi,), 1000, torch.Generator().manual_seed(0))
    assert worst_violation(RELAXATIONS["tanh"], (lo, hi), pts) <= soundness_tol(torch.float32)
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch
from torch import Tensor

from rnnguard.relaxations.base import OpRelaxation

__all__ = [
    "TOL64",
    "TOL32",
    "SOUND_TOL",
    "FAMILY_NAMES",
    "tol",
    "soundness_tol",
    "interval_families",
    "sample_box",
    "grid_box",
    "corners",
    "violations",
    "worst_violation",
    "gradient_search",
    "family_pairs",
    "mp_references",
    "exact_violations",
]

#: tightness tolerance (absolute + relative) for float64 relaxations
TOL64 = 1e-12
#: tightness tolerance (absolute + relative) for float32 relaxations (a few float32 ulps)
TOL32 = 1e-6
#: soundness tolerance for every dtype: relaxations are rounded OUTWARD and all checks run in
#: float64, so the only admissible excess is float64 evaluation noise of the check itself.
SOUND_TOL = TOL64

FAMILY_NAMES: tuple[str, ...] = (
    "degenerate",
    "tiny",
    "narrow",
    "wide",
    "positive",
    "negative",
    "straddling",
    "large",
)

_W = torch.float64


def tol(dtype: torch.dtype) -> float:
    """Tightness tolerance for relaxations produced in ``dtype`` (outward rounding costs ulps)."""
    return TOL64 if dtype == torch.float64 else TOL32


def soundness_tol(dtype: torch.dtype) -> float:  # noqa: ARG001 - same for all dtypes on purpose
    """Admissible normalised violation; independent of ``dtype`` because checks run in float64."""
    return SOUND_TOL


# ----------------------------------------------------------------------------- input families
def interval_families(
    dtype: torch.dtype, n: int = 64, generator: torch.Generator | None = None
) -> dict[str, tuple[Tensor, Tensor]]:
    """``n`` intervals ``(lower, upper)`` (1-D tensors in ``dtype``) for each of :data:`FAMILY_NAMES`.

    degenerate: ``l == u`` (includes 0); tiny: widths ``1e-9..1e-5``; narrow: widths ``1e-3..0.5``;
    wide: up to ``[-50, 50]``; positive/negative: one-sided (``l >= 0`` / ``u <= 0``, touching 0);
    straddling: ``l < 0 < u``; large: ``|x|`` in ``10..100`` (saturation), both signs.
    Float32 intervals are the float64 ones rounded outward, so ``l <= u`` always holds.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)

    def u(a: float, b: float) -> Tensor:
        return a + (b - a) * torch.rand(n, generator=g, dtype=_W)

    def sign() -> Tensor:
        return torch.where(torch.rand(n, generator=g, dtype=_W) < 0.5, -1.0, 1.0).to(_W)

    fams: dict[str, tuple[Tensor, Tensor]] = {}
    pt = u(-10, 10)
    pt[:4] = torch.tensor([0.0, 1.0, -1.0, 30.0], dtype=_W)[: min(4, n)]
    fams["degenerate"] = (pt, pt.clone())
    c, w = u(-6, 6), 10 ** u(-9, -5)
    c[:2] = 0.0
    fams["tiny"] = (c - w / 2, c + w / 2)
    c, w = u(-6, 6), 10 ** u(-3, torch.log10(torch.tensor(0.5)).item())
    fams["narrow"] = (c - w / 2, c + w / 2)
    lo, hi = u(-50, -1), u(1, 50)
    lo[0], hi[0] = -50.0, 50.0
    fams["wide"] = (lo, hi)
    a, b = u(0, 8), u(0, 8)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    lo[:2] = 0.0
    fams["positive"] = (lo, hi)
    a, b = u(-8, 0), u(-8, 0)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    hi[:2] = 0.0
    fams["negative"] = (lo, hi)
    fams["straddling"] = (u(-6, -1e-3), u(1e-3, 6))
    a, b, s = u(10, 100), u(10, 100), sign()
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    fams["large"] = (torch.where(s > 0, lo, -hi), torch.where(s > 0, hi, -lo))
    assert tuple(fams) == FAMILY_NAMES
    return {k: _outward_cast(lo, hi, dtype) for k, (lo, hi) in fams.items()}


def _outward_cast(lo: Tensor, hi: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    if dtype == _W:
        return lo, hi
    inf = torch.tensor(float("inf"), dtype=dtype)
    l, h = lo.to(dtype), hi.to(dtype)
    l = torch.where(l.to(_W) > lo, torch.nextafter(l, -inf), l)
    h = torch.where(h.to(_W) < hi, torch.nextafter(h, inf), h)
    degenerate = lo == hi
    return torch.where(degenerate, lo.to(dtype), l), torch.where(degenerate, lo.to(dtype), h)


# ----------------------------------------------------------------------------- points in boxes
def sample_box(
    lows: Sequence[Tensor], highs: Sequence[Tensor], n: int, generator: torch.Generator | None = None
) -> tuple[Tensor, ...]:
    """``n`` uniform float64 points in each box: one ``(m, n)`` tensor per input dimension."""
    out = []
    for lo, hi in zip(lows, highs):
        lo64, hi64 = lo.detach().to(_W).unsqueeze(-1), hi.detach().to(_W).unsqueeze(-1)
        r = torch.rand(*lo.shape, n, generator=generator, dtype=_W)
        out.append(torch.minimum(torch.maximum(lo64 + (hi64 - lo64) * r, lo64), hi64))
    return tuple(out)


def grid_box(lows: Sequence[Tensor], highs: Sequence[Tensor], n_per_dim: int) -> tuple[Tensor, ...]:
    """Dense tensor-product grid (``n_per_dim`` nodes per axis, both endpoints exactly included),
    so corners and edges are covered; one ``(m, n_per_dim ** k)`` float64 tensor per dimension."""
    t = torch.linspace(0.0, 1.0, n_per_dim, dtype=_W)
    axes = []
    for lo, hi in zip(lows, highs):
        lo64, hi64 = lo.detach().to(_W).unsqueeze(-1), hi.detach().to(_W).unsqueeze(-1)
        ax = lo64 + (hi64 - lo64) * t
        ax[..., 0], ax[..., -1] = lo64[..., 0], hi64[..., 0]
        axes.append(torch.minimum(torch.maximum(ax, lo64), hi64))
    k = len(axes)
    out = []
    for i, ax in enumerate(axes):
        shape = [1] * k
        shape[i] = n_per_dim
        full = ax.reshape(*ax.shape[:-1], *shape).expand(*ax.shape[:-1], *([n_per_dim] * k))
        out.append(full.reshape(*ax.shape[:-1], n_per_dim**k))
    return tuple(out)


def corners(lows: Sequence[Tensor], highs: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """The ``2**k`` corners of each box: one ``(m, 2**k)`` float64 tensor per dimension."""
    return grid_box(lows, highs, 2)


# ----------------------------------------------------------------------------- violations
def _split(bounds: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    return list(bounds[0::2]), list(bounds[1::2])


def _relaxation64(op: OpRelaxation, bounds: Sequence[Tensor]) -> tuple[Tensor, Tensor, list[Tensor], Tensor, Tensor]:
    with torch.no_grad():
        lo, hi = op.interval(*bounds)
        pl = op.planes(*bounds)
    return (
        lo.to(_W).unsqueeze(-1),
        hi.to(_W).unsqueeze(-1),
        [s.to(_W).unsqueeze(-1) for s in pl.slopes],
        pl.lower.to(_W).unsqueeze(-1),
        pl.upper.to(_W).unsqueeze(-1),
    )


def _raw_and_scale(op: OpRelaxation, rel: tuple, points: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Raw excesses of the four objectives (stacked first) and the matching ``1 + scale``."""
    lo, hi, slopes, plo, phi = rel
    f = op.fn(*points)
    terms = [s * x for s, x in zip(slopes, points)]
    lin = sum(terms)
    raw = torch.stack(
        [
            f - (lin + phi),  # above the upper plane
            (lin + plo) - f,  # below the lower plane
            f - hi,  # above the interval
            lo - f,  # below the interval
        ]
    )
    with torch.no_grad():
        pscale = 1 + f.abs() + sum(t.abs() for t in terms)
        iscale = 1 + f.abs()
    return raw, torch.stack([pscale, pscale, iscale, iscale])


def _violations_from(op: OpRelaxation, rel: tuple, points: Sequence[Tensor], normalise: bool = True) -> Tensor:
    raw, scale = _raw_and_scale(op, rel, points)
    return raw / scale if normalise else raw


def violations(op: OpRelaxation, bounds: Sequence[Tensor], points: Sequence[Tensor]) -> Tensor:
    """Normalised violations, shape ``(4, *points[0].shape)``, of the four objectives
    ``f - upper plane``, ``lower plane - f``, ``f - interval hi``, ``interval lo - f``.

    ``bounds = (l_1, u_1, ..., l_k, u_k)`` (shape ``(m,)``, any dtype) and ``points`` (float64,
    shape ``(m, p)``) must match; ``f`` is evaluated in float64.  NaNs count as ``+inf``.
    """
    v = _violations_from(op, _relaxation64(op, bounds), [p.to(_W) for p in points])
    return torch.nan_to_num(v, nan=float("inf"))


def worst_violation(op: OpRelaxation, bounds: Sequence[Tensor], points: Sequence[Tensor]) -> float:
    """Largest normalised amount by which ``f(points)`` leaves the interval or the planes."""
    return float(violations(op, bounds, points).max())


def gradient_search(
    op: OpRelaxation,
    bounds: Sequence[Tensor],
    steps: int = 100,
    restarts: int = 8,
    generator: torch.Generator | None = None,
    reduce: bool = True,
    pool: int = 256,
    return_points: bool = False,
) -> float | Tensor | tuple[Tensor, tuple[Tensor, ...]]:
    """Projected sign-gradient ascent (float64, clamped to the box, geometrically shrinking step)
    on each of the four violation objectives, per box from all its corners and from the
    ``restarts`` best points for that objective among ``pool`` random points and a grid of about
    ``pool`` nodes (so edge extrema are seeded too).

    Returns the largest normalised violation met along every trajectory, or with ``reduce=False``
    the best value per objective and box, shape ``(4, m)`` (order as in :func:`violations`).
    ``bounds`` are flattened, so boxes of any shape work.  With ``return_points=True`` it returns
    ``(best, points)``: the ``(4, m)`` values and, per input, the ``(4, m)`` float64 points where
    they were met (the tightest spots of each bound, e.g. for a high-precision re-check).
    """
    bounds = [b.detach().reshape(-1) for b in bounds]
    lows, highs = _split(bounds)
    m = lows[0].numel()
    rel = _relaxation64(op, bounds)
    # starting points: per objective the best pool points, plus every corner
    per_axis = max(2, round(pool ** (1.0 / len(lows))))
    cand = tuple(
        torch.cat([r, q], -1)
        for r, q in zip(sample_box(lows, highs, max(pool, restarts), generator), grid_box(lows, highs, per_axis))
    )
    score = torch.nan_to_num(_violations_from(op, rel, cand, normalise=False), nan=float("inf"))
    top = score.topk(restarts, dim=-1).indices  # (4, m, R)
    corner = corners(lows, highs)
    xs = [
        torch.cat([torch.gather(c.unsqueeze(0).expand(4, -1, -1), 2, top), k.unsqueeze(0).expand(4, -1, -1)], -1)
        .permute(1, 0, 2)
        .contiguous()
        for c, k in zip(cand, corner)
    ]  # one (m, 4 objectives, R + 2**k) tensor per input
    lo64 = [lo.to(_W).reshape(-1, 1, 1) for lo in lows]
    hi64 = [hi.to(_W).reshape(-1, 1, 1) for hi in highs]
    widths = [h - l for l, h in zip(lo64, hi64)]
    rel = tuple(r.unsqueeze(-1) if isinstance(r, Tensor) else [s.unsqueeze(-1) for s in r] for r in rel)
    best = torch.full((4, m), -float("inf"), dtype=_W)
    best_x = [torch.zeros(4, m, dtype=_W) for _ in xs]
    gamma = (2e-8) ** (1.0 / max(steps, 1))
    for t in range(steps + 1):
        xs = [x.detach().requires_grad_(True) for x in xs]
        raw, scale = _raw_and_scale(op, rel, xs)  # (4 objectives, m, 4 point sets, P)
        own = torch.diagonal(raw, dim1=0, dim2=2)  # (m, P, 4): objective j at its own points
        with torch.no_grad():
            norm = torch.nan_to_num(own / torch.diagonal(scale, dim1=0, dim2=2), nan=float("inf"))
            val, idx = norm.max(1)  # (m, 4)
            better = val.T > best
            best = torch.where(better, val.T, best)
            for bx, x in zip(best_x, xs):
                at = torch.gather(x, 2, idx.unsqueeze(-1)).squeeze(-1).T  # (4, m)
                bx.copy_(torch.where(better, at, bx))
        if t == steps:
            break
        grads = torch.autograd.grad(own.sum(), xs, allow_unused=True)
        step = 0.05 * gamma**t
        with torch.no_grad():
            xs = [
                x if g is None else torch.minimum(torch.maximum(x + step * w * torch.nan_to_num(g).sign(), l), h)
                for x, g, w, l, h in zip(xs, grads, widths, lo64, hi64)
            ]
    if return_points:
        return best, tuple(best_x)
    return float(best.max()) if reduce else best


def family_pairs(names: Sequence[str] = FAMILY_NAMES) -> list[tuple[str, str]]:
    """All ordered pairs of family names (the input boxes of the two-input operations)."""
    return list(itertools.product(names, names))


# ----------------------------------------------------------------------------- exact re-check
def mp_references() -> dict[str, Callable[..., object]]:
    """High-precision (mpmath) versions of the registered operations, by registry name.

    mpmath ships with torch's sympy dependency; it is imported lazily."""
    import mpmath as mp

    def sig(x: object) -> object:
        return 1 / (1 + mp.exp(-x))

    return {
        "tanh": mp.tanh,
        "sigmoid": sig,
        "relu": lambda x: x if x > 0 else mp.mpf(0),
        "sigmoid_tanh": lambda x, y: sig(x) * mp.tanh(y),
        "mul_sigmoid": lambda x, y: x * sig(y),
        "mul": lambda x, y: x * y,
    }


def exact_violations(
    op: OpRelaxation,
    reference: Callable[..., object],
    bounds: Sequence[Tensor],
    points: Sequence[Tensor],
    prec: int = 200,
) -> Tensor:
    """Violations of the four objectives (as :func:`violations`, NOT normalised), evaluated with
    ``prec``-bit mpmath arithmetic on the exact values of the float bounds, slopes and points.

    ``bounds`` have shape ``(m,)`` and ``points`` shape ``(m, p)``; returns ``(4, m, p)`` float64
    (each entry rounded from the exact value; any positive entry is a genuine unsoundness)."""
    import mpmath as mp

    with torch.no_grad():
        lo, hi = op.interval(*bounds)
        pl = op.planes(*bounds)
    rows = [lo, hi, pl.lower, pl.upper, *pl.slopes]
    rows = [r.to(_W).reshape(-1).tolist() for r in rows]
    pts = [p.to(_W).reshape(p.shape[0], -1).tolist() for p in points]
    m, n = len(pts[0]), len(pts[0][0])
    out = torch.empty(4, m, n, dtype=_W)
    with mp.workprec(prec):
        for i in range(m):
            lo_i, hi_i, plo, phi = (mp.mpf(r[i]) for r in rows[:4])
            slopes = [mp.mpf(r[i]) for r in rows[4:]]
            for j in range(n):
                x = [mp.mpf(p[i][j]) for p in pts]
                f = reference(*x)
                lin = mp.fsum(s * xi for s, xi in zip(slopes, x))
                for k, v in enumerate((f - (lin + phi), (lin + plo) - f, f - hi_i, lo_i - f)):
                    out[k, i, j] = float(v)
    return out
