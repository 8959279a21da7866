"""benchmarks/standings.py turns the certify_methods results into one model x domain table."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def standings(load_script):
    return load_script("benchmarks/standings.py")


def _row(domain: str, pct: float, date: str | None = None, note: str = "", order: str = "seed 0",
         checkpoint: str = "models/mnist/r2recipe/04F_032H_1L.pt", eps: float = 0.01, n: int = 100) -> dict:
    row = {"checkpoint": checkpoint, "eps": eps, "domain": domain, "n": n, "order": order,
           "certified_pct": pct, "seconds_per_input": 0.0123, "pgd_robust_pct": 96.0, "violations": 0}
    if date:
        row["date"] = date
    if note:
        row["note"] = note
    return row


def test_cells_columns_and_r2_figure(standings):
    rows = [_row("backsub", 90.0, "2026-12-05"), _row("interzono", 89.0, "2026-12-05"),
            _row("backsub", 50.0, "2026-12-05", checkpoint="models/mnist/r2recipe/07F_032H_2L.pt", eps=0.013)]
    text = standings.table(rows, ["interzono", "backsub", "hybrid"])
    lines = text.splitlines()
    assert lines[0] == "| model | eps | n | interzono | backsub | hybrid | PGD-robust | R2 |"
    assert lines[2] == "| 04F_032H_1L | 0.01 | 100 | 89 (0.0123) | 90 (0.0123) |  | 96 | OPT 94.3 (10.83 s) |"
    assert lines[3].startswith("| 07F_032H_2L | 0.013 | 100 |  | 50 (0.0123) |") and "OPT 91.4" in lines[3]


def test_since_drops_older_and_undated_rows_and_reads_note_dates(standings):
    rows = [_row("backsub", 80.0), _row("interzono", 70.0, note="2026-12-04: before"),
            _row("hybrid", 60.0, note="2026-12-05: after"), _row("zonotope", 50.0, "2026-12-06")]
    text = standings.table(rows, ["backsub", "interzono", "hybrid", "zonotope"], since="2026-12-05")
    line = text.splitlines()[2]
    assert "80 (" not in line and "70 (" not in line
    assert "60 (0.0123)" in line and "50 (0.0123)" in line


def test_runs_on_fewer_inputs_get_their_own_line(standings):
    rows = [_row("backsub", 90.0), _row("hybrid", 50.0, n=10)]
    lines = standings.table(rows, ["backsub", "hybrid"]).splitlines()[2:]
    assert lines == ["| 04F_032H_1L | 0.01 | 10 |  | 50 (0.0123) | 96 | OPT 94.3 (10.83 s) |",
                     "| 04F_032H_1L | 0.01 | 100 | 90 (0.0123) |  | 96 | OPT 94.3 (10.83 s) |"]


def test_filters_by_checkpoint_folder_and_image_order(standings):
    rows = [_row("backsub", 90.0, order="r2"), _row("backsub", 40.0, checkpoint="models/rt/lstm32-regular.pt")]
    assert len(standings.table(rows, ["backsub"]).splitlines()) == 2  # header only
    assert "90 (" in standings.table(rows, ["backsub"], order="r2")
    assert "| lstm32-regular |" in standings.table(rows, ["backsub"], under="models/rt")


def test_certify_methods_rows_record_date_threads_and_note(load_script, shared_root, tmp_path, monkeypatch):
    """A tiny certify_methods run (2 images, Box and back-substitution) writes rows standings can date."""
    script = load_script("benchmarks/certify_methods.py")
    out = tmp_path / "rows.json"
    monkeypatch.setattr("sys.argv", ["certify_methods.py", "--models", "04F_032H_1L", "--n", "2", "--threads", "1",
                                     "--domains", "box,backsub", "--data-root", str(shared_root), "--out", str(out),
                                     "--note", "smoke"])
    script.main()
    rows = json.loads(out.read_text())["rows"]
    assert [r["domain"] for r in rows] == ["box", "backsub"]
    assert all(r["note"] == "smoke" and r["threads"] == 1 and r["violations"] == 0 for r in rows)
    standings = load_script("benchmarks/standings.py")
    assert standings.row_date(rows[0]) == rows[0]["date"]
    assert "| 04F_032H_1L | 0.01 | 2 |" in standings.table(rows, ["box", "backsub"], since=rows[0]["date"])
