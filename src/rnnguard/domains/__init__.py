"""Abstract domains and the registry that turns input regions into abstract values.

``DOMAINS[name].start(regions)`` returns one abstract value per time step (shape ``(R, d)``) and
a function making exactly known values (initial states) in the same symbol tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from rnnguard.domains.backsub import Graph, LinExpr, OptimiseOptions, input_expressions
from rnnguard.domains.base import AbstractValue
from rnnguard.domains.box import Box
from rnnguard.domains.hybrid import Meet
from rnnguard.domains.intersection import InterZono
from rnnguard.domains.point import Point
from rnnguard.domains.zonotope import SymbolTable, Zonotope
from rnnguard.errors import UnknownNameError
from rnnguard.perturbations import Regions


def input_zonotopes(regions: Regions, symbols: SymbolTable) -> list[Zonotope]:
    """One zonotope per frame with a fresh symbol per (perturbed frame, feature).

    Inside a region the k-th perturbed frame uses symbol block ``k`` ("slot"), so the one-frame
    threat (one perturbed frame per region) needs d symbols, not T*d, while distinct frames of
    the same region always get distinct symbols."""
    lower, upper, masks = regions.lower, regions.upper, regions.masks
    R, T, d = lower.shape
    center, radius = (upper + lower) / 2, (upper - lower) / 2
    slot = torch.cumsum(masks.long(), dim=1) - 1  # (R, T), meaningful where masks
    n_slots = int(masks.sum(dim=1).max().item()) if R and T else 0
    slot_ids = [symbols.new_block() for _ in range(n_slots)]
    eye = torch.eye(d, dtype=lower.dtype, device=lower.device)
    values = []
    for t in range(T):
        used = torch.unique(slot[:, t][masks[:, t]]).tolist()
        blocks = tuple((slot_ids[s], d) for s in used)
        if used:
            onehot = (slot[:, t, None] == torch.tensor(used, device=lower.device)[None, :]) & masks[:, t, None]
            gens = onehot.to(lower.dtype)[:, :, None, None] * (eye * radius[:, t, None, :])[:, None]
            gens = gens.reshape(R, len(used) * d, d)
        else:
            gens = lower.new_zeros(R, 0, d)
        values.append(Zonotope(center[:, t], gens, blocks, symbols))
    return values


Start = Callable[[Regions], tuple[list[AbstractValue], Callable[[Tensor], AbstractValue]]]


@dataclass(frozen=True)
class Domain:
    """A registered domain.  ``start(regions)`` returns the per-frame input values and a function
    making exactly known values (initial states) that share the same noise-symbol tables."""

    name: str
    start: Start
    description: str
    components: tuple[str, ...] = ()  # a meet of these domains: its margins are also maxed with theirs
    # a domain with its own margin procedure (branch and bound, attack first, optimised intermediate boxes):
    # (program, regions, weight, bias) -> (R, k)
    margins: Callable[..., Tensor] | None = None


def _start_box(regions: Regions) -> tuple[list[AbstractValue], Callable[[Tensor], AbstractValue]]:
    frames = [Box(regions.lower[:, t], regions.upper[:, t]) for t in range(regions.lower.shape[1])]
    return frames, lambda x: Box(x, x)


def _start_zonotope(regions: Regions) -> tuple[list[AbstractValue], Callable[[Tensor], AbstractValue]]:
    symbols = SymbolTable()
    return input_zonotopes(regions, symbols), lambda x: Zonotope.point(x, symbols)


def _start_interzono(regions: Regions) -> tuple[list[AbstractValue], Callable[[Tensor], AbstractValue]]:
    main, support = SymbolTable(), SymbolTable()
    frames = [InterZono(m, s) for m, s in zip(input_zonotopes(regions, main), input_zonotopes(regions, support))]
    return frames, lambda x: InterZono(Zonotope.point(x, main), Zonotope.point(x, support))


# free slopes: a smaller, decaying rate and more patience than the candidate weights need (tuned on
# the R2-recipe 04F_032H_1L model's open images at eps 0.01: margins keep rising for ~60 steps)
_OPTIMISE_MODES = {
    "slopes": lambda: OptimiseOptions(steps=60, patience=20, mode="slopes", slope_lr=0.02, lr_decay=0.95, reach_window=10),
    # every operand box tightened by 40 free-slope steps (tuned like the above), then 100 margin steps
    "alpha": lambda: OptimiseOptions(steps=100, patience=20, mode="slopes", slope_lr=0.02, lr_decay=0.95,
                                     intermediate_steps=40, intermediate_warmup=5, reach_window=10),
    # the same with one slope set per operand box (shared by its lower and upper bounds)
    "alpha-shared": lambda: OptimiseOptions(steps=100, patience=20, mode="slopes", slope_lr=0.02, lr_decay=0.95,
                                            intermediate_steps=40, intermediate_warmup=5, intermediate_shared=True,
                                            reach_window=10),
}


def _backsub_start(method: str, optimise: bool | str, lp_candidates: bool = False) -> Start:
    """``optimise``: False, True (R2-OPT candidate combinations) or an :class:`OptimiseOptions` mode.

    The start also takes ``skip``, a mask of regions the optimiser leaves alone (see ``Graph.skip``),
    and ``record`` / ``resume`` for the intermediate tightenings (see ``Graph.record``)."""
    def start(regions: Regions, skip: Tensor | None = None, record: dict | None = None,
              resume: tuple[dict, Tensor] | None = None) -> tuple[list[AbstractValue], Callable[[Tensor], AbstractValue]]:
        opts = None if optimise is False else OptimiseOptions() if optimise is True else _OPTIMISE_MODES[optimise]()
        graph = Graph(method, opts, lp_candidates=lp_candidates, skip=skip, record=record, resume=resume)
        frames = input_expressions(graph, regions.lower, regions.upper, regions.masks, regions.ball_center,
                                   regions.ball_eps)
        return frames, lambda x: LinExpr.constant(graph, x)

    return start


def _branch_and_bound(program, regions: Regions, weight: Tensor, bias: Tensor) -> Tensor:
    from rnnguard.branching import branch_and_bound_margins  # imports the cell programs: late

    return branch_and_bound_margins(program, regions, weight, bias)


def _margins_of(program, start: Start, regions: Regions, weight: Tensor, bias: Tensor, **kwargs) -> Tensor:
    from rnnguard.cells import unroll  # the cell programs import this package: late

    frames, constant = start(regions, **kwargs)
    return unroll(program, frames, regions.lengths, constant).margin_lower(weight, bias)


def _attacked(program, regions: Regions, weight: Tensor, bias: Tensor) -> Tensor:
    """A quick attack's worst margin per region: an upper bound on its true worst margin."""
    from rnnguard.attacks import attack_margins  # the attacks import this package: late

    return attack_margins(program, regions, weight, bias)[0]


