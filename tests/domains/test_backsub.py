"""Back-substitution specifics: LP-based and free-slope variants end to end, the optimiser's
contract, exact l_2.

The generic soundness and ordering checks of ``backsub``, ``backsub-opt`` and ``hybrid`` run with
the other domains in ``test_containment.py`` / ``test_tightness.py``; the LP variants are slow
(one small LP per neuron) and the free slopes recompute exact offsets at every step, so they get a
smaller set of cases here.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import rnnguard.domains as domains_module  # noqa: E402
import rnnguard.domains.backsub as backsub  # noqa: E402
from rnnguard import LpBall, Perturbation, certify  # noqa: E402
from rnnguard.cells import unroll  # noqa: E402
from rnnguard.certify import propagate_margins  # noqa: E402
from rnnguard.models import lower  # noqa: E402
from rnnguard.relaxations.functions import exact_offsets  # noqa: E402

from e2e_support import (  # noqa: E402
    CASES,
    FRAME_CHOICES,
    TOL,
    case_bounds,
    case_data,
    evaluate_points,
    make_classifier,
    pgd_min_margins,
    sample_points,
)

LP_CASES = [c for c in CASES if c.seed == 0 and c.kind in ("lstm", "gru")]


@pytest.mark.parametrize("case", LP_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("domain", ["backsub-lp", "r2-opt"])
def test_lp_variants_sound(case, domain):
    data = case_data(case)
    pert = Perturbation(LpBall(0.3), FRAME_CHOICES["all"])
    regions = pert.regions(data.x, data.lengths)
    bounds = case_bounds(case, "all", 0.3, domain)
    gen = torch.Generator().manual_seed(17)
    points = sample_points(pert, data.x, data.lengths, regions, n_ball=128, n_box=64, n_corner=64, generator=gen)
    margins, _ = evaluate_points(data.program, points, regions, data.labels)
    assert (margins.amin(0) >= bounds - TOL).all()
    attacked = pgd_min_margins(data.program, regions.lower, regions.upper, regions.lengths,
                               data.labels[regions.sample_index], steps=40, restarts=2, seed=5)
    assert (attacked >= bounds - TOL).all()
    assert (bounds >= case_bounds(case, "all", 0.3, "box") - TOL).all()


def _check_sound_and_above(case, frames, eps, norm, domain, floor, *, seeds):
    """``domain``'s margins hold for sampled and PGD-attacked points and are never below ``floor``'s."""
    data = case_data(case)
    pert = Perturbation(LpBall(eps, norm), FRAME_CHOICES[frames])
    regions = pert.regions(data.x, data.lengths)
    bounds = case_bounds(case, frames, eps, domain, norm)
    gen = torch.Generator().manual_seed(seeds[0])
    inside_box = 64 if norm == "linf" else 0  # an l_2 bound holds on the ball, not on its enclosing box
    points = sample_points(pert, data.x, data.lengths, regions, n_ball=128, n_box=inside_box, n_corner=inside_box,
                           generator=gen)
    margins, _ = evaluate_points(data.program, points, regions, data.labels)
    assert (margins.amin(0) >= bounds - TOL).all()
    ball = None if norm == "linf" else (regions.ball_center, regions.ball_eps)
    attacked = pgd_min_margins(data.program, regions.lower, regions.upper, regions.lengths,
                               data.labels[regions.sample_index], steps=40, restarts=2, seed=seeds[1], ball=ball)
    assert (attacked >= bounds - TOL).all()
    assert (bounds >= case_bounds(case, frames, eps, floor, norm) - TOL).all()


SLOPE_CASES = [c for c in CASES if c.seed == 0]


@pytest.mark.parametrize("case", SLOPE_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("frames,eps,norm", [("all", 0.3, "linf"), ("one", 0.5, "linf"), ("all", 0.6, "l2")])
def test_free_slopes_sound_and_never_looser(case, frames, eps, norm):
    """Free-slope margins hold for sampled points and PGD's worst points, and never fall below the
    plain back-substitution's (the optimiser keeps the best iterate, starting from its planes)."""
    _check_sound_and_above(case, frames, eps, norm, "backsub-slopes", "backsub", seeds=(23, 5))


ALPHA_CASES = [c for c in CASES if c.seed == 0 and c.num_layers == 1]


@pytest.fixture()
def light_alpha(monkeypatch):
    """backsub-alpha with few steps: soundness holds for any number of steps, and the default
    settings (40 steps per operand box) cost minutes on these models."""
    for mode, shared in (("alpha", False), ("alpha-shared", True)):
        monkeypatch.setitem(domains_module._OPTIMISE_MODES, mode, lambda shared=shared: backsub.OptimiseOptions(
            steps=10, patience=20, mode="slopes", slope_lr=0.02, lr_decay=0.95, intermediate_steps=4,
            intermediate_shared=shared))


