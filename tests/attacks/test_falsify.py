"""``falsify_regions``: the quick attack the optimised verifiers run first to skip hopeless regions.

It must only ever flag regions it holds a counterexample for (a point inside the region's box and
l_2 ball with a negative margin), find a violated centre, and never flag a region a sound
verifier certifies."""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from rnnguard import LpBall, Perturbation  # noqa: E402
from rnnguard.attacks import falsify_regions  # noqa: E402
from rnnguard.certify import margin_specification  # noqa: E402

from e2e_support import CASES, FRAME_CHOICES, case_bounds, case_data, concrete_margins  # noqa: E402

FALSIFY_CASES = [c for c in CASES if c.seed == 0]


def _falsify(case, frames, eps, norm):
    data = case_data(case)
    regions = Perturbation(LpBall(eps, norm), FRAME_CHOICES[frames]).regions(data.x, data.lengths)
    labels = data.labels[regions.sample_index]
    mask, points = falsify_regions(data.program, regions, *margin_specification(data.program, labels))
    return data, regions, labels, mask, points


@pytest.mark.parametrize("case", FALSIFY_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("frames,eps,norm", [("all", 0.8, "linf"), ("one", 1.5, "linf"), ("all", 2.0, "l2")])
def test_flagged_regions_hold_a_counterexample(case, frames, eps, norm):
    data, regions, labels, mask, points = _falsify(case, frames, eps, norm)
    tol = 1e-12
    assert (points >= regions.lower - tol).all() and (points <= regions.upper + tol).all()
    if norm == "l2":
        dist = (points - regions.ball_center).norm(dim=-1)
        assert (dist <= regions.ball_eps * (1 + 1e-9) + tol).all()
    with torch.no_grad():
        margins = concrete_margins(data.program, points, regions.lengths, labels).amin(dim=1)
    assert (margins[mask] < 0).all()
    # it does not certify: an unflagged region may still be non-robust, but no flagged region is certified
    assert not ((case_bounds(case, frames, eps, "backsub", norm) > 0).all(dim=1) & mask).any()


def test_finds_violated_centres_and_attacks_at_large_eps():
    flagged = 0
    for case in FALSIFY_CASES:
        data, regions, labels, mask, _ = _falsify(case, "all", 0.0, "linf")
        with torch.no_grad():
            centre = concrete_margins(data.program, regions.lower, regions.lengths, labels).amin(dim=1)
        assert torch.equal(mask, centre < 0)  # eps 0: the region is its centre
        assert bool(mask[-1])  # case_data mislabels its last sample
        flagged += int(_falsify(case, "all", 0.8, "linf")[3][:-1].sum())
    assert flagged > 0  # and it finds counterexamples away from the centre


def test_empty_batch():
    case = FALSIFY_CASES[0]
    data = case_data(case)
    regions = Perturbation(LpBall(0.1)).regions(data.x, data.lengths).select(slice(0, 0))
    weight, bias = margin_specification(data.program, data.labels[:0])
    mask, points = falsify_regions(data.program, regions, weight, bias)
    assert mask.shape == (0,) and points.shape[0] == 0


def test_attack_margins_are_the_margins_at_the_returned_points():
    """``attack_margins``: each region's worst margin at its returned point (an upper bound on
    the region's smallest margin), below zero exactly where ``falsify_regions`` flags it."""
    from rnnguard.attacks import attack_margins

    case = FALSIFY_CASES[0]
    data = case_data(case)
    regions = Perturbation(LpBall(0.8), FRAME_CHOICES["all"]).regions(data.x, data.lengths)
    labels = data.labels[regions.sample_index]
    spec = margin_specification(data.program, labels)
    margins, points = attack_margins(data.program, regions, *spec)
    with torch.no_grad():
        at_points = concrete_margins(data.program, points, regions.lengths, labels).amin(dim=1)
        centres = concrete_margins(data.program, (regions.lower + regions.upper) / 2, regions.lengths, labels)
    torch.testing.assert_close(margins, at_points, rtol=1e-9, atol=1e-9)
    assert (margins <= centres.amin(dim=1) + 1e-12).all()  # never above the centre's margin
    assert torch.equal(falsify_regions(data.program, regions, *spec)[0], margins < 0)
