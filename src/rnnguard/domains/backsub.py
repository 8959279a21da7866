"""Back-substitution domain (DeepPoly / CROWN style, as R2 uses for LSTMs).

Every nonlinear operation creates a *node* of a graph shared by one propagation.  A node keeps a
linear lower and an upper bound of its output in terms of its operands (see
:mod:`rnnguard.relaxations.linear`), and the operands are affine expressions over earlier nodes.
An abstract value (:class:`LinExpr`) is an affine expression ``sum_node C_node @ node + const``.
Its concrete bounds come from substituting node bounds backwards, newest node first (node ids
grow in creation order, so this is a reverse topological order), through every time step and
layer down to the input frames, where the input sets are concretised exactly: a box, and for
l_2 balls the dual norm (``c.x0 - eps ||c||_2``), intersected with the clipping box.

Margins ``y_true - y_other`` are back-substituted directly from the specification.  Each value
also carries an interval *shadow* computed by interval arithmetic from its operands' final
bounds; bounds are intersected with it, so this domain is never looser than Box on any neuron nor
on the margins (interval extensions are inclusion-monotone).

Optimised mode (R2-OPT, alpha-CROWN-like): every node also keeps ``K`` sound candidate planes per
neuron; the margin's back-substitution uses per-margin convex combinations ``softmax(theta)``
of them, and ``theta`` is trained by Adam to raise the margins' lower bounds, stopping early on
regions already certified.  Intermediate bounds stay those of the first pass (papers-notes A2.5),
so every combination -- every iterate -- is a sound bound, and the best one seen is returned.
Free-slope mode (``backsub-slopes``) optimises the planes' slopes themselves instead, each
iterate's offsets being the exact extrema over the operand box (``exact_offsets``); with
``intermediate_steps`` (``backsub-alpha``) it also tightens every operation's operand box that way
before computing the operation's planes (alpha-CROWN-like: intermediate bounds are optimised too),
with slopes per bound, or (``intermediate_shared``, ``backsub-alpha-shared``) one set of slopes per
box shared by all its lower and upper bounds: the exact offsets, the bulk of the cost, are then
computed once per earlier neuron instead of once per bound (2 x width times fewer).
Regions in ``Graph.skip`` (a concrete counterexample is known) are never optimised.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from rnnguard.domains.base import add_bias, concretization_slack, linear, matmul_rows
from rnnguard.relaxations import RELAXATIONS
from rnnguard.relaxations.linear import LinearBounds, candidate_bounds, linear_bounds

# Relative outward slack on back-substituted bounds: covers the floating-point error of the
# accumulated products (n u |A||B| per matmul) for thousands of chained operations.
_BACKSUB_SLACK_ULPS = 4096.0
# float32 certification is documented as not float-sound; a smaller slack keeps it close to float64
_FLOAT32_SLACK_ULPS = 256.0
# free slopes: most plane entries ``(regions x rows x neurons)`` per shared exact_offsets call
_GROUP_ELEMENTS = 8192
# input concretisation without gradients: coefficient blocks of about this many entries (~2 MB in
# float64, cache-sized: 1.7x faster than one pass over a 100-region batch's coefficients)
_BLOCK_ELEMENTS = 1 << 18


@dataclass
class OptimiseOptions:
    """R2-OPT settings: Adam on the candidate-plane weights, early exit once certified."""

    steps: int = 40
    lr: float = 0.5
    patience: int = 8  # stop a run whose best bound has not improved for this many steps
    # "combine": convex combinations of the K candidate planes (R2-OPT); "slopes": free slopes per
    # margin and neuron, each plane's offset recomputed exactly on the box (alpha-CROWN-like)
    mode: str = "combine"
    slope_lr: float = 0.05
    lr_decay: float = 1.0  # the rate is multiplied by this after every step
    # "slopes" mode: also tighten every operand box of every operation, when its node is created,
    # by this many free-slope steps on the operand's own lower and upper bounds (0: first-pass boxes)
    intermediate_steps: int = 0
    # one slope set per tightened box, shared by all its lower and upper bounds (cheaper, looser)
    intermediate_shared: bool = False
    # the tightenings' rate ramps up linearly over this many first steps: Adam's first step moves
    # every slope by the full rate whatever its gradient, which costs a box more than its next
    # ten steps win back
    intermediate_warmup: int = 1
    # stop a region whose worst margin, at the pace of its last ``reach_window`` steps (per unit
    # of learning rate, times the rates still to come), would stay below zero even at
    # ``reach_factor`` times that pace; checked from step ``patience + reach_window`` on (the first
    # steps often lose ground before they gain); 0: off.  A time saving that gives up only regions
    # whose progress would have to speed up again to be certified
    reach_window: int = 0
    reach_factor: float = 2.0


@dataclass(eq=False)
class InputNode:
    """One frame's input set: box ``center +- radius``; for l_2 also the ball ``|x - ball_center| <= ball_eps``."""

    id: int
    center: Tensor  # (R, d)
    radius: Tensor  # (R, d)
    ball_center: Tensor | None = None
    ball_eps: Tensor | None = None  # (R,)


@dataclass(eq=False)
class OpNode:
    """An elementwise nonlinear operation ``f(operands)`` with its planes on the operands' bounds."""

    id: int
    op: str
    operands: tuple["LinExpr", ...]
    planes: LinearBounds  # tensors (R, n)
    candidates: LinearBounds | None = None  # tensors (R, n, K), optimised mode only
    operand_bounds: tuple[tuple[Tensor, Tensor], ...] = ()  # the boxes the planes hold on


