"""experiments/collect_tables.py rebuilds the docs/results.md tables from the committed records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "docs" / "results"


@pytest.fixture(scope="module")
def collect(load_script):
    return load_script("experiments/collect_tables.py")


def test_every_table_cell_comes_from_a_committed_record(collect, tmp_path):
    text = collect.tables(tmp_path / "no-runs", RECORDS)
    table2 = text.split("### Table II analogue")[1].split("###")[0]
    rows = [line for line in table2.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert len(rows) == len(collect.METHODS)
    assert all(" - " not in row and "running" not in row for row in rows)
    assert "| LSTM-32 | 0.03 |" in text and "| GRU-32 | 0.03 |" in text
    assert "Zero soundness violations: **met**" in text


def test_hidden_64_runs_join_table_one(collect, tmp_path):
    """A hidden-64 sweep and evaluation (copied from the 32 records, relabelled) give Table I rows and a summary."""
    runs = tmp_path / "runs"
    for model in ("lstm", "gru"):
        folder = runs / f"rt-{model}-64-rnnguard"
        (folder / "sweep").mkdir(parents=True)
        (folder / "eval").mkdir()
        shutil.copyfile(RECORDS / f"tables-rt-{model}-32-rnnguard-sweep.json", folder / "sweep" / "evaluation.json")
        shutil.copyfile(RECORDS / f"tables-rt-{model}-32-rnnguard.json", folder / "eval" / "evaluation.json")
        shutil.copyfile(RECORDS / f"tables-rt-{model}-32-rnnguard.metrics.jsonl", folder / "metrics.jsonl")
    text = collect.tables(runs, RECORDS)
    for label in ("LSTM-32", "LSTM-64", "GRU-32", "GRU-64"):
        assert f"| {label} | 0.03 |" in text
    summary = text.split("### Hidden-64 RNN-Guard models")[1]
    certified = json.loads((RECORDS / "tables-rt-lstm-32-rnnguard.json").read_text())["by_eps"][0]["certified"]
    assert f"**{certified['interzono']:.1f}**" in summary
    epochs = len((RECORDS / "tables-rt-lstm-32-rnnguard.metrics.jsonl").read_text().splitlines())
    assert f"| 0 | {epochs} |" in summary.splitlines()[4], "the epochs column counts the metrics rows"
    assert "InterZono >= Zonotope in every Table I row: **met**" in text

    copies = tmp_path / "copies"
    collect.copy_records(runs, copies)
    assert (copies / "tables-rt-gru-64-rnnguard-sweep.json").exists()
    assert (copies / "tables-rt-lstm-64-rnnguard.metrics.jsonl").exists()
