"""Shared helpers for the end-to-end tests in tests/{cells,models,domains,certify}.

Import from a test module with::

    import sys, pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from e2e_support import ...

Everything here is deliberately built only on rnnguard's public/domain-level API
(``lower``, ``run_program``, ``unroll``, ``Perturbation.regions``/``sample``,
``propagate_margins``, ``DOMAINS``) so that the tests check the library, not a re-implementation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from rnnguard import AllFrames, Frames, LpBall, OneFrame, Perturbation, SequenceClassifier
from rnnguard.cells import Program, unroll
from rnnguard.certify import propagate_margins
from rnnguard.domains import Point, get_domain
from rnnguard.models import lower, run_program
from rnnguard.perturbations import Regions

KINDS = ("rnn", "rnn_relu", "lstm", "gru")
DOMAIN_NAMES = ("box", "zonotope", "interzono", "backsub", "backsub-opt", "hybrid")
# domains that bound l_2 balls exactly (dual norm) rather than through the enclosing box
EXACT_L2_DOMAINS = frozenset({"backsub", "backsub-opt", "hybrid"})
# soundness tolerance in float64 (bounds are outward-rounded; concrete evaluation is not)
TOL = 1e-9

FRAME_CHOICES = {
    "all": AllFrames(),
    "one": OneFrame(),
    "first_last": Frames([0, -1]),
}



# ----------------------------------------------------------------------------- models
def make_classifier(
    kind: str,
    *,
    input_size: int,
    hidden_size: int,
    num_classes: int = 3,
    num_layers: int = 1,
    seed: int = 0,
    scale: float = 1.0,
    batch_first: bool = True,
    bias: bool = True,
    dtype: torch.dtype = torch.float64,
) -> SequenceClassifier:
    """A seeded SequenceClassifier in ``dtype`` with every weight multiplied by ``scale``,
    frozen (no grad) and in eval mode."""
    torch.manual_seed(seed)
    model = SequenceClassifier(kind, input_size, hidden_size, num_classes, num_layers=num_layers,
                               batch_first=batch_first, bias=bias)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model.to(dtype).eval().requires_grad_(False)


def other_classes(labels: Tensor, num_classes: int) -> Tensor:
    """``(N, C-1)``: the classes ``j != y`` in increasing order (the order of ``margin_lower``)."""
    others = torch.arange(num_classes, device=labels.device)[None, :].expand(labels.shape[0], -1)
    return others[others != labels[:, None]].reshape(labels.shape[0], num_classes - 1)


def margins_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """``logit[y] - logit[j]`` for every ``j != y`` (increasing j): ``(N, C-1)``."""
    others = other_classes(labels, logits.shape[1])
    return logits.gather(1, labels[:, None]) - logits.gather(1, others)


def concrete_margins(program: Program, x: Tensor, lengths: Tensor, labels: Tensor) -> Tensor:
    return margins_from_logits(run_program(program, x, lengths), labels)


def final_hidden(program: Program, x: Tensor, lengths: Tensor) -> Tensor:
    """Concrete top-layer hidden state at each sample's last frame (Point-domain unroll)."""
    T = x.shape[1]
    return unroll(program, [Point(x[:, t]) for t in range(T)], lengths, Point).value


def abstract_final_state(program: Program, regions: Regions, domain: str):
    """The domain's abstract top-layer hidden state at each region's last frame."""
    frames, constant = get_domain(domain).start(regions)
    return unroll(program, frames, regions.lengths, constant)


def region_margin_bounds(program: Program, regions: Regions, labels: Tensor, domain: str) -> Tensor:
    """Per-region margin lower bounds ``(R, C-1)``; ``labels`` are per SAMPLE."""
    with torch.no_grad():
        return propagate_margins(program, regions, labels[regions.sample_index], domain)


# ----------------------------------------------------------------------------- sampling / attacks
def sample_points(perturbation: Perturbation, x: Tensor, lengths: Tensor, regions: Regions, *,
                  n_ball: int, n_box: int, n_corner: int, generator: torch.Generator) -> Tensor:
    """Concrete points of every region: ``(N, R, T, d)`` aligned with ``regions``.

    Mixes the threat model's own sampler (exact l_p ball), uniform points of each region's box
    (the set the verifier actually bounds) and random corners of that box."""
    parts = []
    if n_ball:
        parts.append(perturbation.sample(x, lengths, n_ball, generator=generator))
    lo, hi = regions.lower, regions.upper
    if n_box:
        u = torch.rand(n_box, *lo.shape, generator=generator, dtype=lo.dtype)
        parts.append(lo + (hi - lo) * u)
    if n_corner:
        c = (torch.rand(n_corner, *lo.shape, generator=generator) < 0.5).to(lo.dtype)
        parts.append(lo + (hi - lo) * c)
    return torch.cat(parts)