@dataclass(eq=False)
class Graph:
    """The nodes of one propagation and the relaxation settings."""

    method: str = "anchored"
    optimise: OptimiseOptions | None = None
    nodes: list = field(default_factory=list)
    lp_candidates: bool = False  # optimised mode: R2's LP-fitted candidates (slow) or closed-form ones
    # branching: (node id, operand index) -> per-region box (lower, upper) (R, n) that the operand is
    # constrained to in this region (a sub-problem of a split); ``empty`` marks regions whose
    # constraints contradict the computed bounds (no input satisfies them)
    clamps: dict[tuple[int, int], tuple[Tensor, Tensor]] = field(default_factory=dict)
    empty: Tensor | None = None
    # regions known to contain a counterexample (``rnnguard.attacks.falsify_regions``): no bound can
    # certify them, so the optimised modes leave them at their first-pass bounds
    skip: Tensor | None = None
    # intermediate tightenings: ``record`` receives each one's final optimiser state (by call order);
    # ``resume = (states, regions)`` continues a previous propagation's tightenings, whose regions
    # ``regions`` (indices) are this graph's, from those states (see :func:`_tighten_values`)
    record: dict[int, "_TighteningState"] | None = None
    resume: tuple[dict[int, "_TighteningState"], Tensor] | None = None
    tightenings: int = 0

    def add(self, node_type: type, **kwargs) -> "InputNode | OpNode":
        node = node_type(id=len(self.nodes), **kwargs)
        self.nodes.append(node)
        return node


Coefficient = Tensor  # (m, n) shared by all regions, or (R, m, n)


def _rows(c: Coefficient, rows: slice) -> Coefficient:
    return c[..., rows, :]


def _add_coef(acc: dict[int, Tensor], key: int, value: Tensor) -> None:
    acc[key] = value if key not in acc else acc[key] + value


@dataclass(frozen=True, eq=False)
class LinExpr:
    """``sum_i terms[i] @ node_i + const`` over the nodes of ``graph``; ``box`` is its interval shadow."""

    graph: Graph
    terms: dict[int, Coefficient]
    const: Tensor  # (R, m)
    box: tuple[Tensor, Tensor]

    # ------------------------------------------------------------------ construction
    @classmethod
    def constant(cls, graph: Graph, value: Tensor) -> "LinExpr":
        out = cls(graph, {}, value, (value, value))
        object.__setattr__(out, "_bounds", (value, value))
        return out

    @classmethod
    def of_node(cls, graph: Graph, node_id: int, n: int, like: Tensor, box: tuple[Tensor, Tensor]) -> "LinExpr":
        eye = torch.eye(n, dtype=like.dtype, device=like.device)
        return cls(graph, {node_id: eye}, torch.zeros_like(box[0]), box)

    # ------------------------------------------------------------------ protocol
    def bounds(self) -> tuple[Tensor, Tensor]:
        cached = self.__dict__.get("_bounds")
        if cached is None:
            if not self.terms:
                cached = (self.const, self.const)
            else:
                m = self.const.shape[-1]
                stacked = {k: torch.cat([c, -c], dim=-2) for k, c in self.terms.items()}
                low = _backsub(self.graph, stacked, torch.cat([self.const, -self.const], dim=-1))
                lo, hi = low[:, :m], -low[:, m:]
                cached = (torch.maximum(lo, self.box[0]), torch.minimum(hi, self.box[1]))
            object.__setattr__(self, "_bounds", cached)
        return cached

    def _shadow_bounds(self) -> tuple[Tensor, Tensor]:
        return self.__dict__.get("_bounds") or self.box

    def affine(self, weight: Tensor, bias: Tensor | None = None) -> "LinExpr":
        terms = {k: weight @ c for k, c in self.terms.items()}
        lo, hi = self._shadow_bounds()
        center, radius = (hi + lo) / 2, (hi - lo) / 2
        c = add_bias(linear(center, weight), bias)
        r = linear(radius, weight.abs())
        r = r + concretization_slack(c.abs(), r)
        return LinExpr(self.graph, terms, add_bias(linear(self.const, weight), bias), (c - r, c + r))

    def __add__(self, other: "LinExpr") -> "LinExpr":
        terms = dict(self.terms)
        for k, c in other.terms.items():
            _add_coef(terms, k, c)
        (la, ha), (lb, hb) = self._shadow_bounds(), other._shadow_bounds()
        lo, hi = la + lb, ha + hb
        slack = concretization_slack(torch.maximum(lo.abs(), hi.abs()), torch.zeros_like(lo))
        return LinExpr(self.graph, terms, self.const + other.const, (lo - slack, hi + slack))

    def __neg__(self) -> "LinExpr":
        lo, hi = self._shadow_bounds()
        out = LinExpr(self.graph, {k: -c for k, c in self.terms.items()}, -self.const, (-hi, -lo))
        if "_bounds" in self.__dict__:
            object.__setattr__(out, "_bounds", (-hi, -lo))
        object.__setattr__(out, "_negation_of", self)  # its tightened box is ours, negated
        return out

    def chunk(self, parts: int) -> Sequence["LinExpr"]:
        """Split the neurons into gates; bounds are computed once for the whole value when first needed."""
        n = self.const.shape[-1] // parts
        shared: dict[str, tuple[Tensor, Tensor]] = {}
        out = []
        for p in range(parts):
            rows = slice(p * n, (p + 1) * n)
            piece = _LazyPiece(self.graph, {k: _rows(c, rows) for k, c in self.terms.items()}, self.const[:, rows],
                               (self.box[0][:, rows], self.box[1][:, rows]))
            object.__setattr__(piece, "_parent", (self, rows, shared))
            out.append(piece)
        return out

    def apply(self, op: str, *others: "LinExpr") -> "LinExpr":
        return _apply(self.graph, op, (self, *others))

    @classmethod
    def apply_sum(cls, terms: Sequence[tuple[str, Sequence["LinExpr"]]]) -> "LinExpr":
        graph = terms[0][1][0].graph
        _tighten_jointly(graph, [v for _, vals in terms for v in vals])
        values = [_apply(graph, op, tuple(vals)) for op, vals in terms]
        out = values[0]
        for v in values[1:]:
            out = out + v
        return out

    def where(self, keep_self: Tensor, other: "LinExpr") -> "LinExpr":
        k = keep_self.to(self.const.dtype)
        terms: dict[int, Tensor] = {}
        for key, c in self.terms.items():
            _add_coef(terms, key, k[:, None, None] * c)
        for key, c in other.terms.items():
            _add_coef(terms, key, (1 - k)[:, None, None] * c)
        kk = keep_self[:, None]
        (la, ha), (lb, hb) = self._shadow_bounds(), other._shadow_bounds()
        return LinExpr(self.graph, terms, torch.where(kk, self.const, other.const),
                       (torch.where(kk, la, lb), torch.where(kk, ha, hb)))

    def meet_interval(self, lower: Tensor, upper: Tensor) -> "LinExpr":
        """The same expression with bounds refined by a box known to contain it."""
        lo, hi = self.bounds()
        out = LinExpr(self.graph, self.terms, self.const, self.box)
        object.__setattr__(out, "_bounds", (torch.maximum(lo, lower), torch.minimum(hi, upper)))
        return out

    def margin_lower(self, weight: Tensor, bias: Tensor) -> Tensor:
        """Lower bounds of ``weight @ value + bias`` (weight ``(R, k, n)``), back-substituted directly."""
        spec = self.affine(weight, bias)
        lo_box = spec.box[0]
        if not spec.terms:
            return torch.maximum(spec.const, lo_box)
        terms = {k: (c if c.dim() == 3 else c.expand(spec.const.shape[0], *c.shape)) for k, c in spec.terms.items()}
        best = torch.maximum(_backsub(self.graph, terms, spec.const), lo_box)
        if self.graph.optimise is not None:
            best = _optimise(self.graph, terms, spec.const, best, self.graph.optimise)
        return best


