"""Zonotope domain (Cert-RNN): ``x = center + sum_i gens[i] * eps_i`` with ``eps_i in [-1, 1]``.

Noise symbols are tracked by IDENTITY: generators are stored in blocks, each block a run of
symbols with a unique id drawn from a :class:`SymbolTable` (one per certification run).  Two
values are combined only after aligning their blocks by id, so a symbol created at time step 3
can never be confused with one created at step 5 (the positional-aliasing bug that makes some
Cert-RNN ports unsound in the all-frame setting).

Nonlinear operations use the parallel planes of :mod:`rnnguard.relaxations`:
``f(x, y) in A x + B y + [C_lo, C_hi]`` becomes ``A Z_x + B Z_y + (C_lo+C_hi)/2 + (C_hi-C_lo)/2 eps_new``
with one fresh symbol per output neuron.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from rnnguard.domains.base import add_bias, concretization_slack, linear
from rnnguard.relaxations import RELAXATIONS

Blocks = tuple[tuple[int, int], ...]  # (symbol-block id, number of symbols), in storage order


class SymbolTable:
    """Hands out unique noise-symbol block ids for one propagation.

    ``max_symbols`` (training only, see :meth:`cap`) bounds the number of non-input symbols of
    every value made by a nonlinear operation: beyond it the oldest non-input blocks are boxed
    into one fresh symbol per neuron (:func:`consolidate`).  ``None`` (the default, and what
    certification uses) keeps every symbol."""

    def __init__(self) -> None:
        self._next = 0
        self.max_symbols: int | None = None
        self.protected = 0  # block ids below this (the input symbols) are never consolidated

    def new_block(self) -> int:
        self._next += 1
        return self._next - 1

    def cap(self, max_symbols: int | None) -> "SymbolTable":
        """Cap the non-input symbols per value at ``max_symbols``; blocks handed out so far (the
        input symbols) are kept exactly.  A sound over-approximation that trades precision for
        speed: for training objectives, never for certification."""
        if max_symbols is not None and max_symbols < 1:
            raise ValueError(f"max_symbols must be >= 1 or None, got {max_symbols}")
        self.max_symbols, self.protected = max_symbols, self._next
        return self


def _offsets(blocks: Blocks) -> dict[int, int]:
    out, pos = {}, 0
    for bid, size in blocks:
        out[bid] = pos
        pos += size
    return out


def _runs(blocks: Blocks, where: dict[int, int]) -> list[tuple[int, int, int]]:
    """Maximal runs ``(src_start, dst_start, length)`` copying ``blocks`` into a layout ``where``."""
    runs: list[list[int]] = []
    src = 0
    for bid, size in blocks:
        dst = where[bid]
        if runs and runs[-1][0] + runs[-1][2] == src and runs[-1][1] + runs[-1][2] == dst:
            runs[-1][2] += size
        else:
            runs.append([src, dst, size])
        src += size
    return [tuple(r) for r in runs]  # type: ignore[misc]


Part = tuple[Tensor | None, Tensor, Blocks]  # (elementwise coefficient (R, n) or None, gens, blocks)


def _union(parts: Sequence[Part]) -> Blocks:
    first_b = parts[0][2]
    if all(b == first_b for _, _, b in parts[1:]):
        return first_b
    merged: dict[int, int] = {}
    for _, _, bl in parts:
        merged.update(bl)
    return tuple(sorted(merged.items()))


def _segments(parts: Sequence[Part], union: Blocks) -> list[list[tuple[int, Tensor]]]:
    """Cut the union layout into maximal segments covered by a fixed set of parts; for each
    segment, ``(part index, slice of that part's gens)`` in part order.

    Each part is cut with one ``split`` (its backward is one ``cat``), never with separate slices
    whose backward would zero-fill a full-size gradient per slice."""
    where = _offsets(union)
    part_runs = [_runs(bl, where) for _, _, bl in parts]
    cuts = sorted({0, sum(size for _, size in union)} | {p for runs in part_runs for _, d, n in runs for p in (d, d + n)})
    index = {c: i for i, c in enumerate(cuts)}
    segments: list[list[tuple[int, Tensor]]] = [[] for _ in range(len(cuts) - 1)]
    for k, ((_, g, _), runs) in enumerate(zip(parts, part_runs)):
        sizes, ids = [], []
        for _, dst, size in runs:
            a = dst
            while a < dst + size:
                i = index[a]
                sizes.append(cuts[i + 1] - a)
                ids.append(i)
                a = cuts[i + 1]
        pieces = g.split(sizes, dim=1) if len(sizes) > 1 else (g,) * len(sizes)
        for i, piece in zip(ids, pieces):
            segments[i].append((k, piece))
    return segments


def _needs_graph(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _combine_graph(parts: Sequence[Part], union: Blocks, fresh: Tensor | None) -> Tensor:
    """:func:`_combine` for autograd: one product per covered piece, one ``cat`` for the result
    (no zero-filled buffer written slice by slice, whose backward zero-fills again)."""
    out = []
    for terms in _segments(parts, union):
        acc = None
        for k, piece in terms:
            coef = parts[k][0]
            if acc is None:
                acc = piece if coef is None else piece * coef[:, None, :]
            else:
                acc = acc + piece if coef is None else torch.addcmul(acc, piece, coef[:, None, :])
        out.append(acc)
    if fresh is not None:
        out.append(torch.diag_embed(fresh))
    if not out:
        R, _, n = parts[0][1].shape
        return parts[0][1].new_zeros(R, 0, n)
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def _combine(parts: Sequence[Part], fresh: Tensor | None = None, fresh_id: int | None = None) -> tuple[Tensor, Blocks]:
    """``sum_i coef_i * gens_i`` after aligning symbol blocks by id, optionally followed by a fresh
    diagonal block ``diag(fresh)`` with id ``fresh_id``.

    Layouts are kept sorted by block id (ids only grow, so fresh blocks go last).  Without
    autograd the result is written into one new tensor by contiguous runs of blocks: large
    generator tensors are the cost of this domain, so no temporaries are made.  Under autograd
    (training) the same sum is built from pieces and concatenated (:func:`_combine_graph`)."""
    _, first_g, first_b = parts[0]
    union = _union(parts)
    extra = 0 if fresh is None else fresh.shape[-1]
    if _needs_graph(fresh, *(t for c, g, _ in parts for t in (c, g))):
        total = _combine_graph(parts, union, fresh)
        return total, union if fresh is None else union + ((fresh_id, extra),)
    R, _, n = first_g.shape
    G = sum(size for _, size in union)
    if first_b == union:  # the first operand covers the union: write it instead of zero-filling
        total = first_g.new_empty(R, G + extra, n)
        first_coef = parts[0][0]
        if first_coef is None:
            total[:, :G].copy_(first_g)
        else:
            torch.mul(first_g, first_coef[:, None, :], out=total[:, :G])
        if extra:
            total[:, G:].zero_()
        rest = parts[1:]
    else:
        total = first_g.new_zeros(R, G + extra, n)
        rest = parts
    where = _offsets(union)
    for coef, g, bl in rest:
        for src, dst, size in _runs(bl, where):
            if coef is None:
                total[:, dst : dst + size] += g[:, src : src + size]
            else:
                total[:, dst : dst + size].addcmul_(g[:, src : src + size], coef[:, None, :])
    if fresh is not None:
        total[:, G:].diagonal(dim1=1, dim2=2).copy_(fresh)
        union = union + ((fresh_id, extra),)
    return total, union


def _abs_sum(gens: Tensor) -> Tensor:
    """``gens.abs().sum(dim=1)``; under autograd a function whose backward is one in-place pass."""
    if _needs_graph(gens):
        return _AbsSum.apply(gens)
    return gens.abs().sum(dim=1)  # faster than vector_norm(ord=1) over the middle dim


class _AbsSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gens: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(gens)
        return gens.abs().sum(dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (gens,) = ctx.saved_tensors
        return torch.sgn(gens).mul_(grad[:, None, :])


def consolidate(gens: Tensor, blocks: Blocks, symbols: SymbolTable) -> tuple[Tensor, Blocks]:
    """Order reduction for training: when a value has more than ``symbols.max_symbols`` non-input
    symbols, box its oldest non-input blocks into ONE fresh symbol per neuron (radius = the sum of
    their absolute coefficients) so that at most half the cap remains.

    Sound: for every value of the removed symbols their contribution lies in ``[-radius, radius]``,
    which the fresh symbol covers; only correlations through the removed symbols are lost.  The
    value's interval bounds are unchanged.  Input blocks (ids below ``symbols.protected``) stay."""
    cap = symbols.max_symbols
    if cap is None:
        return gens, blocks
    n = gens.shape[-1]
    first = next((i for i, (bid, _) in enumerate(blocks) if bid >= symbols.protected), len(blocks))
    sizes = [size for _, size in blocks[first:]]
    if sum(sizes) <= cap or len(sizes) < 2:
        return gens, blocks
    keep, kept = len(sizes), 0  # keep the newest blocks while they fit in half the cap (at least one)
    while keep > 1 and (keep == len(sizes) or kept + sizes[keep - 1] + n <= cap // 2):
        keep -= 1
        kept += sizes[keep]
    a = sum(size for _, size in blocks[:first])
    b = a + sum(sizes[:keep])
    head, old, tail = gens.split([a, b - a, gens.shape[1] - b], dim=1)
    boxed = torch.diag_embed(_abs_sum(old))
    out = torch.cat([head, tail, boxed], dim=1)
    return out, blocks[:first] + blocks[first + keep:] + ((symbols.new_block(), n),)


@dataclass(frozen=True)
class Zonotope:
    """``center (R, n)``, ``gens (R, G, n)`` laid out in ``blocks``; symbols from ``symbols``."""

    center: Tensor
    gens: Tensor
    blocks: Blocks
    symbols: SymbolTable = field(repr=False, compare=False)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def point(cls, value: Tensor, symbols: SymbolTable) -> "Zonotope":
        return cls(value, value.new_zeros(value.shape[0], 0, value.shape[1]), (), symbols)

    @classmethod
    def from_interval(cls, lower: Tensor, upper: Tensor, symbols: SymbolTable) -> "Zonotope":
        """The box ``[lower, upper]`` with one fresh symbol per neuron."""
        return cls.point((upper + lower) / 2, symbols).with_fresh_noise((upper - lower) / 2)

    def with_fresh_noise(self, radius: Tensor) -> "Zonotope":
        """Add ``radius * eps_new`` with a fresh symbol per neuron (a new diagonal block)."""
        gens, blocks = _combine([(None, self.gens, self.blocks)], radius, self.symbols.new_block())
        return Zonotope(self.center, gens, blocks, self.symbols)

    # ------------------------------------------------------------------ protocol
    def bounds(self) -> tuple[Tensor, Tensor]:
        cached = self.__dict__.get("_bounds")
        if cached is None and "_lazy_bounds" in self.__dict__:
            cached = self.__dict__["_lazy_bounds"]()
            object.__setattr__(self, "_bounds", cached)
        if cached is None:
            radius = _abs_sum(self.gens)
            radius = radius + concretization_slack(self.center.abs(), radius)
            cached = (self.center - radius, self.center + radius)
            object.__setattr__(self, "_bounds", cached)
        return cached

    def affine(self, weight: Tensor, bias: Tensor | None = None) -> "Zonotope":
        return Zonotope(add_bias(linear(self.center, weight), bias), linear(self.gens, weight), self.blocks, self.symbols)

    def scale_add(self, coeffs: Sequence[Tensor], others: Sequence["Zonotope"], offset: Tensor,
                  fresh_radius: Tensor | None = None) -> "Zonotope":
        """``sum_i coeffs[i] * Z_i + offset (+ fresh_radius * eps_new)`` with ``Z_0 = self``.

        Coefficients are elementwise ``(R, n)``; the optional fresh term gets a new symbol per neuron."""
        values = (self, *others)
        center = offset + sum(c * v.center for c, v in zip(coeffs, values))
        fresh_id = None if fresh_radius is None else self.symbols.new_block()
        gens, blocks = _combine([(c, v.gens, v.blocks) for c, v in zip(coeffs, values)], fresh_radius, fresh_id)
        if self.symbols.max_symbols is not None:
            gens, blocks = consolidate(gens, blocks, self.symbols)
        return Zonotope(center, gens, blocks, self.symbols)

    def __add__(self, other: "Zonotope") -> "Zonotope":
        if self.blocks == other.blocks:
            gens = self.gens + other.gens
        else:
            gens, blocks = _combine([(None, self.gens, self.blocks), (None, other.gens, other.blocks)])
            return Zonotope(self.center + other.center, gens, blocks, self.symbols)
        return Zonotope(self.center + other.center, gens, self.blocks, self.symbols)

    def __neg__(self) -> "Zonotope":
        out = Zonotope(-self.center, -self.gens, self.blocks, self.symbols)
        lo, hi = self.bounds()  # the cells relax both z and -z: share one concretisation
        object.__setattr__(out, "_bounds", (-hi, -lo))
        return out

    def chunk(self, parts: int) -> Sequence["Zonotope"]:
        """Split the neurons into ``parts`` (gates).

        The pieces share a lazy bounds cache: the first piece asked for its bounds computes the
        parent's bounds in one contiguous pass and hands every piece its slice (strided passes
        over each gate are several times slower; unused gates cost nothing)."""
        shared: dict[str, Sequence[tuple[Tensor, Tensor]]] = {}

        def sliced(k: int) -> tuple[Tensor, Tensor]:
            if "b" not in shared:
                lo, hi = self.bounds()
                shared["b"] = list(zip(lo.chunk(parts, -1), hi.chunk(parts, -1)))
            return shared["b"][k]

        out = []
        for k, (c, g) in enumerate(zip(self.center.chunk(parts, -1), self.gens.chunk(parts, -1))):
            z = Zonotope(c, g, self.blocks, self.symbols)
            object.__setattr__(z, "_lazy_bounds", lambda k=k: sliced(k))
            out.append(z)
        return out

    def apply(self, op: str, *others: "Zonotope", bounds: Sequence[tuple[Tensor, Tensor]] | None = None) -> "Zonotope":
        """Parallel-plane transformer; ``bounds`` (per operand) default to the operands' own."""
        return Zonotope.apply_sum([(op, (self, *others))], None if bounds is None else [bounds])

    @classmethod
    def apply_sum(cls, terms: Sequence[tuple[str, Sequence["Zonotope"]]],
                  bounds: Sequence[Sequence[tuple[Tensor, Tensor]]] | None = None) -> "Zonotope":
        """``sum_k op_k(*operands_k)`` with one fresh symbol per neuron for the whole sum."""
        coeffs: list[Tensor] = []
        values: list[Zonotope] = []
        center = radius = None
        for k, (op, vals) in enumerate(terms):
            bl = bounds[k] if bounds is not None else [v.bounds() for v in vals]
            planes = RELAXATIONS[op].planes(*(t for lu in bl for t in lu))
            mid, rad = (planes.lower + planes.upper) / 2, (planes.upper - planes.lower) / 2
            center = mid if center is None else center + mid
            radius = rad if radius is None else radius + rad
            coeffs.extend(planes.slopes)
            values.extend(vals)
        return values[0].scale_add(coeffs, values[1:], center, radius)

    def where(self, keep_self: Tensor, other: "Zonotope") -> "Zonotope":
        k = keep_self[:, None]
        center = torch.where(k, self.center, other.center)
        if _needs_graph(self.gens, other.gens):  # select, do not multiply by 0/1 masks
            parts: list[Part] = [(None, self.gens, self.blocks), (None, other.gens, other.blocks)]
            union = _union(parts)
            k3, out = k[:, :, None], []
            for terms in _segments(parts, union):
                if len(terms) == 2:
                    out.append(torch.where(k3, terms[0][1], terms[1][1]))
                else:
                    out.append(torch.where(k3 if terms[0][0] == 0 else ~k3, terms[0][1], 0.0))
            gens = out[0] if len(out) == 1 else torch.cat(out, dim=1)
            return Zonotope(center, gens, union, self.symbols)
        m = k.to(self.center.dtype).expand_as(self.center)
        gens, blocks = _combine([(m, self.gens, self.blocks), (1 - m, other.gens, other.blocks)])
        return Zonotope(center, gens, blocks, self.symbols)

    def meet_interval(self, lower: Tensor, upper: Tensor) -> "Zonotope":
        """A zonotope cannot be intersected with a box and stay a zonotope: unchanged (sound)."""
        return self

    def margin_lower(self, weight: Tensor, bias: Tensor) -> Tensor:
        return self.affine(weight, bias).bounds()[0]
