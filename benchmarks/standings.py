"""The current standings: ``benchmarks/results/certify_methods.json`` as one model x domain table.

Each cell is ``certified % (seconds per input)`` of the latest row for that (checkpoint, eps,
input count, domain) in the chosen image order; the last columns are the PGD-robust share (the ceiling no
sound verifier can pass) and, where R2 reports one, R2's figure.  ``--since`` leaves out rows
measured before a date (a row's date is its ``date`` field, else the date its note starts with;
rows with neither count as older than any date), so that a table never mixes code versions.

    python benchmarks/standings.py --since 2026-12-05
    python benchmarks/standings.py --under models/rt --domains interzono,backsub,backsub-slopes
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("box,zonotope,interzono,backsub,backsub-opt,backsub-slopes,backsub-alpha-shared,backsub-alpha-deep,"
           "backsub-alpha-cascade,backsub-alpha,"
           "hybrid")
#: R2's published figures (papers-notes 2.7) by (model name, eps)
R2_FIGURES: dict[tuple[str, float], str] = {
    ("04F_032H_1L", 0.01): "OPT 94.3 (10.83 s)",
    ("04F_032H_2L", 0.01): "LP ~80",
    ("04F_032H_3L", 0.01): "LP ~80",
    ("07F_032H_2L", 0.013): "LP 17.7, OPT 91.4",
}


def row_date(row: dict) -> str | None:
    """``YYYY-MM-DD`` the row was measured, or None where it does not say."""
    if row.get("date"):
        return str(row["date"])
    found = re.match(r"\d{4}-\d{2}-\d{2}", row.get("note", ""))
    return found.group(0) if found else None


def model_name(checkpoint: str) -> str:
    path = Path(checkpoint)
    return path.parent.name if path.stem == "model" else path.stem


def table(rows: list[dict], domains: list[str], under: str = "models/mnist/r2recipe", order: str = "seed 0",
          since: str | None = None) -> str:
    """Markdown table of the latest matching rows; one line per (checkpoint, eps, input count), one column
    per domain."""
    keep = [r for r in rows if r["checkpoint"].startswith(under) and r.get("order", "seed 0") == order
            and r["domain"] in domains and (since is None or (row_date(r) or "") >= since)]
    lines: dict[tuple[str, float, int], dict] = {}
    for r in keep:
        cell = lines.setdefault((r["checkpoint"], r["eps"], r["n"]), {"pgd": set()})
        seconds = r["seconds_per_input"]
        cell[r["domain"]] = f"{r['certified_pct']:.0f} ({seconds:.3g})" if seconds >= 1e-3 else \
            f"{r['certified_pct']:.0f} (<0.001)"
        cell["pgd"].add(round(r["pgd_robust_pct"]))
    head = ["model", "eps", "n", *domains, "PGD-robust", "R2"]
    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for (checkpoint, eps, n), cell in sorted(lines.items()):
        name = model_name(checkpoint)
        pgd = "/".join(str(p) for p in sorted(cell["pgd"]))
        out.append("| " + " | ".join([name, f"{eps:g}", str(n), *(cell.get(d, "") for d in domains), pgd,
                                      R2_FIGURES.get((name, eps), "")]) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "certify_methods.json"))
    ap.add_argument("--domains", default=DOMAINS)
    ap.add_argument("--under", default="models/mnist/r2recipe", help="checkpoints whose path starts with this")
    ap.add_argument("--order", default="seed 0", help="image order: 'seed N' or 'r2'")
    ap.add_argument("--since", default=None, help="only rows measured on or after this date (YYYY-MM-DD)")
    args = ap.parse_args()
    rows = json.loads(Path(args.results).read_text())["rows"]
    print(table(rows, args.domains.split(","), args.under, args.order, args.since))


if __name__ == "__main__":
    main()