@pytest.mark.usefixtures("light_alpha")
@pytest.mark.parametrize("case", ALPHA_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("frames,eps,norm", [("all", 0.3, "linf"), ("all", 0.6, "l2")])
@pytest.mark.parametrize("domain", ["backsub-alpha", "backsub-alpha-shared"])
def test_optimised_intermediate_boxes_sound_and_never_looser(case, frames, eps, norm, domain):
    """backsub-alpha (every intermediate box optimised with free slopes on the open regions, per
    bound or shared by a box's bounds) holds for sampled and attacked points and is never below
    backsub-slopes."""
    _check_sound_and_above(case, frames, eps, norm, domain, "backsub-slopes", seeds=(29, 7))


@pytest.mark.usefixtures("light_alpha")
@pytest.mark.parametrize("case", ALPHA_CASES, ids=lambda c: c.id)
def test_deeper_second_pass_sound_and_never_looser(case):
    """backsub-alpha-deep (backsub-alpha-shared, then its intermediate tightenings continued on what
    it leaves open) holds for sampled and attacked points and is never below backsub-alpha-shared."""
    _check_sound_and_above(case, "all", 0.3, "linf", "backsub-alpha-deep", "backsub-alpha-shared", seeds=(37, 11))


@pytest.mark.usefixtures("light_alpha")
@pytest.mark.parametrize("case", ALPHA_CASES, ids=lambda c: c.id)
def test_cascade_sound_and_never_looser(case):
    """backsub-alpha-cascade (backsub-alpha-shared, then per-bound slopes on the open regions within
    reach) holds for sampled and attacked points and is never below backsub-alpha-shared."""
    _check_sound_and_above(case, "all", 0.3, "linf", "backsub-alpha-cascade", "backsub-alpha-shared", seeds=(41, 13))


@pytest.mark.parametrize("shared", [False, True], ids=["per-bound", "shared"])
def test_optimised_intermediate_boxes_are_sound_and_tighter(shared):
    """The tightened operand boxes of every operation contain every sampled operand value, and
    they are tighter than the first pass's boxes."""
    case = next(c for c in ALPHA_CASES if c.kind == "lstm")
    data = case_data(case)
    pert = Perturbation(LpBall(0.3), FRAME_CHOICES["all"])
    regions = pert.regions(data.x, data.lengths)
    boxes = {}
    for steps in (0, 4):
        graph = backsub.Graph("deepcert", backsub.OptimiseOptions(mode="slopes", intermediate_steps=steps,
                                                                  intermediate_shared=shared))
        frames = backsub.input_expressions(graph, regions.lower, regions.upper, regions.masks)
        unroll(data.program, frames, regions.lengths, lambda x: backsub.LinExpr.constant(graph, x))
        boxes[steps] = [n.operand_bounds for n in graph.nodes if isinstance(n, backsub.OpNode)]
        if steps:
            gen = torch.Generator().manual_seed(31)
            points = sample_points(pert, data.x, data.lengths, regions, n_ball=64, n_box=64, n_corner=64,
                                   generator=gen)
            for node in (n for n in graph.nodes if isinstance(n, backsub.OpNode)):
                for (lo, hi), operand in zip(node.operand_bounds, node.operands):
                    values = _operand_values(graph, operand, data.program, points, regions)
                    assert (values >= lo - TOL).all() and (values <= hi + TOL).all()
    # planes are not monotone in their boxes, so a later box may come out wider after an earlier
    # one tightened; on the whole the boxes must shrink
    widths = torch.cat([(hi - lo).flatten() for node in boxes[0] for lo, hi in node])
    tight = torch.cat([(hi - lo).flatten() for node in boxes[4] for lo, hi in node])
    assert float(tight.sum()) < float(widths.sum()) and bool((tight < widths - 1e-6).any())


class _Rows:
    """Stands in for Regions in the passes' bookkeeping tests: which original rows a selection holds."""

    def __init__(self, rows):
        self.rows = rows

    def select(self, rows):
        return _Rows(self.rows[rows])


def test_deep_passes_resume_and_stop_out_of_reach_regions(monkeypatch):
    """backsub-alpha-deep's passes: each goes to the regions still open (and unbroken), resumes the
    previous pass's tightenings at those regions' positions in it, keeps the max margins, and from
    the third pass on drops a region whose last gain, twice over, cannot close its margin."""
    results = iter([torch.tensor(v, dtype=torch.float64) for v in (
        [[1.0], [-1.0], [-1.0], [-1.0], [-1.0]],  # backsub-slopes, all regions
        [[-0.5], [-0.9], [-0.2], [-3.0]],  # pass 1 on regions 1-4 (4 keeps -1)
        [[-0.1], [-0.85], [-0.1], [-2.0]],  # pass 2: gains 0.4, 0.05, 0.1, 0
        [[0.2], [-0.05]])])  # pass 3 on 1 and 3 only: 2 and 4 are out of reach
    calls = []

    def fake_margins(program, start, regions, weight, bias, **kwargs):
        calls.append((regions.rows.tolist(), kwargs))
        return next(results)

    monkeypatch.setattr(domains_module, "_margins_of", fake_margins)
    monkeypatch.setattr(domains_module, "_attacked", lambda *a: torch.full((5,), 100.0, dtype=torch.float64))
    margins = domains_module.DOMAINS["backsub-alpha-deep"].margins(None, _Rows(torch.arange(5)), torch.zeros(5, 1, 2),
                                                                   torch.zeros(5, 1))
    assert [c[0] for c in calls] == [[0, 1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 3]]
    assert calls[1][1]["resume"] is None and calls[1][1]["record"] is not None
    assert calls[2][1]["resume"][0] is calls[1][1]["record"] and calls[2][1]["resume"][1].tolist() == [0, 1, 2, 3]
    assert calls[3][1]["resume"][0] is calls[2][1]["record"] and calls[3][1]["resume"][1].tolist() == [0, 2]
    assert calls[3][1]["record"] is None  # no pass follows the last one
    assert margins[:, 0].tolist() == [1.0, 0.2, -0.85, -0.05, -1.0]


def _fake_alpha_run(monkeypatch, name, lower, attack, passed):
    """Run ``name``'s margins on fake bounds: ``lower`` from backsub-slopes, ``attack`` from the quick
    attack, ``passed(rows)`` from each optimised pass; returns the margins and the passes' rows."""
    calls = []

    def fake_margins(program, start, regions, weight, bias, **kwargs):
        calls.append(regions.rows.tolist())
        return lower.clone() if len(calls) == 1 else passed(regions.rows)

    monkeypatch.setattr(domains_module, "_margins_of", fake_margins)
    monkeypatch.setattr(domains_module, "_attacked", lambda *a: attack)
    n = len(lower)
    margins = domains_module.DOMAINS[name].margins(None, _Rows(torch.arange(n)), torch.zeros(n, 1, 2), torch.zeros(n, 1))
    return margins, calls


def test_optimised_passes_skip_regions_far_below_their_attack_margin(monkeypatch):
    """backsub-alpha-shared's pass goes only to open regions whose lower bound L and attack margin U
    satisfy -L <= share (U - L); broken regions (U < 0) and certified ones never go; the others
    keep their backsub-slopes margins.  The thorough backsub-alpha takes every open unbroken region."""
    share = domains_module._GAP_SHARE
    lower = torch.tensor([[0.5], [-1.0], [-1.0], [-1.0], [-1.0]], dtype=torch.float64)
    # region 1: just inside the line; 2: just past it; 3: well inside; 4: broken
    line = (1 - share) / share  # U on the line for L = -1
    attack = torch.tensor([3.0, line * 1.01, line * 0.99, 5.0, -0.1], dtype=torch.float64)
    # the pass closes a fifth of region 1's gap and certifies region 3 (a ninth of its gap)
    passed = lambda rows: torch.tensor([[-1 + 0.2 * (1 + line * 1.01)], [-1 + 0.2 * 6.0]], dtype=torch.float64)  # noqa: E731
    margins, calls = _fake_alpha_run(monkeypatch, "backsub-alpha-shared", lower, attack, passed)
    assert calls == [[0, 1, 2, 3, 4], [1, 3]]
    assert margins[:, 0].tolist() == pytest.approx([0.5, -1 + 0.2 * (1 + line * 1.01), -1.0, 0.2, -1.0])
    _, calls = _fake_alpha_run(monkeypatch, "backsub-alpha", lower, attack,
                               lambda rows: torch.full((len(rows), 1), 0.25, dtype=torch.float64))
    assert calls == [[0, 1, 2, 3, 4], [1, 2, 3]]


def test_cascade_final_pass_takes_open_regions_within_reach_of_their_gain(monkeypatch):
    """backsub-alpha-cascade's per-bound pass goes only to regions still open and unbroken whose gain
    over backsub-slopes, halved, would close them; it keeps the max margins."""
    lower = torch.tensor([[0.5], [-1.0], [-1.0], [-1.0], [-1.0], [-1.0]], dtype=torch.float64)
    attack = torch.tensor([3.0, 5.0, 5.0, 5.0, -0.1, 5.0], dtype=torch.float64)  # region 4 broken
    # shared pass on 1, 2, 3, 5: gains 0.8 (gap 0.2), 0.1, 1.1 (certified), 0.6 (gap 0.4: out of half-gain reach)
    passes = iter([torch.tensor([[-0.2], [-0.9], [0.1], [-0.4]], dtype=torch.float64),
                   torch.tensor([[0.2]], dtype=torch.float64)])  # the per-bound pass: region 1 only
    margins, calls = _fake_alpha_run(monkeypatch, "backsub-alpha-cascade", lower, attack, lambda rows: next(passes))
    assert calls == [[0, 1, 2, 3, 4, 5], [1, 2, 3, 5], [1]]
    assert margins[:, 0].tolist() == pytest.approx([0.5, 0.2, -0.9, 0.1, -1.0, -0.4])


def test_skipped_regions_get_the_pass_where_it_closes_more_than_the_share(monkeypatch):
    """If backsub-alpha-shared's pass closes more than the gap share of some region's gap (the
    rule's premise fails for the model), the open unbroken regions the rule skipped get the pass
    too; broken and certified regions still never go."""
    share = domains_module._GAP_SHARE
    lower = torch.tensor([[0.5], [-1.0], [-4.0], [-1.0], [-6.0]], dtype=torch.float64)
    attack = torch.tensor([3.0, 1.0, 1.0, -0.1, 0.5], dtype=torch.float64)  # shares: -, 0.5, 0.8, broken, 0.92
    closes = (share + 0.05) * 2.0  # region 1's gain: a little more than the share of its gap (2)
    passed = lambda rows: torch.where(rows[:, None] == 1, -1.0 + closes, 0.1).to(torch.float64)  # noqa: E731
    margins, calls = _fake_alpha_run(monkeypatch, "backsub-alpha-shared", lower, attack, passed)
    assert calls == [[0, 1, 2, 3, 4], [1], [2, 4]]
    assert margins[:, 0].tolist() == pytest.approx([0.5, -1.0 + closes, 0.1, -1.0, 0.1])
    closes = (share - 0.05) * 2.0  # a little less: the skipped regions keep their bounds
    margins, calls = _fake_alpha_run(monkeypatch, "backsub-alpha-shared", lower, attack, passed)
    assert calls == [[0, 1, 2, 3, 4], [1]]
    assert margins[:, 0].tolist() == pytest.approx([0.5, -1.0 + closes, -4.0, -1.0, -6.0])


def _tightening_propagation(program, regs, steps: int, **kwargs) -> backsub.Graph:
    """A propagation whose operand boxes are tightened (shared slopes, ``steps`` steps each);
    ``kwargs`` go to the graph (``record``, ``resume``)."""
    graph = backsub.Graph("deepcert", backsub.OptimiseOptions(mode="slopes", intermediate_steps=steps,
                                                              intermediate_shared=True), **kwargs)
    frames = backsub.input_expressions(graph, regs.lower, regs.upper, regs.masks)
    unroll(program, frames, regs.lengths, lambda x: backsub.LinExpr.constant(graph, x))
    return graph


def test_resumed_tightening_is_sound_and_at_least_as_tight():
    """A propagation that continues an earlier one's intermediate tightenings (``Graph.resume``) on
    a subset of its regions gives operand boxes that contain every sampled operand value and lie
    inside the earlier propagation's boxes of the same regions; a mismatched record is refused."""
    case = next(c for c in ALPHA_CASES if c.kind == "lstm")
    data = case_data(case)
    pert = Perturbation(LpBall(0.3), FRAME_CHOICES["all"])
    regions = pert.regions(data.x, data.lengths)

    def propagate(regs, **kwargs):
        return _tightening_propagation(data.program, regs, 4, **kwargs)

    record: dict = {}
    first = propagate(regions, record=record)
    assert len(record) == first.tightenings > 0
    subset = torch.arange(0, regions.lower.shape[0], 2)
    part = regions.select(subset)
    second = propagate(part, resume=(record, subset))
    points = sample_points(pert, data.x, data.lengths, part, n_ball=0, n_box=96, n_corner=96,  # the subset's boxes
                           generator=torch.Generator().manual_seed(43))
    narrower = False
    for a, b in zip((n for n in first.nodes if isinstance(n, backsub.OpNode)),
                    (n for n in second.nodes if isinstance(n, backsub.OpNode))):
        for (lo_a, hi_a), (lo_b, hi_b), operand in zip(a.operand_bounds, b.operand_bounds, b.operands):
            values = _operand_values(second, operand, data.program, points, part)
            assert (values >= lo_b - TOL).all() and (values <= hi_b + TOL).all()
            assert (lo_b >= lo_a[subset] - TOL).all() and (hi_b <= hi_a[subset] + TOL).all()
            narrower |= bool((hi_b - lo_b < hi_a[subset] - lo_a[subset] - 1e-9).any())
    assert narrower
    bad = {k: dataclasses.replace(st, params=[p[..., :1] for p in st.params]) for k, st in record.items()}
    with pytest.raises(ValueError, match="does not match"):
        propagate(part, resume=(bad, subset))


def test_grouped_offsets_equal_per_node_offsets(monkeypatch):
    """Free slopes share one exact_offsets call (and one parameter tensor per operand) per
    operation type, up to a size budget: the bound after a few optimiser steps from the first
    pass's slopes must be exactly the one computed node by node (the parameters' layout differs,
    so the slopes are moved by the optimiser, whose steps are elementwise, not set at random)."""
    case = next(c for c in ALPHA_CASES if c.kind == "lstm")
    data = case_data(case)
    regions = Perturbation(LpBall(0.3), FRAME_CHOICES["all"]).regions(data.x, data.lengths)
    graph = backsub.Graph("deepcert", None)
    frames = backsub.input_expressions(graph, regions.lower, regions.upper, regions.masks)
    h = unroll(data.program, frames, regions.lengths, lambda x: backsub.LinExpr.constant(graph, x))
    R, k = h.const.shape[0], 3
    terms = {key: (c if c.dim() == 3 else c.expand(R, *c.shape))[:, :k] for key, c in h.terms.items()}
    bounds = []
    for budget in (10**9, 0):  # everything of a type in one call; every node alone
        monkeypatch.setattr(backsub, "_GROUP_ELEMENTS", budget)
        params, bound_of = backsub._free_slopes(graph, k)
        optimiser = backsub._Adam(params, 0.2)
        with torch.enable_grad():
            for _ in range(3):
                optimiser.step(torch.autograd.grad(-bound_of(terms, h.const[:, :k]).sum(), params, allow_unused=True))
        with torch.no_grad():
            bounds.append(bound_of(terms, h.const[:, :k]))
    assert not torch.equal(bounds[0], backsub._backsub(graph, terms, h.const[:, :k]))  # the slopes did move
    torch.testing.assert_close(bounds[0], bounds[1], rtol=0, atol=0)


def _operand_values(graph, expr, program, points, regions):
    """Concrete values of an operand expression at every sampled point ``(N, R, n)``: the graph is
    evaluated node by node on the points (the Point semantics of each node's operation)."""
    from rnnguard.relaxations import RELAXATIONS

    N, R, T, d = points.shape
    values = {}
    t_of_input = 0
    for node in graph.nodes:
        if isinstance(node, backsub.InputNode):
            values[node.id] = points[:, :, t_of_input]
            t_of_input += 1
        else:
            args = [_evaluate(e, values) for e in node.operands]
            values[node.id] = RELAXATIONS[node.op].fn(*args)
    return _evaluate(expr, values)


def _evaluate(expr, values):
    out = expr.const
    for key, c in expr.terms.items():
        v = values[key]
        out = out + (v[..., None, :] @ c.transpose(-1, -2)).squeeze(-2)
    return out


def test_free_slopes_gain_somewhere():
    """The free slopes must actually move: strictly above the plain back-substitution on some open region."""
    gains = [(case_bounds(c, "all", 0.3, "backsub-slopes", "linf") - case_bounds(c, "all", 0.3, "backsub", "linf")).max()
             for c in SLOPE_CASES]
    assert max(float(g) for g in gains) > 1e-3


@pytest.mark.parametrize("op", ["sigmoid_tanh", "mul_sigmoid", "mul", "tanh", "sigmoid"])
def test_exact_offsets_gradient_is_danskin(op):
    """The free-slope optimiser differentiates the exact offsets in the slopes: the gradient of the
    box minimum of ``f - a.x`` is ``-x*`` at its minimiser, checked against finite differences."""
    torch.manual_seed(3)
    k = 1 if op in ("tanh", "sigmoid") else 2
    lo = torch.randn(k, 50, dtype=torch.float64)
    hi = lo + torch.rand(k, 50, dtype=torch.float64) * 2 + 0.05
    slopes = [(torch.randn(50, dtype=torch.float64) * 0.3).requires_grad_() for _ in range(k)]
    bounds = [t for i in range(k) for t in (lo[i], hi[i])]
    low, high = exact_offsets(op, slopes, *bounds)
    for pick in (0, 1):
        value = exact_offsets(op, slopes, *bounds)[pick]
        grads = torch.autograd.grad(value.sum(), slopes)
        for i in range(k):
            h = 1e-6
            up = [s.detach() + (h if j == i else 0) for j, s in enumerate(slopes)]
            down = [s.detach() - (h if j == i else 0) for j, s in enumerate(slopes)]
            numeric = (exact_offsets(op, up, *bounds)[pick] - exact_offsets(op, down, *bounds)[pick]) / (2 * h)
            torch.testing.assert_close(grads[i], numeric, atol=1e-5, rtol=1e-4)
    assert torch.isfinite(low).all() and torch.isfinite(high).all()


def _record_optimiser_batches(monkeypatch) -> list[int]:
    """Patch the back-substitution to record the number of regions of every OPTIMISED pass."""
    calls: list[int] = []
    real = backsub._backsub

    def counting(graph, terms, const, weights=None, record=None, direct=None):
        if weights is not None or direct is not None:
            calls.append(const.shape[0])
        return real(graph, terms, const, weights, record, direct)

    monkeypatch.setattr(backsub, "_backsub", counting)
    return calls


@pytest.mark.parametrize("domain", ["backsub-opt", "backsub-slopes"])
def test_optimiser_skips_certified_regions(monkeypatch, domain):
    """At eps = 0 everything certifies on the first pass: no optimisation step may run."""
    calls = _record_optimiser_batches(monkeypatch)
    data = case_data(CASES[0])
    with torch.no_grad():
        predicted = data.model(data.x, data.lengths).argmax(1)
    result = certify(data.model, data.x, predicted, Perturbation(LpBall(0.0)), domain=domain, lengths=data.lengths)
    assert bool(result.certified.all()) and calls == []


@pytest.mark.parametrize("domain", ["backsub-opt", "backsub-slopes"])
def test_optimiser_only_sees_open_regions(monkeypatch, domain):
    case = next(c for c in CASES if c.kind == "lstm")
    data = case_data(case)
    pert = Perturbation(LpBall(0.05), FRAME_CHOICES["all"])
    plain = case_bounds(case, "all", 0.05, "backsub")
    seen = _record_optimiser_batches(monkeypatch)
    with torch.no_grad():
        propagate_margins(data.program, pert.regions(data.x, data.lengths), data.labels, domain)
    n_open = int((~(plain > 0).all(dim=1)).sum())
    assert all(n <= n_open for n in seen)


@pytest.mark.parametrize("domain", ["backsub-opt", "backsub-slopes"])
def test_optimiser_skips_falsified_regions(monkeypatch, domain):
    """Regions the quick attack holds a counterexample for are never optimised (nor certified)."""
    from rnnguard.attacks import falsify_regions
    from rnnguard.certify import margin_specification

    case = next(c for c in CASES if c.kind == "lstm" and c.num_layers == 1)
    data = case_data(case)
    regions = Perturbation(LpBall(0.3), FRAME_CHOICES["all"]).regions(data.x, data.lengths)
    labels = data.labels[regions.sample_index]
    plain = case_bounds(case, "all", 0.3, "backsub")
    broken, _ = falsify_regions(data.program, regions, *margin_specification(data.program, labels))
    n_open = int((~(plain > 0).all(dim=1)).sum())
    assert bool(broken.any())  # the mislabelled sample at least
    seen = _record_optimiser_batches(monkeypatch)
    with torch.no_grad():
        margins = propagate_margins(data.program, regions, labels, domain)
    assert all(n <= n_open - int(broken.sum()) for n in seen)
    assert not ((margins > 0).all(dim=1) & broken).any()


def test_l2_dual_norm_is_exact_for_one_linear_frame():
    """One frame, one tanh neuron: the pre-activation w.x + b over an l_2 ball has the exact range
    w.x0 +- eps ||w||_2, so the bounds on tanh must be exactly tanh of those (up to rounding)."""
    model = make_classifier("rnn", input_size=3, hidden_size=1, num_layers=1, seed=2)
    program = lower(model)
    x = torch.tensor([[[0.3, -0.2, 0.5]]], dtype=torch.float64)
    eps = 0.4
    regions = Perturbation(LpBall(eps, "l2")).regions(x, torch.tensor([1]))
    from rnnguard.cells import unroll
    from rnnguard.domains import get_domain

    frames, constant = get_domain("backsub").start(regions)
    h = unroll(program, frames, regions.lengths, constant)
    w = program.layers[0].weight_ih[0]
    b = sum(t[0] for t in (program.layers[0].bias_ih, program.layers[0].bias_hh))
    centre = float(w @ x[0, 0] + b)
    radius = eps * float(w.norm())
    lo, hi = h.bounds()
    assert float(lo) == pytest.approx(float(torch.tanh(torch.tensor(centre - radius, dtype=torch.float64))), abs=1e-9)
    assert float(hi) == pytest.approx(float(torch.tanh(torch.tensor(centre + radius, dtype=torch.float64))), abs=1e-9)


def test_unknown_domain_lists_backsub_names():
    from rnnguard.errors import UnknownNameError

    data = case_data(CASES[0])
    with pytest.raises(UnknownNameError, match="backsub-opt"):
        certify(data.model, data.x, data.labels, Perturbation(LpBall(0.1)), domain="deeppoly")


def test_shared_operand_is_tightened_once(monkeypatch):
    """An operand of several operations (an LSTM's cell state feeds ``h`` and the next step's
    ``f*c``) is optimised once: the second operation reuses the first one's tightened box; and the
    operands of one step's operations are optimised together (fewer, larger optimisations)."""
    case = next(c for c in ALPHA_CASES if c.kind == "lstm")
    data = case_data(case)
    regions = Perturbation(LpBall(0.3), FRAME_CHOICES["all"]).regions(data.x, data.lengths)
    graph = backsub.Graph("deepcert", backsub.OptimiseOptions(mode="slopes", intermediate_steps=2))
    calls = []
    real = backsub._free_slopes
    monkeypatch.setattr(backsub, "_free_slopes", lambda g, k, rows=None, **kw: calls.append(k) or real(g, k, rows, **kw))
    frames = backsub.input_expressions(graph, regions.lower, regions.upper, regions.masks)
    unroll(data.program, frames, regions.lengths, lambda x: backsub.LinExpr.constant(graph, x))
    operands = {id(v): v for n in graph.nodes if isinstance(n, backsub.OpNode) for v in n.operands
                if any(isinstance(graph.nodes[k], backsub.OpNode) for k in v.terms)}
    uses = sum(1 for n in graph.nodes if isinstance(n, backsub.OpNode) for v in n.operands if id(v) in operands)
    # per-bound slopes: one slope set per bound, so the calls' sets count every bound once
    assert sum(calls) == sum(2 * v.const.shape[-1] for v in operands.values())
    assert len(calls) < len(operands) < uses


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("shared", [False, True], ids=["per-bound", "shared"])
def test_joint_tightening_equals_one_operand_at_a_time(monkeypatch, shared, kind):
    """Optimising the operands of a step together (rows stacked, own slopes per operand) gives the
    boxes of optimising them one by one: only the per-step overhead is shared."""
    case = next(c for c in ALPHA_CASES if c.kind == kind)
    data = case_data(case)
    regions = Perturbation(LpBall(0.3), FRAME_CHOICES["all"]).regions(data.x, data.lengths)
    boxes = {}
    real = backsub._tighten_jointly
    for joint in (True, False):
        if not joint:
            monkeypatch.setattr(backsub, "_tighten_jointly", lambda g, vs: [real(g, [v]) for v in vs])
        graph = backsub.Graph("deepcert", backsub.OptimiseOptions(mode="slopes", intermediate_steps=3,
                                                                  intermediate_shared=shared))
        frames = backsub.input_expressions(graph, regions.lower, regions.upper, regions.masks)
        unroll(data.program, frames, regions.lengths, lambda x: backsub.LinExpr.constant(graph, x))
        boxes[joint] = torch.cat([t.flatten() for n in graph.nodes if isinstance(n, backsub.OpNode)
                                  for box in n.operand_bounds for t in box])
    torch.testing.assert_close(boxes[True], boxes[False], atol=1e-9, rtol=1e-9)


def test_open_rows_pick_each_regions_open_margins():
    best = torch.tensor([[1.0, -2.0, 0.0, 3.0], [-1.0, 2.0, 2.0, 2.0], [-1.0, -1.0, -1.0, 5.0]])
    rows = backsub._open_rows(best)
    assert rows.shape == (3, 3)
    assert [sorted(set(r.tolist())) for r in rows] == [[1, 2], [0], [0, 1, 2]]


@pytest.mark.parametrize("shared", [True, False], ids=["C-shared", "C-per-region"])
@pytest.mark.parametrize("with_direct", [False, True], ids=["factored", "with-direct"])
def test_box_concretisation_matches_autograd_reference(shared, with_direct):
    """The box concretisation gives the value, the slack magnitude and the gradients (in every
    argument) of ``lam . center - |lam| . radius`` for ``lam = direct + S @ C``; without gradients
    (rows in blocks, one per row here) the same values, and the caller's tensors are untouched."""
    gen = torch.Generator().manual_seed(3)
    R, k, K, d = 3, 5, 4, 7
    S = torch.randn(R, k, K, generator=gen, dtype=torch.float64)
    C = torch.randn(*(() if shared else (R,)), K, d, generator=gen, dtype=torch.float64)
    D = torch.randn(R, k, d, generator=gen, dtype=torch.float64)
    center = torch.randn(R, d, generator=gen, dtype=torch.float64)
    radius = torch.rand(R, d, generator=gen, dtype=torch.float64)
    direct = [D] if with_direct else []
    args = [t.clone().requires_grad_(True) for t in (center, radius, *direct, S, C)]
    ref_args = [t.clone().requires_grad_(True) for t in (center, radius, *direct, S, C)]
    low, magnitude = backsub._BoxLower.apply(args[0], args[1], len(direct), *args[2:])
    lam = ref_args[-2] @ ref_args[-1] + (ref_args[2] if with_direct else 0)
    ref = (lam @ ref_args[0][:, :, None] - lam.abs() @ ref_args[1][:, :, None]).squeeze(-1)
    torch.testing.assert_close(low, ref)
    torch.testing.assert_close(magnitude, (lam.abs() @ (center.abs() + radius)[:, :, None]).squeeze(-1).detach())
    weight = torch.randn(R, k, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((low * weight).sum(), args)
    ref_grads = torch.autograd.grad((ref * weight).sum(), ref_args)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    assert torch.autograd.gradcheck(lambda *a: backsub._BoxLower.apply(a[0], a[1], len(direct), *a[2:])[0], tuple(args))
    copies = [t.clone() for t in (*direct, S, C)]
    with torch.no_grad():
        old = backsub._BLOCK_ELEMENTS
        try:
            backsub._BLOCK_ELEMENTS = 1  # one row per block
            blocked = backsub._BoxLower.apply(center, radius, len(direct), *direct, S, C)
        finally:
            backsub._BLOCK_ELEMENTS = old
    torch.testing.assert_close(blocked[0], ref.detach())
    torch.testing.assert_close(blocked[1], magnitude.detach())
    for t, c in zip((*direct, S, C), copies):
        assert torch.equal(t, c)
    if with_direct:  # a lone direct term: |lam| must not be taken in place
        with torch.no_grad():
            backsub._BoxLower.apply(center, radius, 1, D)
        assert torch.equal(D, copies[0])


def test_input_lower_is_the_exact_box_minimum_with_a_conservative_slack_scale():
    """Factored terms, a direct term and an l_2 ball: the bound is the exact minimum of the summed
    coefficient over the box (and ball), and the slack scale is |lam| @ (|center| + radius)."""
    gen = torch.Generator().manual_seed(5)
    R, k, d = 2, 3, 4
    center = torch.randn(R, d, generator=gen, dtype=torch.float64)
    radius = torch.rand(R, d, generator=gen, dtype=torch.float64)
    node = backsub.InputNode(0, center, radius)
    pairs = [(torch.randn(R, k, 2, generator=gen, dtype=torch.float64), torch.randn(2, d, generator=gen, dtype=torch.float64)),
             (torch.randn(R, k, 3, generator=gen, dtype=torch.float64), torch.randn(R, 3, d, generator=gen, dtype=torch.float64))]
    direct = torch.randn(R, k, d, generator=gen, dtype=torch.float64)
    for with_direct in (False, True):
        use = pairs + ([(direct, None)] if with_direct else [])
        lam = sum(s @ c for s, c in pairs) + (direct if with_direct else 0)
        low, scale = backsub._input_lower(node, use)
        exact = (lam @ center[:, :, None] - lam.abs() @ radius[:, :, None]).squeeze(-1)
        torch.testing.assert_close(low, exact)
        torch.testing.assert_close(scale, (lam.abs() @ (center.abs() + radius)[:, :, None]).squeeze(-1))
    eps = torch.tensor([0.3, 0.5], dtype=torch.float64)
    ball = backsub.InputNode(0, center, radius, ball_center=center, ball_eps=eps)
    lam = sum(s @ c for s, c in pairs)
    low, _ = backsub._input_lower(ball, pairs)
    box = (lam @ center[:, :, None] - lam.abs() @ radius[:, :, None]).squeeze(-1)
    l2 = (lam @ center[:, :, None]).squeeze(-1) - eps[:, None] * lam.norm(dim=-1)
    torch.testing.assert_close(low, torch.maximum(box, l2))


def test_out_of_reach_regions_stop_early(monkeypatch):
    """With ``reach_window``, a region whose worst margin cannot reach zero at its pace stops before
    ``patience`` would stop it; certified regions and the returned bounds' soundness are unaffected
    (every iterate is sound): the result is never below the first pass."""
    from rnnguard.certify import margin_specification

    case = next(c for c in SLOPE_CASES if c.kind == "lstm")
    data = case_data(case)
    regions = Perturbation(LpBall(2.0), FRAME_CHOICES["all"]).regions(data.x, data.lengths)  # hopeless
    labels = data.labels[regions.sample_index]
    plain = case_bounds(case, "all", 2.0, "backsub")
    steps = {}
    for window in (0, 5):
        opts = backsub.OptimiseOptions(steps=80, patience=10, mode="slopes", slope_lr=0.02, lr_decay=0.95,
                                       reach_window=window)
        monkeypatch.setitem(domains_module._OPTIMISE_MODES, "slopes", lambda opts=opts: opts)
        calls = []
        original = backsub._free_slopes

        def counting(*args, **kwargs):
            params, bound = original(*args, **kwargs)
            return params, lambda *a: (calls.append(1), bound(*a))[1]

        monkeypatch.setattr(backsub, "_free_slopes", counting)
        with torch.no_grad():  # without the attack first, which would skip these regions
            margins = domains_module._margins_of(data.program, domains_module.DOMAINS["backsub-slopes"].start, regions,
                                                 *margin_specification(data.program, labels))
        monkeypatch.setattr(backsub, "_free_slopes", original)
        assert (margins >= plain - TOL).all()
        steps[window] = len(calls)
    assert steps[5] < steps[0]


def test_resume_on_fewer_regions_keeps_the_parameter_layout(monkeypatch):
    """The free slopes are grouped per operation type up to an element budget, which counts
    regions: continued tightenings on fewer regions (``backsub-alpha-deep``'s later passes) must
    still find their parameters in the layout they were recorded in, over three chained passes
    (3, 2, then 1 region), and their boxes only shrink."""
    case = next(c for c in ALPHA_CASES if c.kind == "lstm")
    data = case_data(case)
    full = torch.full_like(data.lengths, data.x.shape[1])  # equal lengths: the same values tightened
    regions = Perturbation(LpBall(0.3), FRAME_CHOICES["all"]).regions(data.x, full)
    hidden = data.program.layers[0].hidden_size
    # k slope sets per region: 12 // k nodes per call on 1 region, 4 // k on 3
    monkeypatch.setattr(backsub, "_GROUP_ELEMENTS", 12 * hidden)

    def propagate(regs, **kwargs):
        return _tightening_propagation(data.program, regs, 3, **kwargs)

    records: list[dict] = [{}, {}]
    first = propagate(regions, record=records[0])
    pair = torch.tensor([0, 2])
    second = propagate(regions.select(pair), record=records[1], resume=(records[0], pair))
    one = torch.tensor([1])
    third = propagate(regions.select(pair[one]), resume=(records[1], one))
    ops = [[n for n in g.nodes if isinstance(n, backsub.OpNode)] for g in (first, second, third)]
    for a, b, c in zip(*ops):
        for (lo_a, hi_a), (lo_b, hi_b), (lo_c, hi_c) in zip(a.operand_bounds, b.operand_bounds, c.operand_bounds):
            assert (lo_b >= lo_a[pair] - TOL).all() and (hi_b <= hi_a[pair] + TOL).all()
            assert (lo_c >= lo_b[one] - TOL).all() and (hi_c <= hi_b[one] + TOL).all()


def test_resume_where_the_subset_tightens_other_values():
    """With variable lengths a subset of regions can have other masked states, so a joint
    tightening there bounds other values than the recorded one: it starts afresh (never taking the
    recorded bounds of other values) and every box still holds the sampled operand values."""
    case = next(c for c in ALPHA_CASES if c.kind == "lstm")
    data = case_data(case)
    assert len(set(data.lengths.tolist())) > 1
    pert = Perturbation(LpBall(0.3), FRAME_CHOICES["all"])
    regions = pert.regions(data.x, data.lengths)

    def propagate(regs, **kwargs):
        return _tightening_propagation(data.program, regs, 3, **kwargs)

    record: dict = {}
    propagate(regions, record=record)
    longest = data.lengths.argmax().reshape(1)  # alone: no masked selection until its end
    part = regions.select(longest)
    graph = propagate(part, resume=(record, longest))
    points = sample_points(pert, data.x, data.lengths, part, n_ball=0, n_box=96, n_corner=96,
                           generator=torch.Generator().manual_seed(44))
    for node in (n for n in graph.nodes if isinstance(n, backsub.OpNode)):
        for (lo, hi), operand in zip(node.operand_bounds, node.operands):
            values = _operand_values(graph, operand, data.program, points, part)
            assert (values >= lo - TOL).all() and (values <= hi + TOL).all()
