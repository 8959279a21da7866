"""Golden values: 1-neuron models whose certified margin bounds can be derived by hand.

Conventions used below: head ``W = [[1], [-1]]`` so ``logit_0 = h``, ``logit_1 = -h`` (plus the
head bias), hence for label 0 the margin is ``2h + (b0 - b1)`` and for label 1 it is
``-2h - (b0 - b1)``.  All expected values are written in closed form with ``math``; the library
adds a few ulps of outward rounding, so we compare with ``atol=1e-9`` AND check the library's
bound is never above the hand-derived (exact) one by more than that.
"""

from __future__ import annotations

import math
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from rnnguard import AllFrames, Frames, LpBall, OneFrame, Perturbation, SequenceClassifier, certify  # noqa: E402
from rnnguard.models import lower, run_program  # noqa: E402

from e2e_support import abstract_final_state  # noqa: E402

tanh = math.tanh
ATOL = 1e-9


def sigma(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def one_neuron(kind: str, *, w_ih, w_hh=None, b_ih=None, b_hh=None, head_b=(0.0, 0.0)) -> SequenceClassifier:
    """A SequenceClassifier with input size 1, hidden size 1, 2 classes and the given weights."""
    m = SequenceClassifier(kind, 1, 1, 2).double()
    gates = {"rnn": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}[kind]
    zeros = [0.0] * gates
    with torch.no_grad():
        m.rnn.weight_ih_l0.copy_(torch.tensor(w_ih, dtype=torch.float64).reshape(gates, 1))
        m.rnn.weight_hh_l0.copy_(torch.tensor(w_hh if w_hh is not None else zeros, dtype=torch.float64).reshape(gates, 1))
        m.rnn.bias_ih_l0.copy_(torch.tensor(b_ih if b_ih is not None else zeros, dtype=torch.float64))
        m.rnn.bias_hh_l0.copy_(torch.tensor(b_hh if b_hh is not None else zeros, dtype=torch.float64))
        m.head.weight.copy_(torch.tensor([[1.0], [-1.0]], dtype=torch.float64))
        m.head.bias.copy_(torch.tensor(head_b, dtype=torch.float64))
    return m.eval().requires_grad_(False)


def bounds_of(model, x, y, eps, domain, frames=AllFrames(), lengths=None):
    res = certify(model, torch.tensor(x, dtype=torch.float64), torch.tensor(y), Perturbation(LpBall(eps), frames),
                  domain=domain, lengths=None if lengths is None else torch.tensor(lengths))
    return res


def assert_bound(got: float, expected: float):
    """Equal to the hand value up to outward rounding, and never above it (soundness direction)."""
    assert got == pytest.approx(expected, abs=ATOL)
    assert got <= expected + 1e-15


def chord_parallelogram(l: float, u: float) -> tuple[float, float, float]:
    """Cert-RNN's parallel planes for tanh on [l, u], by hand.

    Slope k = chord slope (tanh(u) - tanh(l)) / (u - l).  The offsets are the min / max of
    g(x) = tanh(x) - k x on [l, u]; g' = tanh'(x) - k vanishes where tanh'(x) = 1 - tanh(x)^2 = k,
    i.e. x = +-atanh(sqrt(1 - k)), so the extremes are among l, u and those two points."""
    k = (tanh(u) - tanh(l)) / (u - l)
    cands = [l, u]
    s = math.atanh(math.sqrt(1 - k))
    cands += [p for p in (s, -s) if l <= p <= u]
    g = [tanh(p) - k * p for p in cands]
    return k, min(g), max(g)


# ----------------------------------------------------------------------------- 1 step tanh
# h = tanh(x'), x' in [0.4, 0.6] (x = 0.5, eps = 0.1), weight_ih = 1, everything else 0.
X1 = [[[0.5]]]


def test_tanh_one_step_label0_all_domains_give_2tanh04():
    """label 0: margin 2h, increasing in x'  ->  exact minimum 2 tanh(0.4).

    Box: [tanh(0.4), tanh(0.6)] -> 2 tanh(0.4).
    Zonotope: pre = 0.5 + 0.1 e1; planes on [0.4, 0.6] with chord slope k; g = tanh - k x is
    concave there (tanh is concave for x > 0) and g(0.4) = g(0.6) (chord), so
    c_lo = tanh(0.4) - 0.4 k, c_hi = g(x*) with tanh'(x*) = k.  h = k (0.5 + 0.1 e1) + mid + rad e2
    and 2h >= 2 (0.4 k + c_lo) = 2 tanh(0.4): the same bound.  InterZono = max of both = same."""
    m = one_neuron("rnn", w_ih=[1.0])
    for domain in ("box", "zonotope", "interzono"):
        res = bounds_of(m, X1, [0], 0.1, domain)
        assert_bound(float(res.margin_lower[0, 0]), 2 * tanh(0.4))
        assert bool(res.certified[0])


def test_tanh_one_step_label1_zonotope_is_looser_than_box():
    """label 1: margin -2h, its lower bound is -2 * (upper bound of h).

    Box: -2 tanh(0.6).  Zonotope: upper of h = 0.6 k + c_hi = tanh(x*) + k (0.6 - x*) > tanh(0.6)
    (the parallelogram overshoots at the right end).  InterZono: its support component is the
    box of the exact output interval, so it recovers -2 tanh(0.6)."""
    k, c_lo, c_hi = chord_parallelogram(0.4, 0.6)
    x_star = math.atanh(math.sqrt(1 - k))
    assert c_hi == pytest.approx(tanh(x_star) - k * x_star)
    m = one_neuron("rnn", w_ih=[1.0])
    box = float(bounds_of(m, X1, [1], 0.1, "box").margin_lower[0, 0])
    zono = float(bounds_of(m, X1, [1], 0.1, "zonotope").margin_lower[0, 0])
    iz = float(bounds_of(m, X1, [1], 0.1, "interzono").margin_lower[0, 0])
    assert_bound(box, -2 * tanh(0.6))
    assert_bound(zono, -2 * (tanh(x_star) + k * (0.6 - x_star)))
    assert_bound(zono, -2 * (0.6 * k + c_hi))
    assert_bound(iz, -2 * tanh(0.6))
    assert zono < box - 1e-4


def test_tanh_one_step_hidden_bounds():
    """bounds() of the final hidden state: Box exact, Zonotope = parallelogram's projection,
    InterZono = their intersection (= Box here)."""
    k, c_lo, c_hi = chord_parallelogram(0.4, 0.6)
    program = lower(one_neuron("rnn", w_ih=[1.0]))
    x = torch.tensor(X1, dtype=torch.float64)
    regions = Perturbation(LpBall(0.1)).regions(x, torch.tensor([1]))
    expected = {
        "box": (tanh(0.4), tanh(0.6)),
        "zonotope": (0.4 * k + c_lo, 0.6 * k + c_hi),
        "interzono": (tanh(0.4), tanh(0.6)),
    }
    for domain, (lo, hi) in expected.items():
        got_lo, got_hi = abstract_final_state(program, regions, domain).bounds()
        assert float(got_lo[0, 0]) == pytest.approx(lo, abs=ATOL) and float(got_lo[0, 0]) <= lo
        assert float(got_hi[0, 0]) == pytest.approx(hi, abs=ATOL) and float(got_hi[0, 0]) >= hi


def test_head_bias_shifts_the_margin():
    """Head bias (0.1, -0.2) adds b0 - b1 = 0.3 to the label-0 margin and -0.3 to the label-1 one."""
    m = one_neuron("rnn", w_ih=[1.0], head_b=(0.1, -0.2))
    assert_bound(float(bounds_of(m, X1, [0], 0.1, "box").margin_lower[0, 0]), 2 * tanh(0.4) + 0.3)
    assert_bound(float(bounds_of(m, X1, [1], 0.1, "box").margin_lower[0, 0]), -2 * tanh(0.6) - 0.3)


# ----------------------------------------------------------------------------- 2 steps tanh
# weight_ih = 1, weight_hh = 0.5, head bias (0.3, 0): h1 = tanh(x1'), h2 = tanh(x2' + 0.5 h1),
# label-0 margin = 2 h2 + 0.3.  Sample 0: x = (0.5, -0.2), length 2.  Sample 1: x = (0.5, 7.0)
# with length 1 (its second frame is padding and must be ignored): margin = 2 tanh(x1') + 0.3.
X2 = [[[0.5], [-0.2]], [[0.5], [7.0]]]
L2 = [2, 1]


def _two_step_model():
    return one_neuron("rnn", w_ih=[1.0], w_hh=[0.5], head_b=(0.3, 0.0))


def test_tanh_two_steps_box_all_frames():
    """Box: h1 in [tanh .4, tanh .6]; pre2 = x2' + 0.5 h1 in [-0.3 + 0.5 tanh .4, -0.1 + 0.5 tanh .6];
    margin >= 0.3 + 2 tanh(-0.3 + 0.5 tanh 0.4) = 0.0809... > 0: certified.
    Sample 1 (length 1): 0.3 + 2 tanh(0.4)."""
    res = bounds_of(_two_step_model(), X2, [0, 0], 0.1, "box", lengths=L2)
    assert_bound(float(res.margin_lower[0, 0]), 0.3 + 2 * tanh(-0.3 + 0.5 * tanh(0.4)))
    assert_bound(float(res.margin_lower[1, 0]), 0.3 + 2 * tanh(0.4))
    assert res.certified.tolist() == [True, True]
    # label 1 of sample 0: -0.3 - 2 * upper(h2) = -0.3 - 2 tanh(-0.1 + 0.5 tanh .6)
    res1 = bounds_of(_two_step_model(), X2, [1, 1], 0.1, "box", lengths=L2)
    assert_bound(float(res1.margin_lower[0, 0]), -0.3 - 2 * tanh(-0.1 + 0.5 * tanh(0.6)))
    assert res1.certified.tolist() == [False, False]


def test_tanh_two_steps_box_one_frame_and_last_frame():
    """One frame: the min over two regions.
    frame 0 moves: pre2 in [-0.2 + 0.5 tanh .4, ...]  -> 0.3 + 2 tanh(-0.2 + 0.5 tanh 0.4);
    frame 1 moves: pre2 in [-0.3 + 0.5 tanh .5, ...]  -> 0.3 + 2 tanh(-0.3 + 0.5 tanh 0.5)  (smaller).
    Frames([-1]) is the second region alone; for the length-1 sample it is frame 0."""
    m = _two_step_model()
    r0 = 0.3 + 2 * tanh(-0.2 + 0.5 * tanh(0.4))
    r1 = 0.3 + 2 * tanh(-0.3 + 0.5 * tanh(0.5))
    one = bounds_of(m, X2, [0, 0], 0.1, "box", frames=OneFrame(), lengths=L2)
    assert_bound(float(one.margin_lower[0, 0]), min(r0, r1))
    assert_bound(float(one.margin_lower[1, 0]), 0.3 + 2 * tanh(0.4))
    last = bounds_of(m, X2, [0, 0], 0.1, "box", frames=Frames([-1]), lengths=L2)
    assert_bound(float(last.margin_lower[0, 0]), r1)
    assert_bound(float(last.margin_lower[1, 0]), 0.3 + 2 * tanh(0.4))
    first = bounds_of(m, X2, [0, 0], 0.1, "box", frames=Frames([0]), lengths=L2)
    assert_bound(float(first.margin_lower[0, 0]), r0)


def _two_step_zonotope_by_hand():
    """Zonotope, all frames, sample 0 (symbols e1: x1, e2: tanh 1, e3: x2, e4: tanh 2).

    h1 = k1 (0.5 + 0.1 e1) + m1 + r1 e2            (planes of tanh on [0.4, 0.6])
    pre2 = -0.2 + 0.1 e3 + 0.5 h1 = c2 + 0.05 k1 e1 + 0.5 r1 e2 + 0.1 e3,  c2 = -0.2 + 0.5 (0.5 k1 + m1)
    rho2 = 0.05 k1 + 0.5 r1 + 0.1 (all coefficients positive)
    h2 = k2 pre2 + m2 + r2 e4                       (planes of tanh on [c2 - rho2, c2 + rho2])
    margin = 0.3 + 2 h2 >= 0.3 + 2 (k2 (c2 - rho2) + lo2)."""
    k1, lo1, hi1 = chord_parallelogram(0.4, 0.6)
    m1, r1 = (lo1 + hi1) / 2, (hi1 - lo1) / 2
    c2 = -0.2 + 0.5 * (0.5 * k1 + m1)
    rho2 = 0.05 * k1 + 0.5 * r1 + 0.1
    k2, lo2, hi2 = chord_parallelogram(c2 - rho2, c2 + rho2)
    return dict(k1=k1, lo1=lo1, hi1=hi1, c2=c2, rho2=rho2, k2=k2, lo2=lo2, hi2=hi2)


def test_tanh_two_steps_zonotope_by_hand():
    z = _two_step_zonotope_by_hand()
    expected = 0.3 + 2 * (z["k2"] * (z["c2"] - z["rho2"]) + z["lo2"])
    res = bounds_of(_two_step_model(), X2, [0, 0], 0.1, "zonotope", lengths=L2)
    assert_bound(float(res.margin_lower[0, 0]), expected)
    assert_bound(float(res.margin_lower[1, 0]), 0.3 + 2 * tanh(0.4))  # the 1-step case again
    # label 1: -0.3 - 2 (k2 (c2 + rho2) + hi2)
    res1 = bounds_of(_two_step_model(), X2, [1, 1], 0.1, "zonotope", lengths=L2)
    assert_bound(float(res1.margin_lower[0, 0]), -0.3 - 2 * (z["k2"] * (z["c2"] + z["rho2"]) + z["hi2"]))


def test_tanh_two_steps_interzono_by_hand():
    """InterZono: support component of h1 is the box [tanh .4, tanh .6]; pre2's support bounds are
    Box's, its main bounds are the zonotope's [c2 - rho2, c2 + rho2]; the nonlinearity uses the
    intersection I = [l*, u*]:
      main:    h2 = k2' pre2_main + mid' + rad' e  with planes on I   -> margin >= 0.3 + 2 (k2' (c2 - rho2) + lo2')
      support: h2 in [tanh l*, tanh u*]                               -> margin >= 0.3 + 2 tanh(l*)
    and the margin bound is the larger of the two."""
    z = _two_step_zonotope_by_hand()
    box_lo, box_hi = -0.3 + 0.5 * tanh(0.4), -0.1 + 0.5 * tanh(0.6)
    l_star, u_star = max(box_lo, z["c2"] - z["rho2"]), min(box_hi, z["c2"] + z["rho2"])
    assert u_star < z["c2"] + z["rho2"] - 1e-3  # the intersection really is tighter here
    k2, lo2, hi2 = chord_parallelogram(l_star, u_star)
    main = 0.3 + 2 * (k2 * (z["c2"] - z["rho2"]) + lo2)
    support = 0.3 + 2 * tanh(l_star)
    res = bounds_of(_two_step_model(), X2, [0, 0], 0.1, "interzono", lengths=L2)
    assert_bound(float(res.margin_lower[0, 0]), max(main, support))
    main1 = -0.3 - 2 * (k2 * (z["c2"] + z["rho2"]) + hi2)
    support1 = -0.3 - 2 * tanh(u_star)
    res1 = bounds_of(_two_step_model(), X2, [1, 1], 0.1, "interzono", lengths=L2)
    assert_bound(float(res1.margin_lower[0, 0]), max(main1, support1))


# ----------------------------------------------------------------------------- relu
def test_relu_two_steps_by_hand():
    """ReLU RNN, weight_ih = 1, weight_hh = -1, x = (0.5, 0.35), eps = 0.1.

    h1 = relu(x1') = x1' in [0.4, 0.6] (exact in every domain: chord slope 1, offsets 0).
    pre2 = x2' - h1 in [0.25 - 0.6, 0.45 - 0.4] = [-0.35, 0.05].
    Box: h2 in [0, 0.05]      -> label 0: 0;  label 1: -0.1.
    Zonotope: pre2 = -0.15 + 0.1 e2 - 0.1 e1 (exact), planes on [-0.35, 0.05]: k = 0.05/0.4 = 0.125,
      g = relu - k x: g(-0.35) = g(0.05) = 0.04375, g(0) = 0  -> h2 = 0.125 pre2 + [0, 0.04375]
      label 0: 2 (0.125 * -0.35 + 0) = -0.0875;  label 1: -2 (0.125 * 0.05 + 0.04375) = -0.1.
    InterZono: max(main, support) = 0 and -0.1.  Never certified (needs > 0)."""
    m = one_neuron("rnn_relu", w_ih=[1.0], w_hh=[-1.0])
    x = [[[0.5], [0.35]]]
    expected = {"box": (0.0, -0.1), "zonotope": (-0.0875, -0.1), "interzono": (0.0, -0.1)}
    for domain, (e0, e1) in expected.items():
        r0 = bounds_of(m, x, [0], 0.1, domain)
        r1 = bounds_of(m, x, [1], 0.1, domain)
        assert_bound(float(r0.margin_lower[0, 0]), e0)
        assert_bound(float(r1.margin_lower[0, 0]), e1)
        assert not bool(r0.certified[0]) and not bool(r1.certified[0])


# ----------------------------------------------------------------------------- LSTM
# Gates (PyTorch order i, f, g, o) with weight_ih = (1, 0, -2, 0.5), bias_ih = (0, 0, 0.5, 0),
# weight_hh = 0: for x' in [0.4, 0.6]
#   i' = x' in [0.4, 0.6],  f' = 0,  g' = 0.5 - 2 x' in [-0.7, -0.3],  o' = 0.5 x' in [0.2, 0.3].
# c1 = sigma(i') tanh(g')  (c0 = 0): tanh(g') < 0, so the product is smallest for the largest sigma
#   and the most negative tanh:  c1 in [sigma(0.6) tanh(-0.7), sigma(0.4) tanh(-0.3)] = [c_lo, c_hi]
# h1 = sigma(o') tanh(c1), tanh(c1) < 0:  h1 in [sigma(0.3) tanh(c_lo), sigma(0.2) tanh(c_hi)].
LSTM_W = dict(w_ih=[1.0, 0.0, -2.0, 0.5], b_ih=[0.0, 0.0, 0.5, 0.0])


def _lstm_hand():
    c_lo, c_hi = sigma(0.6) * tanh(-0.7), sigma(0.4) * tanh(-0.3)
    return c_lo, c_hi, sigma(0.3) * tanh(c_lo), sigma(0.2) * tanh(c_hi)


def test_lstm_one_step_box_by_hand():
    c_lo, c_hi, h_lo, h_hi = _lstm_hand()
    m = one_neuron("lstm", **LSTM_W)
    assert_bound(float(bounds_of(m, X1, [0], 0.1, "box").margin_lower[0, 0]), 2 * h_lo)
    assert_bound(float(bounds_of(m, X1, [1], 0.1, "box").margin_lower[0, 0]), -2 * h_hi)
    lo, hi = abstract_final_state(lower(m), Perturbation(LpBall(0.1)).regions(torch.tensor(X1, dtype=torch.float64),
                                                                             torch.tensor([1])), "box").bounds()
    assert float(lo) == pytest.approx(h_lo, abs=ATOL) and float(hi) == pytest.approx(h_hi, abs=ATOL)


def test_lstm_one_step_relational_domains_are_sound_and_tighter_than_the_hand_box():
    """The true range (a 1-D function of x', evaluated on a fine grid incl. the ends) lies inside
    every domain's bounds, and InterZono is at least as tight as the hand-computed box."""
    _, _, h_lo, h_hi = _lstm_hand()
    m = one_neuron("lstm", **LSTM_W)
    grid = torch.linspace(0.4, 0.6, 2001, dtype=torch.float64)
    with torch.no_grad():
        h = run_program(lower(m), grid[:, None, None])[:, 0]  # logit_0 = h
    true_lo, true_hi = float(h.min()), float(h.max())
    assert h_lo <= true_lo and true_hi <= h_hi
    for domain in ("box", "zonotope", "interzono"):
        m0 = float(bounds_of(m, X1, [0], 0.1, domain).margin_lower[0, 0])
        m1 = float(bounds_of(m, X1, [1], 0.1, domain).margin_lower[0, 0])
        assert m0 <= 2 * true_lo + 1e-12 and m1 <= -2 * true_hi + 1e-12
        if domain == "interzono":
            assert m0 >= 2 * h_lo - ATOL and m1 >= -2 * h_hi - ATOL


def test_lstm_two_steps_box_by_hand():
    """x = (0.5, 0.5): f' = 0 so the forget gate is exactly sigma(0) = 1/2 and
    c2 = c1 / 2 + sigma(i2') tanh(g2') in [1.5 c_lo, 1.5 c_hi] (both terms negative);
    h2 = sigma(o2') tanh(c2) in [sigma(0.3) tanh(1.5 c_lo), sigma(0.2) tanh(1.5 c_hi)]."""
    c_lo, c_hi, _, _ = _lstm_hand()
    m = one_neuron("lstm", **LSTM_W)
    x = [[[0.5], [0.5]]]
    assert_bound(float(bounds_of(m, x, [0], 0.1, "box").margin_lower[0, 0]), 2 * sigma(0.3) * tanh(1.5 * c_lo))
    assert_bound(float(bounds_of(m, x, [1], 0.1, "box").margin_lower[0, 0]), -2 * sigma(0.2) * tanh(1.5 * c_hi))


# ----------------------------------------------------------------------------- GRU
def test_gru_by_hand():
    """GRU gates (r, z, n), weight_ih = (0, 0, 1), all else 0: r = z = sigma(0) = 1/2 exactly and
    n = tanh(x' + r * 0) = tanh(x'), h_t = (1 - z) n + z h_{t-1} = (tanh(x_t') + h_{t-1}) / 2.
    T = 1: h in [tanh(.4)/2, tanh(.6)/2] -> label-0 margin >= tanh(0.4).
    T = 2, x = (0.5, 0.5): h2 >= tanh(.4)/2 + tanh(.4)/4  -> margin >= 1.5 tanh(0.4).
    Every domain is exact here for label 0 (the bound is attained at x' = 0.4 everywhere)."""
    m = one_neuron("gru", w_ih=[0.0, 0.0, 1.0])
    for domain in ("box", "zonotope", "interzono"):
        assert_bound(float(bounds_of(m, X1, [0], 0.1, domain).margin_lower[0, 0]), tanh(0.4))
        assert_bound(float(bounds_of(m, [[[0.5], [0.5]]], [0], 0.1, domain).margin_lower[0, 0]), 1.5 * tanh(0.4))
    assert_bound(float(bounds_of(m, X1, [1], 0.1, "box").margin_lower[0, 0]), -tanh(0.6))
