"""Branch and bound (``backsub-bab``): sound, never looser than plain back-substitution, batch-invariant."""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from rnnguard import LpBall, Perturbation, SequenceClassifier, certify  # noqa: E402
from rnnguard.branching import BranchOptions, _bound_leaves, branch_and_bound_margins  # noqa: E402
from rnnguard.certify import margin_specification  # noqa: E402
from rnnguard.models import lower  # noqa: E402

from e2e_support import (  # noqa: E402
    CASES,
    FRAME_CHOICES,
    TOL,
    case_bounds,
    case_data,
    evaluate_points,
    pgd_min_margins,
    sample_points,
)

BAB_CASES = [c for c in CASES if c.seed == 0]


@pytest.mark.parametrize("case", BAB_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("frames", ["all", "one"])
@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_branch_and_bound_is_sound_and_never_looser(case, frames, eps):
    data = case_data(case)
    pert = Perturbation(LpBall(eps), FRAME_CHOICES[frames])
    regions = pert.regions(data.x, data.lengths)
    bounds = case_bounds(case, frames, eps, "backsub-bab")
    gen = torch.Generator().manual_seed(23)
    points = sample_points(pert, data.x, data.lengths, regions, n_ball=128, n_box=64, n_corner=64, generator=gen)
    margins, _ = evaluate_points(data.program, points, regions, data.labels)
    assert (margins.amin(0) >= bounds - TOL).all()
    attacked = pgd_min_margins(data.program, regions.lower, regions.upper, regions.lengths,
                               data.labels[regions.sample_index], steps=40, restarts=2, seed=7)
    assert (attacked >= bounds - TOL).all()
    assert (bounds >= case_bounds(case, frames, eps, "backsub") - TOL).all()


def _near_boundary_lstm():
    torch.manual_seed(0)
    model = SequenceClassifier("lstm", 3, 8, 3)
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    with torch.no_grad():
        y = model.double()(x).argmax(1)
    return model, x, y


def _problem():
    """The near-boundary LSTM's program, its eps-0.1 regions and margin specification."""
    model, x, y = _near_boundary_lstm()
    program = lower(model)
    regions = Perturbation(LpBall(0.1)).regions(x, torch.full((5,), 4))
    return model, x, y, program, regions, *margin_specification(program, y)


def test_branching_tightens_open_margins_and_keeps_certified_ones():
    model, x, y, program, regions, weight, bias = _problem()
    with torch.no_grad():
        plain = certify(model, x, y, Perturbation(LpBall(0.1)), domain="backsub").margin_lower
        few = branch_and_bound_margins(program, regions, weight, bias, BranchOptions(max_leaves=4))
        many = branch_and_bound_margins(program, regions, weight, bias, BranchOptions(max_leaves=64))
    assert (few >= plain - TOL).all() and (many >= few - TOL).all()
    proved = (plain > 0).all(dim=1)
    assert 0 < int(proved.sum()) < 5
    assert (many[~proved].min(dim=1).values - plain[~proved].min(dim=1).values).max() > 1e-4
    # inputs already certified are not branched: their bounds are the plain ones
    torch.testing.assert_close(many[proved], plain[proved], rtol=0, atol=0)


def test_branch_and_bound_is_batch_invariant():
    model, x, y = _near_boundary_lstm()
    pert = Perturbation(LpBall(0.1))
    together = certify(model, x, y, pert, domain="backsub-bab").margin_lower
    alone = certify(model, x, y, pert, domain="backsub-bab", batch_size=1).margin_lower
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)  # matmul blocking: ulps


def test_contradictory_split_constraints_give_an_empty_sub_problem():
    _, _, _, program, regions, weight, bias = _problem()
    with torch.no_grad():
        free, graph, _, _ = _bound_leaves(program, regions, weight, bias, {}, "deepcert")
        node = next(n for n in graph.nodes if hasattr(n, "operand_bounds") and n.operand_bounds)
        lo, hi = node.operand_bounds[0]
        above = hi + 1.0  # no input can push this operand above its sound upper bound
        clamp = {(node.id, 0): (torch.where(torch.arange(5)[:, None] == 0, above, torch.full_like(lo, -torch.inf)),
                                torch.full_like(hi, torch.inf))}
        cut, graph, _, _ = _bound_leaves(program, regions, weight, bias, clamp, "deepcert")
    assert graph.empty.tolist() == [True, False, False, False, False]
    assert torch.isinf(cut[0]).all()  # vacuously certified: the sub-problem has no input
    torch.testing.assert_close(cut[1:], free[1:], rtol=0, atol=1e-12)  # batched root finding: ulps


def test_unknown_domain_lists_backsub_bab():
    from rnnguard.domains import DOMAINS

    assert "backsub-bab" in DOMAINS and DOMAINS["backsub-bab"].margins is not None