class _LazyPiece(LinExpr):
    """A gate of a chunked value: its bounds are a slice of the parent's (one back-substitution)."""

    def bounds(self) -> tuple[Tensor, Tensor]:
        if "_bounds" not in self.__dict__:
            parent, rows, shared = self.__dict__["_parent"]
            if "b" not in shared:
                shared["b"] = parent.bounds()
            lo, hi = shared["b"]
            object.__setattr__(self, "_bounds", (lo[:, rows], hi[:, rows]))
        return self.__dict__["_bounds"]


def _apply(graph: Graph, op: str, operands: tuple[LinExpr, ...]) -> LinExpr:
    _tighten_jointly(graph, operands)
    boxes = [_clamped(graph, len(graph.nodes), i, *_tightened(graph, v)) for i, v in enumerate(operands)]
    bounds = [t for box in boxes for t in box]
    planes = linear_bounds(op, *bounds, method=graph.method)
    combine = graph.optimise is not None and graph.optimise.mode == "combine"
    candidates = candidate_bounds(op, *bounds, lp=graph.lp_candidates) if combine else None
    box = RELAXATIONS[op].interval(*bounds)
    node = graph.add(OpNode, op=op, operands=operands, planes=planes, candidates=candidates,
                     operand_bounds=tuple(boxes))
    return LinExpr.of_node(graph, node.id, box[0].shape[-1], box[0], box)


def _tightens(graph: Graph) -> bool:
    opts = graph.optimise
    return opts is not None and opts.mode == "slopes" and opts.intermediate_steps > 0


def _tightened(graph: Graph, value: LinExpr) -> tuple[Tensor, Tensor]:
    """``value``'s bounds, tightened (alpha-CROWN-like) when the graph asks for intermediate steps
    (see :func:`_tighten_jointly`)."""
    if not _tightens(graph):
        return value.bounds()
    _tighten_jointly(graph, [value])
    return value.__dict__["_tightened"]


def _tighten_jointly(graph: Graph, values: Sequence[LinExpr]) -> None:
    """Tighten the bounds of ``values`` (the operands of the next operations) and cache them on
    each value, when the graph asks for intermediate steps.

    The lower bounds of every value and of its negation are back-substituted with free slopes on
    every earlier operation (exact offsets on their boxes) and raised by Adam; every iterate is
    sound, so the best one, intersected with the first-pass bounds, is a sound box.  Nodes created
    later compute their planes on these boxes, so the tightening compounds through the time steps.
    The values of one call are optimised in one back-substitution (their rows stacked) with their
    own slopes, so the result is that of optimising them one by one at a fraction of the per-step
    overhead.  Slopes are per bound, or (``intermediate_shared``) one set per value and region
    shared by its ``2m`` bounds.  An operand of several operations (an LSTM's cell state) is
    tightened once, and a negated value (a GRU's ``-z``) takes its original's box."""
    if not _tightens(graph):
        return
    negations = [v for v in values if "_negation_of" in v.__dict__ and "_tightened" not in v.__dict__]
    values = [v.__dict__.get("_negation_of", v) for v in values]  # a GRU's -z and z: one optimisation
    todo: list[LinExpr] = []
    for value in values:
        if "_tightened" in value.__dict__ or any(value is v for v in todo):
            continue
        if not any(isinstance(graph.nodes[k], OpNode) for k in value.terms):
            lo, hi = value.bounds()  # affine in the inputs: back-substitution is already exact
            object.__setattr__(value, "_tightened", (lo, hi))
            continue
        todo.append(value)
    if todo:
        _tighten_values(graph, todo)
    for v in negations:
        lo, hi = v.__dict__["_negation_of"].__dict__["_tightened"]
        object.__setattr__(v, "_tightened", (-hi, -lo))


