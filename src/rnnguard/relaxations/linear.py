"""Non-parallel linear bounds for the back-substitution (DeepPoly/CROWN-style) domain.

For an operation ``f`` of the registry and input box ``[l_1,u_1] x ... x [l_k,u_k]``

    sum_i lower_slopes[i] * x_i + lower_offset  <=  f(x)  <=  sum_i upper_slopes[i] * x_i + upper_offset.

Every method only CHOOSES slopes (heuristics, closed forms, sampled LPs); the offsets always come
from :func:`~rnnguard.relaxations.functions.exact_offsets`, the exact extremum of
``f - slopes . x`` over the whole box from a complete candidate set, rounded outward.  Soundness
therefore never depends on the case analysis, the sampling or the LP solver.

Methods (:data:`LINEAR_METHODS`):

* ``parallel``: the Cert-RNN planes of the registry (same slopes below and above).
* ``deepcert``: DeepCert's lines for tanh/sigmoid (chord + parallel tangent, or the two tangents
  through the endpoints on straddling intervals), kept only where they enclose less area than the
  parallel line; relu: chord above, adaptive 0/1 slope below; two-input ops: per bound, the
  smallest-volume plane among six closed-form slope choices (the four three-corner planes, which
  include McCormick's for ``mul``, the Cert-RNN corner fit and the tangent plane at the centre).
* ``anchored`` (the back-substitution default): ``deepcert``, except for the gate products
  ``sigmoid_tanh`` and ``mul_sigmoid``, which take the three-corner (McCormick-style) pair anchored
  at the gate's lower end (``_GATE_ANCHORED``: the planes CROWN composes, with exact offsets).
  Their volume can exceed the smallest one, but chained through time they are far tighter.
* ``lp``: R2's sampled LP planes for the two-input ops (best of LP and ``deepcert`` by volume);
  one-input ops use ``deepcert``.

All computation is float64 whatever the caller's dtype; slopes are rounded to the caller's dtype
BEFORE their offsets are computed, and offsets are rounded outward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rnnguard.relaxations import functions as _f
from rnnguard.relaxations.functions import WORK, exact_offsets

__all__ = ["LINEAR_METHODS", "LinearBounds", "candidate_bounds", "exact_offsets", "linear_bounds"]

LINEAR_METHODS: tuple[str, ...] = ("parallel", "deepcert", "anchored", "lp")
#: widths below this use derivatives instead of divided differences (as in ``functions``)
_NARROW = 1e-7
#: bisection steps for DeepCert's case-3 tangent points (slope accuracy is irrelevant to soundness)
_BISECT = 60
#: sample points per LP (plus the 4 corners), as in R2 (100)
LP_SAMPLES = 100
#: extra LP constraints per box edge (R2 uses only the corners; see _region_points)
LP_EDGE_POINTS = 8
#: LPs per HiGHS call (block-diagonal); smaller problems solve faster per LP (measured 128 < 512 < 2048)
LP_CHUNK = 128


@dataclass(frozen=True)
class LinearBounds:
    """``sum_i lower_slopes[i]*x_i + lower_offset <= f(x) <= sum_i upper_slopes[i]*x_i + upper_offset``
    on the box; one slope tensor per operand, all tensors of the bounds' shape (plus a trailing
    candidate dimension ``K`` for :func:`candidate_bounds`)."""

    lower_slopes: tuple[Tensor, ...]
    lower_offset: Tensor
    upper_slopes: tuple[Tensor, ...]
    upper_offset: Tensor


_UNARY: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "tanh": (torch.tanh, _f._tanh_prime),
    "sigmoid": (torch.sigmoid, _f._sigmoid_prime),
    "relu": (torch.relu, lambda x: (x > 0).to(x.dtype)),
}


# ----------------------------------------------------------------------------- helpers
def _finite(s: Tensor, fallback: Tensor) -> Tensor:
    return torch.where(torch.isfinite(s), s, fallback)


def _offsets_for(op: str, slopes: list[Tensor], bounds64: list[Tensor], dtype: torch.dtype) -> tuple[list[Tensor], Tensor, Tensor]:
    """Round float64 slopes to ``dtype`` and compute their exact offsets (outward, in ``dtype``).

    ``slopes`` may carry a trailing candidate dimension; the bounds are broadcast to it."""
    rounded = [_f._rounded(s, dtype) for s in slopes]
    if rounded[0].dim() > bounds64[0].dim():
        bounds64 = [b.unsqueeze(-1) for b in bounds64]
    ts = torch.broadcast_tensors(*rounded, *bounds64)
    lo, hi = _f._OFFSETS[op](*ts[: len(rounded)], *ts[len(rounded) :], dtype)
    return [t.expand_as(lo) for t in rounded], lo, hi


def _centre_values(slopes: list[Tensor], offset: Tensor, centres: list[Tensor]) -> Tensor:
    """Value of each plane at the box centre (its mean over the box) in float64."""
    return sum(s * c for s, c in zip(slopes, centres)) + offset.to(WORK)


def _first_best(values: Tensor) -> Tensor:
    """Index (keepdim) of the FIRST candidate within ``1e-9 (1 + |max|)`` of the maximum.

    Exact ties and rounding-level differences then never flip the choice, so the planes (and the
    certificates) do not depend on how a batch was composed (matmul rounding differs with batch
    size)."""
    best = values.amax(-1, keepdim=True)
    good = values >= best - 1e-9 * (1 + best.abs())
    return good.to(torch.uint8).argmax(-1, keepdim=True)


def _select(
    op: str, lower: list[Tensor], upper: list[Tensor], bounds64: list[Tensor], dtype: torch.dtype
) -> tuple[list[Tensor], Tensor, list[Tensor], Tensor]:
    """Per bound, the candidate (trailing dim) with the least volume between plane and ``f``.

    Volume = (mean of ``f`` - mean of plane) x box volume and the mean of a plane is its value at
    the centre, so the lower bound maximises, the upper minimises, the centre value."""
    centres = [((bounds64[2 * i] + bounds64[2 * i + 1]) / 2).unsqueeze(-1) for i in range(len(lower))]
    ls, llo, lhi = _offsets_for(op, lower, bounds64, dtype)
    if all(a is b for a, b in zip(lower, upper)):  # same candidates for both bounds: one offset search
        us, uhi = ls, lhi
    else:
        us, _, uhi = _offsets_for(op, upper, bounds64, dtype)
    li = _first_best(torch.nan_to_num(_centre_values(ls, llo, centres), nan=-float("inf")))
    ui = _first_best(-torch.nan_to_num(_centre_values(us, uhi, centres), nan=float("inf")))

    def take(t: Tensor, i: Tensor) -> Tensor:
        return torch.gather(t, -1, i).squeeze(-1)

    return (
        [take(s, li) for s in ls],
        take(llo, li),
        [take(s, ui) for s in us],
        take(uhi, ui),
    )


def _pack(lower: list[Tensor], lo: Tensor, upper: list[Tensor], hi: Tensor, dtype: torch.dtype) -> LinearBounds:
    return LinearBounds(tuple(s.to(dtype) for s in lower), lo, tuple(s.to(dtype) for s in upper), hi)


# ----------------------------------------------------------------------------- one-input slopes
def _bisect(fun: Callable[[Tensor], Tensor], a: Tensor, b: Tensor, neg_at_a: bool) -> Tensor:
    """Vectorised bisection for a sign change of ``fun`` on ``[a, b]`` (fixed iteration count)."""
    for _ in range(_BISECT):
        m = (a + b) / 2
        v = fun(m)
        go_right = (v < 0) if neg_at_a else (v > 0)
        a, b = torch.where(go_right, m, a), torch.where(go_right, b, m)
    return (a + b) / 2


def _deepcert_unary_slopes(op: str, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """DeepCert's (lower, upper) slopes on ``[l, u]`` (float64).

    Cases 1/2 (chord lies on one side): chord slope for both lines (chord + parallel tangent).
    Case 3 (``f'(l) < k`` and ``f'(u) < k``, straddling): upper = tangent at ``d1 in (0, u)``
    through ``(l, f(l))``, lower = tangent at ``d2 in (l, 0)`` through ``(u, f(u))``.
    ReLU: chord above, slope 0 or 1 below (whichever leaves less area, as CROWN/DeepPoly)."""
    f, df = _UNARY[op]
    if op == "relu":
        width = u - l
        chord = torch.where(width > 0, torch.relu(u) - torch.relu(l), torch.zeros_like(l)) / torch.where(
            width > 0, width, torch.ones_like(width)
        )
        chord = torch.where(width > 0, chord, (l > 0).to(l.dtype))
        lower = torch.where(l >= 0, 1.0, torch.where(u <= 0, 0.0, (u >= -l).to(l.dtype))).to(l.dtype)
        return lower, chord
    k = _f._divided_difference(f, df, l, u)
    wide = (u - l) >= _NARROW
    case3 = wide & (l < 0) & (u > 0) & (df(l) < k) & (df(u) < k)
    lc, uc = torch.where(case3, l, -torch.ones_like(l)), torch.where(case3, u, torch.ones_like(u))
    fl, fu = f(lc), f(uc)
    # s1(d) = f'(d)(d-l) - (f(d)-f(l)) > 0 at 0, < 0 at u;  s2(d) = f'(d)(u-d) - (f(u)-f(d)) < 0 at l, > 0 at 0
    d1 = _bisect(lambda d: df(d) * (d - lc) - (f(d) - fl), torch.zeros_like(l), uc, neg_at_a=False)
    d2 = _bisect(lambda d: df(d) * (uc - d) - (fu - f(d)), lc, torch.zeros_like(l), neg_at_a=True)
    return torch.where(case3, df(d2), k), torch.where(case3, df(d1), k)


def _unary_candidate_slopes(op: str, l: Tensor, u: Tensor) -> Tensor:
    """Fixed-K slope candidates (trailing dim) for a one-input op, float64."""
    f, df = _UNARY[op]
    if op == "relu":
        _, chord = _deepcert_unary_slopes(op, l, u)
        return torch.stack([torch.zeros_like(l), chord, torch.ones_like(l)], -1)
    k = _f._divided_difference(f, df, l, u)
    dl, du = _deepcert_unary_slopes(op, l, u)
    return torch.stack([k, df(l), df(u), df((l + u) / 2), dl, du], -1)


# ----------------------------------------------------------------------------- two-input slopes
_PARTIALS: dict[str, Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "sigmoid_tanh": lambda x, y: (_f._sigmoid_prime(x) * torch.tanh(y), torch.sigmoid(x) * _f._tanh_prime(y)),
    "mul_sigmoid": lambda x, y: (torch.sigmoid(y), x * _f._sigmoid_prime(y)),
    "mul": lambda x, y: (y, x),
}
_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "sigmoid_tanh": _f.sigmoid_tanh,
    "mul_sigmoid": _f.mul_sigmoid,
    "mul": _f.mul,
}


def _closed_form_binary_slopes(op: str, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor]:
    """Six (a, b) slope candidates (trailing dim), float64: the four three-corner planes, the
    Cert-RNN corner fit (their average) and the tangent plane at the centre.  Degenerate widths use
    partial derivatives on that edge."""
    f, grad = _BINARY[op], _PARTIALS[op]
    wx, wy = ux - lx, uy - ly
    nx, ny = wx < _NARROW, wy < _NARROW
    one = torch.ones_like(lx)
    cx, cy = (lx + ux) / 2, (ly + uy) / 2

    def ddx(y: Tensor) -> Tensor:
        d = (f(ux, y) - f(lx, y)) / torch.where(nx, one, wx)
        return torch.where(nx, grad(cx, y)[0], d)

    def ddy(x: Tensor) -> Tensor:
        d = (f(x, uy) - f(x, ly)) / torch.where(ny, one, wy)
        return torch.where(ny, grad(x, cy)[1], d)

    ax_lo, ax_hi, by_lo, by_hi = ddx(ly), ddx(uy), ddy(lx), ddy(ux)
    gx, gy = grad(cx, cy)
    a = torch.stack([ax_lo, ax_lo, ax_hi, ax_hi, (ax_lo + ax_hi) / 2, gx], -1)
    b = torch.stack([by_lo, by_hi, by_lo, by_hi, (by_lo + by_hi) / 2, gy], -1)
    return a, b


# Gate products take the McCormick-style pair anchored at the gate's lower end (indices into the
# six candidates above): in both planes the slope on the other factor is the gate's SMALLEST value
# (times that factor's chord slope for ``sigma(x)*tanh(y)``: ``sigma(l_x)``; for ``x*sigma(y)``:
# ``sigma(l_y)``), and the gate's slope uses the other factor's lower end (lower plane) or upper /
# lower end (upper plane), as CROWN composes McCormick's product planes with the gates' lines.
# With exact offsets this bounds a 20-step text LSTM's last hidden state 3.5x tighter than the
# smallest-volume pick (docs/domains.md): volume ignores that the planes are concretised through
# correlated operands and chained over time, where the state's small coefficient pays off.
_GATE_ANCHORED: dict[str, tuple[int, int]] = {"sigmoid_tanh": (0, 2), "mul_sigmoid": (0, 1)}


# ----------------------------------------------------------------------------- sampled LPs (R2)
_UNIT: Tensor | None = None


def _unit_samples() -> Tensor:
    """Fixed uniform points in the unit square (shared by every box; deterministic results)."""
    global _UNIT
    if _UNIT is None:
        _UNIT = torch.rand(LP_SAMPLES, 2, generator=torch.Generator().manual_seed(20200615), dtype=WORK)
    return _UNIT


#: regions of the unit square: the box and R2-OPT's four triangles (diagonal / anti-diagonal halves)
REGIONS: tuple[str, ...] = ("box", "below_diag", "above_diag", "below_anti", "above_anti")


def _region_points(region: str) -> tuple[Tensor, Tensor]:
    """Sample points of a region of the unit square plus its centroid (mean of a plane over it)."""
    p = _unit_samples()
    uu, vv = p[:, 0], p[:, 1]
    if region == "box":
        pts, c = p, (0.5, 0.5)
    elif region == "below_diag":
        pts, c = torch.stack([torch.maximum(uu, vv), torch.minimum(uu, vv)], -1), (2 / 3, 1 / 3)
    elif region == "above_diag":
        pts, c = torch.stack([torch.minimum(uu, vv), torch.maximum(uu, vv)], -1), (1 / 3, 2 / 3)
    else:
        flip = (uu + vv > 1) if region == "below_anti" else (uu + vv < 1)
        pts = torch.stack([torch.where(flip, 1 - uu, uu), torch.where(flip, 1 - vv, vv)], -1)
        c = (1 / 3, 1 / 3) if region == "below_anti" else (2 / 3, 2 / 3)
    # the box's corners and evenly spaced points on its edges: the extremum of f - plane often
    # lies on an edge (always, for x sigma(y)), where uniform samples rarely fall
    t = torch.linspace(0.0, 1.0, LP_EDGE_POINTS + 2, dtype=WORK)
    ti = t[1:-1]
    z, o, zi, oi = torch.zeros_like(t), torch.ones_like(t), torch.zeros_like(ti), torch.ones_like(ti)
    edges = torch.cat([torch.stack(e, -1) for e in ((t, z), (t, o), (zi, ti), (oi, ti))])
    return torch.cat([pts, edges]), torch.tensor(c, dtype=WORK)


def _solve_lps(values: np.ndarray, pts: np.ndarray, centre: np.ndarray, sign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve many 3-variable LPs at once as one block-diagonal HiGHS problem.

    Block ``j``: maximise ``sign_j * (a c_0 + b c_1 + c)`` subject to
    ``sign_j * (a p_0 + b p_1 + c) <= sign_j * values[j, p]`` for every point ``p`` (coordinates
    in [-1, 1]^2, values normalised to [-1, 1]).  Returns ``(a, b)`` and a success mask."""
    import scipy.optimize
    import scipy.sparse

    n, p = values.shape
    rows = np.repeat(np.arange(n * p), 3)
    cols = (3 * np.arange(n)[:, None, None] + np.arange(3)[None, None, :]).repeat(p, 1).reshape(-1)
    coef = np.concatenate([np.broadcast_to(pts, (n, p, 2)), np.ones((n, p, 1))], -1) * sign[:, None, None]
    a_ub = scipy.sparse.csr_array((coef.reshape(-1), (rows, cols)), shape=(n * p, 3 * n))
    b_ub = (values * sign[:, None]).reshape(-1)
    c = -(np.concatenate([np.broadcast_to(centre, (n, 2)), np.ones((n, 1))], -1) * sign[:, None]).reshape(-1)
    bnd = np.tile(np.array([[-1e3, 1e3], [-1e3, 1e3], [-1e4, 1e4]]), (n, 1))
    res = scipy.optimize.linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bnd, method="highs")
    if res.status != 0 or res.x is None:
        return np.zeros((n, 2)), np.zeros(n, dtype=bool)
    x = res.x.reshape(n, 3)
    return x[:, :2], np.isfinite(x).all(-1)


