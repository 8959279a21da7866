"""`rnnguard train` and `rnnguard evaluate`, plus the fractional epochs fit() hands to objectives.

The end-to-end training test uses the real RT data (skipped when the shared data folder is absent);
everything else runs on tiny synthetic checkpoints and inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rnnguard import SequenceClassifier
from rnnguard.checkpoints import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from rnnguard.cli import app, parse_attacks
from rnnguard.errors import InvalidInputError
from rnnguard.objectives import make_objective
from rnnguard.train import METRICS_NAME, describe_objective, fit

from cli_data import SHARED_DATA  # noqa: E402  (tests/cli/cli_data.py)

runner = CliRunner()


DATA = SHARED_DATA


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / METRICS_NAME).read_text().splitlines()]


# --------------------------------------------------------------------------- train + evaluate on RT


@pytest.mark.shared_data
@pytest.mark.skipif(DATA is None, reason="shared data folder (rt-polarity + glove) not found")
def test_train_resume_evaluate_on_rt(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--dataset", "rt", "--model", "lstm", "--hidden", "8", "--method", "rnnguard", "--eps", "0.03",
            "--epochs", "1", "--max-len", "5", "--train-limit", "48", "--batch-size", "16", "--out", run,
            "--data-root", DATA, "--no-progress"]
    first = _ok(_run(*args))
    assert "clean accuracy: val" in first.stdout and "test" in first.stdout
    assert "s per epoch" in first.stdout
    rows = _metrics(run)
    assert len(rows) == 1 and rows[0]["epoch"] == 1
    # fractional epochs: with 3 batches and a half-epoch ramp, eps is already > 0 within epoch 1
    assert rows[0]["eps"] == pytest.approx(0.03) and rows[0]["kappa"] == pytest.approx(0.5)
    model, extra = load_checkpoint(run / "model.pt")
    assert extra["data"]["dataset"] == "rt" and extra["data"]["max_len"] == 5 and extra["data"]["seed"] == 0
    t = extra["training"]
    assert t["method"] == "rnnguard" and t["eps"] == 0.03 and t["epochs"] == 1 and t["n_train"] == 48
    assert "interzono" in t["objective"]
    assert model.config()["kind"] == "lstm" and model.config()["hidden_size"] == 8
    summary = json.loads((run / "train.json").read_text())
    assert 0 <= summary["clean_test_accuracy"] <= 1 and len(summary["history"]) == 1

    # rerunning the finished command is a no-op: same weights, same metrics
    second = _ok(_run(*args))
    assert "nothing to train" in second.stdout
    again, _ = load_checkpoint(run / "model.pt")
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert _metrics(run) == rows
    # ... but another method in the same folder is refused (exit 2, no traceback)
    other = _run(*[("ibp" if a == "rnnguard" else a) for a in args])
    assert other.exit_code == 2 and "error:" in other.stderr and "--fresh" in other.stderr
    assert "Traceback" not in other.output

    out = tmp_path / "eval"
    ev = _ok(_run("evaluate", "--checkpoint", run / "model.pt", "--dataset", "rt", "--limit", "8",
                  "--eps", "0,0.03", "--domain", "box,interzono", "--attacks", "pgd", "--data-root", DATA,
                  "--out", out))
    assert "interzono" in ev.stdout and "violations" in ev.stdout
    for name in ("evaluation.json", "evaluation.md", "certified_accuracy.png"):
        assert (out / name).is_file(), name
    record = json.loads((out / "evaluation.json").read_text())
    assert record["n"] == 8 and record["soundness_violations"] == 0
    assert record["source"]["max_len"] == 5  # taken from the checkpoint
    assert [r["eps"] for r in record["by_eps"]] == [0.0, 0.03]
    assert record["by_eps"][0]["certified"]["interzono"] == pytest.approx(record["clean_accuracy"])
    md = (out / "evaluation.md").read_text()
    assert "cert interzono %" in md and "| violations |" in md
    assert record["command"] in md and "rnnguard evaluate --checkpoint" in md and "--limit 8" in md

    # the trained model also certifies with `rnnguard certify --dataset rt` (max_len from the checkpoint)
    cj = tmp_path / "c.json"
    _ok(_run("certify", "-c", run / "model.pt", "--dataset", "rt", "--limit", "4", "--eps", "0.01",
             "--domain", "interzono", "--data-root", DATA, "--json", cj))
    assert json.loads(cj.read_text())["source"]["max_len"] == 5

    # more epochs later: resumes after epoch 1 if the schedule is unchanged (the default ramp follows --epochs)
    longer = [*args[: args.index("--epochs")], "--epochs", "2", *args[args.index("--epochs") + 2:]]
    refused = _run(*longer)
    assert refused.exit_code == 2 and "objective" in refused.stderr
    resumed = _ok(_run(*longer, "--ramp", "0.5"))
    assert "resuming" in resumed.stdout and "after epoch 1" in resumed.stdout
    assert [r["epoch"] for r in _metrics(run)] == [1, 2] and _metrics(run)[0] == rows[0]
    assert load_checkpoint(run / "model.pt")[1]["training"]["epochs_done"] == 2


def _train_tiny_gru_with_val_certify(run: Path, *args: str):
    """Two epochs of a hidden-4 GRU on 32 RT texts, certifying 6 validation texts after each epoch."""
    return _ok(_run("train", "--dataset", "rt", "--model", "gru", "--hidden", "4", "--epochs", "2", "--max-len", "4",
                    "--train-limit", "32", "--batch-size", "16", "--val-certify", "0.01", "--val-certify-limit", "6",
                    "--keep-epochs", "--out", run, "--data-root", DATA, "--no-progress", *args))


@pytest.mark.shared_data
@pytest.mark.skipif(DATA is None, reason="shared data folder (rt-polarity + glove) not found")
def test_train_lr_decay_val_certified_and_kept_epochs(tmp_path):
    run = tmp_path / "run"
    res = _train_tiny_gru_with_val_certify(run, "--method", "ibp", "--eps", "0.01", "--ramp", "1",
                                           "--lr-decay-after", "1", "--lr-gamma", "0.5")
    rows = _metrics(run)
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 5e-4])
    assert all(0 <= r["val_certified"] <= 1 and r["val_certified"] * 6 == pytest.approx(round(r["val_certified"] * 6))
               for r in rows)
    if all(r["val_majority"] >= 0.99 for r in rows):  # this tiny model collapses: nothing to select
        assert "every epoch collapsed to a (nearly) constant classifier" in res.stdout
    else:
        assert "best validation certified accuracy" in res.stdout and "model-e" in res.stdout
    assert (run / "model-e1.pt").is_file() and (run / "model-e2.pt").is_file()
    # an epoch's model carries the data settings, so evaluating it reads texts as training did
    assert load_checkpoint(run / "model-e1.pt")[1]["data"] == load_checkpoint(run / "model.pt")[1]["data"]
    cj = tmp_path / "epoch1.json"
    res = _ok(_run("certify", "--checkpoint", run / "model-e1.pt", "--dataset", "rt", "--limit", "3", "--eps", "0.001",
                   "--domain", "box", "--data-root", DATA, "--json", cj))
    assert json.loads(cj.read_text())["source"]["max_len"] == 4 and "warning" not in res.stdout
    training = load_checkpoint(run / "model.pt")[1]["training"]
    assert training["lr_decay_after"] == [1] and training["lr_gamma"] == 0.5 and training["val_certify"] == 0.01


@pytest.mark.shared_data
@pytest.mark.skipif(DATA is None, reason="shared data folder (rt-polarity + glove) not found")
def test_train_names_the_best_non_constant_epoch(tmp_path):
    run = tmp_path / "run"
    res = _train_tiny_gru_with_val_certify(run, "--method", "regular", "--lr", "0.05")
    rows = _metrics(run)
    assert any(r["val_majority"] < 0.99 for r in rows)
    best = max((r for r in rows if r["val_majority"] < 0.99), key=lambda r: (r["val_certified"], r["val_acc"]))
    assert f"after epoch {best['epoch']} ({run / ('model-e%d.pt' % best['epoch'])})" in res.stdout


@pytest.mark.shared_data
@pytest.mark.skipif(DATA is None, reason="shared data folder (rt-polarity + glove) not found")
@pytest.mark.parametrize("flag, keeps", [(None, True), ("--return-freed-memory", False), ("--keep-freed-memory", True)])
def test_train_keeps_freed_memory_unless_told(tmp_path, monkeypatch, flag, keeps):
    import rnnguard.train as train_module

    calls = []
    monkeypatch.setattr(train_module, "keep_freed_memory", lambda: calls.append(1) or True)
    _ok(_run("train", "--dataset", "rt", "--model", "rnn", "--hidden", "4", "--method", "regular", "--epochs", "1",
             "--max-len", "4", "--train-limit", "16", "--batch-size", "16", "--out", tmp_path / "run",
             "--data-root", DATA, "--no-progress", *([flag] if flag else [])))
    assert bool(calls) is keeps


# --------------------------------------------------------------------------- errors: exit code 2


@pytest.mark.parametrize("bad", [
    ["--method", "bogus"],
    ["--method", "rnnguard", "--model", "transformer"],
    ["--kappa", "1.5"],
    ["--eps", "-0.1"],
    ["--ramp", "0"],
    ["--lr", "0"],
    ["--lr-decay-after", "ten"],
    ["--lr-decay-after", "-1"],
    ["--lr-gamma", "0"],
    ["--val-certify", "-0.01"],
])
def test_train_rejects_bad_options(tmp_path, bad):
    res = _run("train", "--out", tmp_path / "run", "--data-root", tmp_path / "nodata", *bad)
    assert res.exit_code == 2, res.output
    assert "error:" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()  # refused before touching anything


def test_bad_method_name_mentions_the_choices(tmp_path):
    res = _run("train", "--out", tmp_path / "run", "--method", "crown")
    assert res.exit_code == 2
    assert "crown" in res.stderr and "rnnguard" in res.stderr and "certrnn" in res.stderr


# --------------------------------------------------------------------------- evaluate on a tiny checkpoint


@pytest.fixture()
def tiny(tmp_path: Path):
    torch.manual_seed(0)
    model = SequenceClassifier("gru", 3, 5, 2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 3, generator=g)
    lengths = torch.tensor([4, 2, 3, 1, 4, 4])
    with torch.no_grad():
        y = model(x, lengths).argmax(1)
    y[0] = 1 - y[0]
    ckpt = save_checkpoint(model, tmp_path / "tiny" / "model.pt")
    inputs = tmp_path / "inputs.pt"
    torch.save({"x": x, "y": y, "lengths": lengths}, inputs)
    return ckpt, inputs


def test_evaluate_inputs_file_writes_three_files(tiny, tmp_path):
    ckpt, inputs = tiny
    out = tmp_path / "eval"
    res = _ok(_run("evaluate", "-c", ckpt, "--inputs", inputs, "--eps", "0,0.05", "--attacks", "pgd",
                   "--frames", "0,-1", "--out", out))
    assert "accuracy (%)" in res.stdout and "SOUNDNESS" not in res.output
    record = json.loads((out / "evaluation.json").read_text())
    assert record["format"] == "rnnguard-evaluation" and record["n"] == 6
    assert record["threat"]["frames"] == "0,-1" and record["attacks"] == ["pgd"]
    assert set(record["by_eps"][0]["certified"]) == {"box", "zonotope", "interzono"}
    assert record["clean_accuracy"] == pytest.approx(100 * 5 / 6)
    assert "--inputs" in (out / "evaluation.md").read_text()
    if (out / "certified_accuracy.png").exists():
        assert (out / "certified_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    else:  # only without matplotlib
        assert "matplotlib is not installed" in res.stdout


def test_evaluate_without_out_writes_nothing_and_attacks_none(tiny, tmp_path):
    ckpt, inputs = tiny
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = _ok(_run("evaluate", "-c", ckpt, "--inputs", inputs, "--eps", "0.01", "--attacks", "none",
                   "--domain", "interzono", "--limit", "3"))
    assert "no soundness cross-check" in res.stdout
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_evaluate_soundness_violation_exits_3(tiny, tmp_path, monkeypatch):
    import rnnguard.evaluation as evaluation

    real = evaluation.evaluate

    def broken(*args, **kwargs):  # pretend an attack broke a certified sample
        record = real(*args, **kwargs)
        record["by_eps"][-1]["soundness_violations"] = 2
        record["soundness_violations"] = 2
        return record

    monkeypatch.setattr(evaluation, "evaluate", broken)
    ckpt, inputs = tiny
    out = tmp_path / "eval"
    res = _run("evaluate", "-c", ckpt, "--inputs", inputs, "--eps", "0.01", "--attacks", "pgd",
               "--domain", "box", "--out", out)
    assert res.exit_code == 3, res.output
    assert "SOUNDNESS VIOLATION" in res.stderr and "eps=0.01: 2" in res.stderr
    assert json.loads((out / "evaluation.json").read_text())["soundness_violations"] == 2  # kept for inspection


@pytest.mark.parametrize("bad", [
    ["--attacks", "fgsm"], ["--attacks", ""], ["--domain", "polytope"], ["--eps", "x"], ["--frames", "a,b"],
    ["--norm", "l1"], ["--split", "dev"],
])
def test_evaluate_rejects_bad_options(tiny, bad):
    ckpt, inputs = tiny
    res = _run("evaluate", "-c", ckpt, "--inputs", inputs, *bad)
    assert res.exit_code == 2, res.output
    assert "error:" in res.stderr and "Traceback" not in res.output


def test_evaluate_needs_exactly_one_source(tiny):
    ckpt, inputs = tiny
    assert _run("evaluate", "-c", ckpt).exit_code == 2
    assert _run("evaluate", "-c", ckpt, "--inputs", inputs, "--dataset", "rt").exit_code == 2
    missing = _run("evaluate", "-c", Path(ckpt).parent / "nope.pt", "--inputs", inputs)
    assert missing.exit_code == 2 and "not found" in missing.stderr


def test_parse_attacks():
    assert parse_attacks("none") == {}
    assert list(parse_attacks("pgd")) == ["pgd"]
    assert list(parse_attacks("ensemble,pgd")) == ["ensemble", "pgd"]
    assert list(parse_attacks("all")) == ["pgd", "ensemble"]
    with pytest.raises(InvalidInputError, match="unknown attack"):
        parse_attacks("pgd,apgd")


# --------------------------------------------------------------------------- fractional epochs in fit()


def _data(n: int = 40, T: int = 4, d: int = 3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, T, d, generator=g)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    y = (x[torch.arange(n), lengths - 1, 0] > 0).long()
    return x, y, lengths


def _model(kind: str = "lstm") -> SequenceClassifier:
    torch.manual_seed(0)
    return SequenceClassifier(kind, 3, 4, 2)


def test_fit_passes_fractional_epochs_to_objectives_that_ask():
    x, y, lengths = _data()
    seen = []

    def objective(model, xb, yb, lb, *, epoch):
        seen.append(epoch)
        return torch.nn.functional.cross_entropy(model(xb, lb), yb)

    objective.fractional_epochs = True
    fit(_model(), x, y, lengths, epochs=2, batch_size=10, objective=objective, progress=False)
    assert seen == [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75]
    seen.clear()
    fit(_model(), x, y, lengths, epochs=2, batch_size=16, objective=objective, progress=False,
        fractional_epochs=False)  # explicit override
    assert seen == [0, 0, 0, 1, 1, 1]
    seen.clear()
    del objective.fractional_epochs  # plain functions: integer epochs (backward compatible)
    fit(_model(), x, y, lengths, epochs=1, batch_size=16, objective=objective, progress=False)
    assert seen == [0, 0, 0]


def test_make_objective_ramps_within_the_first_epoch(tmp_path):
    x, y, lengths = _data()
    objective = make_objective("ibp", 0.1, epochs=2, ramp=1.0)
    history = fit(_model(), x, y, lengths, epochs=2, batch_size=10, objective=objective, progress=False,
                  checkpoint_dir=tmp_path)
    # last batch of epoch 1 runs at epoch 0.75: eps 0.075, kappa 1 - 0.75 * 0.5
    assert history[0]["eps"] == pytest.approx(0.075) and history[0]["kappa"] == pytest.approx(0.625)
    assert history[1]["eps"] == pytest.approx(0.1) and history[1]["kappa"] == pytest.approx(0.5)
    saved = read_checkpoint(tmp_path / "checkpoint.pt")["extra"]["training"]["settings"]["objective"]
    assert saved == describe_objective(objective) and "domain='box'" in saved
    # resuming with another method (same objective class) is refused
    with pytest.raises(CheckpointError, match="objective"):
        fit(_model(), x, y, lengths, epochs=3, batch_size=10, progress=False, checkpoint_dir=tmp_path,
            objective=make_objective("rnnguard", 0.1, epochs=2, ramp=1.0))


@pytest.mark.parametrize("method", ["regular", "fgsm", "pgd", "certrnn", "rnnguard"])
def test_every_method_trains_one_epoch(method):
    x, y, lengths = _data(n=16)
    objective = make_objective(method, 0.05, epochs=1, pgd_steps=2)
    history = fit(_model("gru"), x, y, lengths, epochs=1, batch_size=8, objective=objective, progress=False)
    assert len(history) == 1 and history[0]["train_loss"] > 0
    if method != "regular":
        assert history[0]["eps"] == pytest.approx(0.05)  # ramp of half an epoch, last batch at 0.5


@pytest.mark.shared_data
@pytest.mark.skipif(DATA is None, reason="shared data folder (rt-polarity + glove) not found")
def test_text_checkpoint_without_data_settings_warns_and_reads_whole_texts(tmp_path):
    """A checkpoint that records no data settings cannot know the training cut-off: the texts are read
    whole and the command says so, naming --max-len; with --max-len the warning goes."""
    ckpt = save_checkpoint(SequenceClassifier("lstm", 50, 3, 2), tmp_path / "bare.pt")
    whole, cut = tmp_path / "whole.json", tmp_path / "cut.json"
    res = _ok(_run("certify", "--checkpoint", ckpt, "--dataset", "rt", "--limit", "2", "--eps", "0.001",
                   "--domain", "box", "--data-root", DATA, "--json", whole))
    assert "records no training data settings" in res.stdout and "--max-len" in res.stdout
    assert json.loads(whole.read_text())["source"]["max_len"] is None
    res = _ok(_run("certify", "--checkpoint", ckpt, "--dataset", "rt", "--limit", "2", "--eps", "0.001",
                   "--domain", "box", "--max-len", "6", "--data-root", DATA, "--json", cut))
    assert "records no training data settings" not in res.stdout
    assert json.loads(cut.read_text())["source"]["max_len"] == 6
