"""Sound relaxations of the nonlinear operations that RNN, LSTM and GRU cells need.

Every operation gets

* an exact output interval (``interval``), and
* Cert-RNN-style parallel planes (``planes``): chord slopes for ``tanh``/``sigmoid``/``relu``,
  corner-fit slopes for the two-input products, and offsets equal to the EXACT minimum and maximum
  of ``f - slopes . x`` over the box.  Those extrema are found by evaluating a candidate set that
  provably contains them (corners, edge stationary points, interior stationary points from a
  quartic), so the planes are sound for any slope and never depend on sampling.

Numerics: all candidate searches run in float64 whatever the caller's dtype; results are rounded
outward to the caller's dtype (lower bounds down, upper bounds up) after a relative slack of a
few float64 ulps that covers rounding in the evaluation of ``f`` and of the stationary points.
Candidate points are detached: by the envelope theorem the gradient of an extremum with respect
to the bounds and slopes is the partial derivative at the extreme point, which is what autograd
then computes (needed by certified training).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rnnguard.relaxations.base import Planes

WORK = torch.float64
_EPS64 = torch.finfo(WORK).eps
# relative slack (in float64 ulps of the magnitudes involved) added before outward rounding
SLACK_ULPS = 64.0
# widths below this use the derivative at the midpoint instead of the chord slope
_NARROW = 1e-7


# ----------------------------------------------------------------------------- numerics helpers
def _outward(lo64: Tensor, hi64: Tensor, scale: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Widen ``[lo64, hi64]`` by a slack proportional to ``scale`` and round outward to ``dtype``."""
    slack = SLACK_ULPS * _EPS64 * scale + torch.finfo(WORK).tiny
    lo64, hi64 = lo64 - slack, hi64 + slack
    if dtype == WORK:
        return lo64, hi64
    lo, hi = lo64.to(dtype), hi64.to(dtype)
    inf = torch.tensor(float("inf"), dtype=dtype, device=lo.device)
    lo_fix = torch.where(lo.detach().to(WORK) > lo64.detach(), torch.nextafter(lo.detach(), -inf), lo.detach())
    hi_fix = torch.where(hi.detach().to(WORK) < hi64.detach(), torch.nextafter(hi.detach(), inf), hi.detach())
    return lo + (lo_fix - lo.detach()), hi + (hi_fix - hi.detach())


def _rounded(slope64: Tensor, dtype: torch.dtype) -> Tensor:
    """The slope actually representable in ``dtype``, back in float64 (offsets are computed for it)."""
    return slope64.to(dtype).to(WORK)


def _divided_difference(f: Callable[[Tensor], Tensor], df: Callable[[Tensor], Tensor], lo: Tensor, hi: Tensor) -> Tensor:
    """Chord slope ``(f(hi)-f(lo))/(hi-lo)``; the derivative at the midpoint on (near-)degenerate intervals."""
    width = hi - lo
    narrow = width < _NARROW
    chord = (f(hi) - f(lo)) / torch.where(narrow, torch.ones_like(width), width)
    return torch.where(narrow, df((lo + hi) / 2), chord)


