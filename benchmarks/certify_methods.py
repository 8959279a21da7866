"""Certified % and seconds per input of every verification method, on trained checkpoints (R2's protocol).

For each checkpoint: the first ``--n`` correctly classified test inputs of a seeded permutation
(R2: 100 images, eps = 0.01, all frames), each domain certifies the whole batch at once; the
script also reports the PGD-robust fraction (no verifier can certify more) and cross-checks
soundness: every certified input is attacked and must survive (violations must be 0).

    python benchmarks/certify_methods.py                      # the R2-recipe MNIST models, eps 0.01
    python benchmarks/certify_methods.py --model-dir models/mnist/r2band   # the Adam-trained R2-band models
    python benchmarks/certify_methods.py --r2-order --models 04F_032H_1L   # R2's own image order
    python benchmarks/certify_methods.py --eps 0.005,0.01,0.015,0.02 --domains backsub,hybrid
    python benchmarks/certify_methods.py --checkpoint runs/repro/lstm32-rnnguard/model.pt --dataset rt --eps 0.01

Results are printed as a markdown table and written to ``benchmarks/results/certify_methods.json``
(``--out``), merged by (checkpoint, eps, domain, image order, n) so that partial runs accumulate;
each row records its date, thread count and ``--note``.  ``benchmarks/standings.py`` turns the
file into a model x domain table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from rnnguard import LpBall, Perturbation, certify
from rnnguard.attacks import PGD
from rnnguard.checkpoints import load_checkpoint
from rnnguard.data import correctly_classified_subset, load_text_splits, sequence_mnist

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ["04F_032H_1L", "04F_032H_2L", "04F_032H_3L", "07F_032H_1L", "07F_032H_2L", "04F_064H_1L",
                  "14F_064H_1L", "04F_128H_1L", "07F_064H_2L"]
DEFAULT_DOMAINS = "box,zonotope,interzono,backsub-parallel,backsub,backsub-opt,hybrid,hybrid-opt"


def _inputs(path: Path, dataset: str, data_root: str | None):
    model, extra = load_checkpoint(path)
    info = extra.get("data") or {}
    if dataset == "mnist":
        x, y = sequence_mnist("test", frames=int(info.get("frames") or 784 // model.config()["input_size"]), root=data_root)
        return model, x, y, None, (0.0, 1.0)
    data = load_text_splits(dataset, root=data_root, max_len=info.get("max_len"), seed=int(info.get("seed", 0) or 0))
    part = data["test"]
    return model, part.x, part.y, part.lengths, None


def _r2_subset(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` correctly classified inputs in R2's order: ``torch.randperm`` seeded 1000."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000))
    model.eval()
    with torch.no_grad():
        correct = torch.cat([model(x[order[s:s + 1000]]).argmax(1) == y[order[s:s + 1000]]
                             for s in range(0, len(x), 1000)])
    return order[correct][:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", help="checkpoint path (repeatable); default: models/mnist/<NAME>.pt")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="MNIST model names under --model-dir")
    ap.add_argument("--model-dir", default=str(ROOT / "models" / "mnist" / "r2recipe"))
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--eps", default="0.01")
    ap.add_argument("--domains", default=DEFAULT_DOMAINS)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="permutation seed for the correctly classified subset")
    ap.add_argument("--r2-order", action="store_true",
                    help="walk the test set in R2's own order (test_mnist.py: torch.randperm with a generator seeded "
                         "1000) instead of numpy's default_rng(--seed) permutation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "certify_methods.json"))
    ap.add_argument("--note", default="", help="stored with every row (what changed, machine load)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = [Path(p) for p in args.checkpoint] if args.checkpoint else \
        [Path(args.model_dir) / f"{m}.pt" for m in args.models.split(",")]
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {"rows": []}
    record["machine"] = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    rows = {(r["checkpoint"], r["eps"], r["domain"], r.get("order", "seed 0"), r["n"]): r for r in record["rows"]}
    print("| model | eps | domain | certified % | s / input | PGD-robust % | violations |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for path in paths:
        label = path.parent.name if path.stem == "model" else path.stem
        model, x, y, lengths, clip = _inputs(path, args.dataset, args.data_root)
        idx = _r2_subset(model, x, y, args.n) if args.r2_order else \
            correctly_classified_subset(model, x, y, args.n, seed=args.seed, lengths=lengths)
        xs, ys = x[idx].double(), y[idx]
        ls = None if lengths is None else lengths[idx]
        for eps in (float(e) for e in args.eps.split(",")):
            pert = Perturbation(LpBall(eps), clip=clip)
            attack = PGD(steps=50, restarts=2)(model, xs.float(), ys, pert, lengths=ls)
            robust = ~attack.success
            for domain in args.domains.split(","):
                start = time.perf_counter()
                result = certify(model, xs, ys, pert, domain=domain, lengths=ls, batch_size=len(idx))
                seconds = time.perf_counter() - start
                violations = int((result.certified & ~robust).sum())
                row = {"checkpoint": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
                       "dataset": args.dataset, "eps": eps, "domain": domain, "n": len(idx),
                       "order": "r2" if args.r2_order else f"seed {args.seed}",
                       "certified_pct": 100 * result.certified_fraction, "seconds_per_input": seconds / len(idx),
                       "pgd_robust_pct": 100 * float(robust.float().mean()), "violations": violations,
                       "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads()}
                if args.note:
                    row["note"] = args.note
                rows[(row["checkpoint"], eps, domain, row["order"], row["n"])] = row
                print(f"| {label} | {eps:g} | {domain} | {row['certified_pct']:.1f} | {row['seconds_per_input']:.4f} "
                      f"| {row['pgd_robust_pct']:.1f} | {violations} |", flush=True)
                record["rows"] = list(rows.values())
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(record, indent=1))
                if violations:
                    raise SystemExit(f"SOUNDNESS VIOLATION: {violations} certified inputs broken by PGD ({domain})")


if __name__ == "__main__":
    main()
