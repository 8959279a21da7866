"""A small, deterministic and resumable training loop for sequence classifiers.

:func:`fit` trains with Adam (or plain SGD) on mini-batches drawn by a seeded :class:`torch.Generator`, clips
gradients, and (with ``checkpoint_dir``) saves after every epoch, atomically, everything needed
to continue bit-for-bit: model, optimizer, the shuffling generator, the global torch RNG and the
metrics so far.  Re-running the same call after an interruption continues from the last
completed epoch and ends in the same state as an uninterrupted run.

The loss is pluggable: ``objective(model, x, y, lengths, *, epoch)`` returns a scalar loss, or
``(loss, logits)`` so that the loop can also report training accuracy.  The default,
:func:`clean_cross_entropy`, is regular training; certified-training objectives can be passed
the same way (``epoch`` lets them follow a schedule, e.g. a growing eps).  Objectives from
:mod:`rnnguard.objectives` (and any objective with ``fractional_epochs = True``) receive a
fractional epoch, ``completed_epochs + batch_index / num_batches``, so that their ramps move
smoothly within an epoch; other objectives receive the 0-based integer epoch (see ``fit``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnguard.checkpoints import CheckpointError, read_checkpoint, save_checkpoint
from rnnguard.errors import InvalidInputError, UnknownNameError
from rnnguard.models import SequenceClassifier
from rnnguard.reports import write_text_atomic

__all__ = ["Objective", "clean_cross_entropy", "evaluate", "fit", "keep_freed_memory", "select_epoch", "CHECKPOINT_NAME",
           "METRICS_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
TRAIN_STATE_FORMAT = "rnnguard-train-state"
# a validation set on which one class gets at least this share of the predictions flags a collapse
COLLAPSE_SHARE = 0.99
#: Optimizers ``fit`` accepts by name (SGD without momentum is the recipe R2 trained its MNIST LSTMs with).
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def select_epoch(history: Sequence[dict]) -> dict | None:
    """The metrics row of the epoch to keep: the highest ``val_certified`` (ties: higher ``val_acc``)
    among epochs that did not collapse (``val_majority`` below :data:`COLLAPSE_SHARE`).

    A collapsed epoch's model is (nearly) constant: it "certifies" the majority class's share of
    the validation data, which can beat every useful epoch of an unstable run.  ``None`` when no
    row has ``val_certified`` or every such epoch collapsed."""
    scored = [h for h in history if h.get("val_certified") is not None
              and (h.get("val_majority") or 0.0) < COLLAPSE_SHARE]
    return max(scored, key=lambda h: (h["val_certified"], h.get("val_acc") or 0.0)) if scored else None


class CollapseWarning(UserWarning):
    """Training produced a (nearly) constant classifier: see :func:`fit`'s ``val_majority`` metric."""

ObjectiveOutput = Union[Tensor, tuple[Tensor, Tensor]]


