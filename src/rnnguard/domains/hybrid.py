"""The meet of two domains run in lockstep (``hybrid`` = InterZono ∩ back-substitution).

Before every nonlinear operation the operands' bounds from both components are intersected and
handed to both (each component's ``meet_interval``), so each relaxation is computed on the
tighter box; margins take the max of the two components' lower bounds.  Both components are
sound over-approximations of the same concrete values, so the meet is sound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from rnnguard.domains.base import AbstractValue


@dataclass(frozen=True)
class Meet:
    """``first ∩ second``: both components describe the same concrete values."""

    first: AbstractValue
    second: AbstractValue

    def bounds(self) -> tuple[Tensor, Tensor]:
        cached = self.__dict__.get("_bounds")
        if cached is None:
            (l1, h1), (l2, h2) = self.first.bounds(), self.second.bounds()
            cached = (torch.maximum(l1, l2), torch.minimum(h1, h2))
            object.__setattr__(self, "_bounds", cached)
        return cached

    def _refined(self) -> "Meet":
        lo, hi = self.bounds()
        return Meet(self.first.meet_interval(lo, hi), self.second.meet_interval(lo, hi))

    def affine(self, weight: Tensor, bias: Tensor | None = None) -> "Meet":
        return Meet(self.first.affine(weight, bias), self.second.affine(weight, bias))

    def __add__(self, other: "Meet") -> "Meet":
        return Meet(self.first + other.first, self.second + other.second)

    def __neg__(self) -> "Meet":
        return Meet(-self.first, -self.second)

    def chunk(self, parts: int) -> Sequence["Meet"]:
        return [Meet(a, b) for a, b in zip(self.first.chunk(parts), self.second.chunk(parts))]

    def apply(self, op: str, *others: "Meet") -> "Meet":
        vals = [v._refined() for v in (self, *others)]
        return Meet(vals[0].first.apply(op, *(v.first for v in vals[1:])),
                    vals[0].second.apply(op, *(v.second for v in vals[1:])))

    @classmethod
    def apply_sum(cls, terms: Sequence[tuple[str, Sequence["Meet"]]]) -> "Meet":
        refined = [(op, [v._refined() for v in vals]) for op, vals in terms]
        first = type(refined[0][1][0].first).apply_sum([(op, [v.first for v in vals]) for op, vals in refined])
        second = type(refined[0][1][0].second).apply_sum([(op, [v.second for v in vals]) for op, vals in refined])
        return Meet(first, second)

    def where(self, keep_self: Tensor, other: "Meet") -> "Meet":
        return Meet(self.first.where(keep_self, other.first), self.second.where(keep_self, other.second))

    def meet_interval(self, lower: Tensor, upper: Tensor) -> "Meet":
        return Meet(self.first.meet_interval(lower, upper), self.second.meet_interval(lower, upper))

    def margin_lower(self, weight: Tensor, bias: Tensor) -> Tensor:
        return torch.maximum(self.first.margin_lower(weight, bias), self.second.margin_lower(weight, bias))
