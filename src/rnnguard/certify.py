"""The certification entry point: ``certify(model, x, y, perturbation, *, domain=...)``.

For every sample it bounds from below each margin ``logit[y] - logit[j]`` (``j != y``) over the
whole threat region and certifies the sample when every lower bound is strictly positive.  The
one-frame threat is the union of per-position regions: a sample is certified iff all its
regions are, and its margin bounds are the minimum over regions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rnnguard.cells import Program, unroll
from rnnguard.domains import get_domain
from rnnguard.errors import InvalidInputError
from rnnguard.models import lower, validate_program_inputs
from rnnguard.perturbations import Perturbation, Regions


@dataclass(frozen=True)
class CertificationResult:
    """Per-sample outcome of :func:`certify`.

    ``margin_lower[b, k]`` bounds ``logit[y_b] - logit[j]`` from below for the k-th class ``j != y_b``
    (classes in increasing order)."""

    certified: Tensor
    margin_lower: Tensor
    domain: str
    seconds: float
    perturbation: Perturbation = field(repr=False)

    @property
    def certified_fraction(self) -> float:
        return float(self.certified.float().mean().item()) if self.certified.numel() else 0.0

    def to_dict(self) -> dict[str, Any]:
        p = self.perturbation
        return {
            "domain": self.domain,
            "eps": p.eps,
            "norm": p.ball.norm,
            "frames": repr(p.frames),
            "clip": p.clip,
            "seconds": self.seconds,
            "certified": self.certified.tolist(),
            "certified_fraction": self.certified_fraction,
            "margin_lower": self.margin_lower.tolist(),
        }


def margin_specification(program: Program, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Fold ``logit[y] - logit[j]`` (j != y) into the head: weights ``(R, C-1, H)``, biases ``(R, C-1)``."""
    C = program.num_classes
    others = torch.arange(C, device=labels.device)[None, :].expand(labels.shape[0], -1)
    others = others[others != labels[:, None]].reshape(labels.shape[0], C - 1)
    W, b = program.head_weight, program.head_bias
    return W[labels][:, None, :] - W[others], b[labels][:, None] - b[others]


def validate_inputs(program: Program, x: Tensor, y: Tensor, lengths: Tensor | None, perturbation: Perturbation) -> Tensor:
    """Check a batch against a program and a threat model at the public boundary; returns lengths."""
    if not isinstance(perturbation, Perturbation):
        raise InvalidInputError(f"perturbation must be an rnnguard.Perturbation, got {type(perturbation).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise InvalidInputError("x must be a floating-point tensor of shape (B, T, d)")
    if x.dim() != 3:
        raise InvalidInputError(f"x must have shape (B, T, d), got {tuple(x.shape)}")
    B, T, _ = x.shape
    if B == 0 or T == 0:
        raise InvalidInputError(f"x is empty (shape {tuple(x.shape)}): need at least one sample and one frame")
    validate_program_inputs(program, x)
    if not torch.isfinite(x).all():
        raise InvalidInputError("x contains NaN or infinite values")
    if not isinstance(y, Tensor) or y.shape != (B,) or y.is_floating_point() or y.is_complex():
        raise InvalidInputError(f"y must be an integer tensor of shape ({B},)")
    if ((y < 0) | (y >= program.num_classes)).any():
        raise InvalidInputError(f"labels must lie in [0, {program.num_classes - 1}]")
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long, device=x.device)
    if not isinstance(lengths, Tensor) or lengths.shape != (B,) or lengths.is_floating_point():
        raise InvalidInputError(f"lengths must be an integer tensor of shape ({B},)")
    if (lengths < 1).any():
        raise InvalidInputError("every sequence needs length >= 1 (zero-length sequences cannot be classified)")
    if (lengths > T).any():
        raise InvalidInputError(f"lengths must not exceed the number of frames T={T}")
    if perturbation.clip is not None:
        lo, hi = perturbation.clip
        if ((x < lo) | (x > hi)).any():
            raise InvalidInputError(f"x lies outside the clipping box {perturbation.clip}")
    return lengths.to(device=x.device, dtype=torch.long)


def propagate_margins(program: Program, regions: Regions, labels: Tensor, domain: str) -> Tensor:
    """Lower bounds ``(R, C-1)`` of the margins over each region, in the given domain.

    A meet of domains (``hybrid``) also runs its components alone on the regions it leaves
    uncertified and keeps the max, so it certifies everything either component certifies and its
    margins there are never looser (relaxations are not monotone in their input boxes, so feeding
    a component tighter intermediate bounds can, rarely, loosen its final bound)."""
    spec = get_domain(domain)
    weight, bias = margin_specification(program, labels)
    if spec.margins is not None:
        return spec.margins(program, regions, weight, bias)
    frames, constant = spec.start(regions)
    h = unroll(program, frames, regions.lengths, constant)
    margins = h.margin_lower(weight, bias)
    for part in spec.components:
        open_rows = (~(margins > 0).all(dim=1)).nonzero(as_tuple=True)[0]
        if open_rows.numel():
            alone = propagate_margins(program, regions.select(open_rows), labels[open_rows], part)
            margins[open_rows] = torch.maximum(margins[open_rows], alone)
    return margins


def certify(
    model: nn.Module | Program,
    x: Tensor,
    y: Tensor,
    perturbation: Perturbation,
    *,
    domain: str = "interzono",
    lengths: Tensor | None = None,
    dtype: torch.dtype = torch.float64,
    batch_size: int = 64,
) -> CertificationResult:
    """Certify ``model`` on ``x (B, T, d)`` with labels ``y (B,)`` against ``perturbation``.

    ``domain`` is any name of :data:`rnnguard.domains.DOMAINS` (README, "Choosing a domain"):
    ``"interzono"`` (fast, the default), ``"backsub"`` (tighter on long sequences) or one of the
    optimised back-substitution domains.  Computation runs in ``dtype``
    (float64 by default; float32 is faster but not float-sound) on ``x``'s device.  Regions are
    propagated ``batch_size`` at a time to bound memory.
    """
    start = time.perf_counter()
    get_domain(domain)
    program = lower(model)
    lengths = validate_inputs(program, x, y, lengths, perturbation)
    program = program.to(dtype, x.device)
    xx = x.to(dtype)
    regions = perturbation.regions(xx, lengths)
    R = regions.sample_index.shape[0]
    chunks = []
    with torch.no_grad():
        for s in range(0, R, batch_size):
            part = regions.select(slice(s, s + batch_size))
            chunks.append(propagate_margins(program, part, y.to(x.device)[part.sample_index], domain))
    per_region = torch.cat(chunks)
    B = x.shape[0]
    margins = per_region.new_full((B, per_region.shape[1]), float("inf"))
    margins = margins.scatter_reduce(0, regions.sample_index[:, None].expand_as(per_region), per_region, reduce="amin")
    certified = (margins > 0).all(dim=1)
    return CertificationResult(certified.cpu(), margins.cpu(), domain, time.perf_counter() - start, perturbation)
