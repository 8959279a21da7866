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

import itertools
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from rnnguard.domains.base import add_bias, concretization_slack, linear
from rnnguard.relaxations import RELAXATIONS

Blocks = tuple[tuple[int, int], ...]  # (symbol-block id, number of symbols), in storage order


class SymbolTable:
    """Hands out unique noise-symbol block ids for one propagation."""

    def __init__(self) -> None:
        self._next = itertools.count()

    def new_block(self) -> int:
        return next(self._next)


def _offsets(blocks: Blocks) -> dict[int, tuple[int, int]]:
    out, pos = {}, 0
    for bid, size in blocks:
        out[bid] = (pos, size)
        pos += size
    return out


def _combine(parts: Sequence[tuple[Tensor, Blocks]]) -> tuple[Tensor, Blocks]:
    """Sum generator tensors after aligning their symbol blocks by id.

    The first operand's layout is kept (cheap when the others are subsets of it); blocks it
    lacks are appended in order of appearance."""
    gens, blocks = parts[0]
    if all(b == blocks for _, b in parts[1:]):
        total = gens
        for g, _ in parts[1:]:
            total = total + g
        return total, blocks
    union = list(blocks)
    seen = {bid for bid, _ in blocks}
    for _, bl in parts[1:]:
        for bid, size in bl:
            if bid not in seen:
                seen.add(bid)
                union.append((bid, size))
    union_t: Blocks = tuple(union)
    where = _offsets(union_t)
    G = sum(size for _, size in union_t)
    R, _, n = gens.shape
    total = torch.zeros(R, G, n, dtype=gens.dtype, device=gens.device)
    for g, bl in parts:
        if not bl:
            continue
        if bl == union_t[: len(bl)]:
            total[:, : g.shape[1]] += g
            continue
        index = torch.cat([torch.arange(where[bid][0], where[bid][0] + size) for bid, size in bl]).to(gens.device)
        total.index_add_(1, index, g)
    return total, union_t


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
        block = (self.symbols.new_block(), radius.shape[-1])
        gens = torch.cat([self.gens, torch.diag_embed(radius)], dim=1)
        return Zonotope(self.center, gens, self.blocks + (block,), self.symbols)

    # ------------------------------------------------------------------ protocol
    def bounds(self) -> tuple[Tensor, Tensor]:
        radius = self.gens.abs().sum(dim=1)
        radius = radius + concretization_slack(self.center.abs(), radius)
        return self.center - radius, self.center + radius

    def affine(self, weight: Tensor, bias: Tensor | None = None) -> "Zonotope":
        return Zonotope(add_bias(linear(self.center, weight), bias), linear(self.gens, weight), self.blocks, self.symbols)

    def scale_add(self, coeffs: Sequence[Tensor], others: Sequence["Zonotope"], offset: Tensor) -> "Zonotope":
        """``sum_i coeffs[i] * Z_i + offset`` with ``Z_0 = self`` (elementwise coefficients ``(R, n)``)."""
        values = (self, *others)
        center = offset + sum(c * v.center for c, v in zip(coeffs, values))
        gens, blocks = _combine([(c[:, None, :] * v.gens, v.blocks) for c, v in zip(coeffs, values)])
        return Zonotope(center, gens, blocks, self.symbols)

    def __add__(self, other: "Zonotope") -> "Zonotope":
        gens, blocks = _combine([(self.gens, self.blocks), (other.gens, other.blocks)])
        return Zonotope(self.center + other.center, gens, blocks, self.symbols)

    def __neg__(self) -> "Zonotope":
        return Zonotope(-self.center, -self.gens, self.blocks, self.symbols)

    def chunk(self, parts: int) -> Sequence["Zonotope"]:
        return [
            Zonotope(c, g, self.blocks, self.symbols)
            for c, g in zip(self.center.chunk(parts, -1), self.gens.chunk(parts, -1))
        ]

    def apply(self, op: str, *others: "Zonotope", bounds: Sequence[tuple[Tensor, Tensor]] | None = None) -> "Zonotope":
        """Parallel-plane transformer; ``bounds`` (per operand) default to the operands' own."""
        operands = (self, *others)
        if bounds is None:
            bounds = [v.bounds() for v in operands]
        planes = RELAXATIONS[op].planes(*(t for lu in bounds for t in lu))
        out = self.scale_add(planes.slopes, others, (planes.lower + planes.upper) / 2)
        return out.with_fresh_noise((planes.upper - planes.lower) / 2)

    def where(self, keep_self: Tensor, other: "Zonotope") -> "Zonotope":
        k = keep_self[:, None]
        m = k.to(self.center.dtype)
        gens, blocks = _combine([(self.gens * m[:, None], self.blocks), (other.gens * (1 - m)[:, None], other.blocks)])
        return Zonotope(torch.where(k, self.center, other.center), gens, blocks, self.symbols)

    def margin_lower(self, weight: Tensor, bias: Tensor) -> Tensor:
        return self.affine(weight, bias).bounds()[0]
