"""Training objectives: regular, adversarial (FGSM / PGD) and certified (IBP, Cert-RNN, RNN-Guard).

Each objective is a callable ``objective(model, x, y, lengths, *, epoch) -> (loss, logits)`` for
:func:`rnnguard.train.fit`.  ``epoch`` may be fractional (epoch + progress within the epoch) so
that ramps move smoothly.

Certified objectives bound the worst case over the threat region with an abstract domain and
use the CROWN-IBP-style upper bound of the worst-case cross-entropy (papers-notes §0.5):
``z_hat[y] = 0`` and ``z_hat[j] = -lower(logit[y] - logit[j])`` for ``j != y``, then
``loss = kappa * CE(logits, y) + (1 - kappa) * CE(z_hat, y)`` with eps ramped from 0 to its
target and kappa ramped from 1 to its final value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnguard.attacks import FGSM, PGD, Attack
from rnnguard.cells import Program, unroll
from rnnguard.certify import margin_specification, propagate_margins
from rnnguard.domains import InterZono, get_domain
from rnnguard.errors import UnknownNameError
from rnnguard.models import lower
from rnnguard.perturbations import AllFrames, FrameSelection, LpBall, OneFrame, Perturbation, Regions


@dataclass(frozen=True)
class Ramp:
    """Linear schedule from ``start`` to ``end`` between epochs ``begin`` and ``finish`` (then constant)."""

    start: float
    end: float
    begin: float = 0.0
    finish: float = 1.0

    def __call__(self, epoch: float) -> float:
        if epoch <= self.begin:
            return self.start
        if epoch >= self.finish:
            return self.end
        t = (epoch - self.begin) / (self.finish - self.begin)
        return self.start + t * (self.end - self.start)


def clean_objective(model: nn.Module, x: Tensor, y: Tensor, lengths: Tensor, *, epoch: float = 0) -> tuple[Tensor, Tensor]:
    """Regular training: cross-entropy of the clean logits."""
    logits = model(x, lengths)
    return F.cross_entropy(logits, y), logits


def worst_case_logits(margin_lower: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """``z_hat`` with ``z_hat[y] = 0`` and ``z_hat[j] = -margin_lower`` for the other classes (in order)."""
    B = y.shape[0]
    others = torch.arange(num_classes, device=y.device)[None, :].expand(B, -1)
    mask = others != y[:, None]
    z = margin_lower.new_zeros(B, num_classes)
    return z.masked_scatter(mask, -margin_lower)


def _random_frame_regions(threat: Perturbation, x: Tensor, lengths: Tensor) -> Regions:
    """One-frame training, Cert-RNN style: one uniformly drawn position per sample and step
    (certifying all T positions per step would multiply the cost by T)."""
    B, T, _ = x.shape
    position = (torch.rand(B, device=x.device) * lengths).long().clamp(max=T - 1)
    masks = torch.zeros(B, T, dtype=torch.bool, device=x.device)
    masks[torch.arange(B, device=x.device), position] = True
    radius = threat.ball.box_radius * masks.to(x.dtype)[..., None]
    return Regions(x - radius, x + radius, masks, torch.arange(B, device=x.device), lengths)


def training_margins(program: Program, regions: Regions, labels: Tensor, domain: str,
                     max_symbols: int | None = None) -> Tensor:
    """:func:`rnnguard.certify.propagate_margins` for training: the same propagation, with the
    zonotope-family symbol tables optionally capped at ``max_symbols`` non-input symbols per value
    (:meth:`~rnnguard.domains.zonotope.SymbolTable.cap`; sound, looser, much cheaper)."""
    if max_symbols is None or domain == "box":
        return propagate_margins(program, regions, labels, domain)
    frames, constant = get_domain(domain).start(regions)
    first = frames[0]
    table = first.main.symbols if isinstance(first, InterZono) else first.symbols
    table.cap(max_symbols)  # after start(): the input symbols are already handed out and stay exact
    h = unroll(program, frames, regions.lengths, constant)
    weight, bias = margin_specification(program, labels)
    return h.margin_lower(weight, bias)


@dataclass(repr=False)
class CertifiedObjective:
    """Worst-case loss over ``frames`` with radius ``eps_ramp(epoch)`` bounded in ``domain``.

    ``max_symbols`` (zonotope domains): cap on the non-input noise symbols per value, see
    :func:`training_margins`; ``None`` keeps them all (the certifier's exact propagation)."""

    domain: str
    eps_ramp: Ramp
    kappa_ramp: Ramp = field(default_factory=lambda: Ramp(1.0, 0.5))
    frames: FrameSelection = field(default_factory=AllFrames)
    norm: str = "linf"
    max_symbols: int | None = None

    def __repr__(self) -> str:  # max_symbols only when set: checkpoints from before it existed still resume
        text = (f"CertifiedObjective(domain={self.domain!r}, eps_ramp={self.eps_ramp!r}, kappa_ramp={self.kappa_ramp!r}, "
                f"frames={self.frames!r}, norm={self.norm!r}")
        return text + ("" if self.max_symbols is None else f", max_symbols={self.max_symbols!r}") + ")"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, lengths: Tensor, *, epoch: float = 0) -> tuple[Tensor, Tensor]:
        logits = model(x, lengths)
        clean = F.cross_entropy(logits, y)
        eps, kappa = self.eps_ramp(epoch), self.kappa_ramp(epoch)
        if eps <= 0 or kappa >= 1:
            return clean, logits
        threat = Perturbation(LpBall(eps, self.norm), self.frames)  # type: ignore[arg-type]
        program = lower(model, check=False)
        regions = threat.regions(x, lengths) if not isinstance(self.frames, OneFrame) else _random_frame_regions(threat, x, lengths)
        per_region = training_margins(program, regions, y[regions.sample_index], self.domain, self.max_symbols)
        margins = per_region.new_full((x.shape[0], per_region.shape[1]), float("inf"))
        margins = margins.scatter_reduce(0, regions.sample_index[:, None].expand_as(per_region), per_region, reduce="amin")
        robust = F.cross_entropy(worst_case_logits(margins, y, logits.shape[1]), y)
        return kappa * clean + (1 - kappa) * robust, logits


