"""The closed-form pieces behind the exact offsets: the interior stationary points of
``sigma(x)tanh(y) - a x - b y`` (bracketed root finding on ``s(s-b)(1-s)^2 = a^2``; only the root
right of the mode, the other being a saddle)."""

from __future__ import annotations

import pytest
import torch

from rnnguard.relaxations.functions import _sigmoid_tanh_interior, exact_offsets

F64 = torch.float64


def _h(s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return s * (s - b) * (1 - s) ** 2


def _mode(b: torch.Tensor) -> torch.Tensor:
    return ((2 + 3 * b) + torch.sqrt(9 * b * b - 4 * b + 4)) / 8


def _logit(s: torch.Tensor) -> torch.Tensor:
    return torch.log(s) - torch.log1p(-s)


def test_mode_is_the_maximum_of_h() -> None:
    b = torch.linspace(0.01, 0.99, 99, dtype=F64)
    s = b[:, None] + (1 - b[:, None]) * torch.linspace(0, 1, 20001, dtype=F64)
    best = s.gather(1, _h(s, b[:, None]).argmax(1, keepdim=True)).squeeze(1)
    assert torch.allclose(best, _mode(b), atol=1e-4)


def _roots_by_bisection(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both roots ``s`` of ``h(s) = a^2`` (left and right of the mode), by plain bisection."""
    mode = _mode(b)
    roots = []
    for lo, hi, rising in ((b.clone(), mode.clone(), True), (mode.clone(), torch.ones_like(b), False)):
        for _ in range(200):
            mid = (lo + hi) / 2
            up = (_h(mid, b) < a * a) == rising
            lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
        roots.append((lo + hi) / 2)
    return roots[0], roots[1]


def _point(s: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _logit(s), torch.sign(a) * torch.atanh(torch.sqrt(1 - b / s))


def test_finds_the_root_right_of_the_mode() -> None:
    gen = torch.Generator().manual_seed(0)
    b = torch.rand(4000, generator=gen, dtype=F64) * 0.93 + 0.02
    mode = _mode(b)
    u = torch.rand(4000, generator=gen, dtype=F64) * 0.85 + 0.05
    for side, s in (("left", b + (mode - b) * u), ("right", mode + (1 - mode) * u)):
        sign = torch.where(torch.rand(4000, generator=gen) < 0.5, -1.0, 1.0).to(F64)
        a = sign * torch.sqrt(_h(s, b))
        [(x, y)] = _sigmoid_tanh_interior(a, b)
        assert torch.isfinite(x).all() and torch.isfinite(y).all()
        right = s if side == "right" else _roots_by_bisection(a, b)[1]
        assert torch.allclose(x, _logit(right), rtol=1e-10, atol=1e-10), side
        assert torch.allclose(y, _point(right, a, b)[1], rtol=1e-10, atol=1e-10), side


def test_left_root_is_a_saddle_and_right_root_is_not() -> None:
    """Why only the right root is a candidate: the Hessian of ``sigma(x)tanh(y) - a x - b y`` is
    indefinite at the left root (a saddle: no extremum, in the box or anywhere) and semidefinite at
    the right one; roots by plain bisection, Hessian by its closed form."""
    gen = torch.Generator().manual_seed(8)
    n = 20000
    b = torch.rand(n, generator=gen, dtype=F64) * 0.998 + 0.001
    a = torch.sqrt(_h(_mode(b), b)) * torch.rand(n, generator=gen, dtype=F64) ** 3
    a = a * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    for s, saddle in zip(_roots_by_bisection(a, b), (True, False)):
        x, y = _point(s, a, b)
        sg, th = torch.sigmoid(x), torch.tanh(y)
        d1, d2 = sg * (1 - sg), 1 - th * th
        det = (d1 * (1 - 2 * sg) * th) * (sg * -2 * th * d2) - (d1 * d2) ** 2
        assert ((det < 0) if saddle else (det >= -1e-12 * d1 * d2)).all()


def test_no_roots_where_there_are_none() -> None:
    b = torch.tensor([-0.2, 0.0, 1.0, 1.3, 0.4, 0.4], dtype=F64)
    a = torch.tensor([0.01, 0.01, 0.01, 0.01, 1.0, 0.0], dtype=F64)
    a[5] = torch.sqrt(_h(_mode(b[5:]), b[5:])) * 1.001  # just above the mode: no root
    for x, y in _sigmoid_tanh_interior(a, b):
        assert torch.isnan(x).all() and torch.isnan(y).all()


def test_offsets_contain_the_stationary_value_at_the_fold() -> None:
    """Boxes centred on an interior stationary point (the right root or the saddle left of the
    mode), with a^2 at or just below h's maximum
    (where the two roots merge and root finding is worst conditioned): the offsets must contain
    the stationary value, and every value of a dense grid through it."""
    gen = torch.Generator().manual_seed(1)
    n = 3000
    b = torch.rand(n, generator=gen, dtype=F64) * 0.9 + 0.05
    s = _mode(b)
    shrink = 10.0 ** -torch.randint(1, 14, (n,), generator=gen).to(F64)
    a = torch.sqrt(_h(s, b) * (1 - shrink)) * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    (xr, yr), = _sigmoid_tanh_interior(a, b)
    xl, yl = _point(_roots_by_bisection(a, b)[0], a, b)  # the saddle (not a candidate) as a box centre
    pick = torch.rand(n, generator=gen) < 0.5
    x0, y0 = torch.where(pick, xl, xr), torch.where(pick, yl, yr)
    wx, wy = torch.rand(2, n, generator=gen, dtype=F64) * 1.5 + 1e-3
    lo, hi = exact_offsets("sigmoid_tanh", (a, b), x0 - wx, x0 + wx, y0 - wy, y0 + wy)
    t = torch.linspace(-1, 1, 101, dtype=F64)  # odd: the centre is a grid node
    xs, ys = x0[:, None, None] + wx[:, None, None] * t[:, None], y0[:, None, None] + wy[:, None, None] * t
    g = (torch.sigmoid(xs) * torch.tanh(ys) - a[:, None, None] * xs - b[:, None, None] * ys).reshape(n, -1)
    assert (g.amax(1) <= hi).all() and (g.amin(1) >= lo).all()


def test_roots_next_to_the_ends_have_exact_values() -> None:
    """Roots crowding ``s = 1`` (tiny |a|, b up to 1 - 1e-6), against a 60-digit bisection: the stationary VALUE of
    ``sigma(x)tanh(y) - a x - b y`` -- what an offset is made of -- must agree to a few ulps."""
    import mpmath

    mpmath.mp.dps = 60
    gen = torch.Generator().manual_seed(3)
    n = 120
    b = 10.0 ** (-4 * torch.rand(n, generator=gen, dtype=F64))  # 1e-4 .. 1
    b = torch.where(torch.rand(n, generator=gen) < 0.2, 1 - b * 1e-3, b).clamp(max=1 - 1e-6)
    a = 10.0 ** (-8 * torch.rand(n, generator=gen, dtype=F64)) * torch.sqrt(_h(_mode(b), b))
    a = a * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    found = _sigmoid_tanh_interior(a, b)
    for i in range(n):
        av, bv = mpmath.mpf(float(a[i])), mpmath.mpf(float(b[i]))
        mode = ((2 + 3 * bv) + mpmath.sqrt(9 * bv * bv - 4 * bv + 4)) / 8
        h = lambda s: s * (s - bv) * (1 - s) ** 2 - av * av  # noqa: E731
        for (x, y), (lo, hi, rising) in zip(found, ((mode, mpmath.mpf(1), False),)):
            for _ in range(220):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if (h(mid) < 0) == rising else (lo, mid)
            s = (lo + hi) / 2
            xm, ym = mpmath.log(s / (1 - s)), mpmath.sign(av) * mpmath.atanh(mpmath.sqrt((s - bv) / s))
            g = lambda u, v: mpmath.tanh(v) / (1 + mpmath.exp(-u)) - av * u - bv * v  # noqa: E731
            scale = abs(g(xm, ym)) + abs(av * xm) + abs(bv * ym)
            err = abs(g(xm, ym) - g(mpmath.mpf(float(x[i])), mpmath.mpf(float(y[i])))) / scale
            assert err < 8 * torch.finfo(F64).eps, (float(a[i]), float(b[i]), float(err))


def test_warm_started_roots_equal_cold_ones() -> None:
    """A cache of the previous call's roots (an optimiser's last step) only changes where the
    iteration starts: the roots of the next, slightly moved, slopes are the cold-start ones; a
    cache of another shape is ignored."""
    gen = torch.Generator().manual_seed(4)
    n = 5000
    b = torch.rand(n, generator=gen, dtype=F64) * 0.98 + 0.01
    a = torch.sqrt(_h(_mode(b), b)) * torch.rand(n, generator=gen, dtype=F64) * 1.2  # some without roots
    cache: dict = {}
    _sigmoid_tanh_interior(a, b, cache=cache)
    for a2, b2 in ((a * 1.01, b + 0.003), (a * 0.5, b * 0.9)):
        warm = _sigmoid_tanh_interior(a2, b2, cache=cache)
        cold = _sigmoid_tanh_interior(a2, b2)
        for (xw, yw), (xc, yc) in zip(warm, cold):
            torch.testing.assert_close(xw, xc, rtol=1e-9, atol=1e-9, equal_nan=True)
            torch.testing.assert_close(yw, yc, rtol=1e-9, atol=1e-9, equal_nan=True)
    other = {"roots": torch.zeros(2, 7, dtype=F64)}
    for (xw, _), (xc, _) in zip(_sigmoid_tanh_interior(a, b, cache=other), _sigmoid_tanh_interior(a, b)):
        torch.testing.assert_close(xw, xc, rtol=1e-9, atol=1e-9, equal_nan=True)
    assert other["roots"].shape == (n,)


def test_bisection_finishes_what_newton_does_not() -> None:
    """With no Newton step allowed to finish, the bracket bisection still returns the roots."""
    gen = torch.Generator().manual_seed(5)
    b = torch.rand(300, generator=gen, dtype=F64) * 0.9 + 0.05
    a = torch.sqrt(_h(_mode(b), b)) * torch.rand(300, generator=gen, dtype=F64)
    for (x1, y1), (x2, y2) in zip(_sigmoid_tanh_interior(a, b, max_steps=1), _sigmoid_tanh_interior(a, b)):
        torch.testing.assert_close(x1, x2, rtol=1e-9, atol=1e-9, equal_nan=True)
        torch.testing.assert_close(y1, y2, rtol=1e-9, atol=1e-9, equal_nan=True)


def test_roots_outside_the_box_are_dropped_and_the_others_kept() -> None:
    """``x_range``: a root whose x lies in ``[lx, ux]`` (also exactly on an end) comes back as
    without it; only roots outside the box come back NaN."""
    gen = torch.Generator().manual_seed(6)
    n = 6000
    b = torch.rand(n, generator=gen, dtype=F64) * 0.98 + 0.01
    a = torch.sqrt(_h(_mode(b), b)) * torch.rand(n, generator=gen, dtype=F64) * 1.1  # some without roots
    a = a * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    free = _sigmoid_tanh_interior(a, b)
    centre = torch.randn(n, generator=gen, dtype=F64) * 3
    width = torch.rand(n, generator=gen, dtype=F64) * 2
    lx, ux = centre - width, centre + width
    # a sixth of the boxes end exactly at the root, a sixth start exactly at it
    kind = torch.randint(0, 6, (n,), generator=gen)
    (xr, _), = free
    ux = torch.where((kind == 0) & torch.isfinite(xr), xr, ux)
    lx = torch.where((kind == 0) & torch.isfinite(xr), xr - width, lx)
    lx = torch.where((kind == 1) & torch.isfinite(xr), xr, lx)
    ux = torch.where((kind == 1) & torch.isfinite(xr), xr + width, ux)
    boxed = _sigmoid_tanh_interior(a, b, x_range=(lx, ux))
    dropped = 0
    for (xf, yf), (xb, yb) in zip(free, boxed):
        inside = torch.isfinite(xf) & (xf >= lx) & (xf <= ux)
        torch.testing.assert_close(xb[inside], xf[inside], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(yb[inside], yf[inside], rtol=1e-9, atol=1e-9)
        dropped += int((torch.isnan(xb) & torch.isfinite(xf)).sum())
        outside = torch.isfinite(xf) & ((xf < lx - 1e-3) | (xf > ux + 1e-3))
        assert torch.isnan(xb[outside]).all()  # well outside: not solved
    assert dropped > n // 4  # one root per entry, about half of them outside these boxes


def test_roots_do_not_depend_on_the_other_entries() -> None:
    """Each root is iterated until its OWN step is small and then stays put, so it is the same
    bits whether it is solved alone or with thousands of others (some slower to converge): a
    region's offsets, and so its certificate, do not depend on what shares its batch."""
    gen = torch.Generator().manual_seed(7)
    n = 3000
    b = torch.rand(n, generator=gen, dtype=F64) * 0.98 + 0.01
    a = torch.sqrt(_h(_mode(b), b)) * (1 - 10.0 ** -torch.randint(1, 12, (n,), generator=gen).to(F64))  # near the fold
    together = _sigmoid_tanh_interior(a, b)
    for i in (0, 17, 1234, n - 1):
        alone = _sigmoid_tanh_interior(a[i:i + 1], b[i:i + 1])
        for (x1, y1), (x2, y2) in zip(alone, together):
            assert torch.equal(x1, x2[i:i + 1]) and torch.equal(y1, y2[i:i + 1])


def test_danskin_gradient_equals_autograd_through_the_candidates() -> None:
    """With bounds that need no gradient, the offsets' gradient in the slopes is applied directly
    (minus the extreme point's coordinates): the same as autograd through the candidate values,
    which is what runs when the bounds need gradients too (certified training)."""
    gen = torch.Generator().manual_seed(9)
    n = 400
    for op in ("sigmoid_tanh", "mul_sigmoid", "mul", "tanh", "sigmoid"):
        arity = 2 if op in ("sigmoid_tanh", "mul_sigmoid", "mul") else 1
        lo = torch.randn(arity, n, generator=gen, dtype=F64) * 2
        hi = lo + torch.rand(arity, n, generator=gen, dtype=F64) * 3
        slopes = torch.rand(arity, n, generator=gen, dtype=F64) * 0.5 - 0.1
        weights = torch.rand(2, n, generator=gen, dtype=F64)
        grads = []
        for bounds_need_grad in (False, True):
            s = slopes.clone().requires_grad_(True)
            bounds = [t.clone().requires_grad_(bounds_need_grad) for pair in zip(lo, hi) for t in pair]
            low, high = exact_offsets(op, tuple(s), *bounds)
            (g,) = torch.autograd.grad((weights[0] * low + weights[1] * high).sum(), [s])
            grads.append(g)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["tanh", "sigmoid", "mul"])