@dataclass
class _TighteningState:
    """Where one intermediate tightening stopped: its slopes, Adam's moments, step count and rate,
    and its best bounds (rows ``[lo; -hi]``), all per region; ``group_regions``: the region count
    its slopes were grouped for (:func:`_free_slopes`), kept by every continuation; ``values``:
    which values it bounded (:func:`_tightened_values_key`)."""

    params: list[Tensor]
    moments: tuple[list[Tensor], list[Tensor]]
    t: int
    lr: float
    best: Tensor
    group_regions: int
    values: tuple


def _tightened_values_key(todo: list[LinExpr]) -> tuple:
    """What a joint tightening bounds, comparable across propagations of one program: each value's
    width and the nodes it depends on (node ids follow the program, not the regions)."""
    return tuple((v.const.shape[-1], tuple(sorted(v.terms))) for v in todo)


def _tighten_values(graph: Graph, todo: list[LinExpr]) -> None:
    """The joint optimisation of :func:`_tighten_jointly`: rows ``[c; -c]`` of every value stacked.

    With ``graph.resume``, it continues the same tightening of an earlier propagation of the
    same program (the same graph, node by node) from where that one stopped: its slopes and Adam
    state, and its best bounds, which are sound boxes of the same values.  The earlier nodes'
    planes now hold on boxes at least as tight, so the continued bounds are sound as well: this is
    ``intermediate_steps`` more steps without redoing the first ones."""
    opts = graph.optimise
    index, graph.tightenings = graph.tightenings, graph.tightenings + 1
    R = todo[0].const.shape[0]
    widths = [v.const.shape[-1] for v in todo]
    keys = sorted({k for v in todo for k in v.terms})
    terms = {}
    for k in keys:
        blocks = []
        for v, m in zip(todo, widths):
            c = v.terms.get(k)
            if c is None:
                n = graph.nodes[k].planes.lower_offset.shape[-1] if isinstance(graph.nodes[k], OpNode) \
                    else graph.nodes[k].center.shape[-1]
                blocks.append(todo[0].const.new_zeros(R, 2 * m, n))
            else:
                c = c if c.dim() == 3 else c.expand(R, *c.shape)
                blocks += [c, -c]
        terms[k] = torch.cat(blocks, dim=1)
    const = torch.cat([t for v in todo for t in (v.const, -v.const)], dim=-1)
    best = torch.cat([t for v in todo for lo, hi in [v.bounds()] for t in (lo, -hi)], dim=-1)
    values = _tightened_values_key(todo)
    state = graph.resume[0].get(index) if graph.resume is not None else None
    if state is not None and state.values != values:
        # the regions' lengths decide which states are masked selections, so a subset of regions
        # can need other values tightened here: this tightening starts afresh (no recorded bound
        # of other values may be taken)
        state = None
    group_regions = R if state is None else state.group_regions  # the recorded parameters' layout
    if opts.intermediate_shared:
        row_sets = torch.repeat_interleave(torch.arange(len(todo), device=const.device),
                                           torch.tensor([2 * m for m in widths], device=const.device))
        params, bound_of = _free_slopes(graph, len(todo), row_sets, group_regions=group_regions)
    else:
        params, bound_of = _free_slopes(graph, const.shape[-1], group_regions=group_regions)
    optimiser = _Adam(params, opts.slope_lr, warmup=opts.intermediate_warmup)
    if state is not None:
        regions = graph.resume[1]
        if [p.shape[1:] for p in params] != [q.shape[1:] for q in state.params]:
            raise ValueError("resume: the tightening does not match the recorded one (another program?)")
        with torch.no_grad():
            for p, q in zip(params, state.params):
                p.copy_(q[regions])
        optimiser.m = [m[regions] for m in state.moments[0]]
        optimiser.v = [v[regions] for v in state.moments[1]]
        optimiser.t, optimiser.lr = state.t, state.lr
        best = torch.maximum(best, state.best[regions])
    with torch.enable_grad():
        for _ in range(opts.intermediate_steps):
            bound = bound_of(terms, const)
            best = torch.maximum(best, bound.detach())
            optimiser.step(torch.autograd.grad(-bound.sum(), params, allow_unused=True))
            optimiser.lr *= opts.lr_decay
    if graph.record is not None:
        graph.record[index] = _TighteningState([p.detach() for p in params], (optimiser.m, optimiser.v),
                                               optimiser.t, optimiser.lr, best, group_regions, values)
    for v, part in zip(todo, best.split([2 * m for m in widths], dim=-1)):
        m = part.shape[-1] // 2
        lo, hi = part[:, :m], -part[:, m:]
        object.__setattr__(v, "_tightened", (lo, torch.maximum(hi, lo)))


