"""benchmarks/looseness_analysis.py: the diagnostic oracle on a tiny run."""

from __future__ import annotations

import json


def test_oracle_row_records_method_and_per_operand_widths(load_script, shared_root, tmp_path, monkeypatch):
    """On 5 images at a radius that leaves some open: the row names the planes, the attacked
    operand ranges never exceed the sound boxes, and every open image gets an oracle bound."""
    script = load_script("benchmarks/looseness_analysis.py")
    out = tmp_path / "loose.json"
    monkeypatch.setattr("sys.argv", ["looseness_analysis.py", "--checkpoint", "models/mnist/r2recipe/04F_032H_1L.pt",
                                     "--eps", "0.02", "--n", "5", "--leaves", "", "--oracle-steps", "3", "--oracle-slope-steps", "5",
                                     "--data-root", str(shared_root), "--out", str(out)])
    monkeypatch.chdir(script.ROOT)
    script.main()
    row = json.loads(out.read_text())["rows"][0]
    assert row["method"] == "anchored" and row["date"]
    assert row["open_after_backsub"] > 0
    widths = row["operand_widths_sound_attacked"]
    assert {op for op, _, _ in widths} == {"sigmoid_tanh", "mul_sigmoid"}
    assert all(sound >= attacked - 1e-9 for _, sound, attacked in widths)
    assert len(row["open_min_margin_oracle"]) == row["open_after_backsub"]
    # optimised slopes only ever raise the oracle's bound
    sloped = row["open_min_margin_oracle_slopes"]
    assert len(sloped) == row["open_after_backsub"]
    assert all(s >= o for s, o in zip(sloped, row["open_min_margin_oracle"]))
    assert row["oracle_boxes_optimised_slopes_certify"] >= row["oracle_intermediate_boxes_certify"]
