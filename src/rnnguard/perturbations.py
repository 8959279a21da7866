"""The threat model: one object shared by the verifier, the attacks, training and the tests.

A :class:`Perturbation` combines a per-frame norm ball (:class:`LpBall`), a choice of which
frames may move (:class:`AllFrames`, :class:`OneFrame`, :class:`Frames`) and an optional clipping
box (e.g. pixels in ``[0, 1]``).  For the verifier it produces :class:`Regions`: boxes over whole
sequences, one per sample for all/chosen frames and one per (sample, position) for the one-frame
threat, which is the union of those regions (certified iff every region certifies).

l_2 balls are over-approximated by the enclosing l_inf box of the same radius (sound, looser);
attacks and sampling use the exact l_2 ball.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor

from rnnguard.errors import InvalidInputError, UnknownNameError

Norm = Literal["linf", "l2"]


@dataclass(frozen=True)
class LpBall:
    """Per-frame ball ``||x'_t - x_t||_p <= eps`` (same eps for every perturbed frame)."""

    eps: float
    norm: Norm = "linf"

    def __post_init__(self) -> None:
        if not isinstance(self.eps, (int, float)) or not math.isfinite(self.eps) or self.eps < 0:
            raise InvalidInputError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if self.norm not in ("linf", "l2"):
            raise UnknownNameError(f"unknown norm {self.norm!r}; use 'linf' or 'l2'")

    @property
    def box_radius(self) -> float:
        """Half-width of the l_inf box enclosing the ball (the l_2 ball lies in the l_inf box)."""
        return float(self.eps)

    def project(self, delta: Tensor) -> Tensor:
        """Project per-frame perturbations ``delta[..., d]`` onto the ball (last dim = features)."""
        if self.norm == "linf":
            return delta.clamp(-self.eps, self.eps)
        norms = delta.norm(dim=-1, keepdim=True)
        return delta * torch.clamp(self.eps / norms.clamp_min(1e-30), max=1.0)

    def sample(self, shape: Sequence[int], *, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Uniform samples of per-frame perturbations of ``shape`` (last dim = features)."""
        u = torch.rand(*shape, generator=generator, dtype=like.dtype, device=like.device)
        if self.norm == "linf":
            return (2 * u - 1) * self.eps
        g = torch.randn(*shape, generator=generator, dtype=like.dtype, device=like.device)
        direction = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        radius = u[..., :1] ** (1.0 / shape[-1]) * self.eps
        return direction * radius


class FrameSelection:
    """Which frames may move.  ``region_masks`` returns ``(masks[R, T], sample_index[R])``."""

    def region_masks(self, lengths: Tensor, T: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


@dataclass(frozen=True)
class AllFrames(FrameSelection):
    """Every frame of the sequence within its length (multi-frame, the main threat model)."""

    def region_masks(self, lengths: Tensor, T: int) -> tuple[Tensor, Tensor]:
        valid = torch.arange(T, device=lengths.device) < lengths[:, None]
        return valid, torch.arange(lengths.shape[0], device=lengths.device)


@dataclass(frozen=True)
class OneFrame(FrameSelection):
    """Exactly one frame, any position: the union over positions t < length of one region each."""

    def region_masks(self, lengths: Tensor, T: int) -> tuple[Tensor, Tensor]:
        valid = torch.arange(T, device=lengths.device) < lengths[:, None]
        sample_index, position = valid.nonzero(as_tuple=True)
        masks = torch.zeros(sample_index.shape[0], T, dtype=torch.bool, device=lengths.device)
        masks[torch.arange(sample_index.shape[0], device=lengths.device), position] = True
        return masks, sample_index


@dataclass(frozen=True)
class Frames(FrameSelection):
    """A chosen set of positions (0-based; negative counts from each sample's last frame).

    Positions outside a sample's length are ignored for that sample (it then has fewer moving frames)."""

    positions: tuple[int, ...]

    def __init__(self, positions: Sequence[int]) -> None:
        pos = tuple(int(p) for p in positions)
        if not pos:
            raise InvalidInputError("Frames needs at least one position")
        object.__setattr__(self, "positions", pos)

    def region_masks(self, lengths: Tensor, T: int) -> tuple[Tensor, Tensor]:
        B = lengths.shape[0]
        pos = torch.tensor(self.positions, device=lengths.device)
        absolute = torch.where(pos[None, :] < 0, lengths[:, None] + pos[None, :], pos[None, :].expand(B, -1))
        masks = torch.zeros(B, T + 1, dtype=torch.bool, device=lengths.device)
        inside = (absolute >= 0) & (absolute < lengths[:, None])
        masks.scatter_(1, torch.where(inside, absolute, torch.full_like(absolute, T)), True)
        return masks[:, :T], torch.arange(B, device=lengths.device)


@dataclass(frozen=True)
class Regions:
    """Boxes over sequences that the verifier propagates: ``lower/upper[R, T, d]``.

    ``masks[R, T]`` marks the frames that move; ``sample_index[R]`` maps a region to its sample;
    ``lengths[R]`` is that sample's length.  For l_2 balls ``ball_center[R, T, d]`` and
    ``ball_eps[R, T]`` describe the exact balls (the boxes enclose them), for domains that can
    use them (back-substitution concretises them through the dual norm)."""

    lower: Tensor
    upper: Tensor
    masks: Tensor
    sample_index: Tensor
    lengths: Tensor
    ball_center: Tensor | None = None
    ball_eps: Tensor | None = None

    def select(self, rows: slice | Tensor) -> "Regions":
        """The regions ``rows`` (a slice or an index tensor)."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return Regions(self.lower[rows], self.upper[rows], self.masks[rows], self.sample_index[rows],
                       self.lengths[rows], pick(self.ball_center), pick(self.ball_eps))


@dataclass(frozen=True)
class Perturbation:
    """The threat model: ``ball`` around each frame selected by ``frames``, clipped to ``clip``."""

    ball: LpBall
    frames: FrameSelection = AllFrames()
    clip: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ball, LpBall):
            raise InvalidInputError(f"ball must be an LpBall, got {type(self.ball).__name__}")
        if not isinstance(self.frames, FrameSelection):
            raise InvalidInputError(f"frames must be AllFrames(), OneFrame() or Frames([...]), got {self.frames!r}")
        if self.clip is not None and not (len(self.clip) == 2 and self.clip[0] <= self.clip[1]):
            raise InvalidInputError(f"clip must be (low, high) with low <= high, got {self.clip!r}")

    @property
    def eps(self) -> float:
        return self.ball.eps

    def regions(self, x: Tensor, lengths: Tensor) -> Regions:
        """Input boxes for every region (see :class:`Regions`); frames outside ``masks`` are points."""
        masks, sample_index = self.frames.region_masks(lengths, x.shape[1])
        center = x[sample_index]
        radius = self.ball.box_radius * masks.to(x.dtype)[..., None]
        lower, upper = center - radius, center + radius
        if self.clip is not None:
            lower, upper = lower.clamp(*self.clip), upper.clamp(*self.clip)
        if self.ball.norm == "l2":
            return Regions(lower, upper, masks, sample_index, lengths[sample_index], center,
                           self.ball.eps * masks.to(x.dtype))
        return Regions(lower, upper, masks, sample_index, lengths[sample_index])

    def contains(self, x0: Tensor, x: Tensor, lengths: Tensor | None = None, *, tol: float = 1e-6) -> Tensor:
        """Per-sample bool: is ``x`` inside the threat region around ``x0``?"""
        B, T, _ = x0.shape
        lengths = torch.full((B,), T, device=x0.device) if lengths is None else lengths
        delta = x - x0
        if self.ball.norm == "linf":
            frame_size = delta.abs().amax(dim=-1)
        else:
            frame_size = delta.norm(dim=-1)
        moved = frame_size > tol
        ok = (frame_size <= self.ball.eps + tol).all(dim=1)
        if self.clip is not None:
            ok &= ((x >= self.clip[0] - tol) & (x <= self.clip[1] + tol)).flatten(1).all(dim=1)
        masks, sample_index = self.frames.region_masks(lengths, T)
        allowed_in_some_region = torch.zeros(B, dtype=torch.bool, device=x0.device)
        inside = (~moved[sample_index] | masks).all(dim=1)
        allowed_in_some_region.scatter_reduce_(0, sample_index, inside, reduce="amax")
        return ok & allowed_in_some_region

    def sample(self, x0: Tensor, lengths: Tensor, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` random points of every region: returns ``(n, R, T, d)`` aligned with :meth:`regions`."""
        regions = self.regions(x0, lengths)
        center = x0[regions.sample_index]
        delta = self.ball.sample((n, *center.shape), like=x0, generator=generator) * regions.masks[..., None]
        x = center + delta
        if self.clip is not None:
            x = x.clamp(*self.clip)
        return x