@dataclass
class AdversarialObjective:
    """Cross-entropy on adversarial examples found by ``attack`` (mixed with the clean loss by ``kappa``)."""

    attack: Attack
    eps_ramp: Ramp
    kappa: float = 0.0
    frames: FrameSelection = field(default_factory=AllFrames)
    norm: str = "linf"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, lengths: Tensor, *, epoch: float = 0) -> tuple[Tensor, Tensor]:
        eps = self.eps_ramp(epoch)
        logits = model(x, lengths)
        clean = F.cross_entropy(logits, y)
        if eps <= 0:
            return clean, logits
        threat = Perturbation(LpBall(eps, self.norm), self.frames)  # type: ignore[arg-type]
        x_adv = self.attack(model, x.detach(), y, threat, lengths=lengths).x_adv.detach()
        was_training = model.training
        model.train(was_training)
        adv = F.cross_entropy(model(x_adv, lengths), y)
        return self.kappa * clean + (1 - self.kappa) * adv, logits


def make_objective(method: str, eps: float, *, epochs: float, warmup: float = 0.0, ramp: float | None = None,
                   kappa_final: float = 0.5, pgd_steps: int = 10,
                   max_symbols: int | None = None) -> Callable[..., tuple[Tensor, Tensor]]:
    """The six training methods by name: regular, fgsm, pgd, ibp, certrnn, rnnguard.

    eps (and kappa for certified methods) ramp linearly from ``warmup`` over ``ramp`` epochs
    (default: half of the remaining epochs).  ``max_symbols`` caps the non-input noise symbols of
    the zonotope-family methods (certrnn, rnnguard) during training, see :func:`training_margins`."""
    ramp = ramp if ramp is not None else max((epochs - warmup) / 2, 1e-9)
    eps_ramp = Ramp(0.0, eps, warmup, warmup + ramp)
    kappa_ramp = Ramp(1.0, kappa_final, warmup, warmup + ramp)
    if method == "regular":
        return clean_objective
    if method == "fgsm":
        return AdversarialObjective(FGSM(), eps_ramp, kappa=0.5)
    if method == "pgd":
        return AdversarialObjective(PGD(steps=pgd_steps, random_start=True), eps_ramp, kappa=0.5)
    if method == "ibp":
        return CertifiedObjective("box", eps_ramp, kappa_ramp)
    if method == "certrnn":
        return CertifiedObjective("zonotope", eps_ramp, kappa_ramp, frames=OneFrame(), max_symbols=max_symbols)
    if method == "rnnguard":
        return CertifiedObjective("interzono", eps_ramp, kappa_ramp, max_symbols=max_symbols)
    raise UnknownNameError(f"unknown training method {method!r}; choose one of {sorted(METHODS)}")


METHODS = ("regular", "fgsm", "pgd", "ibp", "certrnn", "rnnguard")
