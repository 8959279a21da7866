"""End-to-end soundness of the Box, Zonotope and InterZono domains.

For seeded small RNN(tanh)/RNN(relu)/LSTM/GRU classifiers (1 and 2 layers, variable lengths) and
every threat model (all frames, one frame, frames {0, -1}) we check, per region of
``Perturbation.regions`` and per domain, that

* the margins ``logit[y] - logit[j]`` of thousands of concrete points of the region (the threat
  model's own sampler, uniform points of the region box and random box corners), evaluated with
  the Point-domain program ``run_program``, are >= the region's margin lower bound;
* a float64 PGD attack (50 steps, 3 restarts, projected onto the region box) minimising each
  margin never gets below that bound;
* the domain's bounds on the final top-layer hidden state contain every sampled hidden state.

Plus l_2 balls and a clipping box.  Tolerance ``TOL = 1e-9`` (float64).
"""

from __future__ import annotations

import functools
import pathlib
import sys
import zlib

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from rnnguard import LpBall, Perturbation  # noqa: E402
from rnnguard.models import lower, run_program  # noqa: E402

from e2e_support import (  # noqa: E402
    CASES,
    DOMAIN_NAMES,
    EXACT_L2_DOMAINS,
    FRAME_CHOICES,
    TOL,
    Case,
    abstract_final_state,
    case_bounds,
    case_data,
    evaluate_points,
    make_classifier,
    margins_from_logits,
    pgd_min_margins,
    region_margin_bounds,
    sample_points,
)

EPSILONS = (0.05, 0.3)
N_BALL, N_BOX, N_CORNER = 256, 128, 128  # 512 points per region, thousands per test


@functools.lru_cache(maxsize=None)
def _sampled(case: Case, frames: str, eps: float, norm: str = "linf", clip=None):
    data = case_data(case)
    pert = Perturbation(LpBall(eps, norm), FRAME_CHOICES[frames], clip)
    regions = pert.regions(data.x, data.lengths)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{case.id}/{frames}/{eps}/{norm}".encode()))
    points = sample_points(pert, data.x, data.lengths, regions, n_ball=N_BALL, n_box=N_BOX, n_corner=N_CORNER,
                           generator=gen)
    for i in range(3):  # the threat model's own samples are inside the threat model
        assert bool(pert.contains(data.x[regions.sample_index], points[i], regions.lengths).all())
    margins, hidden = evaluate_points(data.program, points, regions, data.labels)
    return regions, margins, hidden


@functools.lru_cache(maxsize=None)
def _attacked(case: Case, frames: str, eps: float):
    data = case_data(case)
    regions = Perturbation(LpBall(eps), FRAME_CHOICES[frames]).regions(data.x, data.lengths)
    return pgd_min_margins(data.program, regions.lower, regions.upper, regions.lengths,
                           data.labels[regions.sample_index], steps=50, restarts=3, seed=7)


def _explain(bounds, observed, regions):
    gap = observed - bounds
    r, k = divmod(int(gap.argmin()), gap.shape[1])
    return (f"region {r} (sample {int(regions.sample_index[r])}, length {int(regions.lengths[r])}, "
            f"moving frames {regions.masks[r].nonzero().flatten().tolist()}), margin {k}: "
            f"bound {float(bounds[r, k]):.12g} > observed {float(observed[r, k]):.12g}")


params = pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
frames_p = pytest.mark.parametrize("frames", list(FRAME_CHOICES))
eps_p = pytest.mark.parametrize("eps", EPSILONS)
domain_p = pytest.mark.parametrize("domain", DOMAIN_NAMES)


@params
@frames_p
@eps_p
@domain_p
def test_sampled_margins_respect_bounds(case, frames, eps, domain):
    regions, margins, _ = _sampled(case, frames, eps)
    bounds = case_bounds(case, frames, eps, domain)
    assert bounds.shape == margins.shape[1:]
    assert torch.isfinite(bounds).all()
    observed = margins.amin(0)
    assert (observed >= bounds - TOL).all(), _explain(bounds, observed, regions)


@params
@frames_p
@eps_p
@domain_p
def test_pgd_never_beats_bounds(case, frames, eps, domain):
    regions, margins, _ = _sampled(case, frames, eps)
    attacked = _attacked(case, frames, eps)
    bounds = case_bounds(case, frames, eps, domain)
    assert (attacked >= bounds - TOL).all(), _explain(bounds, attacked, regions)


