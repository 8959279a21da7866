"""The ``rnnguard`` command line: ``rnnguard certify``, ``train``, ``evaluate`` and ``demo``.

Errors that rnnguard raises on purpose (bad inputs, missing data, corrupt checkpoints, ...) are
printed as a single red ``error: ...`` line on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, List, Optional, Sequence

import torch
import typer

from rnnguard import __version__
from rnnguard.errors import InvalidInputError, RnnGuardError

__all__ = ["app", "main"]

DOMAIN_ORDER = ("box", "zonotope", "interzono")
DTYPES = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32, "float": torch.float32}

app = typer.Typer(
    name="rnnguard",
    help="Sound robustness certification for RNN / LSTM / GRU classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# --------------------------------------------------------------------------- output helpers


def _stdout():
    from rich.console import Console

    return Console(highlight=False)


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _say(message: str) -> None:
    from rich.text import Text

    _stdout().print(Text(message), soft_wrap=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _fail(message: str, code: int = 2) -> None:
    from rich.text import Text

    one_line = " ".join(str(message).split())
    _stderr().print(Text(f"error: {one_line}", style="bold red"), soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _cli_errors() -> Iterator[None]:
    """Turn rnnguard's own errors (and file-system errors) into ``error: ...`` + exit code 2."""
    try:
        yield
    except typer.Exit:
        raise
    except RnnGuardError as exc:
        _fail(str(exc) or type(exc).__name__)
    except OSError as exc:  # missing data files, unwritable output folder, ...
        text = str(exc)
        if getattr(exc, "filename", None) and exc.strerror:
            text = f"{exc.strerror}: {exc.filename}"
        _fail(text or type(exc).__name__)
    except KeyboardInterrupt:
        _stderr().print("interrupted", style="red")
        raise typer.Exit(130)


_USER_THREADS = False  # set when --threads was given


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Temporarily use ``n`` torch threads (``None``: leave as is)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- option parsing


def _split_list(values: Sequence[str] | str | None) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (repeatable options that also take comma lists)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [part.strip() for v in values for part in str(v).split(",") if part.strip()]


def parse_domains(values: Sequence[str] | str) -> list[str]:
    """Domain names from repeated/comma-separated options; ``all`` means box, zonotope, interzono."""
    from rnnguard.domains import get_domain

    names: list[str] = []
    for name in _split_list(values):
        name = name.lower()
        expanded = list(DOMAIN_ORDER) if name == "all" else [name]
        for n in expanded:
            get_domain(n)  # raises UnknownNameError with the known names
            if n not in names:
                names.append(n)
    if not names:
        raise InvalidInputError("give at least one --domain (box, zonotope, interzono or all)")
    return names


def parse_eps(values: Sequence[str] | str) -> list[float]:
    out: list[float] = []
    for part in _split_list(values):
        try:
            v = float(part)
        except ValueError:
            raise InvalidInputError(f"--eps: {part!r} is not a number") from None
        if not math.isfinite(v) or v < 0:
            raise InvalidInputError(f"--eps: {part!r} must be a finite number >= 0")
        if v not in out:
            out.append(v)
    if not out:
        raise InvalidInputError("give at least one --eps value")
    return out


def parse_frames(text: str):
    """``all`` | ``one`` | a comma list of positions such as ``0,3,-1`` (negative: from the end)."""
    from rnnguard.perturbations import AllFrames, Frames, OneFrame

    t = text.strip().lower()
    if t == "all":
        return AllFrames()
    if t == "one":
        return OneFrame()
    parts = _split_list(t)
    try:
        positions = [int(p) for p in parts]
    except ValueError:
        raise InvalidInputError(f"--frames must be 'all', 'one' or a comma list of positions like 0,3,-1; got {text!r}") from None
    return Frames(positions)


