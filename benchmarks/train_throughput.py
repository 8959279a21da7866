"""Training throughput per method (a benchmark, never a test): seconds per optimisation step and
estimated seconds per RT epoch (8,530 training texts) for each training method and cell.

Synthetic inputs with RT's shape (T = 20 frames, d = 50, batch 64, raw-GloVe-like scale); the
cost of a step does not depend on the values.  The certified methods run at their final eps and
kappa (the most expensive point of the schedule).

    python benchmarks/train_throughput.py [--cells rnn,lstm,gru] [--hidden 32] [--steps 3] [--threads 1]
                                          [--max-symbols K]

To time another version of the package on the same machine and settings (e.g. before and after a
change), point ``PYTHONPATH`` at its ``src`` folder: the JSON records which package was timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import rnnguard as rg
from rnnguard.objectives import METHODS, make_objective

try:
    from rnnguard.train import keep_freed_memory
except ImportError:  # a version from before it existed (timed as it was)
    keep_freed_memory = None

RT_TRAIN = 8530


def step_seconds(cell: str, hidden: int, method: str, steps: int, batch: int, eps: float,
                 max_symbols: int | None = None) -> tuple[float, float]:
    """Best wall-clock and best CPU (process) seconds over ``steps`` steps after a warm-up step.

    With one thread the CPU time is the better figure on a shared machine: it does not count the
    time the process waits for a core (it still suffers from shared caches and memory bandwidth)."""
    torch.manual_seed(0)
    model = rg.SequenceClassifier(cell, 50, hidden, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 20, 50) * 0.4
    y = torch.randint(0, 2, (batch,))
    lengths = torch.randint(8, 21, (batch,))
    kwargs = {} if max_symbols is None else {"max_symbols": max_symbols}
    objective = make_objective(method, eps, epochs=1, **kwargs)
    times, cpu = [], []
    for _ in range(steps + 1):  # first step is a warm-up
        t, c = time.perf_counter(), time.process_time()
        loss, _ = objective(model, x, y, lengths, epoch=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(times[1:]), min(cpu[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="rnn,lstm,gru")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eps", type=float, default=0.03)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--max-symbols", type=int, default=None,
                        help="training-only cap on non-input noise symbols (certrnn, rnnguard)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_throughput.json")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if keep_freed_memory is not None:
        keep_freed_memory()  # as rnnguard.train.fit does
    rows = []
    for cell in args.cells.split(","):
        for method in args.methods.split(","):
            s, c = step_seconds(cell, args.hidden, method, args.steps, args.batch, args.eps, args.max_symbols)
            row = {"cell": cell, "hidden": args.hidden, "method": method, "batch": args.batch, "T": 20, "d": 50,
                   "eps": args.eps, "seconds_per_step": s, "cpu_seconds_per_step": c,
                   "rt_epoch_seconds_est": s * RT_TRAIN / args.batch,
                   "threads": torch.get_num_threads(), "max_symbols": args.max_symbols}
            rows.append(row)
            print(f"{cell:5s} h={args.hidden} {method:9s} {s:8.3f} s/step (cpu {c:.3f})  "
                  f"~{row['rt_epoch_seconds_est']:7.0f} s per RT epoch", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.machine(), "package": str(Path(rg.__file__).parent),
                                    "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
