"""Precision relations between the domains and threat models, on the containment test cases.

* InterZono >= Box on every region (the support component is at least interval arithmetic).
* InterZono >= Zonotope (RNN-Guard Theorem 2).  This does NOT hold for the current InterZono:
  its main component computes Cert-RNN's parallel planes from the INTERSECTED bounds, and
  parallel planes are not monotone in the input box (the chord slope changes and the offsets
  are only valid on the smaller box), so the final margin can come out lower than plain
  Zonotope's.  The failing cases below are strict xfails with the reported counterexample
  ``test_theorem2_minimal_counterexample`` (a 1-neuron, 1-step GRU that Zonotope certifies and
  InterZono does not).
* Back-substitution (plain, optimised, hybrid) >= Box on every region (interval shadow); the hybrid
  domain certifies whatever InterZono or back-substitution certify and is >= both on the regions
  it leaves uncertified; the optimised mode >= the plain one.
* Theorem 1: all-frame certified => one-frame certified, and all-frame margin bounds <= the
  one-frame (and first/last-frame) ones, for every domain.
* eps = 0: every domain returns exactly the clean margins (to 1e-9).
* ``certify`` agrees with the per-region ``propagate_margins`` (min over a sample's regions).
"""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from rnnguard import LpBall, Perturbation, SequenceClassifier, certify  # noqa: E402

from e2e_support import (  # noqa: E402
    CASES,
    DOMAIN_NAMES,
    FRAME_CHOICES,
    TOL,
    case_bounds,
    case_data,
    certified_margins,
    concrete_margins,
)

EPSILONS = (0.05, 0.3)

THEOREM2_REASON = (
    "known limitation, documented in docs/domains.md (Theorem 2): end to end, InterZono's margin bound can be "
    "below Zonotope's on random untrained models, because the main component's parallel planes are computed "
    "from the intersected bounds and planes are not monotone in the input box; kept as strict xfails so that "
    "any change in this behaviour is noticed"
)
# (case id, frames, eps) where InterZono < Zonotope - 1e-9 on some region, as observed
THEOREM2_FAILURES = {
    ("rnn_relu-L1-s1", "one", 0.3),
    ("rnn_relu-L2-s0", "one", 0.3),
    ("rnn_relu-L2-s0", "first_last", 0.3),
    ("lstm-L2-s0", "all", 0.3),
    ("lstm-L2-s0", "one", 0.3),
    ("lstm-L2-s0", "first_last", 0.3),
    ("gru-L1-s0", "all", 0.3),
    ("gru-L1-s0", "one", 0.3),
    ("gru-L1-s0", "first_last", 0.3),
    ("gru-L1-s1", "one", 0.05),
    ("gru-L1-s1", "one", 0.3),
    ("lstm-L1-s2", "all", 0.05),
    ("lstm-L1-s2", "one", 0.05),
    ("lstm-L1-s2", "one", 0.3),
    ("lstm-L1-s2", "first_last", 0.05),
    ("gru-L1-s2", "one", 0.05),
    ("gru-L2-s2", "one", 0.05),
}

CASE_THREATS = [(c, f, e) for c in CASES for f in FRAME_CHOICES for e in EPSILONS]


def _ids(p):
    c, f, e = p
    return f"{c.id}-{f}-{e}"


def _theorem2_params():
    out = []
    for c, f, e in CASE_THREATS:
        marks = [pytest.mark.xfail(strict=True, reason=THEOREM2_REASON)] if (c.id, f, e) in THEOREM2_FAILURES else []
        out.append(pytest.param(c, f, e, marks=marks, id=_ids((c, f, e))))
    return out


@pytest.mark.parametrize("case,frames,eps", CASE_THREATS, ids=[_ids(p) for p in CASE_THREATS])
def test_interzono_at_least_box(case, frames, eps):
    iz = case_bounds(case, frames, eps, "interzono")
    box = case_bounds(case, frames, eps, "box")
    assert (iz >= box - TOL).all(), f"InterZono {iz.tolist()} < Box {box.tolist()}"


@pytest.mark.parametrize("case,frames,eps", _theorem2_params())
def test_interzono_at_least_zonotope(case, frames, eps):
    iz = case_bounds(case, frames, eps, "interzono")
    zono = case_bounds(case, frames, eps, "zonotope")
    worst = float((iz - zono).min())
    assert worst >= -TOL, f"InterZono below Zonotope by {-worst:.3e}"