class Objective(Protocol):
    """A training loss: ``loss`` or ``(loss, logits)`` for one mini-batch."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, lengths: Tensor, *, epoch: float) -> ObjectiveOutput: ...


def clean_cross_entropy(model: nn.Module, x: Tensor, y: Tensor, lengths: Tensor, *, epoch: int = 0) -> tuple[Tensor, Tensor]:
    """Regular training: mean cross-entropy of the clean logits (returns ``(loss, logits)``)."""
    logits = model(x, lengths)
    return F.cross_entropy(logits, y), logits


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed memory for reuse instead of returning it to the system.

    Certified training allocates and frees generator tensors of tens of MB many times per step;
    glibc serves such sizes with fresh ``mmap`` pages, so every step pays page faults for them
    again (about a third of a zonotope training step).  This sets ``M_MMAP_MAX = 0`` and turns
    heap trimming off (``M_TRIM_THRESHOLD = -1``, i.e. SIZE_MAX) for the process: the peak heap
    stays mapped until exit.  A no-op returning ``False`` where glibc is absent; idempotent."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))


# --------------------------------------------------------------------------- objectives


def describe_objective(objective: Any) -> str:
    """A stable text naming ``objective`` (stored with the training state: resuming with another
    objective is refused).  Functions: their qualified name; dataclass objectives (those of
    :mod:`rnnguard.objectives`): their repr, which spells out method, domain, eps and kappa ramps."""
    if dataclasses.is_dataclass(objective) and not isinstance(objective, type):
        return repr(objective)
    return getattr(objective, "__qualname__", type(objective).__name__)


def _wants_fractional_epochs(objective: Any) -> bool:
    """Objectives that follow a schedule in a fractional epoch: those that say so with a
    ``fractional_epochs`` attribute, and those defined in :mod:`rnnguard.objectives`."""
    flag = getattr(objective, "fractional_epochs", None)
    if flag is not None:
        return bool(flag)
    module = getattr(objective, "__module__", None) if inspect.isfunction(objective) else type(objective).__module__
    return module == "rnnguard.objectives"


def _schedule_values(objective: Any, epoch: float) -> dict[str, float]:
    """``eps`` / ``kappa`` of objectives with ``eps_ramp`` / ``kappa_ramp`` schedules at ``epoch``."""
    out: dict[str, float] = {}
    for key in ("eps", "kappa"):
        ramp = getattr(objective, f"{key}_ramp", None)
        if callable(ramp):
            try:
                out[key] = float(ramp(epoch))
            except Exception:  # a foreign ramp: metrics only, never fail training over it
                pass
    return out


# --------------------------------------------------------------------------- validation helpers


def _check_data(x: Any, y: Any, lengths: Any, what: str) -> tuple[Tensor, Tensor, Tensor]:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 3:
        raise InvalidInputError(f"{what}: x must be a floating-point tensor of shape (N, T, d)")
    N, T, _ = x.shape
    if N == 0 or T == 0:
        raise InvalidInputError(f"{what}: x is empty (shape {tuple(x.shape)})")
    if not isinstance(y, Tensor) or y.shape != (N,) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InvalidInputError(f"{what}: y must be an integer tensor of shape ({N},)")
    if lengths is None:
        lengths = torch.full((N,), T, dtype=torch.long)
    if not isinstance(lengths, Tensor) or lengths.shape != (N,) or lengths.is_floating_point():
        raise InvalidInputError(f"{what}: lengths must be an integer tensor of shape ({N},)")
    if ((lengths < 1) | (lengths > T)).any():
        raise InvalidInputError(f"{what}: lengths must lie in [1, {T}]")
    return x, y.long(), lengths.long()


def _unpack_val(val: Any) -> tuple[Tensor, Tensor, Tensor] | None:
    """``val`` is ``None``, an object with ``x``/``y``/``lengths`` (e.g. a TensorSplit) or a tuple
    ``(x, y)`` / ``(x, y, lengths)``."""
    if val is None:
        return None
    if all(hasattr(val, a) for a in ("x", "y")):
        return _check_data(val.x, val.y, getattr(val, "lengths", None), "val")
    if isinstance(val, (tuple, list)) and len(val) in (2, 3):
        return _check_data(val[0], val[1], val[2] if len(val) == 3 else None, "val")
    raise InvalidInputError("val must be None, (x, y), (x, y, lengths) or an object with .x, .y, .lengths")


def _fingerprint(x: Tensor, y: Tensor, lengths: Tensor) -> str:
    """A cheap digest of the training data, to refuse resuming on different data."""
    h = hashlib.sha256()
    for t in (x, y, lengths):
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _labels_fit(model: nn.Module, y: Tensor, what: str) -> None:
    head = getattr(model, "head", None)
    C = getattr(head, "out_features", None)
    if isinstance(C, int) and ((y < 0) | (y >= C)).any():
        raise InvalidInputError(f"{what}: labels must lie in [0, {C - 1}] for a model with {C} classes")


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, lengths: Tensor | None = None, *, batch_size: int = 256) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode, no gradients); ``majority_share``
    is the fraction of inputs given the most frequent predicted class (1.0: a constant classifier)."""
    x, y, lengths = _check_data(x, y, lengths, "evaluate")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    counts: Tensor | None = None
    try:
        for s in range(0, x.shape[0], batch_size):
            xb = x[s : s + batch_size].to(device=device, dtype=dtype)
            yb = y[s : s + batch_size].to(device)
            logits = model(xb, lengths[s : s + batch_size].to(device))
            total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
            pred = logits.argmax(dim=1)
            correct += int((pred == yb).sum())
            batch_counts = torch.bincount(pred.cpu(), minlength=logits.shape[1])
            counts = batch_counts if counts is None else counts + batch_counts
    finally:
        model.train(was_training)
    n = x.shape[0]
    majority = float(counts.max()) / n if counts is not None else 0.0
    return {"loss": total_loss / n, "accuracy": correct / n, "majority_share": majority}


