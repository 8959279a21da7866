"""Markdown / rich summary tables and the JSON helpers."""

from __future__ import annotations

import io
import json
import math
import os

import pytest
import torch
from rich.console import Console

from rnnguard.reports import format_value, print_summary, summary_table, to_jsonable, write_json

ROWS = [
    {"domain": "box", "eps": 0.01, "certified %": 12.5, "seconds": 0.0312},
    {"domain": "interzono", "eps": 0.03, "certified %": 100.0, "seconds": 12345.6, "note": "a|b"},
]


def test_summary_table_markdown():
    text = summary_table(ROWS)
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == 4
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["domain", "eps", "certified %", "seconds", "note"]
    rule = [c.strip() for c in lines[1].strip("|").split("|")]
    assert rule[0].startswith("-") and not rule[0].endswith(":")  # text: left-aligned
    assert all(r.endswith(":") for r in rule[1:4])  # numbers: right-aligned
    assert "a\\|b" in lines[3]  # pipes escaped
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == ["box", "0.01", "12.5", "0.0312", ""]
    assert "12346" in lines[3]
    assert len({len(line) for line in lines}) == 1  # columns padded to equal width


def test_summary_table_empty_and_bad_rows():
    assert summary_table([]) == ""
    with pytest.raises(TypeError):
        summary_table([["not", "a", "dict"]])


def test_format_value():
    assert format_value(None) == ""
    assert format_value(True) == "yes"
    assert format_value(3) == "3"
    assert format_value(0.0) == "0"
    assert format_value(1e-5) == "1.00e-05"
    assert format_value(float("inf")) == "inf"
    assert format_value(float("nan")) == "nan"
    assert format_value(2 / 3) == "0.6667"


def test_print_summary_uses_rich():
    buf = io.StringIO()
    print_summary(ROWS, title="results [x]", console=Console(file=buf, width=120, color_system=None))
    out = buf.getvalue()
    assert "interzono" in out and "12.5" in out and "results [x]" in out
    buf = io.StringIO()
    print_summary([], console=Console(file=buf))
    assert "no rows" in buf.getvalue()


def test_json_helpers(tmp_path):
    obj = {"t": torch.tensor([1.0, float("inf")]), "n": float("nan"), "p": tmp_path, "nested": [(1, -math.inf)]}
    assert to_jsonable(obj) == {"t": [1.0, "inf"], "n": "nan", "p": str(tmp_path), "nested": [[1, "-inf"]]}
    path = write_json(tmp_path / "a" / "r.json", obj)
    assert json.loads(path.read_text())["t"] == [1.0, "inf"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
