"""Evaluation of a classifier: clean accuracy, certified accuracy per domain and empirical robust
accuracy per attack over a list of radii, with a soundness cross-check.

Every certified sample is attacked too: a certified sample that an attack breaks would be a bug
in the verifier, so such samples are counted (``soundness_violations``, must be 0) and reported
loudly.  Results are plain JSON-able dicts (a versioned record); :mod:`rnnguard.reports` only
formats them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from rnnguard.attacks import PGD, Attack, default_ensemble
from rnnguard.certify import certify
from rnnguard.models import lower, run_program
from rnnguard.perturbations import AllFrames, FrameSelection, LpBall, Perturbation

RECORD_FORMAT = "rnnguard-evaluation"
RECORD_VERSION = 1
log = logging.getLogger(__name__)


def default_attacks(seed: int = 0) -> dict[str, Attack]:
    """PGD (40 steps, margin loss, 2 restarts) and the adaptive APGD ensemble."""
    return {"pgd": PGD(steps=40, restarts=2, loss="margin", seed=seed), "ensemble": default_ensemble(seed=seed, steps=50, restarts=2)}


def _accuracy(mask: Tensor) -> float:
    return 100.0 * float(mask.float().mean().item()) if mask.numel() else 0.0


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    lengths: Tensor | None = None,
    *,
    eps_list: Sequence[float],
    domains: Sequence[str] = ("box", "zonotope", "interzono"),
    attacks: Mapping[str, Attack] | None = None,
    frames: FrameSelection = AllFrames(),
    norm: str = "linf",
    clip: tuple[float, float] | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Clean / certified / empirical robust accuracy (%) and wall time per phase for each eps."""
    attacks = default_attacks() if attacks is None else attacks
    B, T, _ = x.shape
    lengths = torch.full((B,), T, dtype=torch.long) if lengths is None else lengths
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        pred = run_program(lower(model), x.to(next(model.parameters()).dtype), lengths).argmax(1)
    correct = pred == y
    record: dict[str, Any] = {
        "format": RECORD_FORMAT, "version": RECORD_VERSION, "n": B, "frames": type(frames).__name__, "norm": norm,
        "clip": clip, "clean_accuracy": _accuracy(correct), "clean_seconds": time.perf_counter() - start, "by_eps": [],
    }
    for eps in eps_list:
        threat = Perturbation(LpBall(float(eps), norm), frames, clip)  # type: ignore[arg-type]
        row: dict[str, Any] = {"eps": float(eps), "certified": {}, "certify_seconds": {}, "empirical": {}, "attack_seconds": {}}
        certified_any = torch.zeros(B, dtype=torch.bool)
        for domain in domains:
            res = certify(model, x, y, threat, domain=domain, lengths=lengths, batch_size=batch_size)
            row["certified"][domain] = _accuracy(res.certified)
            row["certify_seconds"][domain] = res.seconds
            certified_any |= res.certified
        broken_any = ~correct.clone()
        for name, attack in attacks.items():
            t0 = time.perf_counter()
            out = attack(model, x, y, threat, lengths=lengths)
            row["attack_seconds"][name] = time.perf_counter() - t0
            row["empirical"][name] = _accuracy(~out.success)
            broken_any |= out.success.cpu()
        violations = int((certified_any & broken_any).sum().item())
        row["empirical"]["all_attacks"] = _accuracy(~broken_any)
        row["soundness_violations"] = violations
        if violations:
            log.error("SOUNDNESS VIOLATION: %d certified samples were broken by an attack at eps=%g", violations, eps)
        record["by_eps"].append(row)
    record["soundness_violations"] = sum(r["soundness_violations"] for r in record["by_eps"])
    record["seconds"] = time.perf_counter() - start
    return record


def table_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per eps: certified % per domain, empirical % per attack, clean %, violations."""
    rows = []
    for r in record["by_eps"]:
        row: dict[str, Any] = {"eps": r["eps"], "clean %": record["clean_accuracy"]}
        row.update({f"cert {d} %": v for d, v in r["certified"].items()})
        row.update({f"emp {a} %": v for a, v in r["empirical"].items()})
        row.update({f"t cert {d} s": v for d, v in r["certify_seconds"].items()})
        row["violations"] = r["soundness_violations"]
        rows.append(row)
    return rows


def plot_certified_accuracy(records: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path | None:
    """Certified (solid) and empirical (dashed) accuracy vs eps, one colour per record/domain
    (like RNN-Guard's Fig. 6/7).  Returns None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'rnnguard[plots]'): no plot written")
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, record in records.items():
        eps = [r["eps"] for r in record["by_eps"]]
        for domain in record["by_eps"][0]["certified"]:
            ax.plot(eps, [r["certified"][domain] for r in record["by_eps"]], marker="o", label=f"{label} {domain}")
        ax.plot(eps, [r["empirical"]["all_attacks"] for r in record["by_eps"]], linestyle="--", label=f"{label} attacks")
    ax.set_xlabel("eps (l_inf per frame)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
