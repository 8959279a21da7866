"""`rnnguard certify` on a tiny checkpoint and inputs file (fast, no data files needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rnnguard import AllFrames, Frames, LpBall, OneFrame, Perturbation, SequenceClassifier, certify
from rnnguard.checkpoints import save_checkpoint
from rnnguard.cli import app, parse_domains, parse_eps, parse_frames
from rnnguard.errors import InvalidInputError, UnknownNameError

runner = CliRunner()


@pytest.fixture()
def tiny(tmp_path: Path):
    torch.manual_seed(0)
    model = SequenceClassifier("lstm", 3, 4, 3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, 3, generator=gen)
    lengths = torch.tensor([5, 3, 4, 1, 5, 2])
    x = x * (torch.arange(5)[None, :, None] < lengths[:, None, None])  # zeros after each length
    with torch.no_grad():
        y = model(x, lengths).argmax(dim=1)
    y[0] = (y[0] + 1) % 3  # one misclassified sample
    ckpt = save_checkpoint(model, tmp_path / "model.pt", extra={"note": "tiny"})
    inputs = tmp_path / "inputs.pt"
    torch.save({"x": x, "y": y, "lengths": lengths}, inputs)
    return model, x, y, lengths, ckpt, inputs


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def test_json_summary_and_per_sample_results(tiny, tmp_path):
    model, x, y, lengths, ckpt, inputs = tiny
    out = tmp_path / "out" / "report.json"
    res = _ok(_run("certify", "--checkpoint", ckpt, "--inputs", inputs, "--eps", "0.01,0.5",
                   "--domain", "box,zonotope", "-d", "interzono", "--json", out))
    for name in ("box", "zonotope", "interzono"):
        assert name in res.stdout
    report = json.loads(out.read_text())
    assert report["command"] == "certify"
    assert report["model"] == model.config()
    assert report["threat"] == {"norm": "linf", "frames": "all", "clip": None, "eps": [0.01, 0.5]}
    assert [(r["eps"], r["domain"]) for r in report["summary"]] == [
        (e, d) for e in (0.01, 0.5) for d in ("box", "zonotope", "interzono")]
    assert len(report["results"]) == 6
    samples = report["samples"]
    assert [s["index"] for s in samples] == list(range(6))
    assert [s["label"] for s in samples] == y.tolist()
    assert [s["length"] for s in samples] == lengths.tolist()
    assert samples[0]["correct"] is False
    correct = torch.tensor([s["correct"] for s in samples])
    assert report["clean_accuracy"] == pytest.approx(correct.float().mean().item())
    for run, summary in zip(report["results"], report["summary"]):
        expected = certify(model, x, y, Perturbation(LpBall(run["eps"])), domain=run["domain"], lengths=lengths)
        assert run["certified"] == (expected.certified & correct).tolist()
        assert torch.allclose(torch.tensor(run["margin_lower"], dtype=torch.float64), expected.margin_lower)
        assert run["certified"][0] is False  # a misclassified sample never counts as certified
        assert summary["n"] == 6 and summary["n_certified"] == sum(run["certified"])
        assert summary["certified_fraction"] == pytest.approx(sum(run["certified"]) / 6)
        assert summary["samples_per_second"] > 0 and summary["dtype"] == "float64"
        assert "certified" not in summary


def test_eps_zero_box_certifies_exactly_the_correct_samples(tiny, tmp_path):
    *_, ckpt, inputs = tiny
    out = tmp_path / "r.json"
    _ok(_run("certify", "-c", ckpt, "--inputs", inputs, "--eps", "0", "--domain", "box", "--json", out))
    report = json.loads(out.read_text())
    assert report["results"][0]["certified"] == [s["correct"] for s in report["samples"]]


@pytest.mark.parametrize("frames, selection", [("one", OneFrame()), ("0,-1", Frames([0, -1])), ("2", Frames([2]))])
def test_frames_options(tiny, tmp_path, frames, selection):
    model, x, y, lengths, ckpt, inputs = tiny
    out = tmp_path / "r.json"
    _ok(_run("certify", "-c", ckpt, "--inputs", inputs, "--eps", "0.2", "--frames", frames,
             "--domain", "interzono", "--dtype", "float32", "--batch-size", "4", "--json", out))
    report = json.loads(out.read_text())
    run = report["results"][0]
    assert run["frames"] == frames and report["dtype"] == "float32"
    expected = certify(model, x, y, Perturbation(LpBall(0.2), frames=selection), domain="interzono",
                       lengths=lengths, dtype=torch.float32)
    correct = torch.tensor([s["correct"] for s in report["samples"]])
    assert run["certified"] == (expected.certified & correct).tolist()


def test_l2_limit_and_all_domains(tiny, tmp_path):
    *_, ckpt, inputs = tiny
    out = tmp_path / "r.json"
    _ok(_run("certify", "-c", ckpt, "--inputs", inputs, "--eps", "0.05", "--norm", "l2", "--domain", "all",
             "--limit", "3", "--json", out))
    report = json.loads(out.read_text())
    assert [r["domain"] for r in report["summary"]] == ["box", "zonotope", "interzono"]
    assert all(r["norm"] == "l2" and r["n"] == 3 for r in report["summary"])
    assert len(report["samples"]) == 3


def test_inputs_without_lengths(tiny, tmp_path):
    model, x, y, lengths, ckpt, _ = tiny
    path = tmp_path / "nolen.pt"
    torch.save({"x": x, "y": y}, path)
    out = tmp_path / "r.json"
    _ok(_run("certify", "-c", ckpt, "--inputs", path, "--eps", "0.01", "--json", out))
    assert [s["length"] for s in json.loads(out.read_text())["samples"]] == [5] * 6


def _assert_cli_error(result, *fragments: str):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    err = result.stderr
    assert err.startswith("error: "), err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_inputs_missing_key(tiny, tmp_path):
    model, x, y, lengths, ckpt, _ = tiny
    bad = tmp_path / "bad.pt"
    torch.save({"x": x, "labels": y}, bad)
    _assert_cli_error(_run("certify", "-c", ckpt, "--inputs", bad, "--eps", "0.01"), "lacks key(s) 'y'")


@pytest.mark.parametrize("content, fragment", [
    (b"this is not a torch file", "cannot read inputs file"),
    ("list", "holds a list"),
    ("wrong-dim", "'x' must be a float tensor"),
    ("wrong-features", "features per frame"),
    ("bad-label", "labels must lie in"),
    ("bad-length", "lengths must lie in"),
])
def test_bad_inputs_files(tiny, tmp_path, content, fragment):
    model, x, y, lengths, ckpt, _ = tiny
    bad = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    elif content == "list":
        torch.save([x, y], bad)
    elif content == "wrong-dim":
        torch.save({"x": x[0], "y": y}, bad)
    elif content == "wrong-features":
        torch.save({"x": torch.randn(6, 5, 7), "y": y}, bad)
    elif content == "bad-label":
        torch.save({"x": x, "y": torch.full_like(y, 5)}, bad)
    else:
        torch.save({"x": x, "y": y, "lengths": torch.full_like(lengths, 9)}, bad)
    _assert_cli_error(_run("certify", "-c", ckpt, "--inputs", bad, "--eps", "0.01"), fragment)


def test_other_errors_are_one_line(tiny, tmp_path):
    *_, ckpt, inputs = tiny
    _assert_cli_error(_run("certify", "-c", tmp_path / "nope.pt", "--inputs", inputs, "--eps", "0.01"),
                      "checkpoint not found")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    _assert_cli_error(_run("certify", "-c", junk, "--inputs", inputs, "--eps", "0.01"), "not a readable checkpoint")
    _assert_cli_error(_run("certify", "-c", ckpt, "--inputs", tmp_path / "missing.pt", "--eps", "0.01"),
                      "inputs file not found")
    _assert_cli_error(_run("certify", "-c", ckpt, "--inputs", inputs, "--eps", "0.01", "--domain", "boxx"),
                      "unknown domain 'boxx'")
    _assert_cli_error(_run("certify", "-c", ckpt, "--inputs", inputs, "--eps", "-1"), "--eps")
    _assert_cli_error(_run("certify", "-c", ckpt, "--inputs", inputs, "--eps", "0.1", "--frames", "first"), "--frames")
    _assert_cli_error(_run("certify", "-c", ckpt, "--eps", "0.1"), "exactly one of --inputs")
    _assert_cli_error(_run("certify", "-c", ckpt, "--inputs", inputs, "--eps", "0.1", "--dtype", "half"), "--dtype")


def test_unknown_dataset_is_a_clean_error(tiny):
    *_, ckpt, _ = tiny
    _assert_cli_error(_run("certify", "-c", ckpt, "--dataset", "imdb", "--eps", "0.1"), "unknown dataset 'imdb'")


def test_missing_data_root_is_a_clean_error(tiny, tmp_path):
    *_, ckpt, _ = tiny
    _assert_cli_error(_run("certify", "-c", ckpt, "--dataset", "rt", "--eps", "0.1", "--data-root",
                           tmp_path / "no-data"), "no-data")


def test_option_parsers():
    assert parse_eps(["0.01,0.03", "0.01", " 0.1 "]) == [0.01, 0.03, 0.1]
    assert parse_domains(["zonotope,box", "box"]) == ["zonotope", "box"]
    assert parse_domains("all") == ["box", "zonotope", "interzono"]
    assert isinstance(parse_frames("ALL"), AllFrames) and isinstance(parse_frames("one"), OneFrame)
    assert parse_frames("0, 3,-1") == Frames([0, 3, -1])
    with pytest.raises(UnknownNameError):
        parse_domains("deeppoly")
    with pytest.raises(InvalidInputError):
        parse_eps("abc")
    with pytest.raises(InvalidInputError):
        parse_frames("1.5")


def test_version_and_help():
    res = _run("--version")
    assert res.exit_code == 0 and "rnnguard" in res.stdout
    res = _run("certify", "--help")
    assert res.exit_code == 0 and "--checkpoint" in res.stdout