@pytest.mark.parametrize("case,frames,eps", CASE_THREATS, ids=[_ids(p) for p in CASE_THREATS])
def test_backsub_family_ordering(case, frames, eps):
    box = case_bounds(case, frames, eps, "box")
    bs = case_bounds(case, frames, eps, "backsub")
    opt = case_bounds(case, frames, eps, "backsub-opt")
    hyb = case_bounds(case, frames, eps, "hybrid")
    iz = case_bounds(case, frames, eps, "interzono")
    for name, value in (("backsub", bs), ("backsub-opt", opt), ("hybrid", hyb)):
        assert (value >= box - TOL).all(), f"{name} below Box by {float((box - value).max()):.3e}"
    assert (opt >= bs - TOL).all(), "optimised back-substitution below the plain one"
    # the hybrid reruns its components on the regions it leaves open: there it is >= both, and it
    # certifies every region either component certifies
    open_rows = ~(hyb > 0).all(dim=1)
    assert (hyb[open_rows] >= iz[open_rows] - TOL).all() and (hyb[open_rows] >= bs[open_rows] - TOL).all()
    for comp in (iz, bs):
        assert not ((comp > 0).all(dim=1) & open_rows).any(), "hybrid misses a certificate of a component"


def test_backsub_beats_interzono_somewhere():
    """Sanity check: back-substitution and the hybrid are strictly tighter on some test regions."""
    gains = [(case_bounds(c, "all", 0.3, "hybrid") - case_bounds(c, "all", 0.3, "interzono")).max() for c in CASES]
    assert max(float(g) for g in gains) > 1e-3


def test_zonotope_beats_box_somewhere():
    """Sanity check of the test cases: the relational domains are actually more precise."""
    gains = [float((case_bounds(c, "all", 0.3, "zonotope") - case_bounds(c, "all", 0.3, "box")).max())
             for c in CASES]
    assert max(gains) > 1e-2


@pytest.mark.xfail(strict=True, reason=THEOREM2_REASON)
def test_theorem2_minimal_counterexample():
    """1-neuron GRU, one frame, one feature: Zonotope certifies, InterZono does not.

    Observed: zonotope margin bound +5.26e-06 (certified), interzono -5.11e-06 (not certified),
    box -4.47e-02."""
    m = SequenceClassifier("gru", 1, 1, 2).double()
    with torch.no_grad():
        m.rnn.weight_ih_l0.copy_(torch.tensor([[0.47], [-1.73], [-0.44]]))
        m.rnn.weight_hh_l0.copy_(torch.tensor([[-1.84], [-0.39], [-1.42]]))
        m.rnn.bias_ih_l0.copy_(torch.tensor([-0.16, -0.05, 0.37]))
        m.rnn.bias_hh_l0.copy_(torch.tensor([1.85, -1.51, -0.38]))
        m.head.weight.copy_(torch.tensor([[-0.01], [1.99]]))
        m.head.bias.copy_(torch.tensor([0.42 - 0.000214, 0.09]))
    x = torch.tensor([[[-1.88]]], dtype=torch.float64)
    y = torch.tensor([0])
    pert = Perturbation(LpBall(0.3))
    zono = certify(m, x, y, pert, domain="zonotope")
    iz = certify(m, x, y, pert, domain="interzono")
    assert bool(zono.certified[0])
    assert float(iz.margin_lower[0, 0]) >= float(zono.margin_lower[0, 0])
    assert bool(iz.certified[0])


# ----------------------------------------------------------------------------- Theorem 1
# Theorem 1's bound ORDER (all-frame bound <= one-frame bound) is a property of the zonotope-family
# transformers.  Back-substitution picks its lines from each box, and lines are not monotone in the
# box, so on a larger region it can (rarely) come out marginally tighter: lstm-L2-s1 at eps 0.05
# gives all-frame -0.1163597 vs one-frame -0.1163654.  That is not a soundness issue (both are
# lower bounds of the true minimum, checked by the containment tests), so the order is asserted
# for the domains where it is a theorem.
THEOREM1_DOMAINS = ("box", "zonotope", "interzono")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("domain", THEOREM1_DOMAINS)
def test_all_frames_is_the_hardest_threat(case, eps, domain):
    all_m = certified_margins(case, "all", eps, domain)
    one_m = certified_margins(case, "one", eps, domain)
    fl_m = certified_margins(case, "first_last", eps, domain)
    assert (all_m <= one_m + TOL).all(), f"{domain}: all-frame {all_m.tolist()} > one-frame {one_m.tolist()}"
    assert (all_m <= fl_m + TOL).all(), f"{domain}: all-frame {all_m.tolist()} > frames(0,-1) {fl_m.tolist()}"
    cert_all, cert_one = (all_m > 0).all(1), (one_m > 0).all(1)
    assert not (cert_all & ~cert_one).any(), "all-frame certified but one-frame not (Theorem 1)"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("frames", list(FRAME_CHOICES))