def evaluate_points(program: Program, points: Tensor, regions: Regions, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Margins ``(N, R, C-1)`` and final hidden states ``(N, R, H)`` of ``points (N, R, T, d)``;
    ``labels`` are per SAMPLE."""
    N, R, T, d = points.shape
    flat = points.reshape(N * R, T, d)
    lengths = regions.lengths.repeat(N)
    y = labels[regions.sample_index].repeat(N)
    with torch.no_grad():
        m = concrete_margins(program, flat, lengths, y).reshape(N, R, -1)
        h = final_hidden(program, flat, lengths).reshape(N, R, -1)
    return m, h


def pgd_min_margins(program: Program, lower: Tensor, upper: Tensor, lengths: Tensor, labels: Tensor, *,
                    steps: int = 50, restarts: int = 3, seed: int = 0,
                    ball: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Smallest margin found by a sign-gradient PGD attack inside each box ``[lower, upper]``.

    ``ball = (center (R, T, d), eps (R, T))`` also keeps every frame in its l_2 ball (iterates are
    projected onto the ball, then clamped into the box, which contains the centre: feasible).

    ``lower/upper (R, T, d)``, ``lengths (R,)``, ``labels (R,)`` (per box).  Each margin
    ``k`` is attacked separately; restart 0 starts at the box centre, the others at uniform
    random points.  Iterates are projected onto the box, and the minimum over every iterate of
    every restart is returned as ``(R, C-1)``."""
    gen = torch.Generator().manual_seed(seed)
    R, T, d = lower.shape
    K = program.num_classes - 1
    n = restarts * K
    lo = lower.unsqueeze(0).expand(n, R, T, d).reshape(n * R, T, d)
    hi = upper.unsqueeze(0).expand(n, R, T, d).reshape(n * R, T, d)
    which = torch.arange(K).repeat_interleave(R).repeat(restarts)
    lens = lengths.repeat(n)
    ys = labels.repeat(n)
    u = torch.rand(lo.shape, generator=gen, dtype=lo.dtype)
    u[: K * R] = 0.5  # restart 0: the centre
    x = lo + (hi - lo) * u
    radius = (hi - lo) / 2

    def project(z: Tensor) -> Tensor:
        z = torch.minimum(torch.maximum(z, lo), hi)
        if ball is None:
            return z
        c = ball[0].unsqueeze(0).expand(n, R, T, d).reshape(n * R, T, d)
        e = ball[1].unsqueeze(0).expand(n, R, T).reshape(n * R, T, 1)
        delta = z - c
        delta = delta * torch.clamp(e / delta.norm(dim=-1, keepdim=True).clamp_min(1e-300), max=1.0)
        return torch.minimum(torch.maximum(c + delta, lo), hi)

    x = project(x)
    best = torch.full((n * R,), float("inf"), dtype=lo.dtype)
    for step in range(steps + 1):
        x = x.detach().requires_grad_(True)
        obj = concrete_margins(program, x, lens, ys).gather(1, which[:, None]).squeeze(1)
        best = torch.minimum(best, obj.detach())
        if step == steps:
            break
        (grad,) = torch.autograd.grad(obj.sum(), x)
        alpha = radius * (0.5 * (1 - step / steps) + 0.02)
        x = project(x.detach() - alpha * grad.sign())
    return best.reshape(restarts, K, R).amin(0).T


# ----------------------------------------------------------------------------- the containment cases
@dataclass(frozen=True)
class Case:
    """One seeded model + batch used by the domain soundness and tightness tests."""

    kind: str
    num_layers: int
    seed: int

    @property
    def id(self) -> str:
        return f"{self.kind}-L{self.num_layers}-s{self.seed}"


@dataclass
class CaseData:
    model: SequenceClassifier
    program: Program
    x: Tensor
    lengths: Tensor
    labels: Tensor


CASES = [Case(kind, layers, seed) for kind in KINDS for layers in (1, 2) for seed in (0, 1, 2)]


@functools.lru_cache(maxsize=None)
def case_data(case: Case) -> CaseData:
    """Seeded dims: input 3-5, hidden 4-16, T 1-8 (variable lengths, one sample of full length)."""
    g = torch.Generator().manual_seed(1000 * KINDS.index(case.kind) + 100 * case.num_layers + case.seed)
    pick = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    d, H = pick(3, 5), pick(4, 16)
    T = (1, 3, 5, 8)[(case.seed + case.num_layers + KINDS.index(case.kind)) % 4]
    B = 3
    model = make_classifier(case.kind, input_size=d, hidden_size=H, num_layers=case.num_layers,
                            seed=int(torch.randint(0, 2**31 - 1, (1,), generator=g)), scale=1.5)
    program = lower(model)
    x = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    with torch.no_grad():
        labels = run_program(program, x, lengths).argmax(1)
    labels[-1] = (labels[-1] + 1) % 3  # one misclassified sample: negative margins are bounded too
    return CaseData(model, program, x, lengths, labels)


@functools.lru_cache(maxsize=None)
def case_bounds(case: Case, frames: str, eps: float, domain: str, norm: str = "linf",
                clip: tuple[float, float] | None = None) -> Tensor:
    """Per-region margin lower bounds of ``case`` under one threat model and domain (cached)."""
    data = case_data(case)
    pert = Perturbation(LpBall(eps, norm), FRAME_CHOICES[frames], clip)
    return region_margin_bounds(data.program, pert.regions(data.x, data.lengths), data.labels, domain)


@functools.lru_cache(maxsize=None)
def certified_margins(case: Case, frames: str, eps: float, domain: str) -> Tensor:
    """Per-sample margin lower bounds from :func:`rnnguard.certify` (cached)."""
    from rnnguard import certify

    data = case_data(case)
    pert = Perturbation(LpBall(eps), FRAME_CHOICES[frames])
    return certify(data.model, data.x, data.labels, pert, domain=domain, lengths=data.lengths).margin_lower
