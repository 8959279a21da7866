"""Records shared by every relaxation: parallel planes and the registry entry type.

A relaxation is a pure function of concrete input bounds.  The zonotope-family domains use
*parallel planes*: for inputs in the box ``[l_1,u_1] x ... x [l_k,u_k]``

    sum_i slopes[i] * x_i + lower  <=  f(x_1, ..., x_k)  <=  sum_i slopes[i] * x_i + upper.

``lower``/``upper`` are the EXACT minimum and maximum of ``f - sum_i slopes[i] x_i`` over the box
(found from a complete list of candidate extreme points), rounded outward, so soundness never
depends on how the slopes were chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor


@dataclass(frozen=True)
class Planes:
    """Two parallel (hyper)planes enclosing ``f`` on a box; see the module docstring."""

    slopes: tuple[Tensor, ...]
    lower: Tensor
    upper: Tensor


@dataclass(frozen=True)
class OpRelaxation:
    """One nonlinear operation used by the cell programs.

    ``fn`` evaluates the operation on concrete tensors; ``interval`` maps input bounds
    ``(l_1, u_1, ..., l_k, u_k)`` to the exact output range (rounded outward); ``planes`` maps the
    same bounds to :class:`Planes`.
    """

    name: str
    arity: int
    fn: Callable[..., Tensor]
    interval: Callable[..., tuple[Tensor, Tensor]]
    planes: Callable[..., Planes]