def _lp_slopes(
    op: str, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor, regions: tuple[str, ...] = ("box",)
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """R2's LP planes (float64, flattened boxes): for every region, the plane of largest mean over
    the region below ``f`` at its samples and the box corners (and symmetrically above).

    Returns ``(a_lo, b_lo, a_hi, b_hi)`` of shape ``(m, len(regions))`` and an ``ok`` mask (False
    where the box is too narrow to normalise or HiGHS failed; callers fall back there)."""
    f = _BINARY[op]
    m, r = lx.numel(), len(regions)
    hx, hy = (ux - lx) / 2, (uy - ly) / 2
    cx, cy = (lx + ux) / 2, (ly + uy) / 2
    ok = (hx >= _NARROW) & (hy >= _NARROW)
    vals, ptss, cents = [], [], []
    for region in regions:
        pts, cent = _region_points(region)
        xi, eta = 2 * pts - 1, 2 * cent - 1  # [-1, 1]^2 coordinates
        v = f(cx[:, None] + hx[:, None] * xi[:, 0], cy[:, None] + hy[:, None] * xi[:, 1])  # (m, P)
        vals.append(v)
        ptss.append(xi)
        cents.append(eta)
    v = torch.stack(vals, 1)  # (m, r, P)
    f0 = v.mean(-1, keepdim=True)
    scale = (v - f0).abs().amax(-1, keepdim=True)
    ok = ok & torch.isfinite(v).all(-1).all(-1) & (scale.squeeze(-1) > 0).all(-1)
    vn = ((v - f0) / torch.where(scale > 0, scale, torch.ones_like(scale))).numpy()
    pts_np = torch.stack(ptss).numpy()  # (r, P, 2)
    cent_np = torch.stack(cents).numpy()  # (r, 2)
    # blocks: (box j, region i, sign s) flattened; lower (+1) then upper (-1)
    vals_b = np.concatenate([vn, vn], 1).reshape(-1, vn.shape[-1])  # (m * 2r, P)
    pts_b = np.tile(np.concatenate([pts_np, pts_np]), (m, 1, 1))
    cent_b = np.tile(np.concatenate([cent_np, cent_np]), (m, 1))
    sign_b = np.tile(np.repeat([1.0, -1.0], r), m)
    okv = ok.numpy()
    sol = np.zeros((m * 2 * r, 2))
    solved = np.zeros(m * 2 * r, dtype=bool)
    todo = np.flatnonzero(np.repeat(okv, 2 * r))
    for start in range(0, todo.size, LP_CHUNK):
        idx = todo[start : start + LP_CHUNK]
        s, good = _solve_lps(vals_b[idx], pts_b[idx], cent_b[idx], sign_b[idx])
        sol[idx], solved[idx] = s, good
    sol_t = torch.from_numpy(sol).reshape(m, 2, r, 2)
    solved_t = torch.from_numpy(solved).reshape(m, 2 * r).all(-1)
    # back to the original coordinates: a = scale * a' / hx
    sc = scale.squeeze(-1)  # (m, r)
    one = torch.ones_like(hx)
    a = sol_t[..., 0] * sc[:, None] / torch.where(ok, hx, one)[:, None, None]
    b = sol_t[..., 1] * sc[:, None] / torch.where(ok, hy, one)[:, None, None]
    return a[:, 0], b[:, 0], a[:, 1], b[:, 1], ok & solved_t


# ----------------------------------------------------------------------------- public API
def _split64(bounds: tuple[Tensor, ...]) -> list[Tensor]:
    return [b.detach().to(WORK) for b in bounds]


def _check(op: str, bounds: tuple[Tensor, ...]) -> None:
    if op not in _UNARY and op not in _BINARY:
        raise ValueError(f"unknown operation {op!r}")
    arity = 1 if op in _UNARY else 2
    if len(bounds) != 2 * arity:
        raise ValueError(f"{op} takes {2 * arity} bound tensors, got {len(bounds)}")


def _deepcert(op: str, b64: list[Tensor], dtype: torch.dtype,
              anchored: bool = False) -> tuple[list[Tensor], Tensor, list[Tensor], Tensor]:
    if op in _UNARY:
        l, u = b64
        dl, du = _deepcert_unary_slopes(op, l, u)
        if op == "relu":
            ls, lo, _ = _offsets_for(op, [dl], b64, dtype)
            us, _, hi = _offsets_for(op, [du], b64, dtype)
            return ls, lo, us, hi
        k = _f._divided_difference(*_UNARY[op], l, u)
        # DeepCert's line, unless the parallel (chord-slope) line encloses less area
        return _select(op, [torch.stack([dl, k], -1)], [torch.stack([du, k], -1)], b64, dtype)
    a, b = _closed_form_binary_slopes(op, *b64)
    ok = torch.isfinite(a) & torch.isfinite(b)
    a, b = torch.where(ok, a, 0.0), torch.where(ok, b, 0.0)
    if anchored and op in _GATE_ANCHORED:
        lower_i, upper_i = _GATE_ANCHORED[op]
        ls, lo, _ = _offsets_for(op, [a[..., lower_i], b[..., lower_i]], b64, dtype)
        us, _, hi = _offsets_for(op, [a[..., upper_i], b[..., upper_i]], b64, dtype)
        return ls, lo, us, hi
    return _select(op, [a, b], [a, b], b64, dtype)


def _lp(op: str, b64: list[Tensor], dtype: torch.dtype) -> tuple[list[Tensor], Tensor, list[Tensor], Tensor]:
    shape = b64[0].shape
    flat = [t.reshape(-1).cpu() for t in b64]
    a_lo, b_lo, a_hi, b_hi, ok = _lp_slopes(op, *flat)
    dls, _, dus, _ = _deepcert(op, b64, WORK)  # float64 slopes of the fallback / competitor
    dev = b64[0].device

    def cat(lp: Tensor, dc: Tensor) -> Tensor:
        lp = torch.where(ok, lp[:, 0], dc.reshape(-1).cpu()).reshape(shape).to(dev)
        return torch.stack([lp, dc], -1)

    return _select(
        op,
        [cat(a_lo, dls[0]), cat(b_lo, dls[1])],
        [cat(a_hi, dus[0]), cat(b_hi, dus[1])],
        b64,
        dtype,
    )


def linear_bounds(op: str, *bounds: Tensor, method: str = "deepcert") -> LinearBounds:
    """Sound linear lower/upper bounds of registry operation ``op`` on the box
    ``bounds = (l_1, u_1, ..., l_k, u_k)``; see the module docstring for the methods."""
    _check(op, bounds)
    if method not in LINEAR_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {LINEAR_METHODS}")
    dtype = bounds[0].dtype
    with torch.no_grad():
        if method == "parallel":
            from rnnguard.relaxations import RELAXATIONS

            pl = RELAXATIONS[op].planes(*bounds)
            slopes = tuple(s.detach() for s in pl.slopes)
            return LinearBounds(slopes, pl.lower.detach(), slopes, pl.upper.detach())
        b64 = _split64(bounds)
        if method == "lp" and op in _BINARY and op != "mul":
            return _pack(*_lp(op, b64, dtype), dtype)
        return _pack(*_deepcert(op, b64, dtype, anchored=method == "anchored"), dtype)


def candidate_bounds(op: str, *bounds: Tensor, lp: bool = True) -> LinearBounds:
    """``K`` sound candidate planes per bound and neuron (trailing dim ``K``, fixed per op) for
    R2-OPT-style optimisation; any convex combination of the lower (upper) planes is sound.

    One-input ops: tanh/sigmoid ``K = 6`` lines with slopes chord, ``f'(l)``, ``f'(u)``,
    ``f'(mid)``, DeepCert lower and upper; relu ``K = 3`` slopes 0, chord, 1 (each line serves
    below and above with its own exact offsets).  Two-input ops ``K = 7``: R2's LP planes fitted
    on the box and on its four triangles (:data:`REGIONS`), the parallel planes and the
    ``deepcert`` planes.  ``lp=False`` replaces the five LP fits by closed-form planes (the four
    three-corner planes and the tangent plane at the centre; ~100x cheaper, no LP solves)."""
    _check(op, bounds)
    dtype = bounds[0].dtype
    with torch.no_grad():
        b64 = _split64(bounds)
        if op in _UNARY:
            s = _unary_candidate_slopes(op, *b64)
            s = _finite(s, torch.zeros_like(s))
            sl, lo, hi = _offsets_for(op, [s], b64, dtype)
            return _pack(sl, lo, sl, hi, dtype)
        dls, _, dus, _ = _deepcert(op, b64, WORK)
        if not lp:
            a, b = _closed_form_binary_slopes(op, *b64)
            a, b = _finite(a, torch.zeros_like(a)), _finite(b, torch.zeros_like(b))
            lower = [torch.cat([a[..., [0, 1, 2, 3, 5]], a[..., 4:5], dls[0].unsqueeze(-1)], -1),
                     torch.cat([b[..., [0, 1, 2, 3, 5]], b[..., 4:5], dls[1].unsqueeze(-1)], -1)]
            upper = [torch.cat([a[..., [0, 1, 2, 3, 5]], a[..., 4:5], dus[0].unsqueeze(-1)], -1),
                     torch.cat([b[..., [0, 1, 2, 3, 5]], b[..., 4:5], dus[1].unsqueeze(-1)], -1)]
            ls, lo, _ = _offsets_for(op, lower, b64, dtype)
            us, _, hi = _offsets_for(op, upper, b64, dtype)
            return _pack(ls, lo, us, hi, dtype)
        shape, dev = b64[0].shape, b64[0].device
        flat = [t.reshape(-1).cpu() for t in b64]
        a_lo, b_lo, a_hi, b_hi, ok = _lp_slopes(op, *flat, regions=REGIONS)
        from rnnguard.relaxations import RELAXATIONS

        par = [s.detach().to(WORK) for s in RELAXATIONS[op].planes(*bounds).slopes]

        def stack(lp: Tensor, p: Tensor, dc: Tensor) -> Tensor:
            fb = dc.reshape(-1, 1).cpu()
            lp = torch.where(ok[:, None], lp, fb).reshape(*shape, len(REGIONS)).to(dev)
            return torch.cat([lp, p.unsqueeze(-1), dc.unsqueeze(-1)], -1)

        lower = [stack(a_lo, par[0], dls[0]), stack(b_lo, par[1], dls[1])]
        upper = [stack(a_hi, par[0], dus[0]), stack(b_hi, par[1], dus[1])]
        ls, lo, _ = _offsets_for(op, lower, b64, dtype)
        us, _, hi = _offsets_for(op, upper, b64, dtype)
        return _pack(ls, lo, us, hi, dtype)
