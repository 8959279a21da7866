"""The back-substitution's gate-product planes on the committed RT text LSTM (20 frames).

The smallest-volume plane pick (``deepcert``) was 2.7x looser than auto_LiRPA's CROWN on the last
hidden state of this model; the McCormick pair anchored at the gate's lower end (``anchored``,
the back-substitution default since 2026-12-05) is tighter than both (docs/results-verifiers.md)."""

from __future__ import annotations

from pathlib import Path

import torch

from rnnguard import LpBall, Perturbation
from rnnguard.cells import unroll
from rnnguard.checkpoints import load_checkpoint
from rnnguard.data import load_text_splits
from rnnguard.domains import _backsub_start
from rnnguard.models import lower

ROOT = Path(__file__).resolve().parents[2]


def _last_hidden_width(method: str, program, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean width of the plain back-substitution's bounds on the last hidden state."""
    lengths = torch.full((x.shape[0],), x.shape[1])
    frames, constant = _backsub_start(method, False)(Perturbation(LpBall(eps)).regions(x, lengths))
    with torch.no_grad():
        lo, hi = unroll(program, frames, lengths, constant).bounds()
    return (hi - lo).mean()


def test_anchored_gate_planes_tighter_than_smallest_volume_over_twenty_steps(shared_root: Path) -> None:
    model, extra = load_checkpoint(ROOT / "models" / "rt" / "lstm32-regular.pt")
    info = extra["data"]
    test = load_text_splits("rt", root=shared_root, max_len=info["max_len"], seed=info["seed"])["test"]
    x = test.x[test.lengths == 20][:4].double()
    program = lower(model.double())
    anchored = _last_hidden_width("anchored", program, x, 0.01)
    volume = _last_hidden_width("deepcert", program, x, 0.01)
    assert anchored < 0.5 * volume  # measured 0.197 against 0.698