def test_danskin_gradient_spreads_over_tied_extreme_points(op: str) -> None:
    """Where several candidates attain the extremum (a chord's two endpoints; a product's corners
    with a zero slope pair on a symmetric box), the gradient is minus the MEAN of their coordinates
    (a point listed twice counts twice), as autograd's amin / amax spread it; one arbitrary endpoint steered the slope optimisers worse
    (backsub-slopes lost a text of the RT LSTM)."""
    gen = torch.Generator().manual_seed(13)
    n = 64
    if op == "mul":  # x*y - 0 x - 0 y on [-r, r]^2: the min -r^2 at two corners, the max r^2 at two
        r = torch.rand(n, generator=gen, dtype=F64) + 0.5
        bounds, slopes = [-r, r, -r, r], torch.zeros(2, n, dtype=F64)
    else:  # the chord slope: f - k x takes equal values at both endpoints (the chord's min or max)
        f = torch.tanh if op == "tanh" else torch.sigmoid
        lo = torch.randn(n, generator=gen, dtype=F64)
        hi = lo + torch.rand(n, generator=gen, dtype=F64) * 2 + 0.1
        bounds, slopes = [lo, hi], ((f(hi) - f(lo)) / (hi - lo))[None]
    grads = []
    for bounds_need_grad in (False, True):
        s = slopes.clone().requires_grad_(True)
        b = [t.clone().requires_grad_(bounds_need_grad) for t in bounds]
        low, high = exact_offsets(op, tuple(s), *b)
        grads.append([torch.autograd.grad(v.sum(), [s], retain_graph=True)[0] for v in (low, high)])
    for danskin, autograd in zip(*grads):
        torch.testing.assert_close(danskin, autograd, rtol=1e-12, atol=1e-12)
    if op != "mul":  # on a concave piece (lo > 0) the chord's minimum is at the endpoints only, and
        # where they tie exactly the gradient is a mix of -lo and -hi, strictly between them
        lo, hi = bounds
        concave, g = lo > 0, grads[0][0][0]
        assert bool(((g >= -hi) & (g <= -lo))[concave].all())
        assert bool(((g > -hi) & (g < -lo))[concave].any())
    if op == "mul":  # the tied corners (-r, r) and (r, -r), and (-r, -r) and (r, r): mean 0
        assert bool((grads[0][0] == 0).all() and (grads[0][1] == 0).all())
