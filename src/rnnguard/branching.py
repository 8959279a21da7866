"""Branch and bound on the pre-activations of the back-substitution domain (``backsub-bab``).

A region that back-substitution leaves uncertified is split into two sub-problems on one
operand neuron of one nonlinear operation (a gate pre-activation, a cell state): its inputs
whose operand value lies below the interval's midpoint, and those above.  Each sub-problem is
propagated again with the operand's bounds cut to its half, so that operation's planes, and every
bound after it, are computed on a smaller box.  Sub-problems are split again while they stay
uncertified, up to ``max_leaves`` per region.

Soundness: the sub-problems cover the region (every input lies in one half of every split), and a
sub-problem's bound only has to hold for its own inputs, which satisfy its constraints, so planes
fitted on the cut boxes hold for them; every later bound is derived from those planes by the same
back-substitution.  A sub-problem whose constraints contradict sound bounds has no input and is
certified vacuously.  The region's bound is ``max(unsplit bound, min over its leaves)``.

Which neuron: the one with the largest estimated contribution to the margin's looseness, the
back-substituted coefficient magnitude times the gap between its upper and lower planes
(BaBSR-like), attributed to the operand with the larger width-weighted slope gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rnnguard.cells import Program, unroll
from rnnguard.domains.backsub import Graph, LinExpr, OpNode, _backsub, _value_at_centres, input_expressions
from rnnguard.perturbations import Regions

Clamps = dict[tuple[int, int], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class BranchOptions:
    """Branch-and-bound settings: relaxation method and the leaf budget per region."""

    method: str = "anchored"
    max_leaves: int = 16


def _bound_leaves(program: Program, regions: Regions, weight: Tensor, bias: Tensor, clamps: Clamps,
                  method: str) -> tuple[Tensor, Graph, dict[int, Tensor], Tensor | None]:
    """Margin lower bounds ``(L, k)`` of the leaves; also the graph, the recorded back-substitution
    coefficients, and (for unconstrained leaves) the margins at the regions' centre points."""
    graph = Graph(method, None, clamps=clamps)
    frames = input_expressions(graph, regions.lower, regions.upper, regions.masks, regions.ball_center,
                               regions.ball_eps)
    h = unroll(program, frames, regions.lengths, lambda x: LinExpr.constant(graph, x))
    spec = h.affine(weight, bias)
    L = spec.const.shape[0]
    if not spec.terms:
        return torch.maximum(spec.const, spec.box[0]), graph, {}, spec.const
    terms = {k: (c if c.dim() == 3 else c.expand(L, *c.shape)) for k, c in spec.terms.items()}
    record: dict[int, Tensor] = {}
    margins = torch.maximum(_backsub(graph, terms, spec.const, record=record), spec.box[0])
    if graph.empty is not None:
        margins = torch.where(graph.empty[:, None], torch.full_like(margins, float("inf")), margins)
    at_centre = None if clamps else _value_at_centres(graph, terms, spec.const)
    return margins, graph, record, at_centre


def _choose_splits(graph: Graph, record: dict[int, Tensor], margins: Tensor
                   ) -> tuple[list[tuple[int, int]], Tensor, Tensor, Tensor]:
    """Per leaf, the (node, operand, neuron) to split: returns the key list, each leaf's key index,
    neuron index and the split point."""
    open_margin = (margins <= 0).to(margins.dtype)[:, :, None]  # only margins still to prove
    keys, scores, mids = [], [], []
    for node in graph.nodes:
        if not isinstance(node, OpNode) or node.id not in record or not node.operand_bounds:
            continue
        weight = (record[node.id].abs() * open_margin).sum(1)  # (L, n)
        p = node.planes
        gap = p.upper_offset - p.lower_offset
        for (lo, hi), sl, su in zip(node.operand_bounds, p.lower_slopes, p.upper_slopes):
            gap = gap + (su - sl) * (hi + lo) / 2
        gap = gap.clamp(min=0) / len(node.operand_bounds)
        for i, ((lo, hi), sl, su) in enumerate(zip(node.operand_bounds, p.lower_slopes, p.upper_slopes)):
            rad = (hi - lo) / 2
            score = weight * ((su - sl).abs() * rad + gap)
            score = torch.where(rad > 1e-9 * (1 + lo.abs()), score, torch.zeros_like(score))
            keys.append((node.id, i))
            scores.append(score)
            mids.append((hi + lo) / 2)
    widths = [s.shape[1] for s in scores]
    flat = torch.cat(scores, dim=1)
    # the first neuron whose score is within a relative 1e-9 of the best: a near-tie then resolves the
    # same way whatever rounding noise (matmul blocking, batch composition) the scores carry
    top = flat.max(dim=1, keepdim=True).values
    best = (flat >= top * (1 - 1e-9)).to(torch.int8).argmax(dim=1)
    offsets = torch.tensor([0] + widths, device=flat.device).cumsum(0)
    key_index = torch.searchsorted(offsets[1:], best, right=True)
    neuron = best - offsets[key_index]
    mid = torch.cat(mids, dim=1).gather(1, best[:, None]).squeeze(1)
    return keys, key_index, neuron, mid


