"""The abstract-value protocol shared by every domain, and the helpers all domains use.

A cell program (``rnnguard.cells``) is written once against this protocol: affine maps, sums,
splitting gates, the nonlinear operations of :data:`rnnguard.relaxations.RELAXATIONS`, masking
for variable lengths and bounding a final linear specification.  Values are immutable; every
operation returns a new value.  The leading dimension is the batch of regions.
"""

from __future__ import annotations

from typing import Protocol, Sequence, TypeVar

import torch
from torch import Tensor

V = TypeVar("V", bound="AbstractValue")


class AbstractValue(Protocol):
    """What a cell program may do with a value of shape ``(R, n)``."""

    def bounds(self) -> tuple[Tensor, Tensor]: ...

    def affine(self: V, weight: Tensor, bias: Tensor | None = None) -> V: ...

    def __add__(self: V, other: V) -> V: ...

    def __neg__(self: V) -> V: ...

    def chunk(self: V, parts: int) -> Sequence[V]: ...

    def apply(self: V, op: str, *others: V) -> V: ...

    @classmethod
    def apply_sum(cls, terms: Sequence[tuple[str, Sequence[V]]]) -> V: ...

    def where(self: V, keep_self: Tensor, other: V) -> V: ...

    def meet_interval(self: V, lower: Tensor, upper: Tensor) -> V: ...

    def margin_lower(self, weight: Tensor, bias: Tensor) -> Tensor: ...


Term = tuple[str, Sequence["AbstractValue"]]


def apply_sum(terms: Sequence[Term]) -> "AbstractValue":
    """``sum_k op_k(*operands_k)``, e.g. LSTM's ``f*c + i*g``.

    Zonotope-family domains give the whole sum ONE fresh symbol per neuron (exact: the per-term
    fresh symbols are diagonal and private to the sum), which saves generators."""
    return type(terms[0][1][0]).apply_sum(terms)


# MKL's dgemm computes the rows of a full block of this many rows in one order whatever the row
# count, but the rows of a partial block (the remainder) in another: below 4 rows on Intel CPUs,
# and on AMD EPYC every remainder of a multiple of 4 (x86, torch 2.13); see :func:`linear`
_ROW_BLOCK = 8


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight.T`` over the last dim; ``weight`` is ``(m, n)`` or per-region ``(R, m, n)``.

    ``x`` is ``(R, n)`` or ``(R, G, n)`` (generator blocks).  With a shared weight the rows are
    padded with zero rows to a multiple of ``_ROW_BLOCK``: BLAS sums the rows of a partial row
    block in another order, and a region's bounds must not depend on how many other regions share
    its batch (a region certified alone gets the bits it gets in any batch)."""
    if weight.dim() == 2:
        rows = x.shape[:-1].numel()
        short = -rows % _ROW_BLOCK
        if rows and short:
            flat = x.reshape(rows, x.shape[-1])
            out = torch.cat([flat, flat.new_zeros(short, x.shape[-1])]) @ weight.T
            return out[:rows].reshape(*x.shape[:-1], weight.shape[0])
        return x @ weight.T
    if x.dim() == 2:
        return torch.einsum("rn,rmn->rm", x, weight)
    return torch.einsum("rgn,rmn->rgm", x, weight)


def matmul_rows(left: Tensor, right: Tensor) -> Tensor:
    """``left (..., k, m) @ right``: with a shared ``right (m, n)`` every row of ``left`` gets the
    same bits whatever else shares the call (:func:`linear`); a batched ``right`` multiplies per
    batch entry, whose shapes do not depend on the batch size."""
    if right.dim() == 2:
        return linear(left, right.mT)
    return left @ right


def add_bias(x: Tensor, bias: Tensor | None) -> Tensor:
    return x if bias is None else x + bias


def concretization_slack(center_abs: Tensor, radius: Tensor) -> Tensor:
    """Outward rounding of concretised bounds: a few ulps of the magnitudes involved.

    It covers the rounding of the floating-point affine arithmetic that produced the value, so
    that relaxations computed on these bounds stay valid for the exact values."""
    eps = torch.finfo(radius.dtype).eps
    return 64 * eps * (center_abs + radius) + torch.finfo(radius.dtype).tiny