def parse_clip(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = _split_list(text)
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise InvalidInputError(f"--clip must be LOW,HIGH (e.g. 0,1); got {text!r}") from None
    if not lo <= hi:
        raise InvalidInputError(f"--clip needs LOW <= HIGH; got {text!r}")
    return lo, hi


def parse_dtype(text: str) -> torch.dtype:
    try:
        return DTYPES[text.strip().lower()]
    except KeyError:
        raise InvalidInputError(f"--dtype must be float64 or float32; got {text!r}") from None


def frames_label(frames: Any) -> str:
    from rnnguard.perturbations import AllFrames, Frames, OneFrame

    if isinstance(frames, AllFrames):
        return "all"
    if isinstance(frames, OneFrame):
        return "one"
    if isinstance(frames, Frames):
        return ",".join(str(p) for p in frames.positions)
    return repr(frames)


# --------------------------------------------------------------------------- inputs


def load_inputs_file(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Read a ``torch.save``'d dict ``{"x": (N, T, d) float, "y": (N,) int, "lengths": (N,) int (optional)}``."""
    expected = "expected a torch.save'd dict with keys 'x' (N, T, d) float, 'y' (N,) int and optional 'lengths' (N,) int"
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidInputError(f"inputs file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable / unsafe pickle
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(f"cannot read inputs file {path} ({first}); {expected}") from None
    if not isinstance(obj, dict):
        raise InvalidInputError(f"inputs file {path} holds a {type(obj).__name__}; {expected}")
    missing = [k for k in ("x", "y") if k not in obj]
    if missing:
        raise InvalidInputError(f"inputs file {path} lacks key(s) {', '.join(map(repr, missing))} "
                                f"(found {sorted(map(str, obj))}); {expected}")
    x, y, lengths = obj["x"], obj["y"], obj.get("lengths")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3:
        what = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidInputError(f"inputs file {path}: 'x' must be a float tensor of shape (N, T, d), got {what}")
    N = x.shape[0]
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != N or y.is_floating_point() or y.dtype == torch.bool:
        raise InvalidInputError(f"inputs file {path}: 'y' must be an integer tensor of shape ({N},)")
    if lengths is not None and (not isinstance(lengths, torch.Tensor) or lengths.shape != (N,) or lengths.is_floating_point()):
        raise InvalidInputError(f"inputs file {path}: 'lengths' must be an integer tensor of shape ({N},)")
    return x, y.long(), None if lengths is None else lengths.long()


def _check_inputs(config: dict, x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor) -> None:
    N, T, d = x.shape
    if N == 0 or T == 0:
        raise InvalidInputError(f"no inputs to certify (x has shape {tuple(x.shape)})")
    if d != config["input_size"]:
        raise InvalidInputError(f"inputs have {d} features per frame but the model expects {config['input_size']}")
    if ((y < 0) | (y >= config["num_classes"])).any():
        raise InvalidInputError(f"labels must lie in [0, {config['num_classes'] - 1}] for this model")
    if ((lengths < 1) | (lengths > T)).any():
        raise InvalidInputError(f"lengths must lie in [1, {T}]")
    if not torch.isfinite(x).all():
        raise InvalidInputError("inputs contain NaN or infinite values")


def _check_threat_options(norm: str, inputs: Path | None, dataset: str | None, split: str, *,
                          exactly_one: str) -> str:
    """Validate --norm, --inputs/--dataset (``exactly_one`` is the error message) and --split; the normalized norm."""
    norm = norm.strip().lower()
    if norm not in ("linf", "l2"):
        raise InvalidInputError(f"--norm must be linf or l2; got {norm!r}")
    if (inputs is None) == (dataset is None):
        raise InvalidInputError(exactly_one)
    if split not in ("train", "val", "test"):
        raise InvalidInputError(f"--split must be train, val or test; got {split!r}")
    return norm


@dataclass
class _LoadedInputs:
    """A checkpoint's model and the (limited, checked) samples to run it on."""

    model: torch.nn.Module
    config: dict
    x: torch.Tensor
    y: torch.Tensor
    lengths: torch.Tensor
    sentences: list | None
    source: dict[str, Any]
    total: int  # samples before --limit


def _load_inputs(checkpoint: Path, *, inputs: Path | None, dataset: str | None, split: str, limit: int | None,
                 max_len: int | None, seed: int | None, data_root: Path | None) -> _LoadedInputs:
    """Load the checkpoint and the inputs file or dataset split (max_len / seed default to the checkpoint's)."""
    from rnnguard.checkpoints import load_checkpoint

    model, extra = load_checkpoint(checkpoint)
    config = model.config()
    data_info = extra.get("data") if isinstance(extra.get("data"), dict) else {}
    sentences = None
    if inputs is not None:
        x, y, lengths = load_inputs_file(inputs)
        source: dict[str, Any] = {"inputs": str(inputs)}
    elif dataset.strip().lower() == "mnist":  # type: ignore[union-attr]
        x, y, source = _mnist_inputs(config, data_info, split, data_root)
        lengths = None
    else:
        from rnnguard.data import load_text_splits

        name = dataset.strip().lower()  # type: ignore[union-attr]
        if max_len is None:
            if data_info.get("dataset") == name:
                max_len = data_info.get("max_len")
            elif not data_info:
                _say(f"warning: {checkpoint} records no training data settings, so {name} texts are NOT cut to a "
                     "token count; pass --max-len N (rnnguard train's default is 20) to read them as training did")
        split_seed = seed if seed is not None else int(data_info.get("seed", 0) or 0)
        data = load_text_splits(name, root=data_root, max_len=max_len, seed=split_seed)
        part = data[split]
        x, y, lengths, sentences = part.x, part.y, part.lengths, part.sentences
        source = {"dataset": name, "split": split, "max_len": max_len, "seed": split_seed,
                  "glove": data.glove_source, "split_size": len(part)}
    if lengths is None:
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
    total = int(x.shape[0])
    if limit is not None:
        x, y, lengths = x[:limit], y[:limit], lengths[:limit]
        sentences = sentences[:limit] if sentences is not None else None
    _check_inputs(config, x, y, lengths)
    return _LoadedInputs(model, config, x, y, lengths, sentences, source, total)


def _mnist_inputs(config: dict, data_info: dict, split: str,
                  data_root: Path | None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Sequence-MNIST ``split`` cut into the checkpoint's frame count (its ``data.frames``, else
    784 / input_size)."""
    from rnnguard.data import sequence_mnist

    if split not in ("train", "test"):
        raise InvalidInputError(f"MNIST has train and test splits only; got --split {split}")
    frames = data_info.get("frames") if data_info.get("dataset") == "mnist" else None
    if frames is None:
        if 784 % int(config["input_size"]) != 0:
            raise InvalidInputError(f"the model reads {config['input_size']} features per frame, which does not "
                                    "divide MNIST's 784 pixels; it was not trained on sequence MNIST")
        frames = 784 // int(config["input_size"])
    x, y = sequence_mnist(split, frames=int(frames), root=data_root)
    return x, y, {"dataset": "mnist", "split": split, "frames": int(frames), "split_size": int(x.shape[0])}


MNIST_CLIP = (0.0, 1.0)  # pixels live in [0, 1]: the default --clip for --dataset mnist


def _default_clip(clip_box: tuple[float, float] | None, source: dict[str, Any]) -> tuple[float, float] | None:
    if clip_box is None and source.get("dataset") == "mnist":
        _say("MNIST: perturbed pixels are clipped to [0, 1] (default --clip 0,1)")
        return MNIST_CLIP
    return clip_box


# --------------------------------------------------------------------------- certification


def clean_predictions(model: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor, dtype: torch.dtype,
                      chunk: int = 1024) -> torch.Tensor:
    """Predicted classes computed by the lowered program in ``dtype`` (the certifier's arithmetic)."""
    from rnnguard.models import lower, run_program

    program = lower(model).to(dtype, x.device)
    preds = []
    with torch.no_grad():
        for s in range(0, x.shape[0], chunk):
            logits = run_program(program, x[s : s + chunk].to(dtype), lengths[s : s + chunk])
            preds.append(logits.argmax(dim=1))
    return torch.cat(preds)


def run_certification(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor, *,
                      eps_list: Sequence[float], domains: Sequence[str], norm: str = "linf", frames: Any = None,
                      clip: tuple[float, float] | None = None, dtype: torch.dtype = torch.float64,
                      batch_size: int = 64, show_status: bool = True) -> dict[str, Any]:
    """Certify every (eps, domain) pair; returns ``{"clean_accuracy", "predictions", "correct", "runs"}``.

    A sample counts as certified only if it is also correctly classified."""
    from rnnguard.certify import certify
    from rnnguard.perturbations import AllFrames, LpBall, Perturbation

    frames = frames if frames is not None else AllFrames()
    perturbations = {e: Perturbation(LpBall(e, norm), frames=frames, clip=clip) for e in eps_list}  # validate first
    preds = clean_predictions(model, x, lengths, dtype)
    correct = preds == y
    n = int(x.shape[0])
    clean_acc = float(correct.float().mean())
    runs = []
    console = _stderr()
    for e in eps_list:
        for domain in domains:
            label = f"certifying {n} samples: {domain}, eps={e:g}, {norm}, frames={frames_label(frames)}"
            if show_status:
                with console.status(label):
                    res = certify(model, x, y, perturbations[e], domain=domain, lengths=lengths, dtype=dtype,
                                  batch_size=batch_size)
            else:
                res = certify(model, x, y, perturbations[e], domain=domain, lengths=lengths, dtype=dtype,
                              batch_size=batch_size)
            cert = res.certified & correct
            n_cert = int(cert.sum())
            runs.append({
                "domain": domain, "eps": e, "norm": norm, "frames": frames_label(frames), "clip": clip,
                "dtype": str(dtype).replace("torch.", ""),
                "n": n, "n_certified": n_cert, "certified_fraction": n_cert / n,
                "n_correct": int(correct.sum()), "clean_accuracy": clean_acc,
                "seconds": res.seconds, "samples_per_second": n / res.seconds if res.seconds > 0 else None,
                "certified": cert.tolist(),
                "margin_lower": res.margin_lower.tolist(),
            })
    return {"clean_accuracy": clean_acc, "predictions": preds.tolist(), "correct": correct.tolist(), "runs": runs}


_SUMMARY_KEYS = ("domain", "eps", "norm", "frames", "dtype", "n", "n_certified", "certified_fraction",
                 "clean_accuracy", "seconds", "samples_per_second")


def summary_rows(runs: Sequence[dict]) -> list[dict]:
    """Per-run summaries (no per-sample lists), as stored in the JSON outputs."""
    return [{k: r[k] for k in _SUMMARY_KEYS} for r in runs]


def display_rows(runs: Sequence[dict]) -> list[dict]:
    """The table shown to people: domain, eps, certified %, clean accuracy %, seconds, samples/s."""
    return [{
        "domain": r["domain"], "eps": r["eps"],
        "certified %": round(100 * r["certified_fraction"], 1),
        "clean acc %": round(100 * r["clean_accuracy"], 1),
        "seconds": round(r["seconds"], 3),
        "samples/s": None if r["samples_per_second"] is None else round(r["samples_per_second"], 1),
    } for r in runs]


def _sample_records(y: torch.Tensor, lengths: torch.Tensor, certification: dict, indices: Sequence[int],
                    sentences: Sequence[Sequence[str]] | None = None) -> list[dict]:
    out = []
    for i in range(y.shape[0]):
        rec = {"index": int(indices[i]), "label": int(y[i]), "prediction": int(certification["predictions"][i]),
               "correct": bool(certification["correct"][i]), "length": int(lengths[i])}
        if sentences is not None:
            rec["sentence"] = " ".join(sentences[i])
        out.append(rec)
    return out


# --------------------------------------------------------------------------- certify


@app.command("certify")
def certify_cmd(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Model checkpoint written by rnnguard (save_checkpoint / demo).")],
    eps: Annotated[List[str], typer.Option("--eps", help="Radius per frame; repeat or comma-separate for several (e.g. 0.01,0.03).")],
    inputs: Annotated[Optional[Path], typer.Option("--inputs", help="torch.save'd dict with x (N,T,d), y (N,), optional lengths (N,).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Certify a dataset split instead: rt, toxic, yelp or mnist (frames from the checkpoint).")] = None,
    split: Annotated[str, typer.Option("--split", help="Dataset split: train, val or test.")] = "test",
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N samples.")] = None,
    max_len: Annotated[Optional[int], typer.Option("--max-len", min=1, help="Truncate dataset texts to N tokens (default: the checkpoint's training max_len, else none).")] = None,
    norm: Annotated[str, typer.Option("--norm", help="linf or l2 (l2 is over-approximated by its l_inf box).")] = "linf",
    frames: Annotated[str, typer.Option("--frames", help="all, one, or positions like 0,3,-1.")] = "all",
    domain: Annotated[List[str], typer.Option("--domain", "-d", help="box, zonotope, interzono, backsub, backsub-parallel, backsub-lp, backsub-opt, backsub-slopes, backsub-alpha, backsub-alpha-shared, backsub-alpha-deep, backsub-alpha-cascade, backsub-bab, r2-opt, hybrid, hybrid-opt or all (box, zonotope, interzono); repeat or comma-separate.")] = ["interzono"],  # noqa: B006
    clip: Annotated[Optional[str], typer.Option("--clip", help="Clip perturbed inputs to LOW,HIGH (e.g. 0,1; default 0,1 for mnist).")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="float64 (sound) or float32 (faster, not float-sound).")] = "float64",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Regions propagated at a time.")] = 64,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write summaries and per-sample results to this JSON file.")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Data folder (default: $RNNGUARD_DATA, ../shared/data, user cache).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Dataset split seed (default: the checkpoint's, else 0).")] = None,
) -> None:
    """Certify a trained checkpoint on an inputs file or a dataset split."""
    with _cli_errors():
        from rnnguard.reports import print_summary, write_json

        # cheap checks first
        eps_list = parse_eps(eps)
        domains = parse_domains(domain)
        frame_sel = parse_frames(frames)
        clip_box = parse_clip(clip)
        torch_dtype = parse_dtype(dtype)
        norm = _check_threat_options(norm, inputs, dataset, split,
                                     exactly_one="give exactly one of --inputs FILE or --dataset rt|toxic|yelp|mnist")

        loaded = _load_inputs(checkpoint, inputs=inputs, dataset=dataset, split=split, limit=limit,
                              max_len=max_len, seed=seed, data_root=data_root)
        model, config, source, total = loaded.model, loaded.config, loaded.source, loaded.total
        x, y, lengths, sentences = loaded.x, loaded.y, loaded.lengths, loaded.sentences
        clip_box = _default_clip(clip_box, source)

        where = source.get("inputs") or f"{source['dataset']} {split} split"
        _say(f"model: {config['kind']} hidden {config['hidden_size']}, {config['num_layers']} layer(s), "
             f"{config['num_classes']} classes ({checkpoint})")
        _say(f"inputs: {x.shape[0]} of {total} samples from {where}, up to {x.shape[1]} frames of {x.shape[2]} features")
        cert = run_certification(model, x, y, lengths, eps_list=eps_list, domains=domains, norm=norm,
                                 frames=frame_sel, clip=clip_box, dtype=torch_dtype, batch_size=batch_size)
        title = (f"certified robustness: {norm} eps per frame, frames={frames_label(frame_sel)}, "
                 f"{str(torch_dtype).replace('torch.', '')}, n={x.shape[0]}")
        print_summary(display_rows(cert["runs"]), title=title, console=_stdout())
        _say("certified % counts samples that are correctly classified and proven robust.")
        if json_out is not None:
            report = {
                "rnnguard_version": __version__, "command": "certify",
                "checkpoint": str(checkpoint), "model": config,
                "source": {**source, "limit": limit, "n": int(x.shape[0])},
                "threat": {"norm": norm, "frames": frames_label(frame_sel), "clip": clip_box, "eps": eps_list},
                "dtype": str(torch_dtype).replace("torch.", ""), "batch_size": batch_size,
                "clean_accuracy": cert["clean_accuracy"],
                "summary": summary_rows(cert["runs"]),
                "samples": _sample_records(y, lengths, cert, list(range(x.shape[0])), sentences),
                "results": cert["runs"],
            }
            write_json(json_out, report)
            _say(f"wrote {json_out}")


# --------------------------------------------------------------------------- train

MODEL_KINDS = ("rnn", "rnn_relu", "lstm", "gru")


def _read_done_epochs(ckpt: Path) -> int:
    """Completed epochs in a training checkpoint (0 when absent or unreadable: fit() reports why)."""
    from rnnguard.checkpoints import CheckpointError, read_checkpoint

    if not ckpt.exists():
        return 0
    try:
        return int(read_checkpoint(ckpt)["extra"]["training"]["epoch"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return 0


def _history_rows(history: Sequence[dict]) -> list[dict]:
    """Per-epoch metrics as shown to people (accuracies in %)."""
    rows = []
    for h in history:
        row: dict[str, Any] = {"epoch": h.get("epoch"), "train loss": h.get("train_loss")}
        if h.get("train_acc") is not None:
            row["train acc %"] = 100 * h["train_acc"]
        if "val_loss" in h:
            row["val loss"] = h["val_loss"]
            row["val acc %"] = 100 * h["val_acc"]
        if "val_certified" in h:
            row["val cert %"] = 100 * h["val_certified"]
        for key in ("eps", "kappa", "lr"):
            if key in h:
                row[key] = h[key]
        row["seconds"] = None if h.get("seconds") is None else round(float(h["seconds"]), 2)
        rows.append(row)
    return rows


@app.command("train")
def train_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoint.pt (resumable), metrics.jsonl, model.pt, train.json.")],
    dataset: Annotated[str, typer.Option("--dataset", help="rt, toxic, yelp or mnist.")] = "rt",
    frames: Annotated[Optional[int], typer.Option("--frames", min=1, help="mnist only: cut each image, row by row, into K frames of 784/K pixels (K divides 784; default 4).")] = None,
    model_kind: Annotated[str, typer.Option("--model", help="rnn, rnn_relu, lstm or gru.")] = "lstm",
    hidden: Annotated[int, typer.Option("--hidden", min=1, help="Hidden size.")] = 32,
    layers: Annotated[int, typer.Option("--layers", min=1, help="Stacked recurrent layers.")] = 1,
    method: Annotated[str, typer.Option("--method", help="regular, fgsm, pgd, ibp (box), certrnn (zonotope, one frame) "
                                                         "or rnnguard (interzono, all frames).")] = "rnnguard",
    eps: Annotated[float, typer.Option("--eps", help="Target training radius (l_inf per frame, raw GloVe units).")] = 0.03,
    epochs: Annotated[int, typer.Option("--epochs", min=0, help="Training epochs. A later run with more epochs resumes, if the schedule is unchanged: the default --ramp depends on --epochs, so give --ramp explicitly to extend a certified run.")] = 5,
    warmup: Annotated[float, typer.Option("--warmup", help="Epochs of clean training before eps starts to grow.")] = 0.0,
    ramp: Annotated[Optional[float], typer.Option("--ramp", help="Epochs over which eps grows 0 -> --eps and kappa 1 -> "
                                                             "--kappa (default: half of the epochs after warmup).")] = None,
    kappa: Annotated[float, typer.Option("--kappa", help="Final weight of the clean loss in certified training (0..1).")] = 0.5,
    max_len: Annotated[int, typer.Option("--max-len", min=1, help="Keep the first N tokens of each text.")] = 20,
    train_limit: Annotated[Optional[int], typer.Option("--train-limit", min=1, help="Train on the first N training texts (mnist: images) only.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Training batch size.")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1e-3,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adam, or sgd (plain SGD without momentum: R2's MNIST recipe is --optimizer sgd --lr 0.5 --batch-size 100 --grad-clip 0).")] = "adam",
    grad_clip: Annotated[float, typer.Option("--grad-clip", min=0, help="Clip the gradient norm to this value; 0: no clipping.")] = 5.0,
    lr_decay_after: Annotated[Optional[str], typer.Option("--lr-decay-after", help="Comma-separated epoch counts (e.g. 9,10): after each, the learning rate is multiplied by --lr-gamma (step decay).")] = None,
    lr_gamma: Annotated[float, typer.Option("--lr-gamma", help="Learning-rate factor at each --lr-decay-after epoch.")] = 0.1,
    val_certify: Annotated[Optional[float], typer.Option("--val-certify", help="After every epoch, certify the first --val-certify-limit validation texts at this eps (InterZono, l_inf, all frames) and record val_certified, to select a checkpoint.")] = None,
    val_certify_limit: Annotated[int, typer.Option("--val-certify-limit", min=1, help="Validation texts certified per epoch with --val-certify.")] = 500,
    keep_epochs: Annotated[bool, typer.Option("--keep-epochs", help="Also keep the model of every epoch as OUT/model-eN.pt.")] = False,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from this checkpoint's weights (fine-tuning; same model shape) instead of a fresh initialisation.")] = None,
    keep_freed_memory: Annotated[bool, typer.Option("--keep-freed-memory/--return-freed-memory", help="Keep freed memory mapped for reuse (faster certified training on glibc, but the peak heap stays resident: ~11-12 GB for a hidden-64 RNN-Guard run); --return-freed-memory holds only the live tensors but pays page faults again (a hidden-64 GRU epoch took ~1.7x as long).")] = True,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, the initialisation and the shuffling.")] = 0,
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore an existing checkpoint in --out and start over.")] = False,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Data folder (default: $RNNGUARD_DATA, ../shared/data, user cache).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Train a classifier on a text dataset (GloVe 50d) with a regular, adversarial or certified method.

    Saves a resumable checkpoint after every epoch: rerunning the same command after an interruption continues where it stopped (and is a no-op once finished). Writes OUT/model.pt, which rnnguard certify and rnnguard evaluate read."""
    with _cli_errors():
        _train(out=out, dataset=dataset, frames=frames, model_kind=model_kind, hidden=hidden, layers=layers, method=method, eps=eps,
               epochs=epochs, warmup=warmup, ramp=ramp, kappa=kappa, max_len=max_len, train_limit=train_limit,
               batch_size=batch_size, lr=lr, seed=seed, fresh=fresh, data_root=data_root, progress=progress,
               lr_decay_after=lr_decay_after, lr_gamma=lr_gamma, val_certify=val_certify,
               val_certify_limit=val_certify_limit, keep_epochs=keep_epochs, keep_freed_memory=keep_freed_memory,
               optimizer=optimizer, grad_clip=grad_clip, init=init)


def _val_certified_metric(val: Any, eps: float, limit: int) -> Callable[[torch.nn.Module], dict[str, float]]:
    """Per-epoch metric for ``fit``: InterZono certified accuracy (l_inf, all frames) on the first
    ``limit`` validation inputs at ``eps``."""
    from rnnguard.certify import certify
    from rnnguard.perturbations import AllFrames, LpBall, Perturbation

    perturbation = Perturbation(LpBall(eps, "linf"), frames=AllFrames())
    x, y, lengths = val.x[:limit], val.y[:limit], val.lengths[:limit]

    def metric(model: torch.nn.Module) -> dict[str, float]:
        result = certify(model, x, y, perturbation, domain="interzono", lengths=lengths)
        return {"val_certified": result.certified_fraction}

    return metric


def _parse_milestones(text: str | None) -> list[int]:
    """``--lr-decay-after`` as a list of epoch counts."""
    out = []
    for part in _split_list(text):
        try:
            value = int(part)
        except ValueError:
            raise InvalidInputError(f"--lr-decay-after takes comma-separated epoch counts (e.g. 9,10); got {text!r}") from None
        if value < 0:
            raise InvalidInputError(f"--lr-decay-after epochs must be >= 0; got {value}")
        out.append(value)
    return out


def _train(*, out: Path, dataset: str, frames: int | None, model_kind: str, hidden: int, layers: int, method: str, eps: float,
           epochs: int, warmup: float, ramp: float | None, kappa: float, max_len: int, train_limit: int | None,
           batch_size: int, lr: float, seed: int, fresh: bool, data_root: Path | None, progress: bool,
           lr_decay_after: str | None = None, lr_gamma: float = 0.1, val_certify: float | None = None,
           val_certify_limit: int = 500, keep_epochs: bool = False, keep_freed_memory: bool = True,
           optimizer: str = "adam", grad_clip: float = 5.0, init: Path | None = None) -> None:
    from rnnguard.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
    from rnnguard.data import load_text_splits
    from rnnguard.models import SequenceClassifier
    from rnnguard.objectives import METHODS, make_objective
    from rnnguard.reports import write_json
    from rnnguard.train import CHECKPOINT_NAME, METRICS_NAME, OPTIMIZERS, describe_objective, evaluate, fit, select_epoch

    t_start = time.perf_counter()
    name = dataset.strip().lower()
    kind = model_kind.strip().lower()
    method = method.strip().lower()
    if kind not in MODEL_KINDS:
        raise InvalidInputError(f"--model must be one of {', '.join(MODEL_KINDS)}; got {model_kind!r}")
    if method not in METHODS:
        raise InvalidInputError(f"--method must be one of {', '.join(METHODS)}; got {method!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise InvalidInputError(f"--eps must be a finite number >= 0; got {eps!r}")
    if not (math.isfinite(warmup) and warmup >= 0):
        raise InvalidInputError(f"--warmup must be a finite number of epochs >= 0; got {warmup!r}")
    if ramp is not None and not (math.isfinite(ramp) and ramp > 0):
        raise InvalidInputError(f"--ramp must be a positive number of epochs; got {ramp!r}")
    if not (math.isfinite(kappa) and 0 <= kappa <= 1):
        raise InvalidInputError(f"--kappa must lie in [0, 1]; got {kappa!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise InvalidInputError(f"--lr must be a positive number; got {lr!r}")
    if method != "regular" and eps == 0:
        _say(f"note: --eps 0 makes --method {method} plain clean training")
    opt_name = optimizer.strip().lower()
    if opt_name not in OPTIMIZERS:
        raise InvalidInputError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    if not (math.isfinite(grad_clip) and grad_clip >= 0):
        raise InvalidInputError(f"--grad-clip must be a finite number >= 0 (0: no clipping); got {grad_clip!r}")
    clip = float(grad_clip) if grad_clip > 0 else None
    milestones = _parse_milestones(lr_decay_after)
    if not (math.isfinite(lr_gamma) and lr_gamma > 0):
        raise InvalidInputError(f"--lr-gamma must be a positive number; got {lr_gamma!r}")
    if val_certify is not None and not (math.isfinite(val_certify) and val_certify >= 0):
        raise InvalidInputError(f"--val-certify must be a finite eps >= 0; got {val_certify!r}")

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if name == "mnist":
        train, val, test, dim, data_info = _mnist_training_data(frames, data_root)
        unit = "images"
    else:
        if frames is not None:
            raise InvalidInputError("--frames applies to --dataset mnist only")
        data = load_text_splits(name, root=data_root, max_len=max_len, seed=seed)
        train, val, test = data["train"], data["val"], data["test"]
        dim, unit = data.dim, "texts"
        data_info = {"dataset": name, "max_len": max_len, "seed": seed, "dim": data.dim, "glove": data.glove_source}
    n_train_total = len(train)
    x_tr, y_tr, l_tr = train.x, train.y, train.lengths
    if train_limit is not None and train_limit < n_train_total:
        x_tr, y_tr, l_tr = x_tr[:train_limit], y_tr[:train_limit], l_tr[:train_limit]
    n_train = int(x_tr.shape[0])
    if name == "mnist":
        described = (f"data: mnist, {len(train)} train / {len(test)} test images as {data_info['frames']} frames of "
                     f"{dim} pixels in [0, 1]")
    else:
        described = (f"data: {name}, {len(train)} train / {len(val)} val / {len(test)} test texts (split seed {seed}), "
                     f"texts cut to {max_len} tokens, GloVe {data.glove_source}")
    _say(described + (f"; training on the first {n_train} training {unit} (--train-limit)" if n_train < n_train_total else ""))
    num_classes = max(2, int(max(int(y_tr.max()), int(val.y.max()) if len(val) else 0,
                                 int(test.y.max()) if len(test) else 0)) + 1)

    torch.manual_seed(seed)
    model = SequenceClassifier(kind, dim, hidden, num_classes, num_layers=layers)
    if init is not None:
        start, _ = load_checkpoint(init)
        if start.config() != model.config():
            raise InvalidInputError(f"--init {init} holds a {start.config()} model; these options build {model.config()}")
        model.load_state_dict(start.state_dict())
        _say(f"starting from the weights of {init} (--init)")
    objective = make_objective(method, eps, epochs=epochs, warmup=warmup, ramp=ramp, kappa_final=kappa)
    ramp_used = ramp if ramp is not None else max((epochs - warmup) / 2, 1e-9)
    schedule = "" if method == "regular" else (
        f", eps 0 -> {eps:g} over epochs {warmup:g}..{warmup + ramp_used:g}"
        + (f", kappa 1 -> {kappa:g}" if method in ("ibp", "certrnn", "rnnguard") else ""))
    _say(f"model: {kind.upper()}, hidden {hidden}, {_plural(layers, 'layer')}, {num_classes} classes; "
         f"method {method}{schedule}")

    ckpt = out / CHECKPOINT_NAME
    done = 0 if fresh else _read_done_epochs(ckpt)
    epoch_metrics = None
    if val_certify is not None:
        if not len(val):
            raise InvalidInputError(f"--val-certify needs validation data; {name} has none here")
        epoch_metrics = _val_certified_metric(val, val_certify, val_certify_limit)
        _say(f"after every epoch: certified accuracy (InterZono) on {min(val_certify_limit, len(val))} validation "
             f"{unit} at eps {val_certify:g}")
    if done >= epochs and done > 0:
        _say(f"training: {ckpt} already holds {_plural(done, 'epoch')}: nothing to train (pass --fresh to retrain)")
    elif done > 0:
        _say(f"training: resuming {ckpt} after epoch {done} of {epochs}")
    else:
        clipping = "no gradient clipping" if clip is None else f"gradient norm clipped to {clip:g}"
        _say(f"training: {_plural(epochs, 'epoch')} of {'Adam' if opt_name == 'adam' else 'SGD'} (lr {lr:g}, batch "
             f"{batch_size}, {clipping}) on {n_train} {unit}, checkpoint after every epoch in {out}")
    try:
        with _threads(None if _USER_THREADS else 1):
            history = fit(model, x_tr, y_tr, l_tr, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                          checkpoint_dir=out, resume=not fresh, progress=progress, val=val if len(val) else None,
                          objective=objective, fractional_epochs=True, lr_milestones=milestones, lr_gamma=lr_gamma,
                          epoch_metrics=epoch_metrics, keep_epoch_models=keep_epochs, epoch_model_extra={"data": data_info},
                          reuse_memory=keep_freed_memory, optimizer=opt_name, grad_clip=clip)
    except CheckpointError as exc:
        text = str(exc).replace("use another checkpoint folder or start over with resume=False",
                                "pass --fresh to retrain, or choose another --out")
        raise CheckpointError(text) from None
    trained_now = history[done:] if done < len(history) else []

    if history:
        _print_table(_history_rows(history), f"{method} training on {name}: per-epoch metrics")
        best = select_epoch(history)
        if best is not None:
            where = f" ({out / ('model-e%d.pt' % best['epoch'])})" if keep_epochs else ""
            _say(f"best validation certified accuracy: {100 * best['val_certified']:.1f}% after epoch {best['epoch']}{where}"
                 " (epochs that collapsed to a constant classifier skipped)")
        elif any(h.get("val_certified") is not None for h in history):
            _say("every epoch collapsed to a (nearly) constant classifier: no epoch to select")
    with _threads(None if _USER_THREADS else 1):
        val_metrics = evaluate(model, val.x, val.y, val.lengths) if len(val) else None
        test_metrics = evaluate(model, test.x, test.y, test.lengths) if len(test) else None
    seconds = [float(h["seconds"]) for h in history if h.get("seconds") is not None]
    sec_per_epoch = sum(seconds) / len(seconds) if seconds else None
    accs = []
    if val_metrics is not None:
        accs.append(f"val {100 * val_metrics['accuracy']:.1f}% ({len(val)} {unit})")
    if test_metrics is not None:
        accs.append(f"test {100 * test_metrics['accuracy']:.1f}% ({len(test)} {unit})")
    _say("clean accuracy: " + ", ".join(accs) if accs else f"clean accuracy: no val/test {unit}")
    if sec_per_epoch is not None:
        _say(f"time: {sec_per_epoch:.2f} s per epoch (mean over {_plural(len(seconds), 'epoch')}; "
             f"{_plural(len(trained_now), 'epoch')} trained in this run)")

    training = {
        "method": method, "eps": eps, "epochs": epochs, "warmup": warmup, "ramp": ramp, "ramp_epochs": ramp_used,
        "kappa": kappa, "batch_size": batch_size, "lr": lr, "lr_decay_after": milestones, "lr_gamma": lr_gamma,
        "val_certify": val_certify, "seed": seed, "grad_clip": clip, "optimizer": opt_name, "init": None if init is None else str(init),
        "n_train": n_train, "train_limit": train_limit, "objective": describe_objective(objective),
        "model": {"kind": kind, "hidden": hidden, "layers": layers},
        "epochs_done": len(history), "seconds_per_epoch": sec_per_epoch,
    }
    val_acc = val_metrics["accuracy"] if val_metrics else None
    test_acc = test_metrics["accuracy"] if test_metrics else None
    model_path = save_checkpoint(model, out / "model.pt", extra={
        "data": data_info, "training": training, "history": history,
        "val_accuracy": val_acc, "test_accuracy": test_acc,
    })
    json_path = write_json(out / "train.json", {
        "rnnguard_version": __version__, "command": "train", "model": model.config(), "data": data_info,
        "training": training, "history": history, "clean_val_accuracy": val_acc, "clean_test_accuracy": test_acc,
        "checkpoint": str(model_path), "seconds": time.perf_counter() - t_start,
    })
    _say(f"wrote {model_path}, {json_path} (training state: {ckpt}, {out / METRICS_NAME})")
    _say(f"next: rnnguard evaluate --checkpoint {model_path} --dataset {name} --eps {eps if eps > 0 else 0.01:g} "
         f"--out {out / 'eval'}")


@dataclass
class _Split:
    """Model inputs of one split (the fields of a text TensorSplit that training uses)."""

    x: torch.Tensor
    y: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _mnist_training_data(frames: int | None, data_root: Path | None) -> tuple[_Split, _Split, _Split, int, dict]:
    """Sequence-MNIST train / (empty) val / test splits, the frame size and the checkpoint's data metadata."""
    from rnnguard.data import sequence_mnist

    k = 4 if frames is None else frames
    parts = {}
    for split in ("train", "test"):
        x, y = sequence_mnist(split, frames=k, root=data_root)
        parts[split] = _Split(x, y, torch.full((x.shape[0],), k, dtype=torch.long))
    train, test = parts["train"], parts["test"]
    val = _Split(train.x[:0], train.y[:0], train.lengths[:0])  # all 60,000 training images are used for training
    dim = int(train.x.shape[2])
    return train, val, test, dim, {"dataset": "mnist", "frames": k, "dim": dim, "pixels": "[0, 1]"}


# --------------------------------------------------------------------------- evaluate


def parse_attacks(text: str, seed: int = 0) -> dict[str, Any]:
    """``none`` or a comma list of names from :func:`rnnguard.evaluation.default_attacks` (``all``: every one)."""
    from rnnguard.evaluation import default_attacks

    known = default_attacks(seed)
    names = [n.lower() for n in _split_list(text)]
    if not names:
        raise InvalidInputError(f"--attacks: give 'none', 'all' or a comma list of {', '.join(known)}")
    if names == ["none"]:
        return {}
    chosen: dict[str, Any] = {}
    for n in names:
        expanded = list(known) if n == "all" else [n]
        for m in expanded:
            if m not in known:
                raise InvalidInputError(f"--attacks: unknown attack {m!r}; choose 'none', 'all' or from {', '.join(known)}")
            chosen[m] = known[m]
    return chosen


def _print_table(rows: Sequence[dict], title: str) -> None:
    """A rich table whose long headers may wrap (evaluation tables are wide)."""
    from rich.table import Table
    from rich.text import Text

    from rnnguard.reports import format_value

    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    table = Table(title=Text(title), header_style="bold")
    for c in cols:
        numeric = all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)
                      for r in rows if r.get(c) is not None)
        table.add_column(Text(c), justify="right" if numeric else "left", overflow="fold")
    for r in rows:
        cells = [Text(format_value(r.get(c)), style="bold red" if c == "violations" and r.get(c) else "")
                 for c in cols]
        table.add_row(*cells)
    _stdout().print(table)


def _evaluate_command_line(**opts: Any) -> str:
    """The canonical ``rnnguard evaluate ...`` line that reproduces a run (all options spelled out)."""
    import shlex

    parts = ["rnnguard", "evaluate"]
    for flag, value in opts.items():
        if value is None or value is False:
            continue
        parts.append(flag)
        if value is not True:
            parts.append(str(value))
    return shlex.join(parts)


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="rnnguard checkpoint (e.g. OUT/model.pt of `rnnguard train`).")],
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="rt, toxic or yelp (GloVe 50d; max-len and split seed from the checkpoint), or mnist (frames from the checkpoint).")] = None,
    inputs: Annotated[Optional[Path], typer.Option("--inputs", help="Instead of --dataset: a torch.save'd dict with x, y (and lengths).")] = None,
    split: Annotated[str, typer.Option("--split", help="Dataset split: train, val or test.")] = "test",
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Evaluate the first N samples only.")] = 200,
    eps: Annotated[List[str], typer.Option("--eps", help="Radii, comma-separated or repeated (e.g. 0,0.01,0.03).")] = ["0.01,0.03"],
    domain: Annotated[List[str], typer.Option("--domain", help="box, zonotope, interzono, backsub, backsub-parallel, backsub-lp, backsub-opt, backsub-slopes, backsub-alpha, backsub-alpha-shared, backsub-alpha-deep, backsub-alpha-cascade, backsub-bab, r2-opt, hybrid, hybrid-opt or all (box, zonotope, interzono); comma list or repeated.")] = ["box,zonotope,interzono"],
    attacks: Annotated[str, typer.Option("--attacks", help="Attacks for the empirical robust accuracy: pgd, ensemble (comma list), all or none.")] = "pgd,ensemble",
    frames: Annotated[str, typer.Option("--frames", help="Perturbed frames: all, one (any single frame) or positions like 0,-1.")] = "all",
    norm: Annotated[str, typer.Option("--norm", help="linf or l2 (per frame).")] = "linf",
    clip: Annotated[Optional[str], typer.Option("--clip", help="Optional input box LOW,HIGH the perturbation must stay in (default 0,1 for mnist).")] = None,
    max_len: Annotated[Optional[int], typer.Option("--max-len", min=1, help="Token cut-off (default: the checkpoint's).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Split seed (default: the checkpoint's).")] = None,
    attack_seed: Annotated[int, typer.Option("--attack-seed", help="Seed of the attacks' random starts.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Certification batch size.")] = 64,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write evaluation.json, evaluation.md and certified_accuracy.png here.")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Data folder (default: $RNNGUARD_DATA, ../shared/data, user cache).")] = None,
) -> None:
    """Clean, certified (per domain) and empirical robust (per attack) accuracy over a list of radii.

    Every certified sample is attacked as well; a certified sample that an attack breaks is a soundness violation: reported in red, and the command exits with code 3."""
    with _cli_errors():
        code = _evaluate(checkpoint=checkpoint, dataset=dataset, inputs=inputs, split=split, limit=limit, eps=eps,
                         domain=domain, attacks=attacks, frames=frames, norm=norm, clip=clip, max_len=max_len,
                         seed=seed, attack_seed=attack_seed, batch_size=batch_size, out=out, data_root=data_root)
    if code:
        raise typer.Exit(code)