def _falsified(program, regions: Regions, weight: Tensor, bias: Tensor) -> Tensor:
    return _attacked(program, regions, weight, bias) < 0


def _attack_first(start: Start) -> Callable[..., Tensor]:
    """Margins of an optimised back-substitution domain after a quick attack: regions with a
    concrete counterexample keep their first-pass bounds (no bound could certify them), so the
    optimiser's time goes to the others.  A pure speed-up: certified regions are the same."""
    def margins(program, regions: Regions, weight: Tensor, bias: Tensor) -> Tensor:
        return _margins_of(program, start, regions, weight, bias, skip=_falsified(program, regions, weight, bias))

    return margins


# backsub-alpha-shared's optimised pass goes first to the regions whose worst-margin lower bound L
# and attack margin U (an upper bound on the true worst margin) satisfy -L <= _GAP_SHARE * (U - L): at
# most this share of the gap [L, U] lies below zero.  On six R2-recipe MNIST model/eps pairs at eps
# 0.01-0.015 (98 open regions) no region with a share above 0.39 after backsub-slopes was certified
# by two passes, a third of the open regions were past the line, and no pass closed more than 0.41
# of a region's gap.  Where a pass does close more than this share of some region's gap (the RT text
# LSTM: up to 0.70, and regions with shares up to 0.89 certified), the rule's premise fails for the
# model, and the regions it skipped get the pass too (see _alpha_margins).  The thorough domains
# (backsub-alpha, backsub-alpha-deep) take every open region from the start.
_GAP_SHARE = 0.6


def _within_gap_share(worst: Tensor, attack: Tensor, share: float) -> Tensor:
    """Regions whose worst-margin lower bound ``L`` lies within ``share`` of the gap to the attack's
    worst margin ``U``: ``-L <= share (U - L)``; all of them for ``inf`` (no NaN from a zero gap)."""
    if share == float("inf"):
        return torch.ones_like(worst, dtype=torch.bool)
    return -worst <= share * (attack - worst)