def _split_clamps(clamps: Clamps, parents: Tensor, keys: list[tuple[int, int]], key_index: Tensor,
                  neuron: Tensor, mid: Tensor, widths: dict[tuple[int, int], int], like: Tensor) -> Clamps:
    """The children's constraints: each parent leaf twice, first child ``<= mid``, second ``>= mid``."""
    rows = parents.repeat_interleave(2)
    out = {key: (lo[rows].clone(), hi[rows].clone()) for key, (lo, hi) in clamps.items()}
    n_children = rows.shape[0]
    child = torch.arange(n_children, device=like.device)
    for k in torch.unique(key_index).tolist():
        key = keys[k]
        if key not in out:
            shape = (n_children, widths[key])
            out[key] = (like.new_full(shape, float("-inf")), like.new_full(shape, float("inf")))
        pick = (key_index == k).repeat_interleave(2)
        j = neuron.repeat_interleave(2)[pick]
        m = mid.repeat_interleave(2)[pick]
        c = child[pick]
        upper_half = (c % 2) == 1
        lo, hi = out[key]
        lo[c[upper_half], j[upper_half]] = torch.maximum(lo[c[upper_half], j[upper_half]], m[upper_half])
        hi[c[~upper_half], j[~upper_half]] = torch.minimum(hi[c[~upper_half], j[~upper_half]], m[~upper_half])
    return out


def branch_and_bound_margins(program: Program, regions: Regions, weight: Tensor, bias: Tensor,
                             options: BranchOptions = BranchOptions()) -> Tensor:
    """Lower bounds ``(R, k)`` of ``weight @ h + bias`` over each region, with branching (module doc)."""
    R = regions.lower.shape[0]
    device = regions.lower.device
    root, graph, record, at_centre = _bound_leaves(program, regions, weight, bias, {}, options.method)
    # a region whose centre point already violates the specification cannot be certified
    splittable = ~(root > 0).all(dim=1)
    if at_centre is not None:
        splittable &= (at_centre > 0).all(dim=1)
    leaf_min = root.clone()
    leaf_min[splittable] = float("inf")
    owner = torch.arange(R, device=device)[splittable]
    n_leaves = torch.ones(R, dtype=torch.long, device=device)
    margins = root[splittable]
    record = {k: v[splittable] for k, v in record.items()}
    graph = _restricted_view(graph, splittable)
    clamps: Clamps = {}
    while owner.numel():
        open_per_region = torch.bincount(owner, minlength=R)
        fits = (n_leaves + open_per_region <= options.max_leaves)[owner]
        # leaves that cannot be split any further keep their bound
        done = ~fits
        if bool(done.any()):
            leaf_min.scatter_reduce_(0, owner[done][:, None].expand(-1, margins.shape[1]), margins[done], "amin")
        if not bool(fits.any()):
            break
        keep = fits.nonzero(as_tuple=True)[0]
        widths = {(node.id, i): node.operand_bounds[i][0].shape[1] for node in graph.nodes
                  if isinstance(node, OpNode) for i in range(len(node.operand_bounds))}
        sub_record = {k: v[keep] for k, v in record.items()}
        keys, key_index, neuron, mid = _choose_splits(_restricted_view(graph, keep), sub_record, margins[keep])
        n_leaves += torch.bincount(owner[keep], minlength=R)
        clamps = _split_clamps({k: (lo[keep], hi[keep]) for k, (lo, hi) in clamps.items()},
                               torch.arange(keep.shape[0], device=device), keys, key_index, neuron, mid, widths,
                               margins)
        owner = owner[keep].repeat_interleave(2)
        margins, graph, record, _ = _bound_leaves(program, regions.select(owner), weight[owner], bias[owner],
                                                  clamps, options.method)
        proved = (margins > 0).all(dim=1)
        if bool(proved.any()):
            leaf_min.scatter_reduce_(0, owner[proved][:, None].expand(-1, margins.shape[1]), margins[proved], "amin")
        still = ~proved
        owner, margins = owner[still], margins[still]
        record = {k: v[still] for k, v in record.items()}
        clamps = {k: (lo[still], hi[still]) for k, (lo, hi) in clamps.items()}
        graph = _restricted_view(graph, still)
    return torch.maximum(root, leaf_min)


def _restricted_view(graph: Graph, rows: Tensor) -> Graph:
    """The operation nodes' planes and operand boxes for the leaves ``rows`` (split selection only)."""
    from rnnguard.relaxations.linear import LinearBounds

    view = Graph(graph.method, None)
    for node in graph.nodes:
        if isinstance(node, OpNode):
            p = node.planes
            planes = LinearBounds(tuple(s[rows] for s in p.lower_slopes), p.lower_offset[rows],
                                  tuple(s[rows] for s in p.upper_slopes), p.upper_offset[rows])
            view.nodes.append(OpNode(node.id, node.op, (), planes, None,
                                     tuple((lo[rows], hi[rows]) for lo, hi in node.operand_bounds)))
        else:
            view.nodes.append(node)
    return view
