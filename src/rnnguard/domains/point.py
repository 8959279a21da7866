"""Concrete execution: the cell programs run on plain tensors (used for parity with nn modules)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from rnnguard.domains.base import add_bias, linear
from rnnguard.relaxations import RELAXATIONS


@dataclass(frozen=True)
class Point:
    """A concrete value ``(R, n)``."""

    value: Tensor

    def bounds(self) -> tuple[Tensor, Tensor]:
        return self.value, self.value

    def affine(self, weight: Tensor, bias: Tensor | None = None) -> "Point":
        return Point(add_bias(linear(self.value, weight), bias))

    def __add__(self, other: "Point") -> "Point":
        return Point(self.value + other.value)

    def __neg__(self) -> "Point":
        return Point(-self.value)

    def chunk(self, parts: int) -> Sequence["Point"]:
        return [Point(v) for v in self.value.chunk(parts, dim=-1)]

    def apply(self, op: str, *others: "Point") -> "Point":
        return Point(RELAXATIONS[op].fn(self.value, *(o.value for o in others)))

    @classmethod
    def apply_sum(cls, terms: Sequence[tuple[str, Sequence["Point"]]]) -> "Point":
        return Point(sum(RELAXATIONS[op].fn(*(v.value for v in vals)) for op, vals in terms))

    def where(self, keep_self: Tensor, other: "Point") -> "Point":
        return Point(torch.where(keep_self[:, None], self.value, other.value))

    def meet_interval(self, lower: Tensor, upper: Tensor) -> "Point":
        return self

    def margin_lower(self, weight: Tensor, bias: Tensor) -> Tensor:
        return self.affine(weight, bias).value