def test_certify_is_min_over_regions(case, frames):
    data = case_data(case)
    regions = Perturbation(LpBall(0.05), FRAME_CHOICES[frames]).regions(data.x, data.lengths)
    for domain in DOMAIN_NAMES:
        per_region = case_bounds(case, frames, 0.05, domain)
        expected = torch.stack([per_region[regions.sample_index == b].amin(0) for b in range(data.x.shape[0])])
        got = certified_margins(case, frames, 0.05, domain)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        # propagating the regions in chunks of one gives the same bounds
        tiny = certify(data.model, data.x, data.labels, Perturbation(LpBall(0.05), FRAME_CHOICES[frames]),
                       domain=domain, lengths=data.lengths, batch_size=1)
        torch.testing.assert_close(tiny.margin_lower, got, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- eps = 0
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("frames", list(FRAME_CHOICES))
@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_eps_zero_gives_clean_margins(case, frames, domain):
    data = case_data(case)
    bounds = case_bounds(case, frames, 0.0, domain)
    regions = Perturbation(LpBall(0.0), FRAME_CHOICES[frames]).regions(data.x, data.lengths)
    with torch.no_grad():
        clean = concrete_margins(data.program, data.x, data.lengths, data.labels)[regions.sample_index]
    assert (bounds <= clean + TOL).all()
    torch.testing.assert_close(bounds, clean, rtol=0, atol=1e-9)
    result = certify(data.model, data.x, data.labels, Perturbation(LpBall(0.0), FRAME_CHOICES[frames]),
                     domain=domain, lengths=data.lengths)
    with torch.no_grad():
        clean_b = concrete_margins(data.program, data.x, data.lengths, data.labels)
    torch.testing.assert_close(result.margin_lower, clean_b, rtol=0, atol=1e-9)
    assert torch.equal(result.certified, (clean_b > 0).all(1))


# ----------------------------------------------------------------------------- float32
def _float64_and_float32_bounds(case, domain):
    """``certify`` margins of ``case`` (one-frame threat, eps 0.3) in float64 and in float32."""
    data = case_data(case)
    pert = Perturbation(LpBall(0.3), FRAME_CHOICES["one"])
    b64 = certify(data.model, data.x, data.labels, pert, domain=domain, lengths=data.lengths).margin_lower
    b32 = certify(data.model, data.x.float(), data.labels, pert, domain=domain, lengths=data.lengths,
                  dtype=torch.float32).margin_lower
    assert b32.dtype == torch.float32
    return b64, b32


@pytest.mark.parametrize("case", CASES[::2], ids=lambda c: c.id)
@pytest.mark.parametrize("domain", THEOREM1_DOMAINS)
def test_float32_bounds_are_close_and_never_tighter_than_float64(case, domain):
    """float32 certification (documented as not float-sound) still rounds its relaxations and
    concretisations outward: its bounds stay within 1e-3 (relative) of float64's, from below."""
    b64, b32 = _float64_and_float32_bounds(case, domain)
    rel = (b32.double() - b64) / (1 + b64.abs())
    assert rel.max() <= 1e-6, f"float32 bound above float64's: {rel.max():.3e}"
    assert rel.min() >= -1e-3


@pytest.mark.parametrize("case", CASES[::2], ids=lambda c: c.id)
@pytest.mark.parametrize("domain", [d for d in DOMAIN_NAMES if d not in THEOREM1_DOMAINS])
def test_float32_backsub_close_to_float64(case, domain):
    """Back-substitution picks each line from its box, so float32's slightly different boxes can
    pick other (equally sound) lines and land on either side of float64's bound: only closeness
    is asserted (the 'never tighter' order above holds for the continuous transformers)."""
    b64, b32 = _float64_and_float32_bounds(case, domain)
    assert ((b32.double() - b64).abs() / (1 + b64.abs())).max() <= 5e-2