def _clamped(graph: Graph, node_id: int, operand: int, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Operand bounds intersected with the region's branching constraint, if any.

    Planes computed on the intersection hold for every input of the sub-problem (its inputs
    satisfy the constraint by definition), which is all a sub-problem's bound must cover.  An
    empty intersection means the sub-problem has no input: it is recorded in ``graph.empty`` and
    a degenerate box keeps the arithmetic finite."""
    clamp = graph.clamps.get((node_id, operand))
    if clamp is None:
        return lo, hi
    lo2, hi2 = torch.maximum(lo, clamp[0]), torch.minimum(hi, clamp[1])
    empty = (lo2 > hi2).any(dim=-1)
    graph.empty = empty if graph.empty is None else graph.empty | empty
    return lo2, torch.maximum(hi2, lo2)


def input_expressions(graph: Graph, lower: Tensor, upper: Tensor, masks: Tensor,
                      ball_center: Tensor | None = None, ball_eps: Tensor | None = None) -> list[LinExpr]:
    """One value per frame of boxes ``lower/upper (R, T, d)``.

    ``ball_center (R, T, d)`` / ``ball_eps (R, T)`` add exact l_2 balls (intersected with the boxes)."""
    values = []
    for t in range(lower.shape[1]):
        lo, hi = lower[:, t], upper[:, t]
        # fixed frames are input nodes of radius 0 too (not constants): the arithmetic, and so the
        # rounding slack, of a region must not depend on which other regions share its batch
        node = graph.add(InputNode, center=(hi + lo) / 2, radius=(hi - lo) / 2,
                         ball_center=None if ball_center is None else ball_center[:, t],
                         ball_eps=None if ball_eps is None else ball_eps[:, t])
        values.append(LinExpr.of_node(graph, node.id, lo.shape[-1], lo, (lo, hi)))
    return values


# ---------------------------------------------------------------------------------- back-substitution
def _combined(planes: LinearBounds, weights: tuple[Tensor, Tensor] | None) -> LinearBounds:
    """Planes as used for one back-substitution: ``(R, 1, n)`` tensors, or per-row convex combinations."""
    if weights is None:
        return LinearBounds(tuple(s[:, None] for s in planes.lower_slopes), planes.lower_offset[:, None],
                            tuple(s[:, None] for s in planes.upper_slopes), planes.upper_offset[:, None])
    wl, wu = weights  # (R, k, n, K)
    mix = lambda t, w: (t[:, None] * w).sum(-1)  # noqa: E731
    return LinearBounds(tuple(mix(s, wl) for s in planes.lower_slopes), mix(planes.lower_offset, wl),
                        tuple(mix(s, wu) for s in planes.upper_slopes), mix(planes.upper_offset, wu))


def _backsub(graph: Graph, terms: dict[int, Tensor], const: Tensor,
             weights: dict[int, tuple[Tensor, Tensor]] | None = None,
             record: dict[int, Tensor] | None = None,
             direct: dict[int, LinearBounds] | None = None) -> Tensor:
    """Lower bound ``(R, k)`` of ``sum_i terms[i] @ node_i + const`` over the input sets.

    ``terms`` are ``(R, k, n_i)`` (or shared ``(k, n_i)``).  ``weights`` (optimised mode) maps node
    ids to per-row softmax weights over the node's candidate planes.  ``record`` receives each
    operation node's back-substituted coefficients ``(R, k, n)`` (for choosing branching splits).
    ``direct`` maps node ids to per-row planes ``(R, k, n)`` used as they are (free-slope mode)."""
    R = const.shape[0]
    acc: dict[int, Tensor] = {}
    # input frames' coefficients stay factored, [(s, c)] with coefficient s @ c (c None: s itself),
    # and are concretised once all operation nodes are done (see _input_lower)
    factors: dict[int, list[tuple[Tensor, Tensor | None]]] = {}
    for k, c in terms.items():
        c = c if c.dim() == 3 else c.expand(R, *c.shape)
        if isinstance(graph.nodes[k], InputNode):
            factors[k] = [(c, None)]
        else:
            acc[k] = c
    owned: set[int] = set()  # accumulators created here may be updated in place (no autograd)
    in_place = not torch.is_grad_enabled()

    def accumulate(key: int, s: Tensor, c: Coefficient) -> None:
        if isinstance(graph.nodes[key], InputNode):
            factors.setdefault(key, []).append((s, c))
            return
        value = matmul_rows(s, c)  # coef (m, n) or (R, m, n); row-independent bits
        if key not in acc:
            acc[key] = value
            owned.add(key)
        elif in_place and key in owned:
            acc[key] += value
        else:
            acc[key] = acc[key] + value
            owned.add(key)

    total = const
    scale = const.detach().abs()  # rounding slack: no gradient needed
    while acc:
        nid = max(acc)
        lam = acc.pop(nid)
        node = graph.nodes[nid]
        if record is not None:
            record[nid] = lam
        use_candidates = weights is not None and nid in weights
        if direct is not None and nid in direct:
            p = direct[nid]
        else:
            p = _combined(node.candidates if use_candidates else node.planes, weights[nid] if use_candidates else None)
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        offset = (pos * p.lower_offset + neg * p.upper_offset).sum(-1)
        total = total + offset
        scale = scale + offset.detach().abs()
        for operand, sl, su in zip(node.operands, p.lower_slopes, p.upper_slopes):
            s = pos * sl + neg * su
            for key, c in operand.terms.items():
                accumulate(key, s, c)
            shift = (s * operand.const[:, None]).sum(-1)
            total = total + shift
            scale = scale + shift.detach().abs()
    for nid, pairs in factors.items():
        low, magnitude = _input_lower(graph.nodes[nid], pairs)
        total = total + low
        scale = scale + magnitude
    ulps = _BACKSUB_SLACK_ULPS if total.dtype == torch.float64 else _FLOAT32_SLACK_ULPS
    return total - ulps * torch.finfo(total.dtype).eps * scale - torch.finfo(total.dtype).tiny


def _input_lower(node: InputNode, pairs: list[tuple[Tensor, Tensor | None]]) -> tuple[Tensor, Tensor]:
    """Lower bound ``(R, k)`` of ``lam . x`` over one frame's input set, ``lam = sum s @ c`` (``s``
    itself where ``c`` is None), and the magnitude ``|lam| . (|center| + radius)`` that its rounding
    slack scales with.  Boxes are concretised by :class:`_BoxLower`, l_2 balls by autograd."""
    direct = [s for s, c in pairs if c is None]
    products = [t for s, c in pairs if c is not None for t in (s, c)]
    if node.ball_eps is None:
        low, magnitude = _BoxLower.apply(node.center, node.radius, len(direct), *direct, *products)
        return low, magnitude
    extent = (node.center.abs() + node.radius)[:, None, :]
    lam = _summed(direct, products[0::2], _stacked(products[1::2], node.center.shape[0]) if products else None)
    low = torch.linalg.vecdot(lam, node.center[:, None, :]) - torch.linalg.vecdot(lam.abs(), node.radius[:, None, :])
    ball = torch.linalg.vecdot(lam, node.ball_center[:, None, :]) - node.ball_eps[:, None] * lam.norm(dim=-1)
    with torch.no_grad():
        magnitude = torch.linalg.vecdot(lam.abs(), extent)
    return torch.maximum(low, ball), magnitude


def _stacked(cs: Sequence[Tensor], batch: int) -> Tensor:
    """The factors ``c_i (m_i, d)`` or ``(R, m_i, d)`` stacked along ``m`` (3-D if any is)."""
    if len(cs) == 1:
        return cs[0]
    if any(c.dim() == 3 for c in cs):
        cs = [c if c.dim() == 3 else c.expand(batch, *c.shape) for c in cs]
    return torch.cat(list(cs), dim=-2)


def _summed(direct: Sequence[Tensor], ss: Sequence[Tensor], stacked: Tensor | None) -> Tensor:
    """``sum(direct) + cat(s_i) @ stacked``: the products ``s_i @ c_i`` as ONE matrix product
    (fewer passes than a sum of products).  A row whose ``s_i`` are zero for some ``i`` (a value
    tightened jointly with others) gets the bits it gets without them: the product accumulates
    over the inner dimension in order, and adding an exact zero changes nothing (the
    joint-tightening test checks it)."""
    terms = list(direct)
    if ss:
        terms.append(matmul_rows(torch.cat(list(ss), dim=-1) if len(ss) > 1 else ss[0], stacked))
    return functools.reduce(torch.add, terms)


class _BoxLower(torch.autograd.Function):
    """``min over |x - center| <= radius of lam . x = lam . center - |lam| . radius`` per row, and
    the slack magnitude ``|lam| . (|center| + radius)`` (no gradient), for ``lam = sum(direct) +
    sum_i s_i @ c_i`` (``direct (R, k, d)``, ``s_i (R, k, m_i)``, ``c_i (m_i, d)`` or ``(R, m_i, d)``).

    The backward pass applies the subgradient ``center - sign(lam) radius`` of each row directly:
    about a third of the memory passes autograd makes through the sum, the absolute value and the
    products.  Without gradients the rows go in cache-sized blocks with ``|lam|`` taken in place.
    Every row's arithmetic is independent of the other rows (row-wise dot products, not batched
    matrix-vector kernels, whose rounding depends on the row count), so a value's bounds do not
    depend on what shares its back-substitution."""

    @staticmethod
    def forward(ctx, center: Tensor, radius: Tensor, n_direct: int, *tensors: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        direct, products = tensors[:n_direct], tensors[n_direct:]
        ss, stacked = products[0::2], _stacked(products[1::2], center.shape[0]) if products else None
        mid, spread, extent = center[:, None, :], radius[:, None, :], (center.abs() + radius)[:, None, :]
        if not any(ctx.needs_input_grad):
            first = (direct or ss)[0]
            rows = max(1, _BLOCK_ELEMENTS // max(1, first.shape[0] * center.shape[-1]))
            lows, mags = [], []
            for i in range(0, first.shape[1], rows):
                part = slice(i, i + rows)
                lam = _summed([t[:, part] for t in direct], [t[:, part] for t in ss], stacked)
                centre = torch.linalg.vecdot(lam, mid)
                # in place only on a tensor made here (a lone direct term is the caller's)
                lam = lam.abs_() if len(direct) + len(products) > 1 or not direct else lam.abs()
                lows.append(centre - torch.linalg.vecdot(lam, spread))
                mags.append(torch.linalg.vecdot(lam, extent))
            return torch.cat(lows, dim=1), torch.cat(mags, dim=1)
        lam = _summed(direct, ss, stacked)
        mag = lam.abs()
        low = torch.linalg.vecdot(lam, mid) - torch.linalg.vecdot(mag, spread)
        ctx.n_direct, ctx.has_stacked = n_direct, stacked is not None
        ctx.save_for_backward(center, radius, lam, *products, *([stacked] if stacked is not None else []))
        ctx.mark_non_differentiable(mag)
        return low, torch.linalg.vecdot(mag, extent)

    @staticmethod
    def backward(ctx, grad: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        center, radius, lam, *products = ctx.saved_tensors
        stacked = products.pop() if ctx.has_stacked else None
        need_center, need_radius, _, *need = ctx.needs_input_grad
        g = grad[:, :, None]
        # d low / d lam: the subgradient center - sign(lam) radius per row
        full = g * (center[:, None, :] - torch.copysign(radius[:, None, :].expand_as(lam), lam))
        grads: list[Tensor | None] = [full if n else None for n in need[:ctx.n_direct]]
        ss, cs = products[0::2], products[1::2]
        grad_ss: Sequence[Tensor | None] = [None] * len(ss)
        if stacked is not None and any(need[ctx.n_direct::2]):  # every s_i's gradient from one product
            grad_ss = matmul_rows(full, stacked.transpose(-1, -2)).split([s.shape[-1] for s in ss], dim=-1)
        for j, (s, c) in enumerate(zip(ss, cs)):
            need_s, need_c = need[ctx.n_direct + 2 * j], need[ctx.n_direct + 2 * j + 1]
            grads.append(grad_ss[j] if need_s else None)
            gc = (s.transpose(-1, -2) @ full) if need_c else None
            grads.append(gc.sum(0) if gc is not None and c.dim() == 2 else gc)
        grad_center = (g * lam).sum(1) if need_center else None
        grad_radius = -(g * lam.abs()).sum(1) if need_radius else None
        return (grad_center, grad_radius, None, *grads)


def _value_at_centres(graph: Graph, terms: dict[int, Tensor], const: Tensor) -> Tensor:
    """The expression evaluated at one concrete point of each region (every input frame at its box
    centre): an UPPER bound of its minimum over the region."""
    values: dict[int, Tensor] = {}

    def evaluate(expr_terms: dict[int, Tensor], expr_const: Tensor) -> Tensor:
        out = expr_const
        for key, c in expr_terms.items():
            v = values[key]
            out = out + (c @ v[..., None]).squeeze(-1)
        return out

    for node in graph.nodes:
        if isinstance(node, InputNode):
            values[node.id] = node.center
        else:
            args = [evaluate(e.terms, e.const) for e in node.operands]
            values[node.id] = RELAXATIONS[node.op].fn(*args)
    return evaluate(terms, const)


def _optimise(graph: Graph, terms: dict[int, Tensor], const: Tensor, best: Tensor, opts: OptimiseOptions) -> Tensor:
    """R2-OPT: raise the margin lower bounds by convex combinations of candidate planes (see module doc).

    Regions with a concrete point that violates the specification (e.g. misclassified inputs, or
    ``graph.skip``) cannot be certified by any bound: they are not optimised."""
    todo = ~(best > 0).all(dim=1)
    todo &= (_value_at_centres(graph, terms, const) > 0).all(dim=1)
    if graph.skip is not None:
        todo &= ~graph.skip
    if not bool(todo.any()):
        return best
    idx = todo.nonzero(as_tuple=True)[0]
    # only the margins still open are optimised: rows are independent (per-row parameters, Adam
    # elementwise) and a certified row never moves (zero gradient), so this is a pure speed-up;
    # regions with fewer open rows repeat one of them
    rows = _open_rows(best[idx])
    pick = lambda t: t[idx[:, None], rows]  # noqa: E731
    sub_terms = {k: pick(c) for k, c in terms.items()}
    sub_const = pick(const)
    k_rows = rows.shape[1]
    restricted = _restrict(graph, idx)
    if opts.mode == "slopes":
        params, planes_of = _free_slopes(restricted, k_rows)
        optimiser = _Adam(params, opts.slope_lr)
    else:
        params, planes_of = _candidate_weights(restricted, k_rows)
        optimiser = _Adam(params, opts.lr)
    sub_best = pick(best)
    # per-region state: a region stops (and its best bound is frozen) once certified or after
    # `patience` steps without improvement, so its result never depends on the rest of the batch
    stale = torch.zeros(idx.shape[0], dtype=torch.long, device=const.device)
    active = torch.ones(idx.shape[0], dtype=torch.bool, device=const.device)
    worst: list[Tensor] = []  # each step's worst best margin per region
    rates = [optimiser.lr * opts.lr_decay ** i for i in range(opts.steps)]
    with torch.enable_grad():
        for step in range(opts.steps):
            bound = planes_of(sub_terms, sub_const)
            better = (bound.detach() > sub_best) & active[:, None]
            sub_best = torch.where(better, bound.detach(), sub_best)
            stale = torch.where(better.any(dim=1), torch.zeros_like(stale), stale + 1)
            active &= ~(sub_best > 0).all(dim=1) & (stale < opts.patience)
            if opts.reach_window:
                worst.append(sub_best.amin(dim=1))
                if step >= opts.reach_window + opts.patience:
                    w = opts.reach_window
                    pace = (worst[-1] - worst[-1 - w]) / sum(rates[step - w:step])
                    active &= worst[-1] + opts.reach_factor * pace * sum(rates[step:]) > 0
            if not bool(active.any()):
                break
            loss = -(bound.clamp(max=0) * active[:, None]).sum()
            optimiser.step(torch.autograd.grad(loss, params, allow_unused=True))
            optimiser.lr *= opts.lr_decay
    out = best.clone()
    out[idx] = best[idx].scatter_reduce(1, rows, sub_best, reduce="amax")
    return out


def _open_rows(best: Tensor) -> Tensor:
    """Indices ``(R, k')`` of each region's margins with a non-positive bound (k' the most any
    region has), padded with the region's first open one."""
    open_ = best <= 0
    k = best.shape[1]
    order = torch.argsort((~open_).long() * k + torch.arange(k, device=best.device), dim=1)
    width = int(open_.sum(dim=1).max())
    rows = order[:, :width]
    return torch.where(torch.arange(width, device=best.device) < open_.sum(dim=1, keepdim=True), rows, rows[:, :1])


Bounder = Callable[[dict[int, Tensor], Tensor], Tensor]


def _candidate_weights(graph: Graph, k_rows: int) -> tuple[list[Tensor], Bounder]:
    """R2-OPT parameters: per-margin softmax logits over each node's K candidate planes."""
    thetas = {}
    for n in graph.nodes:
        if isinstance(n, OpNode) and n.candidates is not None:
            R, width, K = n.candidates.lower_offset.shape
            thetas[n.id] = tuple(torch.zeros((R, k_rows, width, K), dtype=n.candidates.lower_offset.dtype,
                                             device=n.candidates.lower_offset.device, requires_grad=True)
                                 for _ in range(2))

    def bound(terms: dict[int, Tensor], const: Tensor) -> Tensor:
        weights = {nid: (torch.softmax(a, -1), torch.softmax(b, -1)) for nid, (a, b) in thetas.items()}
        return _backsub(graph, terms, const, weights)

    return [t for pair in thetas.values() for t in pair], bound


def _free_slopes(graph: Graph, k_rows: int, row_sets: Tensor | None = None,
                 group_regions: int | None = None) -> tuple[list[Tensor], Bounder]:
    """Free-slope parameters: per margin, neuron and operand, a shift of the lower and of the upper
    plane's slopes away from the first pass's planes.  Every iterate's offsets are the EXACT
    extrema of ``f - slopes . operands`` over the operand box (:func:`exact_offsets`, whose
    gradient in the slopes is the Danskin one), so every iterate is a sound plane pair.

    ``k_rows`` slope sets per region; ``row_sets`` (one entry per row of the bounded expression)
    says which set each row uses (default: set ``i`` for row ``i``, or one set for all rows).
    The parameters are one tensor per operation group and operand; the groups are sized for
    ``group_regions`` regions (default: the graph's), so that a continuation on fewer regions
    can take the recorded parameters as they are."""
    from rnnguard.relaxations.functions import exact_offsets

    nodes = [n for n in graph.nodes if isinstance(n, OpNode) and n.operand_bounds]
    # nodes of one operation type share an exact_offsets call (lower and upper planes side by side)
    # up to a size budget: small tensors are dominated by per-call overhead, large ones by memory
    per_row = k_rows * (group_regions if group_regions is not None else nodes[0].planes.lower_offset.shape[0]
                        if nodes else 0)
    groups: dict[tuple[str, int], list[OpNode]] = {}
    for node in nodes:
        for g in itertools.count():
            members = groups.setdefault((node.op, g), [])
            if not members or sum(n.planes.lower_offset.shape[-1] for n in members + [node]) * per_row <= _GROUP_ELEMENTS:
                members.append(node)
                break

    caches: dict[tuple[str, int], dict] = {}  # root-finding warm starts, kept across the steps
    # per group, what every step shares: the operand boxes and the first pass's slopes, side by side
    # as the exact offsets take them (every member's lower planes, then every member's upper ones)
    boxes = {key: [torch.cat([n.operand_bounds[j][side][:, None] for n in members] * 2, dim=-1)
                   for j in range(len(members[0].operands)) for side in (0, 1)] for key, members in groups.items()}
    first = {key: [torch.cat([n.planes.lower_slopes[j][:, None] for n in members]
                             + [n.planes.upper_slopes[j][:, None] for n in members], dim=-1)
                   for j in range(len(members[0].operands))] for key, members in groups.items()}
    # the parameters: per group and operand ONE tensor of shifts in the same layout, so that a step
    # adds them in one operation and Adam updates a few tensors instead of four per node
    shifts = {key: [torch.zeros((s.shape[0], k_rows, s.shape[-1]), dtype=s.dtype, device=s.device, requires_grad=True)
                    for s in first[key]] for key in groups}

    def bound(terms: dict[int, Tensor], const: Tensor) -> Tensor:
        direct = {}
        for (op, g), members in groups.items():
            slopes = [s + d for s, d in zip(first[op, g], shifts[op, g])]
            low, high = exact_offsets(op, slopes, *boxes[op, g], cache=caches.setdefault((op, g), {}))
            widths = [n.planes.lower_offset.shape[-1] for n in members]
            total = sum(widths)
            lower = list(zip(*(s[..., :total].split(widths, dim=-1) for s in slopes)))
            upper = list(zip(*(s[..., total:].split(widths, dim=-1) for s in slopes)))
            for n, lo_off, hi_off, ls, us in zip(members, low[..., :total].split(widths, dim=-1),
                                                 high[..., total:].split(widths, dim=-1), lower, upper):
                direct[n.id] = LinearBounds(tuple(ls), lo_off, tuple(us), hi_off)
        if row_sets is not None:
            direct = {nid: _select_rows(p, row_sets) for nid, p in direct.items()}
        return _backsub(graph, terms, const, direct=direct)

    return [t for key in groups for t in shifts[key]], bound


def _select_rows(planes: LinearBounds, rows: Tensor) -> LinearBounds:
    pick = lambda t: t.index_select(1, rows)  # noqa: E731
    return LinearBounds(tuple(map(pick, planes.lower_slopes)), pick(planes.lower_offset),
                        tuple(map(pick, planes.upper_slopes)), pick(planes.upper_offset))


class _Adam:
    """Plain Adam on a few tensors (``torch.optim`` would import torch._dynamo: ~5 s on first use);
    ``warmup``: the rate ramps up linearly over the first this-many steps."""

    def __init__(self, params: list[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 warmup: int = 1) -> None:
        self.params, self.lr, self.betas, self.t, self.warmup = params, lr, betas, 0, max(1, warmup)
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor | None]) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            if g is None:
                continue
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            step = self.lr / (1 - b1 ** self.t) * min(1.0, self.t / self.warmup)
            p.addcdiv_(m, (v / (1 - b2 ** self.t)).sqrt_().add_(1e-8), value=-step)


