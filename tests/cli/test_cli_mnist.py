"""`rnnguard train/certify/evaluate --dataset mnist`: frames travel in the checkpoint metadata and
pixels are clipped to [0, 1] by default. Skipped when ../shared/data/mnist is absent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rnnguard import SequenceClassifier
from rnnguard.checkpoints import load_checkpoint, save_checkpoint
from rnnguard.cli import app


def _mnist_root() -> Path | None:
    env = os.environ.get("RNNGUARD_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return root if (root / "mnist" / "train-images-idx3-ubyte.gz").is_file() else None


ROOT = _mnist_root()
pytestmark = pytest.mark.skipif(ROOT is None, reason="MNIST not found in the shared data folder")
runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mnist") / "run"
    res = _run("train", "--dataset", "mnist", "--frames", 7, "--model", "lstm", "--hidden", 8, "--layers", 2,
               "--method", "regular", "--epochs", 1, "--train-limit", 256, "--out", out, "--no-progress",
               "--data-root", ROOT)
    assert res.exit_code == 0, (res.output, res.exception)
    assert "60000 train / 10000 test images as 7 frames of 112 pixels" in res.output
    return out / "model.pt"


def test_train_stores_frames(trained: Path):
    model, extra = load_checkpoint(trained)
    cfg = model.config()
    assert (cfg["input_size"], cfg["hidden_size"], cfg["num_layers"], cfg["num_classes"]) == (112, 8, 2, 10)
    assert extra["data"]["dataset"] == "mnist" and extra["data"]["frames"] == 7
    assert extra["training"]["n_train"] == 256 and 0 <= extra["test_accuracy"] <= 1


def test_certify_reads_frames_and_clips(trained: Path, tmp_path: Path):
    res = _run("certify", "--checkpoint", trained, "--dataset", "mnist", "--limit", 3, "--eps", "0.001",
               "--domain", "box", "--json", tmp_path / "c.json", "--data-root", ROOT)
    assert res.exit_code == 0, (res.output, res.exception)
    assert "clipped to [0, 1]" in res.output and "7 frames of 112 features" in res.output
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["threat"]["clip"] == [0.0, 1.0]
    assert report["source"]["frames"] == 7 and report["source"]["n"] == 3


def test_evaluate_mnist(trained: Path):
    res = _run("evaluate", "--checkpoint", trained, "--dataset", "mnist", "--limit", 2, "--eps", "0.001",
               "--domain", "box", "--attacks", "none", "--data-root", ROOT)
    assert res.exit_code == 0, (res.output, res.exception)
    assert "mnist test split" in res.output


def test_frames_inferred_without_metadata(tmp_path: Path):
    torch.manual_seed(0)
    path = save_checkpoint(SequenceClassifier("lstm", 196, 4, 10), tmp_path / "bare.pt")
    res = _run("certify", "--checkpoint", path, "--dataset", "mnist", "--limit", 2, "--eps", "0",
               "--domain", "box", "--data-root", ROOT)
    assert res.exit_code == 0, (res.output, res.exception)
    assert "4 frames of 196 features" in res.output
    bad = save_checkpoint(SequenceClassifier("lstm", 50, 4, 2), tmp_path / "text.pt")
    res = _run("certify", "--checkpoint", bad, "--dataset", "mnist", "--eps", "0", "--data-root", ROOT)
    assert res.exit_code == 2 and "does not divide" in res.output


def test_mnist_option_errors(trained: Path, tmp_path: Path):
    res = _run("train", "--dataset", "mnist", "--frames", 5, "--epochs", 0, "--out", tmp_path / "a", "--data-root", ROOT)
    assert res.exit_code == 2 and "divide 784" in res.output
    res = _run("train", "--dataset", "rt", "--frames", 4, "--epochs", 0, "--out", tmp_path / "b")
    assert res.exit_code == 2 and "--frames applies to --dataset mnist only" in res.output
    res = _run("certify", "--checkpoint", trained, "--dataset", "mnist", "--split", "val", "--eps", "0",
               "--data-root", ROOT)
    assert res.exit_code == 2 and "train and test splits only" in res.output


def test_train_with_r2s_sgd_recipe(tmp_path: Path):
    """--optimizer sgd --grad-clip 0 (R2's recipe) is recorded in the checkpoint; bad values are refused."""
    out = tmp_path / "sgd"
    res = _run("train", "--dataset", "mnist", "--frames", 4, "--hidden", 4, "--method", "regular", "--epochs", 1,
               "--train-limit", 200, "--optimizer", "sgd", "--lr", 0.5, "--batch-size", 100, "--grad-clip", 0,
               "--out", out, "--no-progress", "--data-root", ROOT)
    assert res.exit_code == 0, (res.output, res.exception)
    assert "of SGD (lr 0.5, batch 100, no gradient clipping) on 200 images" in res.output
    training = load_checkpoint(out / "model.pt")[1]["training"]
    assert (training["optimizer"], training["grad_clip"], training["lr"]) == ("sgd", None, 0.5)
    res = _run("train", "--dataset", "mnist", "--epochs", 0, "--optimizer", "lbfgs", "--out", tmp_path / "x",
               "--data-root", ROOT)
    assert res.exit_code == 2 and "--optimizer must be one of adam, sgd" in res.output


def test_train_init_starts_from_a_checkpoint(trained: Path, tmp_path: Path):
    """--init copies the weights of a trained model (fine-tuning) and refuses a model of another shape."""
    common = ("train", "--dataset", "mnist", "--frames", 7, "--model", "lstm", "--layers", 2, "--method", "regular",
              "--epochs", 0, "--no-progress", "--data-root", ROOT, "--init", trained)
    res = _run(*common, "--hidden", 8, "--out", tmp_path / "same")
    assert res.exit_code == 0, (res.output, res.exception)
    start, _ = load_checkpoint(trained)
    copy, extra = load_checkpoint(tmp_path / "same" / "model.pt")
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), copy.state_dict().values()))
    assert extra["training"]["init"] == str(trained)
    res = _run(*common, "--hidden", 4, "--out", tmp_path / "other")
    assert res.exit_code == 2 and "--init" in res.output and "'hidden_size': 8" in res.output