@params
@frames_p
@eps_p
@domain_p
def test_final_hidden_bounds_contain_samples(case, frames, eps, domain):
    regions, _, hidden = _sampled(case, frames, eps)
    data = case_data(case)
    with torch.no_grad():
        lo, hi = abstract_final_state(data.program, regions, domain).bounds()
    assert lo.shape == hidden.shape[1:]
    assert (lo <= hi).all()
    below = (lo - TOL - hidden).clamp_min(0).amax()
    above = (hidden - hi - TOL).clamp_min(0).amax()
    assert float(below) == 0.0 and float(above) == 0.0, f"{domain}: hidden state escapes its bounds by {max(below, above)}"


def test_pgd_is_a_real_attack():
    """Sanity check of the checker: the attack finds strictly smaller margins than the centre."""
    case = CASES[2]
    data = case_data(case)
    regions = Perturbation(LpBall(0.3), FRAME_CHOICES["all"]).regions(data.x, data.lengths)
    attacked = _attacked(case, "all", 0.3)
    with torch.no_grad():
        clean = run_program(data.program, data.x, data.lengths)
    clean_m = margins_from_logits(clean, data.labels)[regions.sample_index]
    assert (attacked <= clean_m + 1e-12).all()
    assert (attacked < clean_m - 1e-3).any()


# ----------------------------------------------------------------------------- l2 and clipping
SMALL_CASES = [c for c in CASES if c.seed == 0 and c.num_layers == 1]


@pytest.mark.parametrize("case", SMALL_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("frames", ["all", "one"])
@domain_p
def test_l2_ball_sound(case, frames, domain):
    eps = 0.3
    regions, margins, hidden = _sampled(case, frames, eps, "l2")
    data = case_data(case)
    bounds = case_bounds(case, frames, eps, domain, "l2")
    box_bounds = case_bounds(case, frames, eps, domain, "linf")
    if domain in EXACT_L2_DOMAINS:  # the dual norm can only tighten the enclosing box's bound
        assert (bounds >= box_bounds - TOL).all()
        ball = (regions.ball_center, regions.ball_eps)
    else:  # bounded through its enclosing linf box: the bounds must be the same
        assert torch.equal(bounds, box_bounds)
        ball = None
    # exact-l2 domains bound the ball only: check them on the ball samples (the first N_BALL points)
    observed = (margins[:N_BALL] if ball is not None else margins).amin(0)
    assert (observed >= bounds - TOL).all(), _explain(bounds, observed, regions)
    attacked = pgd_min_margins(data.program, regions.lower, regions.upper, regions.lengths,
                               data.labels[regions.sample_index], steps=50, restarts=2, seed=3, ball=ball)
    assert (attacked >= bounds - TOL).all(), _explain(bounds, attacked, regions)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@domain_p
def test_clipped_inputs_sound(kind, domain):
    """Inputs in [0, 1] (some exactly on the boundary) with clip=(0, 1): regions are clamped boxes."""
    model = make_classifier(kind, input_size=4, hidden_size=6, num_layers=1, seed=11, scale=1.5)
    program = lower(model)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 5, 4, generator=g, dtype=torch.float64)
    x[0, 0, 0], x[1, 2, 3] = 0.0, 1.0
    lengths = torch.tensor([5, 2, 4])
    with torch.no_grad():
        y = run_program(program, x, lengths).argmax(1)
    pert = Perturbation(LpBall(0.2), FRAME_CHOICES["all"], clip=(0.0, 1.0))
    regions = pert.regions(x, lengths)
    assert (regions.lower >= 0).all() and (regions.upper <= 1).all()
    bounds = region_margin_bounds(program, regions, y, domain)
    points = sample_points(pert, x, lengths, regions, n_ball=200, n_box=200, n_corner=100, generator=g)
    assert bool(pert.contains(x, points[0], lengths).all())
    margins, hidden = evaluate_points(program, points, regions, y)
    assert (margins.amin(0) >= bounds - TOL).all(), _explain(bounds, margins.amin(0), regions)
    attacked = pgd_min_margins(program, regions.lower, regions.upper, regions.lengths, y[regions.sample_index],
                               steps=50, restarts=3, seed=1)
    assert (attacked >= bounds - TOL).all(), _explain(bounds, attacked, regions)
    with torch.no_grad():
        lo, hi = abstract_final_state(program, regions, domain).bounds()
    assert (hidden >= lo - TOL).all() and (hidden <= hi + TOL).all()
    # clipping only shrinks the regions: never looser than the unclipped certificate in Box
    if domain == "box":
        unclipped = region_margin_bounds(program, Perturbation(LpBall(0.2)).regions(x, lengths), y, domain)
        assert (bounds >= unclipped - TOL).all()