# --------------------------------------------------------------------------- checkpoint I/O


def _write_metrics(path: Path, history: Sequence[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, sort_keys=False) + "\n" for row in history))


def _append_metrics(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=False,
    )


# --------------------------------------------------------------------------- the loop


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    lengths: Tensor | None = None,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    val: Any = None,
    objective: Objective | Callable[..., ObjectiveOutput] | None = None,
    grad_clip: float | None = 5.0,
    weight_decay: float = 0.0,
    fractional_epochs: bool | None = None,
    reuse_memory: bool = True,
    lr_milestones: Sequence[int] = (),
    lr_gamma: float = 0.1,
    epoch_metrics: Callable[[nn.Module], dict[str, float]] | None = None,
    keep_epoch_models: bool = False,
    optimizer: str = "adam",
    epoch_model_extra: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Train ``model`` on ``x (N, T, d)``, ``y (N,)``, ``lengths (N,)`` for ``epochs`` epochs; returns
    one metrics dict per epoch (``epoch`` 1-based, ``train_loss``, ``train_acc``, ``val_loss``,
    ``val_acc`` and ``val_majority`` when ``val`` is given, ``seconds``).  A :class:`CollapseWarning`
    is issued for an epoch whose model gives one class to >= 99% of the validation inputs.

    * ``optimizer``: ``"adam"`` (default) or ``"sgd"`` (plain SGD, no momentum: the recipe R2 trained
      its MNIST LSTMs with), both with ``lr`` and ``weight_decay``; gradient norm clipped to
      ``grad_clip`` (``None``: no clipping).
    * Each epoch visits a fresh permutation from ``torch.Generator().manual_seed(seed)``; the last
      batch may be smaller.  The model is trained in place (on its own device and dtype).
    * ``checkpoint_dir``: after every epoch ``checkpoint.pt`` (an rnnguard checkpoint, loadable with
      :func:`~rnnguard.checkpoints.load_checkpoint`, whose ``extra["training"]`` holds the optimizer
      and RNG states) is replaced atomically and a line is appended to ``metrics.jsonl``.
      With ``resume=True`` an existing checkpoint is continued (it must come from the same model
      architecture, data, batch size, lr and seed; ``epochs`` may grow); ``resume=False`` starts over.
      Checkpointing needs a :class:`~rnnguard.models.SequenceClassifier`.
    * ``objective(model, x, y, lengths, *, epoch)`` returns the loss or ``(loss, logits)``; default
      :func:`clean_cross_entropy`.  With ``fractional_epochs`` the objective gets
      ``epoch = completed_epochs + batch_index / num_batches`` (0-based; 0, 0.25, 0.5, 0.75, 1, ...
      for 4 batches per epoch) so that eps / kappa ramps move smoothly within an epoch; otherwise
      the 0-based integer epoch.  ``None`` (default): fractional for objectives from
      :mod:`rnnguard.objectives` or with a true ``fractional_epochs`` attribute, integer otherwise.
      Objectives with ``eps_ramp`` / ``kappa_ramp`` schedules get ``eps`` / ``kappa`` (their
      values at the epoch's last batch) in the metrics rows.
    * ``reuse_memory``: call :func:`keep_freed_memory` first (faster certified training on glibc).
    * ``lr_milestones`` / ``lr_gamma``: step decay (as ``torch.optim.lr_scheduler.MultiStepLR``):
      epoch ``e`` (0-based) trains at ``lr * lr_gamma ** #{m in lr_milestones : m <= e}``; the rate
      is a function of the epoch, so a resumed run follows the same schedule.  Rows record ``lr``.
    * ``epoch_metrics(model)``: extra metrics merged into each epoch's row (e.g. certified accuracy
      on validation data, to select a checkpoint); called in eval mode, under ``torch.no_grad``.
    * ``keep_epoch_models``: also save the model after every epoch as ``model-e{N}.pt`` (needs
      ``checkpoint_dir``), so that any epoch can be evaluated or selected later.
      ``epoch_model_extra`` (plain values) is stored in each of these files next to ``epoch``:
      the CLI puts its data settings there (token cut-off, split seed), so that evaluating an
      epoch's model reads its inputs exactly as training did.
    """
    x, y, lengths = _check_data(x, y, lengths, "fit")
    val_data = _unpack_val(val)
    _labels_fit(model, y, "fit")
    if val_data is not None:
        _labels_fit(model, val_data[1], "val")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise InvalidInputError(f"epochs must be an integer >= 0, got {epochs!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InvalidInputError(f"lr must be a finite number > 0, got {lr!r}")
    if grad_clip is not None and not (grad_clip > 0):
        raise InvalidInputError(f"grad_clip must be > 0 or None, got {grad_clip!r}")
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in lr_milestones):
        raise InvalidInputError(f"lr_milestones must be integers >= 0, got {list(lr_milestones)!r}")
    milestones = sorted(lr_milestones)
    if not (isinstance(lr_gamma, (int, float)) and math.isfinite(lr_gamma) and lr_gamma > 0):
        raise InvalidInputError(f"lr_gamma must be a finite number > 0, got {lr_gamma!r}")
    opt_name = optimizer.strip().lower() if isinstance(optimizer, str) else ""
    if opt_name not in OPTIMIZERS:
        raise UnknownNameError(f"unknown optimizer {optimizer!r}; choose {' or '.join(OPTIMIZERS)}")
    if keep_epoch_models and checkpoint_dir is None:
        raise InvalidInputError("keep_epoch_models needs a checkpoint_dir")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InvalidInputError("model has no trainable parameters")
    objective = objective or clean_cross_entropy
    if reuse_memory:
        keep_freed_memory()
    fractional = _wants_fractional_epochs(objective) if fractional_epochs is None else bool(fractional_epochs)
    device, dtype = params[0].device, params[0].dtype

    optim: torch.optim.Optimizer = OPTIMIZERS[opt_name](params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(int(seed))
    N = x.shape[0]
    settings = {
        "batch_size": batch_size, "lr": float(lr), "seed": int(seed), "weight_decay": float(weight_decay),
        "grad_clip": None if grad_clip is None else float(grad_clip), "data_shape": list(x.shape),
        "data": _fingerprint(x, y, lengths),
        "objective": describe_objective(objective),
    }
    if milestones:  # only when set, so that checkpoints from before the option still resume
        settings.update(lr_milestones=milestones, lr_gamma=float(lr_gamma))
    if opt_name != "adam":  # likewise
        settings["optimizer"] = opt_name
    history: list[dict] = []
    start_epoch = 0

    ckpt_path = metrics_path = None
    if checkpoint_dir is not None:
        if not isinstance(model, SequenceClassifier):
            raise InvalidInputError(
                f"checkpointing needs an rnnguard.SequenceClassifier, got {type(model).__name__} "
                "(pass checkpoint_dir=None to train without checkpoints)")
        folder = Path(checkpoint_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        ckpt_path, metrics_path = folder / CHECKPOINT_NAME, folder / METRICS_NAME
        if resume and ckpt_path.exists():
            start_epoch, history = _restore(ckpt_path, model, optim, generator, settings, epochs)
            _write_metrics(metrics_path, history)  # the checkpoint is the source of truth
        else:
            _write_metrics(metrics_path, [])

    n_batches = math.ceil(N / batch_size)
    bar = _progress(progress and start_epoch < epochs)
    task = None
    if bar is not None:
        bar.start()
        task = bar.add_task(f"epoch {start_epoch + 1}/{epochs}", total=n_batches * (epochs - start_epoch), info="")
    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            epoch_lr = float(lr) * float(lr_gamma) ** sum(m <= epoch for m in milestones)
            for group in optim.param_groups:
                group["lr"] = epoch_lr
            model.train()
            perm = torch.randperm(N, generator=generator)
            sum_loss, n_seen, n_correct, n_scored = 0.0, 0, 0, 0
            at: float = epoch
            for batch_index, s in enumerate(range(0, N, batch_size)):
                idx = perm[s : s + batch_size]
                xb = x[idx].to(device=device, dtype=dtype)
                yb = y[idx].to(device)
                lb = lengths[idx].to(device)
                at = epoch + batch_index / n_batches if fractional else epoch
                out = objective(model, xb, yb, lb, epoch=at)
                loss, logits = (out if isinstance(out, tuple) else (out, None))
                if not isinstance(loss, Tensor) or loss.dim() != 0:
                    raise InvalidInputError("objective must return a scalar loss tensor (or (loss, logits))")
                if not torch.isfinite(loss):
                    raise InvalidInputError(
                        f"training diverged: non-finite loss {float(loss)} in epoch {epoch + 1} (try a smaller lr)")
                optim.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                optim.step()
                b = idx.shape[0]
                sum_loss += float(loss.detach()) * b
                n_seen += b
                if logits is not None:
                    n_correct += int((logits.detach().argmax(dim=1) == yb).sum())
                    n_scored += b
                if bar is not None:
                    bar.update(task, advance=1, description=f"epoch {epoch + 1}/{epochs}",
                               info=f"loss {sum_loss / n_seen:.4f}")
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": sum_loss / n_seen}
            row["train_acc"] = n_correct / n_scored if n_scored else None
            if milestones:
                row["lr"] = epoch_lr
            row.update(_schedule_values(objective, at))
            if val_data is not None:
                ev = evaluate(model, *val_data)
                row["val_loss"], row["val_acc"] = ev["loss"], ev["accuracy"]
                row["val_majority"] = ev["majority_share"]
                if ev["majority_share"] >= COLLAPSE_SHARE:
                    warnings.warn(CollapseWarning(
                        f"epoch {epoch + 1}: the model gives one class to {100 * ev['majority_share']:.1f}% of the "
                        "validation inputs: training has collapsed to a (nearly) constant classifier, which is "
                        "trivially robust but useless (certified training at too large an eps or too fast a ramp)"),
                        stacklevel=2)
            row["seconds"] = time.perf_counter() - t0
            if epoch_metrics is not None:
                model.eval()
                with torch.no_grad():
                    row.update(epoch_metrics(model))
            history.append(row)
            if ckpt_path is not None:
                _save(ckpt_path, model, optim, generator, settings, epoch + 1, epochs, history)
                _append_metrics(metrics_path, row)
                if keep_epoch_models:
                    save_checkpoint(model, ckpt_path.parent / f"model-e{epoch + 1}.pt",
                                    extra={**(epoch_model_extra or {}), "epoch": epoch + 1})
            if bar is not None:
                msg = f"epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.4f}"
                if row["train_acc"] is not None:
                    msg += f", train acc {100 * row['train_acc']:.1f}%"
                if "val_acc" in row:
                    msg += f", val acc {100 * row['val_acc']:.1f}%"
                bar.console.print(msg)
    finally:
        if bar is not None:
            bar.stop()
    model.eval()
    return history


def _save(path: Path, model: SequenceClassifier, optimizer: torch.optim.Optimizer, generator: torch.Generator,
          settings: dict, epoch: int, epochs: int, history: list[dict]) -> None:
    training = {
        "format": TRAIN_STATE_FORMAT,
        "epoch": epoch,
        "epochs_requested": epochs,
        "settings": settings,
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
    }
    save_checkpoint(model, path, extra={"training": training})


def _restore(path: Path, model: SequenceClassifier, optimizer: torch.optim.Optimizer, generator: torch.Generator,
             settings: dict, epochs: int) -> tuple[int, list[dict]]:
    payload = read_checkpoint(path)
    training = payload["extra"].get("training")
    if not isinstance(training, dict) or training.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path} holds no training state; use another checkpoint folder or start over with resume=False")
    if payload["config"] != model.config():
        raise CheckpointError(
            f"{path} was trained with model {payload['config']}, not {model.config()}; "
            "use another checkpoint folder or start over with resume=False")
    saved = training.get("settings", {})
    # over both key sets: optional settings (lr_milestones, optimizer) are stored only when not at their default
    diff = {k: (saved.get(k), settings.get(k)) for k in {**saved, **settings} if saved.get(k) != settings.get(k)}
    if diff:
        detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"cannot resume from {path}: training settings differ ({detail}); "
                              "use another checkpoint folder or start over with resume=False")
    done = int(training["epoch"])
    if done > epochs:
        raise CheckpointError(f"{path} already holds {done} epochs, more than the {epochs} requested; "
                              "use another checkpoint folder or start over with resume=False")
    try:
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(training["optimizer"])
        generator.set_state(training["generator"])
        torch.set_rng_state(training["torch_rng"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot restore the training state ({exc})") from None
    history = list(training.get("history", []))[:done]
    return done, history