def _restrict(graph: Graph, idx: Tensor) -> Graph:
    """The graph restricted to the regions ``idx`` (for optimising only the uncertified ones)."""
    sub = Graph(graph.method, None)
    pick = lambda t: None if t is None else t[idx]  # noqa: E731

    def planes(p: LinearBounds | None) -> LinearBounds | None:
        if p is None:
            return None
        return LinearBounds(tuple(s[idx] for s in p.lower_slopes), p.lower_offset[idx],
                            tuple(s[idx] for s in p.upper_slopes), p.upper_offset[idx])

    def expr(e: LinExpr) -> LinExpr:
        terms = {k: (c[idx] if c.dim() == 3 else c) for k, c in e.terms.items()}
        return LinExpr(sub, terms, e.const[idx], (e.box[0][idx], e.box[1][idx]))

    for node in graph.nodes:
        if isinstance(node, InputNode):
            sub.nodes.append(InputNode(node.id, node.center[idx], node.radius[idx], pick(node.ball_center),
                                       pick(node.ball_eps)))
        else:
            sub.nodes.append(OpNode(node.id, node.op, tuple(expr(e) for e in node.operands), planes(node.planes),
                                    planes(node.candidates), tuple((lo[idx], hi[idx]) for lo, hi in node.operand_bounds)))
    return sub
