"""fit(): determinism, exact resumption, metrics file; checkpoint round trip and errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from rnnguard import SequenceClassifier
from rnnguard.checkpoints import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from rnnguard.errors import InvalidInputError
from rnnguard.train import CHECKPOINT_NAME, METRICS_NAME, clean_cross_entropy, evaluate, fit


def _data(n: int = 40, T: int = 6, d: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, T, d, generator=g)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    y = (x[torch.arange(n), lengths - 1, 0] > 0).long()  # learnable: sign of the last frame
    return x, y, lengths


def _model(kind: str = "lstm", seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    return SequenceClassifier(kind, 3, 5, 2)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _strip_time(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def _metrics_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / METRICS_NAME).read_text().splitlines()]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_resume_equals_uninterrupted(tmp_path, kind):
    x, y, lengths = _data()
    val = (x[:10], y[:10], lengths[:10])
    full = _model(kind)
    h_full = fit(full, x, y, lengths, epochs=4, batch_size=8, seed=3, checkpoint_dir=tmp_path / "a",
                 progress=False, val=val)

    first = _model(kind)
    h_first = fit(first, x, y, lengths, epochs=2, batch_size=8, seed=3, checkpoint_dir=tmp_path / "b",
                  progress=False, val=val)
    assert len(h_first) == 2
    resumed = _model(kind, seed=123)  # different init: everything comes from the checkpoint
    h_resumed = fit(resumed, x, y, lengths, epochs=4, batch_size=8, seed=3, checkpoint_dir=tmp_path / "b",
                    progress=False, val=val)

    for a, b in zip(_params(full), _params(resumed)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert _strip_time(h_full) == _strip_time(h_resumed)
    assert [row["epoch"] for row in h_resumed] == [1, 2, 3, 4]
    for folder in ("a", "b"):
        lines = _metrics_lines(tmp_path / folder)
        assert len(lines) == 4 and [r["epoch"] for r in lines] == [1, 2, 3, 4]
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "seconds"} <= set(lines[0])
    assert _strip_time(_metrics_lines(tmp_path / "a")) == _strip_time(_metrics_lines(tmp_path / "b"))
    # the training checkpoint is a regular rnnguard checkpoint
    loaded, extra = load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    assert extra["training"]["epoch"] == 4
    for a, b in zip(_params(full), _params(loaded)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.endswith(".tmp")]


def test_resume_after_a_crash_mid_epoch(tmp_path):
    x, y, lengths = _data()
    reference = _model()
    fit(reference, x, y, lengths, epochs=3, batch_size=8, checkpoint_dir=tmp_path / "ref", progress=False)

    calls = {"n": 0}

    def crashing(model, xb, yb, lb, *, epoch):
        calls["n"] += 1
        if epoch == 1 and calls["n"] == 8:  # third batch of the second epoch
            raise KeyboardInterrupt
        return clean_cross_entropy(model, xb, yb, lb, epoch=epoch)

    crashing.__qualname__ = clean_cross_entropy.__qualname__  # same objective as far as resuming goes
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, x, y, lengths, epochs=3, batch_size=8, checkpoint_dir=tmp_path / "run", progress=False,
            objective=crashing)
    assert len(_metrics_lines(tmp_path / "run")) == 1
    model = _model()
    history = fit(model, x, y, lengths, epochs=3, batch_size=8, checkpoint_dir=tmp_path / "run", progress=False)
    assert len(history) == 3 and len(_metrics_lines(tmp_path / "run")) == 3
    for a, b in zip(_params(reference), _params(model)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_finished_checkpoint_is_reused_and_resume_false_restarts(tmp_path):
    x, y, lengths = _data()
    model = _model()
    h1 = fit(model, x, y, lengths, epochs=2, batch_size=8, checkpoint_dir=tmp_path, progress=False)
    trained = _params(model)
    again = _model(seed=5)
    h2 = fit(again, x, y, lengths, epochs=2, batch_size=8, checkpoint_dir=tmp_path, progress=False)
    assert h2 == h1  # nothing retrained: history comes from the checkpoint
    for a, b in zip(trained, _params(again)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    fresh = _model()
    h3 = fit(fresh, x, y, lengths, epochs=1, batch_size=8, checkpoint_dir=tmp_path, resume=False, progress=False)
    assert len(h3) == 1 and len(_metrics_lines(tmp_path)) == 1
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME)["extra"]["training"]["epoch"] == 1


def test_resume_refuses_different_settings(tmp_path):
    x, y, lengths = _data()
    fit(_model(), x, y, lengths, epochs=2, batch_size=8, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="lr"):
        fit(_model(), x, y, lengths, epochs=3, batch_size=8, lr=1e-2, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="data"):
        fit(_model(), x + 1, y, lengths, epochs=3, batch_size=8, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="model"):
        fit(_model("gru"), x, y, lengths, epochs=3, batch_size=8, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="more than"):
        fit(_model(), x, y, lengths, epochs=1, batch_size=8, checkpoint_dir=tmp_path, progress=False)


def test_fit_learns_and_is_deterministic_without_checkpoints():
    x, y, lengths = _data(n=64)
    a, b = _model(), _model()
    ha = fit(a, x, y, lengths, epochs=15, batch_size=16, lr=1e-2, progress=False)
    hb = fit(b, x, y, lengths, epochs=15, batch_size=16, lr=1e-2, progress=False)
    assert _strip_time(ha) == _strip_time(hb)
    assert ha[-1]["train_loss"] < ha[0]["train_loss"]
    assert evaluate(a, x, y, lengths)["accuracy"] > 0.75


def test_custom_objective_returning_only_a_loss():
    x, y, lengths = _data()
    seen = []

    def objective(model, xb, yb, lb, *, epoch):
        seen.append(epoch)
        return torch.nn.functional.cross_entropy(model(xb, lb), yb)

    history = fit(_model(), x, y, lengths, epochs=2, batch_size=20, objective=objective, progress=False)
    assert seen == [0, 0, 1, 1]
    assert history[0]["train_acc"] is None


def test_progress_bar_runs(tmp_path, capsys):
    x, y, lengths = _data()
    fit(_model(), x, y, lengths, epochs=1, batch_size=8, progress=True, checkpoint_dir=tmp_path)
    assert "epoch 1/1" in capsys.readouterr().err


def test_fit_rejects_bad_inputs():
    x, y, lengths = _data()
    with pytest.raises(InvalidInputError):
        fit(_model(), x[0], y, lengths, epochs=1, progress=False)
    with pytest.raises(InvalidInputError):
        fit(_model(), x, y.float(), lengths, epochs=1, progress=False)
    with pytest.raises(InvalidInputError):
        fit(_model(), x, y + 2, lengths, epochs=1, progress=False)
    with pytest.raises(InvalidInputError):
        fit(_model(), x, y, lengths * 0, epochs=1, progress=False)
    with pytest.raises(InvalidInputError):
        fit(_model(), x, y, lengths, epochs=-1, progress=False)
    with pytest.raises(InvalidInputError):
        fit(_model(), x, y, lengths, epochs=1, batch_size=0, progress=False)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    model = SequenceClassifier("gru", 3, 4, 3, num_layers=2, batch_first=False, bias=False)
    path = save_checkpoint(model, tmp_path / "sub" / "m.pt", extra={"note": "hi", "eps": [0.1, 0.2]})
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["m.pt"]
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "rnnguard-checkpoint" and payload["version"] == 1
    assert payload["config"] == model.config()
    loaded, extra = load_checkpoint(path)
    assert extra == {"note": "hi", "eps": [0.1, 0.2]}
    assert loaded.config() == model.config() and not loaded.training
    x = torch.randn(5, 2, 3)  # (T, B, d): batch_first=False
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    # overwriting is atomic and leaves no temporary files
    save_checkpoint(loaded, path)
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]
    assert load_checkpoint(path)[1] == {}


def test_checkpoint_errors(tmp_path):
    model = SequenceClassifier("rnn", 3, 4, 2)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(garbage)
    good = save_checkpoint(model, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(truncated)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(CheckpointError, match="bare state_dict"):
        load_checkpoint(bare)
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "other", "weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not an rnnguard checkpoint"):
        load_checkpoint(foreign)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"obj": pickle.PickleError("x")}, unsafe)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(unsafe)
    payload = torch.load(good, weights_only=True)
    newer = tmp_path / "newer.pt"
    torch.save({**payload, "version": 99}, newer)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(newer)
    mismatched = tmp_path / "mismatch.pt"
    torch.save({**payload, "config": {**payload["config"], "hidden_size": 7}}, mismatched)
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(mismatched)
    bad_config = tmp_path / "badconfig.pt"
    torch.save({**payload, "config": {**payload["config"], "kind": "transformer"}}, bad_config)
    with pytest.raises(CheckpointError, match="invalid model config"):
        load_checkpoint(bad_config)
    with pytest.raises(InvalidInputError):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.pt")
    assert isinstance(CheckpointError("x"), InvalidInputError)


def test_evaluate_reports_majority_share():
    x, y, lengths = _data()
    model = _model()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 5.0]))  # always class 1
    out = evaluate(model, x, y, lengths)
    assert out["majority_share"] == 1.0
    assert out["accuracy"] == pytest.approx(float((y == 1).float().mean()))


def test_fit_warns_when_training_collapses_to_a_constant_classifier(tmp_path):
    from rnnguard.train import CollapseWarning

    x, y, lengths = _data()
    model = _model()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 50.0]))  # a tiny lr cannot undo this in one epoch
    with pytest.warns(CollapseWarning, match="constant classifier"):
        history = fit(model, x, y, lengths, epochs=1, batch_size=8, lr=1e-6, progress=False,
                      val=(x[:10], y[:10], lengths[:10]))
    assert history[0]["val_majority"] == 1.0


def test_fit_records_majority_share_without_warning_on_a_learning_model(recwarn):
    x, y, lengths = _data()
    history = fit(_model(), x, y, lengths, epochs=3, batch_size=8, lr=1e-2, progress=False,
                  val=(x[:20], y[:20], lengths[:20]))
    assert all(0.5 <= row["val_majority"] < 0.99 for row in history)
    assert not [w for w in recwarn if w.category.__name__ == "CollapseWarning"]


def test_lr_milestones_decay_the_rate_and_resume_follows_the_schedule(tmp_path):
    x, y, lengths = _data()
    kwargs = dict(batch_size=8, seed=1, progress=False, lr=1e-2, lr_milestones=[1, 3], lr_gamma=0.5)
    full = _model()
    h_full = fit(full, x, y, lengths, epochs=4, checkpoint_dir=tmp_path / "a", **kwargs)
    assert [row["lr"] for row in h_full] == pytest.approx([1e-2, 5e-3, 5e-3, 2.5e-3])

    part = _model()
    fit(part, x, y, lengths, epochs=2, checkpoint_dir=tmp_path / "b", **kwargs)
    resumed = _model(seed=7)
    h_resumed = fit(resumed, x, y, lengths, epochs=4, checkpoint_dir=tmp_path / "b", **kwargs)
    for a, b in zip(_params(full), _params(resumed)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert _strip_time(h_full) == pytest.approx(_strip_time(h_resumed))
    # a different schedule is a different run: resuming it is refused
    with pytest.raises(CheckpointError, match="lr_gamma"):
        fit(_model(), x, y, lengths, epochs=5, checkpoint_dir=tmp_path / "b", **{**kwargs, "lr_gamma": 0.1})


def test_no_milestones_is_a_constant_rate_and_old_checkpoints_still_resume(tmp_path):
    x, y, lengths = _data()
    h = fit(_model(), x, y, lengths, epochs=1, batch_size=8, progress=False, checkpoint_dir=tmp_path)
    assert "lr" not in h[0]
    h2 = fit(_model(), x, y, lengths, epochs=2, batch_size=8, progress=False, checkpoint_dir=tmp_path,
             lr_milestones=())
    assert len(h2) == 2


@pytest.mark.parametrize("bad", [dict(lr_milestones=[-1]), dict(lr_milestones=[1.5]), dict(lr_milestones=[True]),
                                 dict(lr_gamma=0.0), dict(lr_gamma=float("nan")), dict(keep_epoch_models=True)])
def test_schedule_options_reject_bad_values(bad):
    x, y, lengths = _data()
    with pytest.raises(InvalidInputError):
        fit(_model(), x, y, lengths, epochs=1, progress=False, **bad)


def test_epoch_metrics_and_kept_epoch_models(tmp_path):
    x, y, lengths = _data()
    seen = []

    def extra(model):
        seen.append((model.training, torch.is_grad_enabled()))
        return {"val_certified": 0.25 * len(seen)}

    h = fit(_model(), x, y, lengths, epochs=2, batch_size=8, progress=False, checkpoint_dir=tmp_path,
            epoch_metrics=extra, keep_epoch_models=True, epoch_model_extra={"data": {"max_len": 7}, "epoch": -1})
    assert seen == [(False, False), (False, False)]
    assert [row["val_certified"] for row in h] == [0.25, 0.5]
    assert [row["val_certified"] for row in _metrics_lines(tmp_path)] == [0.25, 0.5]
    final, extra = load_checkpoint(tmp_path / "model-e2.pt")
    first, _ = load_checkpoint(tmp_path / "model-e1.pt")
    ckpt, _ = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert extra["epoch"] == 2 and extra["data"] == {"max_len": 7}  # the epoch number wins over the extra's
    for a, b in zip(final.parameters(), ckpt.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert any(not torch.equal(a, b) for a, b in zip(first.parameters(), final.parameters()))


def test_sgd_optimizer_is_plain_sgd_and_resumes(tmp_path):
    """optimizer="sgd" takes plain SGD steps (R2's MNIST recipe), resumes exactly, and is a setting of its own."""
    x, y, lengths = _data()
    kwargs = dict(batch_size=40, seed=2, progress=False, lr=0.5, optimizer="sgd", grad_clip=None)
    model, reference = _model(), _model()
    fit(model, x, y, lengths, epochs=1, **kwargs)  # one batch = one step
    loss = clean_cross_entropy(reference, x, y, lengths)
    loss = loss[0] if isinstance(loss, tuple) else loss
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    for p, q, g in zip(model.parameters(), reference.parameters(), grads):
        torch.testing.assert_close(p.detach(), q.detach() - 0.5 * g, atol=1e-6, rtol=0)

    kwargs["batch_size"] = 8
    full = _model()
    fit(full, x, y, lengths, epochs=3, checkpoint_dir=tmp_path / "a", **kwargs)
    fit(_model(), x, y, lengths, epochs=1, checkpoint_dir=tmp_path / "b", **kwargs)
    resumed = _model(seed=5)
    fit(resumed, x, y, lengths, epochs=3, checkpoint_dir=tmp_path / "b", **kwargs)
    for a, b in zip(_params(full), _params(resumed)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with pytest.raises(CheckpointError, match="optimizer"):  # an Adam run cannot resume an SGD checkpoint
        fit(_model(), x, y, lengths, epochs=4, checkpoint_dir=tmp_path / "b", **{**kwargs, "optimizer": "adam"})


def test_unknown_optimizer_is_rejected():
    from rnnguard.errors import UnknownNameError

    x, y, lengths = _data()
    with pytest.raises(UnknownNameError, match="adam or sgd"):
        fit(_model(), x, y, lengths, epochs=1, progress=False, optimizer="rmsprop")


def test_select_epoch_skips_collapsed_epochs():
    from rnnguard.train import select_epoch

    rows = [{"epoch": 1, "val_certified": 0.30, "val_acc": 0.70, "val_majority": 0.60},
            {"epoch": 2, "val_certified": 0.52, "val_acc": 0.50, "val_majority": 1.00},  # constant: skipped
            {"epoch": 3, "val_certified": 0.30, "val_acc": 0.72, "val_majority": 0.55},  # tie -> higher val_acc
            {"epoch": 4, "train_loss": 0.1}]
    assert select_epoch(rows)["epoch"] == 3
    assert select_epoch(rows[1:2]) is None and select_epoch([]) is None
    assert select_epoch([{"epoch": 1, "val_certified": 0.1}])["epoch"] == 1  # no val_majority recorded
