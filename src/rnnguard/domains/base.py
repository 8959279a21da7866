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


# MKL's dgemm sums in another order below 4 rows (x86, torch 2.13): see :func:`linear`
_MIN_GEMM_ROWS = 4


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight.T`` over the last dim; ``weight`` is ``(m, n)`` or per-region ``(R, m, n)``.

    ``x`` is ``(R, n)`` or ``(R, G, n)`` (generator blocks).  Fewer than ``_MIN_GEMM_ROWS`` rows
    are padded with zero rows: BLAS takes another kernel (another summation order) for a
    product with very few rows, and a region's bounds must not depend on how many other regions
    share its batch (a region certified alone gets the bits it gets in any batch)."""
    if weight.dim() == 2:
        if x.dim() == 2 and 0 < x.shape[0] < _MIN_GEMM_ROWS:
            pad = x.new_zeros(_MIN_GEMM_ROWS - x.shape[0], x.shape[1])
            return (torch.cat([x, pad]) @ weight.T)[: x.shape[0]]
        return x @ weight.T
    if x.dim() == 2:
        return torch.einsum("rn,rmn->rm", x, weight)
    return torch.einsum("rgn,rmn->rgm", x, weight)


def add_bias(x: Tensor, bias: Tensor | None) -> Tensor:
    return x if bias is None else x + bias


def concretization_slack(center_abs: Tensor, radius: Tensor) -> Tensor:
    """Outward rounding of concretised bounds: a few ulps of the magnitudes involved.

    It covers the rounding of the floating-point affine arithmetic that produced the value, so
    that relaxations computed on these bounds stay valid for the exact values."""
    eps = torch.finfo(radius.dtype).eps
    return 64 * eps * (center_abs + radius) + torch.finfo(radius.dtype).tiny