def _pick(cands: list[Tensor], fallback: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Stack candidate points, replace NaNs by ``fallback`` and clamp them into ``[lo, hi]``.

    Clamping never hurts soundness: every clamped candidate is a point of the box, and the true
    extreme point is among the unclamped candidates."""
    x = torch.stack([c.detach() if c is not lo and c is not hi else c for c in cands], dim=-1)
    x = torch.where(torch.isnan(x), fallback.unsqueeze(-1).expand_as(x), x)
    return torch.minimum(torch.maximum(x, lo.unsqueeze(-1)), hi.unsqueeze(-1))


def _sigmoid_prime(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _tanh_prime(x: Tensor) -> Tensor:
    return 1 - torch.tanh(x) ** 2


def _logit(s: Tensor) -> Tensor:
    return torch.log(s) - torch.log1p(-s)


def _tanh_stationary(k: Tensor) -> list[Tensor]:
    """Points where tanh'(x) = k (NaN where there are none)."""
    ok = (k > 0) & (k <= 1)
    kk = torch.where(ok, k, torch.ones_like(k))
    # atanh(t) with t^2 = 1-k, written without cancellation: log1p(t) - log(1-t^2)/2
    x = torch.log1p(torch.sqrt(1 - kk)) - 0.5 * torch.log(kk)
    x = torch.where(ok, x, torch.full_like(k, float("nan")))
    return [x, -x]


def _sigmoid_stationary(k: Tensor) -> list[Tensor]:
    """Points where sigmoid'(x) = k, i.e. sigmoid(x) = (1 +- sqrt(1-4k))/2 (NaN where none)."""
    return _sigmoid_prime_inverse(k)


def _sigmoid_prime_inverse(q: Tensor) -> list[Tensor]:
    """Both solutions of sigma'(x) = q, as 2 atanh(r), r^2 = 1-4q, written without cancellation."""
    ok = (q > 0) & (q <= 0.25)
    qq = torch.where(ok, q, torch.full_like(q, 0.25))
    x = 2 * torch.log1p(torch.sqrt(1 - 4 * qq)) - torch.log(4 * qq)
    x = torch.where(ok, x, torch.full_like(q, float("nan")))
    return [x, -x]


def _tanh_prime_inverse(q: Tensor) -> Tensor:
    """The non-negative solution of tanh'(y) = q, NaN where there is none (q <= 0 or q > 1)."""
    return _tanh_stationary(q)[0]


def _relu_kinks(k: Tensor) -> list[Tensor]:
    return [torch.zeros_like(k)]


# ----------------------------------------------------------------------------- one-input ops
def _monotone_interval(f: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    def interval(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        a, b = f(lo.to(WORK)), f(hi.to(WORK))
        return _outward(a, b, torch.maximum(a.abs(), b.abs()), lo.dtype)

    return interval


def _unary_offsets(
    f: Callable[[Tensor], Tensor], critical: Callable[[Tensor], list[Tensor]]
) -> Callable[..., tuple[Tensor, Tensor]]:
    """Exact (min, max) of ``f(x) - k x`` on ``[l, u]`` (float64 inputs), rounded outward to ``dtype``.

    Candidates: both ends and the points where ``f' = k``; valid for any slope ``k``."""

    def offsets(k: Tensor, l: Tensor, u: Tensor, dtype: torch.dtype, points: bool = False) -> tuple[Tensor, ...]:
        x = _pick([l, u, *critical(k.detach())], l, l, u)
        fx, kx = f(x), k.unsqueeze(-1) * x
        g = fx - kx
        with torch.no_grad():  # the rounding slack's scale: no gradient needed
            scale = (fx.abs() + kx.abs()).amax(-1)
        return _extrema(g, scale, dtype, [x] if points else None)

    return offsets


def _extrema(g: Tensor, scale: Tensor, dtype: torch.dtype, coords: list[Tensor] | None = None) -> tuple[Tensor, ...]:
    """Min and max of ``g`` over its candidates (last dimension), rounded outward to ``dtype``
    (:func:`_outward`); with ``coords``, also the candidate coordinates where each is attained
    (for :class:`_DanskinOffsets`): the mean over tied candidates (a point listed twice counts
    twice), as autograd's ``amin`` / ``amax`` spread the gradient.  Ties are common (a chord's two
    endpoints), and a mix of the tied points steers the slope optimisers better than one of them."""
    low, high = g.amin(-1), g.amax(-1)
    if coords is None:
        return _outward(low, high, scale, dtype)
    points = []
    for at in (g == low[..., None], g == high[..., None]):
        weight = at.to(g.dtype) / at.sum(-1, keepdim=True)
        points.append(tuple(torch.linalg.vecdot(c.expand_as(g), weight) for c in coords))
    return (*_outward(low, high, scale, dtype), *points)


def _unary_planes(
    f: Callable[[Tensor], Tensor],
    df: Callable[[Tensor], Tensor],
    critical: Callable[[Tensor], list[Tensor]],
) -> Callable[[Tensor, Tensor], Planes]:
    offsets = _unary_offsets(f, critical)

    def planes(lo: Tensor, hi: Tensor) -> Planes:
        dtype = lo.dtype
        l, u = lo.to(WORK), hi.to(WORK)
        k = _rounded(_divided_difference(f, df, l, u), dtype)
        low, high = offsets(k, l, u, dtype)
        return Planes((k.to(dtype),), low, high)

    return planes


tanh_interval = _monotone_interval(torch.tanh)
sigmoid_interval = _monotone_interval(torch.sigmoid)
relu_interval = _monotone_interval(torch.relu)
tanh_planes = _unary_planes(torch.tanh, _tanh_prime, _tanh_stationary)
sigmoid_planes = _unary_planes(torch.sigmoid, _sigmoid_prime, _sigmoid_stationary)
relu_planes = _unary_planes(torch.relu, lambda x: (x > 0).to(x.dtype), _relu_kinks)
tanh_offsets = _unary_offsets(torch.tanh, _tanh_stationary)
sigmoid_offsets = _unary_offsets(torch.sigmoid, _sigmoid_stationary)
relu_offsets = _unary_offsets(torch.relu, _relu_kinks)


# ----------------------------------------------------------------------------- two-input ops
def sigmoid_tanh(x: Tensor, y: Tensor) -> Tensor:
    """sigma(x) * tanh(y): LSTM's i*g and o*tanh(c), GRU's (1-z)*n = sigma(-a_z)*tanh(pre_n)."""
    return torch.sigmoid(x) * torch.tanh(y)


def mul_sigmoid(x: Tensor, y: Tensor) -> Tensor:
    """x * sigma(y): LSTM's f*c_prev, GRU's r*(W_hn h + b_hn) and z*h_prev."""
    return x * torch.sigmoid(y)


def mul(x: Tensor, y: Tensor) -> Tensor:
    """Plain product x * y."""
    return x * y


def _corner_interval(f: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., tuple[Tensor, Tensor]]:
    """Exact range of a function whose extrema over a box lie at its corners."""

    def interval(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor]:
        dtype = lx.dtype
        lx, ux, ly, uy = (t.to(WORK) for t in (lx, ux, ly, uy))
        v = torch.stack([f(lx, ly), f(lx, uy), f(ux, ly), f(ux, uy)], dim=-1)
        return _outward(v.amin(-1), v.amax(-1), v.abs().amax(-1), dtype)

    return interval


def sigmoid_tanh_interval(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor]:
    """Exact range: sigma > 0 and the product is increasing in y, so the corners suffice."""
    return _corner_interval(sigmoid_tanh)(lx, ux, ly, uy)


def _right_phi(w: Tensor, omb: Tensor, log_a2: Tensor) -> Tensor:
    """``phi(w) = log h(s) - log a^2`` at ``s = 1 - e^w`` (``omb = 1 - b``); rises with ``w`` up to the mode."""
    e = torch.exp(w)
    return torch.log1p(-e) + torch.log(omb - e) + 2 * w - log_a2


# phi(s*) below this: start from the quadratic model at the mode instead (see the interior roots)
_FOLD_START = 0.1
# root finding on more entries than this continues on the unconverged ones only
_COMPACT_ABOVE = 4096


def _newton_right_root(w: Tensor, lo: Tensor, hi: Tensor, omb: Tensor, log_a2: Tensor, done: Tensor,
                       tol: float, max_steps: int) -> Tensor:
    """Safeguarded Newton on ``phi(w)`` (:func:`_right_phi`, rising in ``w``) inside ``[lo, hi]``
    (see :func:`_sigmoid_tanh_interior`); entries in ``done`` are not solved.  An entry stops moving
    once its own step is below ``tol``, so its root does not depend on the other entries (how many
    iterations the slowest needs).  On large inputs the iteration continues on the unconverged
    entries only (most take 3-5 steps, a few up to 14)."""
    shape = w.shape
    w, lo, hi, omb, log_a2, done = (u.reshape(-1) for u in (w, lo, hi, omb, log_a2, done))
    out, where = w, None  # the working entries sit at ``where`` in ``out`` (None: all of them)
    for _ in range(max_steps):
        e = torch.exp(w)
        s, gap = 1 - e, omb - e
        value = torch.log1p(-e) + torch.log(gap) + 2 * w - log_a2
        guess = w - value / (2 - e / s - e / gap)
        below = value < 0  # the root lies above w
        lo, hi = torch.where(below, w, lo), torch.where(below, hi, w)
        inside = (guess >= lo) & (guess <= hi)  # NaN fails: bisect
        step = torch.where(inside, guess, (lo + hi) / 2)
        converged = (step - w).abs() <= tol * torch.maximum(w.abs(), torch.ones_like(w))
        w = torch.where(done, w, step)  # a converged entry stays put: its root is its own, not the batch's
        done = done | converged
        n_open = int((~done).sum())
        if n_open == 0:
            break
        if w.numel() > _COMPACT_ABOVE and 4 * n_open < w.numel():
            keep = (~done).nonzero(as_tuple=True)[0]
            if where is None:
                out = w.clone()
                where = keep
            else:
                out[where] = w
                where = where[keep]
            w, lo, hi, omb, log_a2, done = (u[keep] for u in (w, lo, hi, omb, log_a2, done))
    else:  # not converged in max_steps (not seen in practice): plain bisection of the brackets
        for _ in range(200):
            mid = (lo + hi) / 2
            below = _right_phi(mid, omb, log_a2) < 0
            lo, hi = torch.where(below | done, mid, lo), torch.where(below & ~done, hi, mid)
        w = torch.where(done, w, (lo + hi) / 2)
    if where is None:
        return w.reshape(shape)
    out[where] = w
    return out.reshape(shape)


def _sigmoid_tanh_interior(a: Tensor, b: Tensor, tol: float = 1e-10, max_steps: int = 80,
                           cache: dict | None = None, x_range: tuple[Tensor, Tensor] | None = None,
                           ) -> list[tuple[Tensor, Tensor]]:
    """The ``(x, y)`` of the interior stationary point of ``sigma(x)tanh(y) - a x - b y`` that can
    be an extremum (NaN: none), as a one-element list of candidates.

    There ``sigma'(x) tanh(y) = a`` and ``sigma(x)(1 - tanh(y)^2) = b``, so ``s = sigma(x)`` solves
    ``h(s) = s (s-b) (1-s)^2 = a^2`` with ``b < s < 1`` (none unless ``0 < b < 1`` and ``|a| < 1``:
    ``h < 1`` there), and ``tanh(y)^2 = (s-b)/s`` with the sign of ``a``.  ``h`` vanishes at ``b``
    and ``1`` and is log-concave between them, so it rises to one mode ``s*`` (the root of
    ``q(s) = 4s^2 - (2+3b)s + b`` in ``(b, 1)``) and falls: at most one root on each side.

    **Only the root right of the mode can be an extremum.**  At a stationary point (with
    ``sigma' = s(1-s)``, ``tanh' = b/s``, ``tanh^2 = (s-b)/s``) ``g_xx g_yy = -2(1-s)(1-2s) b (s-b)``
    and ``g_xy^2 = (1-s)^2 b^2``, so the Hessian's determinant is ``(1-s) b q(s)``.  ``q < 0`` on
    ``(b, s*)``: the left root is a strict saddle, never a local (let alone the box's) maximum or
    minimum, so it is no candidate and is not solved; ``q >= 0`` on ``[s*, 1)``.  (A test checks
    the determinant's sign at both roots, found by plain bisection.)

    The right root is found in ``w = log(1-s)``, which keeps its precision as ``s -> 1``: there
    ``phi(w) = log h - log a^2`` rises monotonically to ``phi(s*)``, is concave and close to
    linear near the usual roots (``2w + log(1-b) - log a^2``), with the closed-form lower end
    ``(log a^2 - log(1-b)) / 2`` (``phi < 0`` there) and the mode as bracket.  Safeguarded Newton (a
    bisection step where Newton would leave the bracket) runs until every step is below ``tol``
    relative (rounding noise in ``phi`` keeps the last steps near 1e-15, hence not a tighter
    ``tol``): Newton's next error is then about the square of its last step, and an error ``d`` in
    the point changes the candidate's value only by ``O(d^2)`` (the point stays on the curve where
    the y-derivative vanishes), far below the ulps of slack :func:`_outward` adds.  ``cache`` (a
    dict kept across calls with the same shapes, e.g. the steps of an optimiser whose slopes move a
    little each time) warm-starts the iteration at the previous call's roots, clamped into the new
    brackets.  Near the fold (``phi(s*) < 0.1``: the root close to the mode, where Newton crawls)
    the start is the root of ``phi``'s quadratic model at the mode instead.

    ``x_range = (lx, ux)`` (shaped like ``a``): only a root with ``lx <= x <= ux`` is wanted (a
    stationary point outside the box is no extremum on it); the others come back NaN unsolved.
    As ``phi`` is monotone on the bracket, the root lies in the box's range of ``w`` iff ``phi``
    changes sign over the intersection: two evaluations decide it, with margins (1e-6 in ``w``,
    1e-9 in ``phi``) far above rounding, so a root near an edge is always solved.
    """
    with torch.no_grad():
        aa = a.abs()
        ok = (b > 0) & (b < 1) & (aa > 0) & (aa < 1)
        bb = torch.where(ok, b, torch.full_like(b, 0.5))
        aa = torch.where(ok, aa, torch.full_like(aa, 0.25))
        log_a2 = 2 * torch.log(aa)
        s_star = ((2 + 3 * bb) + torch.sqrt(9 * bb * bb - 4 * bb + 4)) / 8
        omb = 1 - bb
        log_omb = torch.log1p(-bb)
        fold = torch.log(s_star) + torch.log(s_star - bb) + 2 * torch.log1p(-s_star) - log_a2  # phi(s*)
        ok &= fold >= 0
        hi = torch.log1p(-s_star)
        lo = torch.minimum((log_a2 - log_omb) / 2, hi)
        w = lo  # start: the lower end
        previous = None if cache is None else cache.get("roots")
        if previous is not None and previous.shape == w.shape:
            w = torch.where(torch.isfinite(previous), previous, w)
        # near the fold (phi(s*) small, the root close to the mode, where Newton is slow) start
        # from phi's quadratic model at the mode: s = s* + sqrt(2 phi(s*) / -phi''(s*))
        curv = 1 / s_star**2 + 1 / (s_star - bb) ** 2 + 2 / (1 - s_star) ** 2
        near = torch.log((1 - s_star - torch.sqrt(2 * fold.clamp(min=0) / curv)).clamp(min=0))
        w = torch.where((fold < _FOLD_START) & torch.isfinite(near), near, w)
        w = torch.minimum(torch.maximum(w, lo), hi)
        wanted = ok
        if x_range is not None:
            # the box's range of w = log(1-s) (it runs against x), widened
            first = torch.maximum(lo, torch.log1p(-torch.sigmoid(x_range[1])) - 1e-6)
            last = torch.minimum(hi, torch.log1p(-torch.sigmoid(x_range[0])) + 1e-6)
            inside = (first <= last) & (_right_phi(first, omb, log_a2) <= 1e-9)
            inside &= _right_phi(torch.where(inside, last, first), omb, log_a2) >= -1e-9
            wanted = wanted & inside
        pick = wanted.reshape(-1).nonzero(as_tuple=True)[0]
        if pick.numel() < wanted.numel():  # solve only the wanted roots
            flat = w.reshape(-1).clone()
            flat[pick] = _newton_right_root(*(u.reshape(-1)[pick] for u in (w, lo, hi, omb, log_a2)),
                                            torch.zeros_like(pick, dtype=torch.bool), tol, max_steps)
            w = flat.reshape(w.shape)
        else:
            w = _newton_right_root(w, lo, hi, omb, log_a2, ~wanted, tol, max_steps)
        if cache is not None:
            cache["roots"] = w
        e = torch.exp(w)
        s, gap = 1 - e, omb - e
        x = torch.log1p(-e) - w  # logit(s)
        # atanh(sqrt(gap / s)) written without cancellation (1 - tanh(y)^2 = b / s)
        y = torch.log1p(torch.sqrt(gap / s)) - 0.5 * torch.log(bb / s)
        y = torch.where(a >= 0, y, -y)
        nan = torch.full_like(x, float("nan"))
        return [(torch.where(wanted, x, nan), torch.where(wanted, y, nan))]


def sigmoid_tanh_planes(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Planes:
    """Corner-fit planes for sigma(x)tanh(y) with exact offsets.

    Slopes (Cert-RNN Thm 4.2, case-1 form, used for every sign case):
    ``A = dd(sigma)(tanh(l_y)+tanh(u_y))/2``, ``B = (sigma(l_x)+sigma(u_x))/2 dd(tanh)``.
    Candidates for the extrema of ``g = sigma(x)tanh(y) - Ax - By``: the 4 corners; on the edges
    ``x = x_e`` the points with ``sigma(x_e)(1 - tanh^2 y) = B``; on the edges ``y = y_e`` the points
    with ``sigma'(x) tanh(y_e) = A``; in the interior the (at most two) roots ``s = sigma(x)`` of
    ``s^4 - (2+B)s^3 + (1+2B)s^2 - Bs - A^2 = s(s-B)(1-s)^2 - A^2 = 0`` with ``tanh(y) = A / (s(1-s))``
    (:func:`_sigmoid_tanh_interior`).
    """
    dtype = lx.dtype
    lx, ux, ly, uy = (t.to(WORK) for t in (lx, ux, ly, uy))
    sl, su, tl, tu = torch.sigmoid(lx), torch.sigmoid(ux), torch.tanh(ly), torch.tanh(uy)
    a = _rounded(_divided_difference(torch.sigmoid, _sigmoid_prime, lx, ux) * (tl + tu) / 2, dtype)
    b = _rounded((sl + su) / 2 * _divided_difference(torch.tanh, _tanh_prime, ly, uy), dtype)
    low, high = sigmoid_tanh_offsets(a, b, lx, ux, ly, uy, dtype)
    return Planes((a.to(dtype), b.to(dtype)), low, high)


def sigmoid_tanh_offsets(
    a: Tensor, b: Tensor, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor, dtype: torch.dtype,
    cache: dict | None = None, points: bool = False,
) -> tuple[Tensor, ...]:
    """Exact (min, max) of ``sigma(x)tanh(y) - a x - b y`` on the box (float64 inputs, any slopes),
    rounded outward to ``dtype``; candidates as in :func:`sigmoid_tanh_planes`; ``cache``: see
    :func:`_sigmoid_tanh_interior`."""
    ad, bd = a.detach(), b.detach()
    nan = torch.full_like(lx, float("nan"))
    xs, ys = [lx, lx, ux, ux], [ly, uy, ly, uy]
    for xe in (lx, ux):  # edges x = x_e: tanh(y)^2 = 1 - B / sigma(x_e)
        yy = _tanh_prime_inverse(bd / torch.sigmoid(xe.detach()))
        xs += [xe, xe]
        ys += [yy, -yy]
    for ye in (ly, uy):  # edges y = y_e: sigma'(x) = A / tanh(y_e)
        te = torch.tanh(ye.detach())
        q = torch.where(te != 0, ad / torch.where(te != 0, te, torch.ones_like(te)), nan)
        xx = _sigmoid_prime_inverse(q)[0]
        xs += [xx, -xx]
        ys += [ye, ye]
    box = (lx.detach(), ux.detach()) if lx.shape == ad.shape and ux.shape == ad.shape else None
    for xx, yy in _sigmoid_tanh_interior(ad, bd, cache=cache, x_range=box):  # interior stationary points
        xs.append(xx)
        ys.append(yy)
    return _binary_extrema(sigmoid_tanh, a, b, xs, ys, lx, ux, ly, uy, dtype, points)


def _binary_extrema(
    f: Callable[[Tensor, Tensor], Tensor],
    a: Tensor,
    b: Tensor,
    xs: list[Tensor],
    ys: list[Tensor],
    lx: Tensor,
    ux: Tensor,
    ly: Tensor,
    uy: Tensor,
    dtype: torch.dtype,
    points: bool = False,
) -> tuple[Tensor, ...]:
    """Min and max of ``f - a x - b y`` over the candidate points, rounded outward to ``dtype``;
    ``points``: also the ``(x, y)`` where they are attained (for :class:`_DanskinOffsets`)."""
    x = _pick(xs, lx, lx, ux)
    y = _pick(ys, ly, ly, uy)
    fxy, ax, by = f(x, y), a.unsqueeze(-1) * x, b.unsqueeze(-1) * y
    g = fxy - ax - by
    with torch.no_grad():  # the rounding slack's scale: no gradient needed
        scale = (fxy.abs() + ax.abs() + by.abs()).amax(-1)
    return _extrema(g, scale, dtype, [x, y] if points else None)


def mul_sigmoid_planes(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Planes:
    """Corner-fit planes for x*sigma(y) with exact offsets.

    Slopes (corrected Cert-RNN Thm 4.3): ``A = (sigma(l_y)+sigma(u_y))/2``,
    ``B = (l_x+u_x)/2 dd(sigma)``.  ``g = x sigma(y) - Ax - By`` is linear in x on the edges
    ``y = y_e`` and has only saddle points inside, so its extrema lie at the corners or on the
    edges ``x = x_e`` where ``x_e sigma'(y) = B``.
    """
    dtype = lx.dtype
    lx, ux, ly, uy = (t.to(WORK) for t in (lx, ux, ly, uy))
    a = _rounded((torch.sigmoid(ly) + torch.sigmoid(uy)) / 2, dtype)
    b = _rounded((lx + ux) / 2 * _divided_difference(torch.sigmoid, _sigmoid_prime, ly, uy), dtype)
    low, high = mul_sigmoid_offsets(a, b, lx, ux, ly, uy, dtype)
    return Planes((a.to(dtype), b.to(dtype)), low, high)


def mul_sigmoid_offsets(
    a: Tensor, b: Tensor, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor, dtype: torch.dtype, points: bool = False
) -> tuple[Tensor, ...]:
    """Exact (min, max) of ``x sigma(y) - a x - b y`` on the box (float64 inputs, any slopes),
    rounded outward to ``dtype``; candidates as in :func:`mul_sigmoid_planes`."""
    bd = b.detach()
    nan = torch.full_like(lx, float("nan"))
    xs, ys = [lx, lx, ux, ux], [ly, uy, ly, uy]
    for xe in (lx, ux):
        xd = xe.detach()
        q = torch.where(xd != 0, bd / torch.where(xd != 0, xd, torch.ones_like(xd)), nan)
        yy = _sigmoid_prime_inverse(q)[0]
        xs += [xe, xe]
        ys += [yy, -yy]
    return _binary_extrema(mul_sigmoid, a, b, xs, ys, lx, ux, ly, uy, dtype, points)


def mul_planes(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Planes:
    """Planes for x*y with slopes ``(c_y, c_x)`` (box centres); bilinear, so corners are exact."""
    dtype = lx.dtype
    lx, ux, ly, uy = (t.to(WORK) for t in (lx, ux, ly, uy))
    a = _rounded((ly + uy) / 2, dtype)
    b = _rounded((lx + ux) / 2, dtype)
    low, high = mul_offsets(a, b, lx, ux, ly, uy, dtype)
    return Planes((a.to(dtype), b.to(dtype)), low, high)


def mul_offsets(
    a: Tensor, b: Tensor, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor, dtype: torch.dtype, points: bool = False
) -> tuple[Tensor, ...]:
    """Exact (min, max) of ``x y - a x - b y`` on the box (bilinear: the corners suffice)."""
    return _binary_extrema(mul, a, b, [lx, lx, ux, ux], [ly, uy, ly, uy], lx, ux, ly, uy, dtype, points)


mul_sigmoid_interval = _corner_interval(mul_sigmoid)
mul_interval = _corner_interval(mul)


_OFFSETS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "tanh": tanh_offsets,
    "sigmoid": sigmoid_offsets,
    "relu": relu_offsets,
    "sigmoid_tanh": sigmoid_tanh_offsets,
    "mul_sigmoid": mul_sigmoid_offsets,
    "mul": mul_offsets,
}


def exact_offsets(op: str, slopes: tuple[Tensor, ...] | list[Tensor], *bounds: Tensor,
                  cache: dict | None = None) -> tuple[Tensor, Tensor]:
    """Exact ``(min, max)`` over the box of ``f(x) - sum_i slopes[i] * x_i`` for ARBITRARY slopes.

    ``bounds = (l_1, u_1, ..., l_k, u_k)``; slopes and bounds broadcast together.  The slopes are used
    as given (exactly, in float64), so a caller must return the very slopes it passes here.  The
    result is rounded outward to the dtype of ``bounds[0]``: any plane with these slopes and offsets
    is sound by construction, whatever heuristic chose the slopes.  ``cache``: a dict the caller
    keeps across calls with the same shapes (an optimiser's steps); it only speeds up root finding.
    """
    dtype = bounds[0].dtype
    ts = torch.broadcast_tensors(*(t.to(WORK) for t in (*slopes, *bounds)))
    k = len(slopes)
    extra = {"cache": cache} if cache is not None and op == "sigmoid_tanh" else {}
    offsets = _OFFSETS[op]
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts[:k]) and not any(t.requires_grad for t in ts[k:]):
        return _DanskinOffsets.apply(lambda *t: offsets(*t, dtype, points=True, **extra), k, *ts)
    return offsets(*ts, dtype, **extra)


class _DanskinOffsets(torch.autograd.Function):
    """Offsets whose gradient in the slopes is applied directly (bounds without gradient: the
    verifiers' slope optimisers): by Danskin's theorem ``d min_x (f - s.x) / d s = -x_min`` (and
    ``-x_max`` for the max), the very subgradient autograd finds through the candidates' ``amin``
    and ``amax``, without recording the candidate evaluation for the backward pass.  ``solve``
    returns the offsets and, per slope, the coordinates of the minimising and maximising points."""

    @staticmethod
    def forward(ctx, solve: Callable[..., tuple], k: int, *tensors: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        low, high, at_low, at_high = solve(*tensors)
        ctx.k, ctx.n = k, len(tensors)
        ctx.save_for_backward(*at_low, *at_high)
        return low, high

    @staticmethod
    def backward(ctx, grad_low: Tensor, grad_high: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        saved, k = ctx.saved_tensors, ctx.k
        gl, gh = grad_low.to(WORK), grad_high.to(WORK)
        grads = [-(gl * saved[i] + gh * saved[k + i]) for i in range(k)]
        return (None, None, *grads, *[None] * (ctx.n - k))
