"""Saving and loading :class:`~rnnguard.models.SequenceClassifier` checkpoints.

A checkpoint is one ``torch.save`` file holding a plain dictionary::

    {"format": "rnnguard-checkpoint", "version": 1,
     "config": model.config(), "state_dict": {...}, "extra": {...}}

It contains only tensors and plain Python values, so it loads with ``weights_only=True``
(no arbitrary code runs when a file is opened).  Files are written atomically: to a temporary
file in the destination folder, then renamed over the target with :func:`os.replace`, so an
interrupted save never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from rnnguard.errors import InvalidInputError, RnnGuardError
from rnnguard.models import SequenceClassifier
from rnnguard.reports import default_file_mode

__all__ = ["FORMAT", "VERSION", "CheckpointError", "atomic_torch_save", "save_checkpoint", "load_checkpoint",
           "read_checkpoint"]

FORMAT = "rnnguard-checkpoint"
VERSION = 1

PathLike = str | os.PathLike[str]


class CheckpointError(InvalidInputError):
    """A checkpoint file that is missing, unreadable, corrupt or not an rnnguard checkpoint."""


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` into ``path`` atomically (temporary file in the same folder + ``os.replace``).

    Creates missing parent folders.  Returns the final path."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, default_file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path


def _cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def checkpoint_payload(model: SequenceClassifier, extra: dict | None = None) -> dict[str, Any]:
    """The dictionary :func:`save_checkpoint` writes (exposed for callers that add fields)."""
    if not isinstance(model, SequenceClassifier):
        raise InvalidInputError(
            f"save_checkpoint needs an rnnguard.SequenceClassifier (it stores model.config()), "
            f"got {type(model).__name__}")
    if extra is not None and not isinstance(extra, dict):
        raise InvalidInputError(f"extra must be a dict or None, got {type(extra).__name__}")
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config(),
        "state_dict": _cpu_state_dict(model),
        "extra": dict(extra) if extra else {},
    }


def save_checkpoint(model: SequenceClassifier, path: PathLike, *, extra: dict | None = None) -> Path:
    """Write ``model`` (config + weights) and ``extra`` to ``path`` atomically; returns the path.

    ``extra`` should hold only tensors and plain Python values (dict, list, tuple, str, int,
    float, bool, None) so that the file stays loadable with ``weights_only=True``."""
    return atomic_torch_save(checkpoint_payload(model, extra), path)


def read_checkpoint(path: PathLike, *, map_location: str | torch.device = "cpu", trusted: bool = False) -> dict[str, Any]:
    """Load and validate the raw checkpoint dictionary at ``path`` (see :func:`load_checkpoint`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "global" not in text:  # the weights-only unpickler choked on the bytes themselves
            detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
            raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated file?): "
                                  f"{detail[0] if detail else 'unpickling failed'}") from None
        if not trusted:
            raise CheckpointError(
                f"{path} is not an rnnguard checkpoint: it holds Python objects other than tensors and plain "
                "values, so it cannot be loaded safely with weights_only=True (pass trusted=True only if you "
                "trust its origin)") from None
        try:
            payload = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc2:  # corrupt in a way pickle itself reports
            raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc2).__name__}: {exc2})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError,
            IndexError, TypeError, UnicodeDecodeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated file?): {msg}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        hint = ""
        if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            hint = " (it looks like a bare state_dict: build the model yourself and call load_state_dict)"
        raise CheckpointError(f"{path} is not an rnnguard checkpoint (format={found!r}){hint}")
    version = payload.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: invalid checkpoint version {version!r}")
    if version > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {version}, newer than this rnnguard understands ({VERSION}); upgrade rnnguard")
    for key, kind in (("config", dict), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"{path}: checkpoint field {key!r} is missing or not a {kind.__name__}")
    extra = payload.get("extra")
    if extra is None:
        payload["extra"] = {}
    elif not isinstance(extra, dict):
        raise CheckpointError(f"{path}: checkpoint field 'extra' is not a dict")
    return payload


def model_from_config(config: dict, *, source: str = "checkpoint") -> SequenceClassifier:
    """Build an (untrained) :class:`SequenceClassifier` from ``model.config()``'s dictionary."""
    cfg = dict(config)
    try:
        kind = cfg.pop("kind")
        input_size = cfg.pop("input_size")
        hidden_size = cfg.pop("hidden_size")
        num_classes = cfg.pop("num_classes")
        return SequenceClassifier(kind, input_size, hidden_size, num_classes, **cfg)
    except RnnGuardError as exc:
        raise CheckpointError(f"{source}: invalid model config {config!r}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: invalid model config {config!r} ({type(exc).__name__}: {exc})") from None


def load_checkpoint(path: PathLike, *, map_location: str | torch.device = "cpu",
                    trusted: bool = False) -> tuple[SequenceClassifier, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`: returns ``(model, extra)``.

    The model is rebuilt from the stored config, gets the stored weights and is put in eval
    mode.  Loading uses ``torch.load(weights_only=True)``; ``trusted=True`` allows falling
    back to full unpickling for files that need it (only for files you trust).  Raises
    :class:`CheckpointError` (an :class:`~rnnguard.errors.InvalidInputError`) for a missing,
    corrupt, foreign or incompatible file."""
    payload = read_checkpoint(path, map_location=map_location, trusted=trusted)
    model = model_from_config(payload["config"], source=str(path))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not match the stored model config: "
                              f"{' '.join(line.strip() for line in first[:3])}") from None
    model.to(map_location)
    model.eval()
    return model, payload["extra"]
