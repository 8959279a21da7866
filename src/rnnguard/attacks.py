"""Adversarial attacks against the threat models of :mod:`rnnguard.perturbations`.

Attacks are the *upper* side of robustness evaluation: a sample an attack breaks can never be
certified, so ``robust accuracy <= 1 - success rate`` and ``certified accuracy <= robust accuracy``.

Every attack is an :class:`Attack` (a template method, in the style of torchattacks / foolbox)::

    result = PGD(steps=40)(model, x, y, perturbation, lengths=lengths)
    result.x_adv, result.success, result.margin

The public ``__call__`` (final) validates the inputs exactly like :func:`rnnguard.certify`,
runs the model through its lowered cell program (:func:`rnnguard.models.run_program`, which
works for every supported module and respects ``lengths``) in the model's dtype, hands an
:class:`AttackProblem` to the subclass's :meth:`Attack.run`, then projects the result onto the
threat region once more and checks ``perturbation.contains`` before returning.

Threat models.  For :class:`~rnnguard.perturbations.AllFrames` and
:class:`~rnnguard.perturbations.Frames` the movable frames of a sample form one region
(``frames.region_masks``).  :class:`~rnnguard.perturbations.OneFrame` is a union of regions, one
per position ``t < length``: all of them are attacked at once (one batch row per region) and each
sample keeps its strongest region (lowest margin), so the result moves exactly one frame.

Inside a region a point is ``clip(x0 + ball.project(mask * delta))``: the ``l_inf`` / ``l_2``
ball is per frame (the same ``eps`` for each moved frame), ``l_2`` steps are normalised per frame
(the steepest-ascent direction for a product of per-frame balls).

Attacks: :class:`FGSM`, :class:`PGD` (random restarts, CE or margin loss), :class:`APGD` (Croce &
Hein 2020, CE or DLR loss), :class:`Ensemble` (each attack only on what survived the previous
ones) and :func:`default_ensemble` (APGD-CE, APGD-DLR, PGD-margin with restarts).

Write your own attack by subclassing :class:`Attack` and implementing ``run(problem)`` with the
helpers of :class:`AttackProblem` (``project``, ``loss_and_grad``, ``margins``, ``ascent_direction``,
``random_start``).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Sequence, final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnguard.cells import Program, unroll
from rnnguard.certify import validate_inputs
from rnnguard.domains import Point
from rnnguard.errors import InvalidInputError, UnknownNameError
from rnnguard.models import lower, run_program
from rnnguard.perturbations import Perturbation, Regions

__all__ = [
    "AttackResult",
    "AttackProblem",
    "Attack",
    "FGSM",
    "PGD",
    "APGD",
    "Ensemble",
    "default_ensemble",
    "margins_from_logits",
    "attack_margins",
    "falsify_regions",
    "LOSSES",
]

#: loss names understood by :meth:`AttackProblem.loss` (all are *maximised* by the attacks)
LOSSES: tuple[str, ...] = ("ce", "margin", "dlr")

#: ``broken_by`` entry of a sample that the model already misclassifies without perturbation
CLEAN = "clean"


# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackResult:
    """Per-sample outcome of an attack.

    * ``x_adv (B, T, d)``: the adversarial inputs (in ``x``'s dtype and device), inside the threat
      region; for samples the attack did not break, the strongest point found (lowest margin);
      for samples already misclassified at ``x``, ``x`` itself.
    * ``success (B,)``: misclassified (``argmax logits != y``) at ``x_adv``, or already at ``x``.
    * ``margin (B,)``: ``logit[y] - max_{j != y} logit[j]`` at ``x_adv`` (model dtype).
    * ``broken_by``: per sample, the name of the attack that broke it (for an :class:`Ensemble`,
      the member), ``"clean"`` when already misclassified at ``x``, ``None`` when not broken.
    """

    x_adv: Tensor
    success: Tensor
    margin: Tensor
    broken_by: list[str | None]
    seconds: float
    attack: str
    perturbation: Perturbation = field(repr=False)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean().item()) if self.success.numel() else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (``x_adv`` is left out: save it with ``torch.save`` if needed)."""
        p = self.perturbation
        return {
            "attack": self.attack,
            "eps": p.eps,
            "norm": p.ball.norm,
            "frames": repr(p.frames),
            "clip": p.clip,
            "seconds": self.seconds,
            "success": self.success.tolist(),
            "success_rate": self.success_rate,
            "margin": self.margin.tolist(),
            "broken_by": list(self.broken_by),
        }


# --------------------------------------------------------------------------------------------
# the problem handed to Attack.run
# --------------------------------------------------------------------------------------------


def _detached(program: Program, dtype: torch.dtype, device: torch.device) -> Program:
    program = program.to(dtype, device)
    det = lambda t: None if t is None else t.detach()  # noqa: E731
    layers = tuple(replace(layer, weight_ih=det(layer.weight_ih), weight_hh=det(layer.weight_hh),
                           bias_ih=det(layer.bias_ih), bias_hh=det(layer.bias_hh)) for layer in program.layers)
    return Program(layers, program.head_weight.detach(), program.head_bias.detach())


def margins_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """``logit[y] - max_{j != y} logit[j]`` per row (``+inf`` with a single class)."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.amax(dim=1)


@dataclass
class AttackProblem:
    """A batch of threat regions to attack, all in the model's dtype on ``x``'s device.

    ``x0[R, T, d]`` is each region's clean input, ``masks[R, T]`` its movable frames,
    ``labels[R]`` / ``lengths[R]`` its sample's label and length, ``sample_index[R]`` its
    sample (in ``[0, num_samples)``).  Several regions may share a sample (one-frame threat)."""

    program: Program
    perturbation: Perturbation
    x0: Tensor
    masks: Tensor
    labels: Tensor
    lengths: Tensor
    sample_index: Tensor
    num_samples: int
    #: per region, the attack that broke it (filled by :class:`Ensemble`; ``None`` otherwise)
    broken_by: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.broken_by:
            self.broken_by = [None] * self.num_regions

    # ---- sizes and subsets ------------------------------------------------------------------

    @property
    def num_regions(self) -> int:
        return int(self.x0.shape[0])

    @property
    def num_classes(self) -> int:
        return self.program.num_classes

    @property
    def eps(self) -> float:
        return self.perturbation.eps

    @property
    def norm(self) -> str:
        return self.perturbation.ball.norm

    def subset(self, index: Tensor) -> "AttackProblem":
        """The regions ``index`` (a 1-D long tensor), same samples numbering."""
        rows = index.tolist()
        return AttackProblem(self.program, self.perturbation, self.x0[index], self.masks[index], self.labels[index],
                             self.lengths[index], self.sample_index[index], self.num_samples,
                             [self.broken_by[i] for i in rows])

    def generator(self, seed: int) -> torch.Generator:
        """A seeded generator on the problem's device."""
        return torch.Generator(device=self.x0.device).manual_seed(int(seed))

    # ---- geometry ---------------------------------------------------------------------------

    def project(self, x: Tensor) -> Tensor:
        """Project points ``x[R, T, d]`` onto their regions: mask, per-frame ball, then clip.

        Clipping after the ball projection stays in the ball (``x0`` lies in the clipping box, so
        clipping only moves coordinates towards ``x0``)."""
        delta = (x - self.x0) * self.masks[..., None].to(x.dtype)
        out = self.x0 + self.perturbation.ball.project(delta)
        if self.perturbation.clip is not None:
            out = out.clamp(*self.perturbation.clip)
        return out

    def random_start(self, generator: torch.Generator) -> Tensor:
        """A uniformly random point of the ball on each region's movable frames (then clipped)."""
        delta = self.perturbation.ball.sample(self.x0.shape, like=self.x0, generator=generator)
        return self.project(self.x0 + delta)

    def ascent_direction(self, grad: Tensor) -> Tensor:
        """Steepest-ascent unit direction for the per-frame ball: ``sign`` (l_inf) or per-frame l_2."""
        grad = grad * self.masks[..., None].to(grad.dtype)
        if self.norm == "linf":
            return grad.sign()
        norms = grad.norm(dim=-1, keepdim=True)
        return torch.where(norms > 0, grad / norms.clamp_min(torch.finfo(grad.dtype).tiny), torch.zeros_like(grad))

    # ---- model ------------------------------------------------------------------------------

    def logits(self, x: Tensor) -> Tensor:
        return run_program(self.program, x, self.lengths)

    def margins(self, logits: Tensor) -> Tensor:
        """``logit[y] - max_{j != y} logit[j]`` per region."""
        return margins_from_logits(logits, self.labels)

    def misclassified(self, logits: Tensor) -> Tensor:
        return logits.argmax(dim=1) != self.labels

    def loss(self, logits: Tensor, kind: str) -> Tensor:
        """Per-region loss to MAXIMISE: ``"ce"`` cross-entropy, ``"margin"`` ``max_{j!=y} z_j - z_y``,
        ``"dlr"`` Croce & Hein's difference of logits ratio (the margin loss with < 3 classes)."""
        if kind == "ce":
            return F.cross_entropy(logits, self.labels, reduction="none")
        if kind == "margin" or (kind == "dlr" and self.num_classes < 3):
            return -self.margins(logits)
        if kind == "dlr":
            top = logits.sort(dim=1, descending=True).values
            return -self.margins(logits) / (top[:, 0] - top[:, 2] + 1e-12)
        raise UnknownNameError(f"unknown attack loss {kind!r}; choose one of {', '.join(LOSSES)}")

    def loss_and_grad(self, x: Tensor, kind: str) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss[R], logits[R, C], d loss / d x [R, T, d])`` at ``x`` (no graph kept)."""
        x = x.detach().requires_grad_(True)
        logits = self.logits(x)
        loss = self.loss(logits, kind)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), logits.detach(), grad.detach()

    def sample_broken(self, broken_regions: Tensor) -> Tensor:
        """Per region: is ANY region of its sample broken (the sample needs no more work)."""
        per_sample = torch.zeros(self.num_samples, dtype=torch.bool, device=broken_regions.device)
        per_sample.scatter_reduce_(0, self.sample_index, broken_regions, reduce="amax")
        return per_sample[self.sample_index]


class _Best:
    """Keeps, per region, the point with the lowest margin seen so far."""

    def __init__(self, x: Tensor, margin: Tensor) -> None:
        self.x, self.margin = x.detach().clone(), margin.detach().clone()

    def update(self, x: Tensor, margin: Tensor, rows: Tensor | None = None) -> None:
        if rows is None:
            better = margin < self.margin
            self.x = torch.where(better[:, None, None], x.detach(), self.x)
            self.margin = torch.where(better, margin.detach(), self.margin)
        else:
            better = margin < self.margin[rows]
            self.x[rows] = torch.where(better[:, None, None], x.detach(), self.x[rows])
            self.margin[rows] = torch.where(better, margin.detach(), self.margin[rows])


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------


def _no_cudnn(device: torch.device) -> contextlib.AbstractContextManager:
    """cuDNN RNN kernels cannot backpropagate in eval mode: disable cuDNN (only), other flags kept."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    cudnn = torch.backends.cudnn
    others = {name: None for name in inspect.signature(cudnn.flags).parameters if name != "enabled"}
    return cudnn.flags(enabled=False, **others)


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    if not isinstance(model, nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_step(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"{name} must be None or a finite number >= 0, got {value!r}")
    return float(value)


def _check_loss(loss: Any, allowed: Sequence[str]) -> str:
    if loss not in allowed:
        raise UnknownNameError(f"unknown attack loss {loss!r}; choose one of {', '.join(allowed)}")
    return loss


class Attack:
    """Base class.  Subclasses implement :meth:`run`; ``__call__`` is final (the template method)."""

    #: shown in ``AttackResult.attack`` and ``broken_by``
    name: str = "attack"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:
            raise TypeError(f"{cls.__name__} must not override Attack.__call__; implement run(problem) instead")

    def run(self, problem: AttackProblem) -> Tensor:
        """Return one point per region ``(R, T, d)`` (the strongest found; projected again afterwards)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @final
    def __call__(self, model: nn.Module | Program, x: Tensor, y: Tensor, perturbation: Perturbation, *,
                 lengths: Tensor | None = None) -> AttackResult:
        """Attack ``model`` on ``x (B, T, d)`` with labels ``y (B,)`` inside ``perturbation``."""
        start = time.perf_counter()
        with _eval_mode(model):
            program = lower(model)
            lengths = validate_inputs(program, x, y, lengths, perturbation)
            y = y.to(device=x.device, dtype=torch.long)
            dtype = program.head_weight.dtype
            program = _detached(program, dtype, x.device)
            with torch.enable_grad(), _no_cudnn(x.device):
                x_adv, broken_by = self._attack(program, x, y, lengths, perturbation)
                with torch.no_grad():
                    logits_adv = run_program(program, x_adv.to(dtype), lengths)
                margin = margins_from_logits(logits_adv, y)
                success = logits_adv.argmax(dim=1) != y
        inside = perturbation.contains(x, x_adv, lengths, tol=_containment_tol(x))
        if not bool(inside.all()):
            bad = (~inside).nonzero()[:, 0].tolist()
            raise RuntimeError(f"{self.name}: internal error, x_adv left the threat region for samples {bad}")
        succ = success.tolist()
        broken_by = [(b if b is not None else self.name) if s else None for b, s in zip(broken_by, succ)]
        return AttackResult(x_adv.detach(), success.cpu(), margin.detach().cpu(), broken_by,
                            time.perf_counter() - start, self.name, perturbation)

    # ---- the steps of the template ----------------------------------------------------------

    def _attack(self, program: Program, x: Tensor, y: Tensor, lengths: Tensor,
                perturbation: Perturbation) -> tuple[Tensor, list[str | None]]:
        B, T, _ = x.shape
        dtype = program.head_weight.dtype
        x_model = x.detach().to(dtype)
        with torch.no_grad():
            clean_wrong = run_program(program, x_model, lengths).argmax(dim=1) != y
        broken_by: list[str | None] = [CLEAN if w else None for w in clean_wrong.tolist()]
        x_adv = x.detach().clone()
        todo = (~clean_wrong).nonzero()[:, 0]
        if todo.numel() == 0 or perturbation.eps == 0:
            return x_adv, broken_by
        masks, sample_index = perturbation.frames.region_masks(lengths[todo], T)
        problem = AttackProblem(program, perturbation, x_model[todo][sample_index], masks, y[todo][sample_index],
                                lengths[todo][sample_index], sample_index, int(todo.numel()))
        points = problem.project(self.run(problem).detach())
        if points.shape != problem.x0.shape:
            raise RuntimeError(f"{self.name}.run returned shape {tuple(points.shape)}, "
                               f"expected {tuple(problem.x0.shape)}")
        with torch.no_grad():
            margins = problem.margins(problem.logits(points))
        chosen = _strongest_region(margins, sample_index, problem.num_samples)
        # back to x's dtype: perturb the ORIGINAL x on the chosen region's frames, then project
        delta = (points[chosen] - problem.x0[chosen]).to(x.dtype)
        mask = masks[chosen][..., None]
        delta = perturbation.ball.project(delta * mask.to(x.dtype))
        new = torch.where(mask, x[todo] + delta, x[todo])
        if perturbation.clip is not None:
            new = torch.where(mask, new.clamp(*perturbation.clip), new)
        x_adv[todo] = new
        for i, region in zip(todo.tolist(), chosen.tolist()):
            broken_by[i] = problem.broken_by[region]
        return x_adv, broken_by


def _containment_tol(x: Tensor) -> float:
    # 1e-6 (the default of Perturbation.contains) plus the rounding of x + delta in x's dtype
    scale = float(x.detach().abs().max()) if x.numel() else 0.0
    return 1e-6 + 4 * torch.finfo(x.dtype).eps * scale


def _strongest_region(margins: Tensor, sample_index: Tensor, num_samples: int) -> Tensor:
    """Per sample, the index of its region with the lowest margin (first one on ties)."""
    R = margins.shape[0]
    best = margins.new_full((num_samples,), float("inf")).scatter_reduce(0, sample_index, margins, reduce="amin")
    candidate = margins <= best[sample_index]
    rows = torch.arange(R, device=margins.device)
    pick = torch.full((num_samples,), R, dtype=torch.long, device=margins.device)
    pick = pick.scatter_reduce(0, sample_index, torch.where(candidate, rows, torch.full_like(rows, R)), reduce="amin")
    return pick


# --------------------------------------------------------------------------------------------
# attacks
# --------------------------------------------------------------------------------------------


class FGSM(Attack):
    """Fast gradient (sign) method: one step of size ``eps_step`` (default ``eps``) along the
    signed gradient (l_inf) or the per-frame normalised gradient (l_2) of ``loss``."""

    def __init__(self, eps_step: float | None = None, *, loss: str = "ce") -> None:
        self.eps_step = _check_step("eps_step", eps_step)
        self.loss = _check_loss(loss, ("ce", "margin", "dlr"))
        self.name = "FGSM" if loss == "ce" else f"FGSM-{loss}"

    def run(self, problem: AttackProblem) -> Tensor:
        step = problem.eps if self.eps_step is None else self.eps_step
        _, logits, grad = problem.loss_and_grad(problem.x0, self.loss)
        x = problem.project(problem.x0 + step * problem.ascent_direction(grad))
        best = _Best(problem.x0, problem.margins(logits))
        with torch.no_grad():
            best.update(x, problem.margins(problem.logits(x)))
        return best.x


class PGD(Attack):
    """Projected gradient descent (Madry et al.) with ``restarts`` random restarts.

    ``steps`` steps of ``step_size`` (default ``2.5 * eps / steps``) along the signed (l_inf) or
    per-frame normalised (l_2) gradient of ``loss`` (``"ce"`` or ``"margin"``), projected onto the
    region after every step.  The first run starts at a uniformly random point when
    ``random_start`` (else at ``x``), later restarts always do, and only on samples not yet broken.
    Returns the lowest-margin point seen."""

    def __init__(self, steps: int = 40, step_size: float | None = None, restarts: int = 1, random_start: bool = True,
                 loss: str = "ce", seed: int = 0) -> None:
        self.steps = _check_int("steps", steps, 1)
        self.step_size = _check_step("step_size", step_size)
        self.restarts = _check_int("restarts", restarts, 1)
        self.random_start = bool(random_start)
        self.loss = _check_loss(loss, ("ce", "margin", "dlr"))
        self.seed = _check_int("seed", seed, 0)
        self.name = f"PGD-{'CE' if loss == 'ce' else loss}"

    def run(self, problem: AttackProblem) -> Tensor:
        gen = problem.generator(self.seed)
        step = 2.5 * problem.eps / self.steps if self.step_size is None else self.step_size
        with torch.no_grad():
            best = _Best(problem.x0, problem.margins(problem.logits(problem.x0)))
        rows = torch.arange(problem.num_regions, device=problem.x0.device)
        for restart in range(self.restarts):
            if restart > 0:
                rows = (~problem.sample_broken(best.margin < 0)).nonzero()[:, 0]
                if rows.numel() == 0:
                    break
            sub = problem if restart == 0 else problem.subset(rows)
            x = sub.random_start(gen) if (self.random_start or restart > 0) else sub.x0
            for _ in range(self.steps):
                _, logits, grad = sub.loss_and_grad(x, self.loss)
                best.update(x, sub.margins(logits), rows)
                x = sub.project(x + step * sub.ascent_direction(grad))
            with torch.no_grad():
                best.update(x, sub.margins(sub.logits(x)), rows)
        return best.x


def _apgd_checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD checks progress: ``p0=0, p1=0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * steps) for q in p[1:] if math.ceil(q * steps) < steps and q < 1})


class APGD(Attack):
    """Auto-PGD (Croce & Hein, 2020): step size ``2 eps``, momentum ``0.75``, step size halved
    (restarting from the best point) at checkpoints where fewer than 75% of the steps since the
    last checkpoint increased the loss, or where neither the step size was reduced nor the best
    loss improved.  ``loss`` is ``"ce"`` or ``"dlr"`` (the margin loss with fewer than 3 classes;
    ``"margin"`` is accepted too).  Starts at a seeded random point; returns the lowest-margin
    point seen."""

    def __init__(self, steps: int = 100, loss: str = "ce", seed: int = 0, *, rho: float = 0.75,
                 momentum: float = 0.75) -> None:
        self.steps = _check_int("steps", steps, 1)
        self.loss = _check_loss(loss, ("ce", "dlr", "margin"))
        self.seed = _check_int("seed", seed, 0)
        if not (0 < rho <= 1) or not (0 <= momentum <= 1):
            raise InvalidInputError(f"need 0 < rho <= 1 and 0 <= momentum <= 1, got rho={rho}, momentum={momentum}")
        self.rho, self.momentum = float(rho), float(momentum)
        self.name = f"APGD-{loss.upper() if loss != 'margin' else 'margin'}"

    def run(self, problem: AttackProblem) -> Tensor:
        gen = problem.generator(self.seed)
        R = problem.num_regions
        dev = problem.x0.device
        with torch.no_grad():
            best = _Best(problem.x0, problem.margins(problem.logits(problem.x0)))
        checkpoints = set(_apgd_checkpoints(self.steps))
        eta = torch.full((R, 1, 1), 2.0 * problem.eps, dtype=problem.x0.dtype, device=dev)

        x = problem.random_start(gen)
        loss, logits, grad = problem.loss_and_grad(x, self.loss)
        best.update(x, problem.margins(logits))
        loss_best, x_loss_best, grad_best = loss.clone(), x.clone(), grad.clone()
        # checkpoint state
        increases = torch.zeros(R, dtype=torch.long, device=dev)
        last_check, loss_best_at_check = 0, loss_best.clone()
        reduced_at_check = torch.zeros(R, dtype=torch.bool, device=dev)
        x_prev = x
        for k in range(self.steps):
            with torch.no_grad():
                z = problem.project(x + eta * problem.ascent_direction(grad))
                alpha = 1.0 if k == 0 else self.momentum
                x_new = problem.project(x + alpha * (z - x) + (1 - alpha) * (x - x_prev))
            x_prev = x
            loss_new, logits, grad_new = problem.loss_and_grad(x_new, self.loss)
            best.update(x_new, problem.margins(logits))
            increases += (loss_new > loss).long()
            improved = loss_new > loss_best
            loss_best = torch.where(improved, loss_new, loss_best)
            x_loss_best = torch.where(improved[:, None, None], x_new, x_loss_best)
            grad_best = torch.where(improved[:, None, None], grad_new, grad_best)
            x, loss, grad = x_new, loss_new, grad_new
            if k + 1 in checkpoints:
                oscillating = increases < self.rho * (k + 1 - last_check)
                stalled = ~reduced_at_check & (loss_best <= loss_best_at_check)
                halve = oscillating | stalled
                eta = torch.where(halve[:, None, None], eta / 2, eta)
                # restart the halved regions from their best point (no momentum across the jump)
                x = torch.where(halve[:, None, None], x_loss_best, x)
                x_prev = torch.where(halve[:, None, None], x_loss_best, x_prev)
                grad = torch.where(halve[:, None, None], grad_best, grad)
                loss = torch.where(halve, loss_best, loss)
                reduced_at_check, loss_best_at_check = halve, loss_best.clone()
                increases.zero_()
                last_check = k + 1
        return best.x


class Ensemble(Attack):
    """Run ``attacks`` in order, each only on the samples that survived the previous ones.

    ``broken_by`` names the member that broke each sample; for surviving samples the
    lowest-margin point over all members is returned."""

    def __init__(self, attacks: Sequence[Attack], *, name: str | None = None) -> None:
        attacks = list(attacks) if not isinstance(attacks, Attack) else [attacks]
        if not attacks or not all(isinstance(a, Attack) for a in attacks):
            raise InvalidInputError("Ensemble needs a non-empty sequence of Attack instances")
        self.attacks = tuple(attacks)
        self.name = name or "Ensemble[" + ", ".join(a.name for a in self.attacks) + "]"

    def run(self, problem: AttackProblem) -> Tensor:
        with torch.no_grad():
            best = _Best(problem.x0, problem.margins(problem.logits(problem.x0)))
        broken = torch.zeros(problem.num_regions, dtype=torch.bool, device=problem.x0.device)
        for attack in self.attacks:
            rows = (~problem.sample_broken(broken)).nonzero()[:, 0]
            if rows.numel() == 0:
                break
            sub = problem.subset(rows)
            points = sub.project(attack.run(sub).detach())
            with torch.no_grad():
                logits = sub.logits(points)
            best.update(points, sub.margins(logits), rows)
            now = sub.misclassified(logits)
            broken[rows] |= now
            for r, s, b in zip(rows.tolist(), now.tolist(), sub.broken_by):
                if s:
                    problem.broken_by[r] = b if b is not None else attack.name
        return best.x


def default_ensemble(seed: int = 0, *, steps: int = 100, restarts: int = 5) -> Ensemble:
    """APGD-CE, then APGD-DLR (margin loss for 2 classes), then PGD-margin with ``restarts`` restarts."""
    return Ensemble([
        APGD(steps=steps, loss="ce", seed=seed),
        APGD(steps=steps, loss="dlr", seed=seed + 1),
        PGD(steps=steps, loss="margin", restarts=restarts, seed=seed + 2),
    ], name="default_ensemble")


def attack_margins(program: Program, regions: Regions, weight: Tensor, bias: Tensor, *,
                   steps: int = 20) -> tuple[Tensor, Tensor]:
    """Each verification region's lowest worst margin found by a quick attack: an UPPER bound on
    the smallest margin over the region (negative: the region contains a counterexample).

    ``weight (R, k, H)`` / ``bias (R, k)`` are the margins of :func:`rnnguard.certify.margin_specification`.
    A deterministic signed-gradient descent on each region's smallest margin, from its box centre
    (so a violated centre is always found), with steps of 2.5 box radii / ``steps``, kept in the
    box and, where the region has one, in its l_2 ball.  The optimised verifiers use it to skip
    regions no sound bound can certify; it never certifies anything, so its strength only affects
    their time.  Returns the margins ``(R,)`` and each region's lowest-margin point ``(R, T, d)``."""
    lo, hi = regions.lower, regions.upper
    R, T, _ = lo.shape
    x, step = (lo + hi) / 2, (hi - lo) * (1.25 / max(steps, 1))
    best = torch.full((R,), float("inf"), dtype=lo.dtype, device=lo.device)
    best_x = x.clone()
    if R == 0 or T == 0:
        return best, best_x
    for i in range(steps + 1):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            h = unroll(program, [Point(x[:, t]) for t in range(T)], regions.lengths, Point)
            margin = h.margin_lower(weight, bias).amin(dim=1)
            (grad,) = torch.autograd.grad(margin.sum(), x)
        better = margin.detach() < best
        best = torch.where(better, margin.detach(), best)
        best_x = torch.where(better[:, None, None], x.detach(), best_x)
        if i == steps or bool((best < 0).all()):
            break
        x = torch.minimum(torch.maximum(x.detach() - step * grad.sign(), lo), hi)
        if regions.ball_eps is not None:  # shrink towards the ball centre (inside the box): stays in both
            delta = x - regions.ball_center
            norm = delta.norm(dim=-1, keepdim=True)
            eps = regions.ball_eps[..., None].to(x.dtype)
            x = regions.ball_center + delta * torch.where(norm > eps, eps / norm.clamp_min(torch.finfo(x.dtype).tiny), 1.0)
    return best, best_x


def falsify_regions(program: Program, regions: Regions, weight: Tensor, bias: Tensor, *,
                    steps: int = 20) -> tuple[Tensor, Tensor]:
    """Which verification regions contain a point that violates their margin specification
    (:func:`attack_margins` below zero): the mask ``(R,)`` and each region's lowest-margin point."""
    margins, points = attack_margins(program, regions, weight, bias, steps=steps)
    return margins < 0, points