def _closed_share(before: Tensor, after: Tensor, attack: Tensor) -> Tensor:
    """The share ``(after - before) / (U - before)`` of each region's gap to its attack margin ``U``
    that a pass closed (0 where the gap is empty)."""
    gap = attack - before
    return torch.where(gap > 0, (after - before) / gap.clamp(min=torch.finfo(gap.dtype).tiny), torch.zeros_like(gap))


def _alpha_margins(mode: str, passes: int = 1, reach_factor: float = 2.0,
                   gap_share: float = float("inf"), final_mode: str | None = None,
                   final_reach: float = 0.5) -> Callable[..., Tensor]:
    """``backsub-slopes`` on every region, then, on the regions it leaves open in which a quick
    attack finds no counterexample and whose bound is within reach of it (``gap_share``, see
    ``_GAP_SHARE``), the propagation whose intermediate boxes are optimised too (``mode``:
    ``alpha`` or ``alpha-shared``); the max of the two (both sound) per margin.  If that pass
    closed more than ``gap_share`` of some region's gap, the open unbroken regions the share
    skipped get the same pass (one more propagation).

    ``passes > 1``: the regions still open after a pass are propagated again, every intermediate
    tightening continuing from where the previous pass's stopped (``Graph.resume``), so that each
    pass adds ``intermediate_steps`` steps per box (and a fresh margin optimisation).  From the
    third pass on, a region goes on only if its last pass's gain in worst margin, ``reach_factor``
    times over, for each pass left, would close it (the passes' out-of-reach stop).

    ``final_mode`` (``alpha``: per-bound slopes): after the passes, one fresh propagation in that
    mode on the regions still open and unbroken whose gain over ``backsub-slopes`` so far, times
    ``final_reach``, would close them.  Per-bound slopes cost 10-60 s per region on the R2-recipe
    MNIST models and added 0.28-0.50 of the shared pass's gain on the ten regions measured
    (04F_032H_1L, 2L and 3L, eps 0.01), so the pass goes only where half that gain would close the gap."""
    if passes > 1 and gap_share != float("inf"):
        raise ValueError("continued passes take every open region (gap_share must be inf)")

    def margins_fn(program, regions: Regions, weight: Tensor, bias: Tensor) -> Tensor:
        attack = _attacked(program, regions, weight, bias)
        broken = attack < 0
        margins = _margins_of(program, DOMAINS["backsub-slopes"].start, regions, weight, bias, skip=broken)

        def propagate(rows: Tensor, record: dict | None = None, resume: tuple[dict, Tensor] | None = None,
                      pass_mode: str = mode) -> Tensor:
            """One pass on ``rows``, kept where it is higher; returns the rows' gains in worst margin."""
            tight = _margins_of(program, _backsub_start("anchored", pass_mode), regions.select(rows), weight[rows],
                                bias[rows], record=record, resume=resume)
            before = margins[rows].amin(dim=1)
            margins[rows] = torch.maximum(margins[rows], tight)
            return margins[rows].amin(dim=1) - before

        first = margins.amin(dim=1)  # backsub-slopes' worst margins: the final pass's reach is measured from them
        previous: tuple[dict, Tensor] | None = None  # the last pass's tightenings and its regions
        gain = torch.zeros_like(margins[:, 0])  # each region's gain in worst margin in the last pass
        for p in range(passes):
            worst = margins.amin(dim=1)
            candidates = (worst <= 0) & ~broken
            todo = candidates & _within_gap_share(worst, attack, gap_share)
            if p >= 2:
                todo &= worst + reach_factor * gain * (passes - p) > 0
            rows = todo.nonzero(as_tuple=True)[0]
            if not rows.numel():
                break
            record: dict | None = {} if p < passes - 1 else None  # only a pass that may follow needs it
            resume = None if previous is None else (previous[0], torch.searchsorted(previous[1], rows))
            gain.zero_()
            gain[rows] = propagate(rows, record, resume)
            previous = (record, rows)
            skipped = (candidates & ~todo).nonzero(as_tuple=True)[0]
            if skipped.numel() and bool((_closed_share(worst[rows], worst[rows] + gain[rows], attack[rows])
                                         > gap_share).any()):
                propagate(skipped)
        if final_mode is not None:
            worst = margins.amin(dim=1)
            todo = (worst <= 0) & ~broken & (worst + final_reach * (worst - first) > 0)
            rows = todo.nonzero(as_tuple=True)[0]
            if rows.numel():
                propagate(rows, pass_mode=final_mode)
        return margins

    return margins_fn