def _evaluate(*, checkpoint: Path, dataset: str | None, inputs: Path | None, split: str, limit: int | None,
              eps: Sequence[str], domain: Sequence[str], attacks: str, frames: str, norm: str, clip: str | None,
              max_len: int | None, seed: int | None, attack_seed: int, batch_size: int, out: Path | None,
              data_root: Path | None) -> int:
    from rnnguard.evaluation import evaluate, plot_certified_accuracy, table_rows
    from rnnguard.reports import summary_table, write_json, write_text_atomic

    eps_list = parse_eps(eps)
    domains = parse_domains(domain)
    attack_map = parse_attacks(attacks, seed=attack_seed)
    frame_sel = parse_frames(frames)
    clip_box = parse_clip(clip)
    split = split.strip().lower()
    norm = _check_threat_options(norm, inputs, dataset, split,
                                 exactly_one="give exactly one of --dataset rt|toxic|yelp|mnist or --inputs FILE")

    loaded = _load_inputs(checkpoint, inputs=inputs, dataset=dataset, split=split, limit=limit,
                          max_len=max_len, seed=seed, data_root=data_root)
    model, config, source, total = loaded.model, loaded.config, loaded.source, loaded.total
    x, y, lengths = loaded.x, loaded.y, loaded.lengths
    x = x.to(next(model.parameters()).dtype)
    clip_box = _default_clip(clip_box, source)

    where = source.get("inputs") or f"{source['dataset']} {split} split"
    _say(f"model: {config['kind']} hidden {config['hidden_size']}, {config['num_layers']} layer(s), "
         f"{config['num_classes']} classes ({checkpoint})")
    _say(f"inputs: {x.shape[0]} of {total} samples from {where}; {norm} eps {', '.join(f'{e:g}' for e in eps_list)}, "
         f"frames={frames_label(frame_sel)}, domains {', '.join(domains)}, "
         f"attacks {', '.join(attack_map) if attack_map else 'none'}")
    with _threads(None if _USER_THREADS else 1), _stderr().status(f"evaluating {x.shape[0]} samples"):
        record = evaluate(model, x, y, lengths, eps_list=eps_list, domains=domains, attacks=attack_map,
                          frames=frame_sel, norm=norm, clip=clip_box, batch_size=batch_size)
    record.update({
        "rnnguard_version": __version__, "checkpoint": str(checkpoint), "model": config,
        "source": {**source, "limit": limit, "n": int(x.shape[0])},
        "threat": {"norm": norm, "frames": frames_label(frame_sel), "clip": clip_box, "eps": eps_list},
        "domains": domains, "attacks": list(attack_map), "attack_seed": attack_seed,
    })
    rows = table_rows(record)
    # the terminal table: accuracies only, short headers that wrap at spaces (timings follow below)
    accuracy_rows = [{k.removesuffix(" %").replace("all_attacks", "all attacks"): v for k, v in r.items()
                      if not k.startswith("t cert ")} for r in rows]
    _print_table(accuracy_rows, f"accuracy (%) on {x.shape[0]} samples ({norm}, frames={frames_label(frame_sel)})")
    timing = {f"certify {d}": sum(r["certify_seconds"][d] for r in record["by_eps"]) for d in domains}
    timing.update({f"attack {a}": sum(r["attack_seconds"][a] for r in record["by_eps"]) for a in attack_map})
    _say("seconds (all eps): " + ", ".join(f"{k} {v:.2f}" for k, v in timing.items())
         + f"; total {record['seconds']:.1f}")
    _say("cert: correctly classified samples proven robust; emp: correctly classified samples the attack did "
         "not break (all attacks: none of them did)."
         + ("" if attack_map else " No attacks ran (--attacks none): no soundness cross-check."))

    command = _evaluate_command_line(**{
        "--checkpoint": checkpoint, "--dataset": dataset.strip().lower() if dataset else None, "--inputs": inputs,
        "--split": split if inputs is None else None, "--limit": limit,
        "--eps": ",".join(f"{e:g}" for e in eps_list), "--domain": ",".join(domains),
        "--attacks": ",".join(attack_map) if attack_map else "none", "--frames": frames_label(frame_sel),
        "--norm": norm, "--clip": None if clip_box is None else f"{clip_box[0]:g},{clip_box[1]:g}",
        "--max-len": source.get("max_len"), "--seed": source.get("seed"),
        "--attack-seed": attack_seed, "--batch-size": batch_size, "--data-root": data_root, "--out": out,
    })
    record["command"] = command
    if out is not None:
        out = Path(out).expanduser()
        json_path = write_json(out / "evaluation.json", record)
        label = checkpoint.parent.name if checkpoint.name == "model.pt" and checkpoint.parent.name else checkpoint.stem
        md = [
            f"# rnnguard evaluation: {label}",
            "",
            f"* model: {config['kind']}, hidden {config['hidden_size']}, {config['num_layers']} layer(s), "
            f"{config['num_classes']} classes (`{checkpoint}`)",
            f"* inputs: {x.shape[0]} of {total} samples from {where}",
            f"* threat: {norm} ball of radius eps per frame, frames={frames_label(frame_sel)}"
            + (f", clipped to [{clip_box[0]:g}, {clip_box[1]:g}]" if clip_box else ""),
            f"* attacks: {', '.join(attack_map) if attack_map else 'none'} (seed {attack_seed}); "
            f"soundness violations: {record['soundness_violations']}",
            "",
            "Accuracies in %; `cert` counts correctly classified samples proven robust, `emp` those "
            "that no attack broke; `t cert` is certification wall time in seconds.",
            "",
            summary_table(rows),
            "Command:",
            "",
            "```",
            command,
            "```",
            "",
        ]
        md_path = write_text_atomic(out / "evaluation.md", "\n".join(md))
        written = [str(json_path), str(md_path)]
        png = plot_certified_accuracy({label: record}, out / "certified_accuracy.png")
        if png is None:
            _say("matplotlib is not installed (pip install 'rnnguard[plots]'): skipped certified_accuracy.png")
        else:
            written.append(str(png))
        _say(f"wrote {', '.join(written)}")
    if record["soundness_violations"] > 0:
        from rich.text import Text

        bad = [f"eps={r['eps']:g}: {r['soundness_violations']}" for r in record["by_eps"] if r["soundness_violations"]]
        _stderr().print(Text(f"SOUNDNESS VIOLATION: {record['soundness_violations']} certified sample(s) were broken "
                             f"by an attack ({'; '.join(bad)}). This is a verifier bug; please report it.",
                             style="bold white on red"), soft_wrap=True)
        return 3
    return 0


