"""Certification throughput per cell, hidden size and domain (a benchmark, never a test).

For RNN/LSTM/GRU with hidden 32 and 64, T = 20, d = 50, eps = 0.01 on all frames and a batch
of 32 (random weights as PyTorch initialises them, inputs ~ N(0, 0.3^2)), it reports for each
domain: samples per second, peak resident memory of the run, the floating-point operations the
run needed (matmul/einsum FLOPs counted by torch's FlopCounterMode) divided by the machine's
float64 matmul rate measured in the same run (efficiency %), and the certified fraction.

Each configuration runs in a fresh subprocess so that peak memory is its own.

    python benchmarks/certify_throughput.py [--repeats 3] [--out benchmarks/results/certify_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = [(cell, hidden) for cell in ("rnn", "lstm", "gru") for hidden in (32, 64)]
DOMAINS = ("box", "zonotope", "interzono")


def matmul_rate(dtype_name: str = "float64", n: int = 1024, repeats: int = 5) -> float:
    """Best observed GFLOP/s of an n x n matmul on this machine (all threads torch uses)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def run_one(cell: str, hidden: int, domain: str, repeats: int, batch: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import rnnguard as rg

    torch.manual_seed(0)
    model = rg.SequenceClassifier(cell, 50, hidden, 2)
    x = torch.randn(batch, 20, 50) * 0.3
    y = model(x).argmax(1)
    threat = rg.Perturbation(rg.LpBall(0.01))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rg.certify(model, x[:2], y[:2], threat, domain=domain)  # warm-up
    with FlopCounterMode(display=False) as counter:
        result = rg.certify(model, x, y, threat, domain=domain, batch_size=batch)
    flops = counter.get_total_flops()
    times = []
    for _ in range(repeats):
        result = rg.certify(model, x, y, threat, domain=domain, batch_size=batch)
        times.append(result.seconds)
    seconds = min(times)
    return {
        "cell": cell, "hidden": hidden, "domain": domain, "batch": batch, "T": 20, "d": 50, "eps": 0.01,
        "seconds": seconds, "samples_per_s": batch / seconds, "gflop": flops / 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_increase_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024,
        "certified_fraction": result.certified_fraction,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "certify_throughput.json")
    parser.add_argument("--one", nargs=3, metavar=("CELL", "HIDDEN", "DOMAIN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        cell, hidden, domain = args.one
        print(json.dumps(run_one(cell, int(hidden), domain, args.repeats, args.batch)))
        return
    rate = matmul_rate()
    print(f"float64 matmul rate: {rate:.1f} GFLOP/s")
    rows = []
    for cell, hidden in CONFIGS:
        for domain in DOMAINS:
            out = subprocess.run([sys.executable, __file__, "--one", cell, str(hidden), domain, "--repeats",
                                  str(args.repeats), "--batch", str(args.batch)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["efficiency_pct"] = 100 * row["gflop"] / (row["seconds"] * rate)
            rows.append(row)
            print(f"{cell:5s} h={hidden:3d} {domain:10s} {row['samples_per_s']:9.1f} samples/s  "
                  f"{row['seconds']:7.3f} s  peak {row['peak_rss_mb']:7.0f} MB  {row['gflop']:7.2f} GFLOP  "
                  f"eff {row['efficiency_pct']:5.1f}%  certified {row['certified_fraction']:.2f}", flush=True)
    ratios = {}
    for cell, hidden in CONFIGS:
        by = {r["domain"]: r for r in rows if r["cell"] == cell and r["hidden"] == hidden}
        ratios[f"{cell}-{hidden}"] = by["interzono"]["seconds"] / by["zonotope"]["seconds"]
        print(f"{cell}-{hidden}: InterZono / Zonotope time = {ratios[f'{cell}-{hidden}']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
                                    "matmul_gflops_float64": rate, "rows": rows, "interzono_over_zonotope": ratios}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