def _meet_start(first: Start, second: Start) -> Start:
    def start(regions: Regions) -> tuple[list[AbstractValue], Callable[[Tensor], AbstractValue]]:
        (fa, ca), (fb, cb) = first(regions), second(regions)
        return [Meet(a, b) for a, b in zip(fa, fb)], lambda x: Meet(ca(x), cb(x))

    return start


DOMAINS: dict[str, Domain] = {
    "box": Domain("box", _start_box, "interval bound propagation"),
    "zonotope": Domain("zonotope", _start_zonotope, "Cert-RNN zonotopes with parallel-plane transformers"),
    "interzono": Domain("interzono", _start_interzono, "RNN-Guard InterZono: main zonotope ∩ support box-zonotope"),
    "backsub": Domain("backsub", _backsub_start("anchored", False),
                      "back-substitution with DeepCert lines (tanh, sigmoid) and gate-anchored planes (gate products)"),
    "backsub-parallel": Domain("backsub-parallel", _backsub_start("parallel", False),
                               "back-substitution with Cert-RNN's parallel planes"),
    "backsub-lp": Domain("backsub-lp", _backsub_start("lp", False), "back-substitution with R2's LP planes"),
    "backsub-opt": Domain("backsub-opt", _backsub_start("anchored", True),
                          "back-substitution with optimised convex combinations of closed-form candidate planes",
                          margins=_attack_first(_backsub_start("anchored", True))),
    "backsub-slopes": Domain("backsub-slopes", _backsub_start("anchored", "slopes"),
                             "back-substitution with optimised free plane slopes, offsets exact on each box",
                             margins=_attack_first(_backsub_start("anchored", "slopes"))),
    "r2-opt": Domain("r2-opt", _backsub_start("lp", True, lp_candidates=True),
                     "R2-OPT: LP planes, optimised convex combinations of LP-fitted candidates (slow)",
                     margins=_attack_first(_backsub_start("lp", True, lp_candidates=True))),
}
DOMAINS["backsub-bab"] = Domain("backsub-bab", DOMAINS["backsub"].start,
                                "back-substitution with branch and bound on pre-activations (rnnguard.branching)",
                                margins=_branch_and_bound)
DOMAINS["backsub-alpha"] = Domain("backsub-alpha", DOMAINS["backsub-slopes"].start,
                                  "backsub-slopes, then on open regions every intermediate box optimised too",
                                  margins=_alpha_margins("alpha"))
DOMAINS["backsub-alpha-shared"] = Domain(
    "backsub-alpha-shared", DOMAINS["backsub-slopes"].start,
    "backsub-alpha with one slope set per intermediate box (shared by its bounds), on the regions within reach of "
    "the quick attack's margin: cheaper, a little looser",
    margins=_alpha_margins("alpha-shared", gap_share=_GAP_SHARE))
DOMAINS["backsub-alpha-deep"] = Domain(
    "backsub-alpha-deep", DOMAINS["backsub-slopes"].start,
    "backsub-alpha-shared, then on the regions it leaves open up to twice 40 more steps per intermediate box",
    margins=_alpha_margins("alpha-shared", passes=3))
DOMAINS["backsub-alpha-cascade"] = Domain(
    "backsub-alpha-cascade", DOMAINS["backsub-slopes"].start,
    "backsub-alpha-shared, then per-bound slopes (backsub-alpha's pass) on the regions it leaves open that half its gain "
    "would close: backsub-alpha's certificates within reach, at a fraction of its time",
    margins=_alpha_margins("alpha-shared", gap_share=_GAP_SHARE, final_mode="alpha"))
DOMAINS["hybrid"] = Domain("hybrid", _meet_start(_start_interzono, DOMAINS["backsub"].start),
                           "InterZono ∩ back-substitution, neuron by neuron", ("interzono", "backsub"))
DOMAINS["hybrid-opt"] = Domain("hybrid-opt", _meet_start(_start_interzono, DOMAINS["backsub-opt"].start),
                               "InterZono ∩ R2-OPT back-substitution", ("interzono", "backsub-opt"))


def get_domain(name: str) -> Domain:
    try:
        return DOMAINS[name]
    except KeyError:
        raise UnknownNameError(f"unknown domain {name!r}; choose one of {sorted(DOMAINS)}") from None


__all__ = ["DOMAINS", "Domain", "get_domain", "Box", "Zonotope", "InterZono", "Point", "SymbolTable", "input_zonotopes",
           "LinExpr", "Meet"]
