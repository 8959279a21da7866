"""Export trained sequence-MNIST runs as small committed checkpoints with their provenance.

For each run folder ``RUNS/FF_HH_LL`` (written by ``rnnguard train --dataset mnist``) this writes
``OUT/FF_HH_LL.pt``: the run's weights and metadata, plus the training ``command``, the training
seconds, the accuracy on all 10,000 and on the first 500 test images, and the PGD-robust share of
the first 100 correctly classified test images at eps 0.01 (``pgd_first_100``: the ceiling no
sound verifier can exceed on R2's protocol).  It prints one markdown row per model for
``models/mnist/README.md``.

    python experiments/export_mnist_models.py --runs runs/mnist/r2recipe --out models/mnist/r2recipe \\
        --command "rnnguard train --dataset mnist --frames {F} --model lstm --hidden {H} --layers {L} ..."
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from rnnguard import LpBall, Perturbation
from rnnguard.attacks import PGD
from rnnguard.checkpoints import load_checkpoint, save_checkpoint
from rnnguard.data import correctly_classified_subset, sequence_mnist
from rnnguard.train import evaluate

PGD_EPS = 0.01


def pgd_first_100(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """PGD-robust count on the first 100 correctly classified test images (seeded order, eps 0.01)."""
    idx = correctly_classified_subset(model, x, y, 100, seed=0)
    perturbation = Perturbation(LpBall(PGD_EPS), clip=(0.0, 1.0))
    broken = PGD(steps=50, restarts=2, seed=0)(model, x[idx], y[idx], perturbation).success
    return {"eps": PGD_EPS, "norm": "linf", "clip": [0.0, 1.0], "attack": "PGD(steps=50, restarts=2, seed=0)",
            "subset": "correctly_classified_subset(model, x_test, y_test, 100, seed=0)", "n": int(idx.numel()),
            "broken": int(broken.sum()), "robust": int(idx.numel() - broken.sum())}


def export(run: Path, out: Path, command: str) -> dict:
    model, extra = load_checkpoint(run / "model.pt")
    frames = int(extra["data"]["frames"])
    x, y = sequence_mnist("test", frames=frames)
    history = extra.get("history") or []
    training = dict(extra["training"], command=command,
                    train_seconds=sum(float(h.get("seconds") or 0.0) for h in history))
    extra = dict(extra, training=training, test_accuracy=evaluate(model, x, y)["accuracy"],
                 test_accuracy_first_500=evaluate(model, x[:500], y[:500])["accuracy"],
                 pgd_first_100=pgd_first_100(model, x, y))
    save_checkpoint(model, out / f"{run.name}.pt", extra=extra)
    return extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="folder of run folders named FF_HH_LL")
    ap.add_argument("--out", required=True, help="folder for the exported FF_HH_LL.pt files")
    ap.add_argument("--command", required=True, help="training command; {F}, {H}, {L}, {name} are filled in")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for run in sorted(p for p in Path(args.runs).iterdir() if re.fullmatch(r"\d\dF_\d{3}H_\dL", p.name)):
        f, h, layers = (int(v) for v in re.findall(r"\d+", run.name))
        extra = export(run, out, args.command.format(F=f, H=h, L=layers, name=run.name))
        tr, pgd = extra["training"], extra["pgd_first_100"]
        print(f"| `{run.name}` | {f} | {h} | {layers} | {tr['epochs']} | {100 * extra['test_accuracy']:.2f} | "
              f"{100 * extra['test_accuracy_first_500']:.1f} | {pgd['robust']} | {tr['train_seconds']:.0f} | "
              f"`{tr['command']}` |")


if __name__ == "__main__":
    main()
