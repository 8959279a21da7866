"""`rnnguard demo` end to end on the real RT data (skipped when the shared data folder is absent)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rnnguard.cli import app

from cli_data import SHARED_DATA  # noqa: E402  (tests/cli/cli_data.py)

DATA = SHARED_DATA


@pytest.mark.shared_data
@pytest.mark.skipif(DATA is None, reason="shared data folder (rt-polarity + glove) not found")
def test_demo_tiny_then_reuse(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--epochs", "1", "--n-certify", "5", "--max-len", "10", "--out", str(out),
            "--data-root", str(DATA), "--no-progress"]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "clean test accuracy" in first.stdout
    for name in ("box", "zonotope", "interzono"):
        assert name in first.stdout
    report = json.loads((out / "demo.json").read_text())
    assert report["settings"]["max_len"] == 10 and report["settings"]["epochs"] == 1
    cert = report["certification"]
    assert [(r["eps"], r["domain"]) for r in cert["summary"]] == [
        (e, d) for e in (0.01, 0.03) for d in ("box", "zonotope", "interzono")]
    assert len(cert["samples"]) == 5 and all(s["length"] <= 10 for s in cert["samples"])
    assert 0.0 <= report["clean_test_accuracy"] <= 1.0
    assert report["training"]["reused_checkpoint"] is False and len(report["training"]["history"]) == 1
    md = (out / "demo.md").read_text()
    assert "| domain" in md and "interzono" in md
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file()

    second = runner.invoke(app, args)  # reuses the finished training checkpoint
    assert second.exit_code == 0, second.output
    assert "reused the finished checkpoint" in second.stdout
    again = json.loads((out / "demo.json").read_text())
    assert again["training"]["reused_checkpoint"] is True
    assert again["clean_test_accuracy"] == report["clean_test_accuracy"]
    assert [r["certified"] for r in again["certification"]["results"]] == [r["certified"] for r in cert["results"]]

    # the demo's model certifies with `rnnguard certify --dataset` (max_len taken from the checkpoint)
    cert_json = tmp_path / "c.json"
    third = runner.invoke(app, ["certify", "-c", str(out / "model.pt"), "--dataset", "rt", "--limit", "5",
                                "--eps", "0.01", "--domain", "interzono", "--data-root", str(DATA),
                                "--json", str(cert_json)])
    assert third.exit_code == 0, third.output
    c = json.loads(cert_json.read_text())
    assert c["source"]["max_len"] == 10
    assert c["results"][0]["certified"] == cert["results"][2]["certified"]
