"""InterZono (RNN-Guard): a main zonotope intersected with a support zonotope.

The value is the set ``Z_main ∩ Z_support``; only its bounds are ever computed
(``max`` of the lower bounds, ``min`` of the upper bounds).  Affine maps and sums act on both
components.  Every nonlinear operation first intersects the operands' bounds, then

* the main component gets Cert-RNN's parallel planes computed from the INTERSECTED bounds, and
* the support component becomes the box of the exact output interval over those bounds
  (RNN-Guard Eq. 5 with the output interval, erratum A0.5), with fresh symbols of its own.

Margins take the max over the two components of the lower bound of the specification form
(erratum A0.7).  Main and support use separate symbol tables: they are different
over-approximations of the same concrete values, never mixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from rnnguard.domains.base import concretization_slack
from rnnguard.domains.zonotope import Zonotope
from rnnguard.relaxations import RELAXATIONS


@dataclass(frozen=True)
class InterZono:
    """``main ∩ support``; both are :class:`Zonotope` over their own symbol tables."""

    main: Zonotope
    support: Zonotope

    def bounds(self) -> tuple[Tensor, Tensor]:
        lm, um = self.main.bounds()
        ls, us = self.support.bounds()
        return torch.maximum(lm, ls), torch.minimum(um, us)

    def affine(self, weight: Tensor, bias: Tensor | None = None) -> "InterZono":
        return InterZono(self.main.affine(weight, bias), self.support.affine(weight, bias))

    def __add__(self, other: "InterZono") -> "InterZono":
        return InterZono(self.main + other.main, self.support + other.support)

    def __neg__(self) -> "InterZono":
        return InterZono(-self.main, -self.support)

    def chunk(self, parts: int) -> Sequence["InterZono"]:
        return [InterZono(m, s) for m, s in zip(self.main.chunk(parts), self.support.chunk(parts))]

    def apply(self, op: str, *others: "InterZono") -> "InterZono":
        bounds = [v.bounds() for v in (self, *others)]
        main = self.main.apply(op, *(o.main for o in others), bounds=bounds)
        lo, hi = RELAXATIONS[op].interval(*(t for lu in bounds for t in lu))
        return InterZono(main, Zonotope.from_interval(lo, hi, self.support.symbols))

    @classmethod
    def apply_sum(cls, terms: Sequence[tuple[str, Sequence["InterZono"]]]) -> "InterZono":
        bounds = [[v.bounds() for v in vals] for _, vals in terms]
        main = Zonotope.apply_sum([(op, [v.main for v in vals]) for op, vals in terms], bounds)
        lo = hi = None
        for (op, _), bl in zip(terms, bounds):
            l, h = RELAXATIONS[op].interval(*(t for lu in bl for t in lu))
            lo, hi = (l, h) if lo is None else (lo + l, hi + h)
        slack = concretization_slack(torch.maximum(lo.abs(), hi.abs()), torch.zeros_like(lo))
        return InterZono(main, Zonotope.from_interval(lo - slack, hi + slack, terms[0][1][0].support.symbols))

    def where(self, keep_self: Tensor, other: "InterZono") -> "InterZono":
        return InterZono(self.main.where(keep_self, other.main), self.support.where(keep_self, other.support))

    def meet_interval(self, lower: Tensor, upper: Tensor) -> "InterZono":
        """Refine the support with a box known to contain the value (the main stays as it is)."""
        lo, hi = self.bounds()
        lo, hi = torch.maximum(lo, lower), torch.minimum(hi, upper)
        return InterZono(self.main, Zonotope.from_interval(lo, hi, self.support.symbols))

    def margin_lower(self, weight: Tensor, bias: Tensor) -> Tensor:
        return torch.maximum(self.main.margin_lower(weight, bias), self.support.margin_lower(weight, bias))
