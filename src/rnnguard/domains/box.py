"""Box (interval) domain: each neuron keeps an independent interval.

Affine maps use the centre/radius form (exact for a box input).  Margins ``y_true - y_other`` are
bounded by folding the specification into the last linear layer, which is tighter than
``l_true - u_other`` (the IBP "elision" trick) at no cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from rnnguard.domains.base import add_bias, concretization_slack, linear
from rnnguard.relaxations import RELAXATIONS


@dataclass(frozen=True)
class Box:
    """Interval value: ``lower <= x <= upper`` elementwise, shape ``(R, n)``."""

    lower: Tensor
    upper: Tensor

    def bounds(self) -> tuple[Tensor, Tensor]:
        return self.lower, self.upper

    def affine(self, weight: Tensor, bias: Tensor | None = None) -> "Box":
        center, radius = (self.upper + self.lower) / 2, (self.upper - self.lower) / 2
        c = add_bias(linear(center, weight), bias)
        r = linear(radius, weight.abs())
        r = r + concretization_slack(c.abs(), r)
        return Box(c - r, c + r)

    def __add__(self, other: "Box") -> "Box":
        lo, hi = self.lower + other.lower, self.upper + other.upper
        slack = concretization_slack(torch.maximum(lo.abs(), hi.abs()), torch.zeros_like(lo))
        return Box(lo - slack, hi + slack)

    def __neg__(self) -> "Box":
        return Box(-self.upper, -self.lower)

    def chunk(self, parts: int) -> Sequence["Box"]:
        return [Box(lo, hi) for lo, hi in zip(self.lower.chunk(parts, -1), self.upper.chunk(parts, -1))]

    def apply(self, op: str, *others: "Box") -> "Box":
        args = [t for v in (self, *others) for t in v.bounds()]
        return Box(*RELAXATIONS[op].interval(*args))

    @classmethod
    def apply_sum(cls, terms: Sequence[tuple[str, Sequence["Box"]]]) -> "Box":
        out = terms[0][1][0].apply(terms[0][0], *terms[0][1][1:])
        for op, vals in terms[1:]:
            out = out + vals[0].apply(op, *vals[1:])
        return out

    def where(self, keep_self: Tensor, other: "Box") -> "Box":
        k = keep_self[:, None]
        return Box(torch.where(k, self.lower, other.lower), torch.where(k, self.upper, other.upper))

    def meet_interval(self, lower: Tensor, upper: Tensor) -> "Box":
        """Intersect with a box known to contain the value (e.g. a convex-combination hull)."""
        return Box(torch.maximum(self.lower, lower), torch.minimum(self.upper, upper))

    def margin_lower(self, weight: Tensor, bias: Tensor) -> Tensor:
        return self.affine(weight, bias).lower
