"""Markdown tables (RNN-Guard Tables I-V analogues) from the run folders of experiments/rt_tables.sh.

    python experiments/collect_tables.py [--runs runs/tables] [--copy docs/results]

Missing runs are shown as "running" (training started, no evaluation yet) or "-" (not started).
``--copy`` also copies each evaluation.json and metrics.jsonl there as
``tables-<run>.json`` / ``tables-<run>.metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

METHODS = ("regular", "fgsm", "pgd", "ibp", "certrnn", "rnnguard")
COLUMNS = (("rt", "rnn", 0.03), ("rt", "lstm", 0.03), ("rt", "gru", 0.03), ("toxic", "rnn", 0.05))


def _name(data: str, model: str, method: str) -> str:
    return f"{data}-{model}-32-{method}"


def _load(runs: Path, data: str, model: str, method: str) -> tuple[dict | None, list[dict], str]:
    folder = runs / _name(data, model, method)
    ev = folder / "eval" / "evaluation.json"
    metrics = folder / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    state = "done" if ev.exists() else ("running" if folder.exists() else "-")
    return (json.loads(ev.read_text()) if ev.exists() else None), rows, state


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def tables(runs: Path) -> str:
    out = []
    header = "| method | " + " | ".join(f"{d.upper() if d == 'rt' else 'TC'} {m.upper()}-32 (eps {e})"
                                        for d, m, e in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    cells: dict[tuple[str, str, str], tuple[dict | None, list[dict], str]] = {
        (d, m, meth): _load(runs, d, m, meth) for d, m, _ in COLUMNS for meth in METHODS}

    def metric(ev: dict | None, state: str, pick) -> str:
        if ev is None:
            return state
        return pick(ev, ev["by_eps"][0])

    specs = [
        ("Table II analogue: certified accuracy % (InterZono / Zonotope / Box)",
         lambda ev, e: f"**{_fmt(e['certified']['interzono'])}** / {_fmt(e['certified']['zonotope'])} / "
                       f"{_fmt(e['certified']['box'])}"),
        ("Table III / VI analogue: empirical robust accuracy % (PGD / ensemble)",
         lambda ev, e: f"{_fmt(e['empirical']['pgd'])} / {_fmt(e['empirical']['ensemble'])}"),
        ("Table IV analogue: clean accuracy % (test subset)", lambda ev, e: _fmt(ev["clean_accuracy"])),
        ("Soundness violations (certified samples broken by an attack)",
         lambda ev, e: str(ev["soundness_violations"])),
    ]
    for title, pick in specs:
        out += [f"### {title}", "", header, sep]
        for meth in METHODS:
            out.append(f"| {meth} | " + " | ".join(metric(cells[(d, m, meth)][0], cells[(d, m, meth)][2], pick)
                                                  for d, m, _ in COLUMNS) + " |")
        out.append("")
    out += ["### Table V analogue: seconds per training epoch (mean over the epochs at eps > 0; "
            "all epochs in brackets)", "", header, sep]
    for meth in METHODS:
        row = []
        for d, m, _ in COLUMNS:
            _, hist, state = cells[(d, m, meth)]
            if not hist:
                row.append(state)
                continue
            robust = [h["seconds"] for h in hist if h.get("eps", 0) and h["eps"] > 0] or [h["seconds"] for h in hist]
            every = [h["seconds"] for h in hist]
            row.append(f"{sum(robust) / len(robust):.1f} ({sum(every) / len(every):.1f}, {len(hist)} ep)")
        out.append(f"| {meth} | " + " | ".join(row) + " |")
    out.append("")
    sweep_rows = []
    for model in ("lstm", "gru"):
        ev_path = runs / _name("rt", model, "rnnguard") / "sweep" / "evaluation.json"
        if not ev_path.exists():
            continue
        ev = json.loads(ev_path.read_text())
        for e in ev["by_eps"]:
            c, s = e["certified"], e["certify_seconds"]
            sweep_rows.append(f"| {model.upper()}-32 | {e['eps']:g} | {_fmt(ev['clean_accuracy'])} | "
                              f"{_fmt(c['zonotope'])} | {s['zonotope']:.1f} | {_fmt(c['interzono'])} | "
                              f"{s['interzono']:.1f} | {_fmt(e['empirical'].get('pgd'))} | {e['soundness_violations']} |")
    if sweep_rows:
        out += ["### Table I analogue: Zonotope vs InterZono on the RNN-Guard-trained models", "",
                "| model | eps_e | clean % | Zonotope cert % | Zonotope s | InterZono cert % | InterZono s | PGD % | "
                "violations |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|", *sweep_rows, ""]
    return "\n".join(out)


def copy_records(runs: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
        for sub in ("eval", "sweep"):
            ev = folder / sub / "evaluation.json"
            if ev.exists():
                shutil.copyfile(ev, dest / f"tables-{folder.name}{'' if sub == 'eval' else '-sweep'}.json")
        metrics = folder / "metrics.jsonl"
        if metrics.exists():
            shutil.copyfile(metrics, dest / f"tables-{folder.name}.metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs/tables"))
    parser.add_argument("--copy", type=Path, default=None)
    args = parser.parse_args()
    print(tables(args.runs))
    if args.copy is not None:
        copy_records(args.runs, args.copy)


if __name__ == "__main__":
    main()