# --------------------------------------------------------------------------- demo


@app.command("demo")
def demo_cmd(
    dataset: Annotated[str, typer.Option("--dataset", help="rt, toxic or yelp.")] = "rt",
    model_kind: Annotated[str, typer.Option("--model", help="rnn, rnn_relu, lstm or gru.")] = "lstm",
    hidden: Annotated[int, typer.Option("--hidden", min=1, help="Hidden size.")] = 32,
    epochs: Annotated[int, typer.Option("--epochs", min=0, help="Training epochs.")] = 3,
    max_len: Annotated[int, typer.Option("--max-len", min=1, help="Keep the first N tokens of each text.")] = 20,
    n_certify: Annotated[int, typer.Option("--n-certify", min=1, help="Certify the first N test texts.")] = 100,
    eps: Annotated[str, typer.Option("--eps", help="Comma list of radii (raw GloVe units, l_inf, every frame).")] = "0.01,0.03",
    domain: Annotated[str, typer.Option("--domain", help="Comma list of domains.")] = "box,zonotope,interzono",
    out: Annotated[Path, typer.Option("--out", help="Output folder (checkpoints, demo.json, demo.md).")] = Path("runs/demo"),
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Data folder (default: $RNNGUARD_DATA, ../shared/data, user cache).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, the initialisation and the shuffling.")] = 0,
    train_limit: Annotated[Optional[int], typer.Option("--train-limit", min=1, help="Train on the first N training texts only.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Training batch size.")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 2e-3,
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore an existing checkpoint in --out and retrain.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Train a small model on a text dataset with GloVe 50d, then certify test sentences with every domain."""
    with _cli_errors():
        _demo(dataset=dataset, model_kind=model_kind, hidden=hidden, epochs=epochs, max_len=max_len,
              n_certify=n_certify, eps=eps, domain=domain, out=out, data_root=data_root, seed=seed,
              train_limit=train_limit, batch_size=batch_size, lr=lr, fresh=fresh, progress=progress)


def _demo(*, dataset: str, model_kind: str, hidden: int, epochs: int, max_len: int, n_certify: int, eps: str,
          domain: str, out: Path, data_root: Path | None, seed: int, train_limit: int | None, batch_size: int,
          lr: float, fresh: bool, progress: bool) -> None:
    from rnnguard.checkpoints import CheckpointError, read_checkpoint, save_checkpoint
    from rnnguard.data import load_text_splits
    from rnnguard.models import SequenceClassifier
    from rnnguard.reports import print_summary, summary_table, write_json, write_text_atomic
    from rnnguard.train import CHECKPOINT_NAME, METRICS_NAME, evaluate, fit

    t_start = time.perf_counter()
    eps_list = parse_eps(eps)
    domains = parse_domains(domain)
    name = dataset.strip().lower()
    kind = model_kind.strip().lower()
    if kind not in ("rnn", "rnn_relu", "lstm", "gru"):
        raise InvalidInputError(f"--model must be rnn, rnn_relu, lstm or gru; got {model_kind!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise InvalidInputError(f"--lr must be a positive number; got {lr!r}")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    _say(f"rnnguard demo: {kind.upper()} (hidden {hidden}) on {name} with GloVe 50d, texts cut to their first "
         f"{max_len} tokens; output in {out}")
    data = load_text_splits(name, root=data_root, max_len=max_len, seed=seed)
    train, val, test = data["train"], data["val"], data["test"]
    _say(f"data: {len(train)} train / {len(val)} val / {len(test)} test texts (seed {seed}); GloVe {data.glove_source}; "
         f"{data.n_oov_types} of {data.n_types} word types are out of vocabulary")
    n_train_total = len(train)
    x_tr, y_tr, l_tr = train.x, train.y, train.lengths
    if train_limit is not None and train_limit < n_train_total:
        x_tr, y_tr, l_tr = x_tr[:train_limit], y_tr[:train_limit], l_tr[:train_limit]
        _say(f"training on a subset: the first {train_limit} of {n_train_total} training texts (--train-limit)")
    n_train = int(x_tr.shape[0])
    num_classes = int(max(int(y_tr.max()), int(val.y.max()) if len(val) else 0, int(test.y.max())) + 1)
    num_classes = max(num_classes, 2)

    torch.manual_seed(seed)
    model = SequenceClassifier(kind, data.dim, hidden, num_classes)
    ckpt = out / CHECKPOINT_NAME
    done = 0
    if ckpt.exists() and not fresh:
        try:
            done = int(read_checkpoint(ckpt)["extra"]["training"]["epoch"])
        except (CheckpointError, KeyError, TypeError, ValueError):
            done = 0  # fit() reports what is wrong with it
    _say(f"training: {_plural(epochs, 'epoch')} of Adam (lr {lr:g}, batch {batch_size}) on {n_train} texts, "
         f"checkpoint after every epoch in {out}")
    try:
        # a small recurrent model trains no faster on several threads, and OpenMP spin-waiting makes it
        # far slower on a busy machine: one thread unless --threads was given
        with _threads(None if _USER_THREADS else 1):
            history = fit(model, x_tr, y_tr, l_tr, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                          checkpoint_dir=out, resume=not fresh, progress=progress, val=val)
    except CheckpointError as exc:
        text = str(exc).replace("use another checkpoint folder or start over with resume=False",
                                "pass --fresh to retrain, or choose another --out")
        raise CheckpointError(text) from None
    reused = 0 < done == epochs
    if reused:
        _say(f"training: reused the finished checkpoint {ckpt} (pass --fresh to retrain)")
    elif 0 < done < epochs:
        _say(f"training: resumed {ckpt} after epoch {done}")
    test_metrics = evaluate(model, test.x, test.y, test.lengths)
    test_acc = test_metrics["accuracy"]
    if history:
        last = history[-1]
        _say(f"trained {_plural(len(history), 'epoch')}: train loss {last['train_loss']:.4f}"
             + (f", val accuracy {100 * last['val_acc']:.1f}%" if "val_acc" in last else ""))
    _say(f"clean test accuracy: {100 * test_acc:.1f}% on all {len(test)} test texts")

    data_info = {"dataset": name, "max_len": max_len, "seed": seed, "dim": data.dim, "glove": data.glove_source}
    model_path = save_checkpoint(model, out / "model.pt", extra={
        "data": data_info, "history": history, "test_accuracy": test_acc,
        "train_settings": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "n_train": n_train},
    })

    n = min(n_certify, len(test))
    x, y, lengths, sentences = test.x[:n], test.y[:n], test.lengths[:n], test.sentences[:n]
    _say(f"certifying the first {n} test texts (mean length {float(lengths.float().mean()):.1f} tokens): "
         f"l_inf ball of radius eps on every word embedding at once, domains {', '.join(domains)}, "
         f"eps {', '.join(f'{e:g}' for e in eps_list)}, float64")
    cert = run_certification(model, x, y, lengths, eps_list=eps_list, domains=domains, norm="linf",
                             frames=None, dtype=torch.float64, batch_size=64, show_status=progress)
    rows = display_rows(cert["runs"])
    print_summary(rows, title=f"{name} test, first {n} texts: certified % (correct and proven robust)",
                  console=_stdout())
    seconds = time.perf_counter() - t_start

    settings = {"dataset": name, "model": kind, "hidden": hidden, "epochs": epochs, "max_len": max_len,
                "n_certify": n_certify, "eps": eps_list, "domains": domains, "seed": seed,
                "train_limit": train_limit, "batch_size": batch_size, "lr": lr}
    report = {
        "rnnguard_version": __version__, "command": "demo", "settings": settings,
        "data": {"glove": data.glove_source, "counts": dict(data.counts), "n_train_used": n_train,
                 "n_types": data.n_types, "n_oov_types": data.n_oov_types, "n_empty_dropped": data.n_empty_dropped},
        "model": model.config(), "checkpoint": str(model_path),
        "training": {"reused_checkpoint": reused, "history": history},
        "clean_test_accuracy": test_acc, "clean_test_loss": test_metrics["loss"],
        "certification": {
            "n": n, "norm": "linf", "frames": "all", "dtype": "float64",
            "clean_accuracy": cert["clean_accuracy"],
            "summary": summary_rows(cert["runs"]),
            "samples": _sample_records(y, lengths, cert, list(range(n)), sentences),
            "results": cert["runs"],
        },
        "seconds": seconds,
    }
    json_path = write_json(out / "demo.json", report)
    md = [
        f"# rnnguard demo: {kind.upper()} on {name}",
        "",
        f"* data: {name} ({len(train)} train / {len(val)} val / {len(test)} test texts, split seed {seed}), "
        f"GloVe 50d raw vectors, texts cut to {max_len} tokens"
        + (f"; trained on the first {n_train} training texts only" if n_train < n_train_total else ""),
        f"* model: {kind.upper()}, hidden {hidden}, {num_classes} classes; {_plural(epochs, 'epoch')} of Adam (lr {lr:g}, "
        f"batch {batch_size}, gradient clipping 5.0), seed {seed}",
        f"* clean test accuracy: {100 * test_acc:.1f}% (all {len(test)} test texts)",
        f"* certification: first {n} test texts; l_inf ball of radius eps (raw GloVe units) around every word "
        "embedding at once; float64; a text counts as certified only if it is correctly classified and every "
        "margin is proven positive",
        "",
        "## Training",
        "",
        summary_table([{k: v for k, v in h.items()} for h in history]) if history else "(no epochs)\n",
        "## Certification",
        "",
        summary_table(rows),
        f"Model checkpoint: `{model_path}`. Re-certify with, e.g., "
        f"`rnnguard certify --checkpoint {model_path} --dataset {name} --limit {n} --eps {eps_list[0]:g} "
        f"--domain {','.join(domains)}`.",
        "",
    ]
    md_path = write_text_atomic(out / "demo.md", "\n".join(md))
    _say(f"wrote {json_path}, {md_path}, {model_path} (training state: {ckpt}, {out / METRICS_NAME})")
    _say(f"done in {seconds:.1f} s")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"rnnguard {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_version_callback)] = False,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, help="CPU threads for torch (default: torch's choice). On a busy machine use 1, or set "
                                 "OMP_WAIT_POLICY=PASSIVE, to avoid OpenMP spin contention.")] = None,
) -> None:
    """Sound robustness certification for RNN / LSTM / GRU classifiers."""
    global _USER_THREADS
    _USER_THREADS = threads is not None
    if threads is not None:
        torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``rnnguard``)."""
    app(args=list(argv) if argv is not None else None, prog_name="rnnguard")


if __name__ == "__main__":
    main()
