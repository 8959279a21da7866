"""Where does back-substitution lose the inputs it cannot certify?  Branching vs ideal intermediate boxes.

On one checkpoint (default: the R2-band MNIST 04F_032H_1L, R2's protocol: first ``--n``
correctly classified test images of a seeded permutation, all frames, eps 0.01):

1. ``backsub`` and ``backsub-bab`` with several leaf budgets: certified % and seconds per input.
2. A diagnostic bound (NOT sound, never used to certify): the uncertified inputs are re-bounded
   with every intermediate operand box replaced by the range PGD finds for that neuron (an
   inner approximation of the true range, so tighter than any sound box).  What it certifies
   bounds from above what tighter intermediate bounds alone could gain with the same planes;
   what stays open is lost in the planes of the final steps themselves.
3. The same oracle boxes with the margin's plane slopes optimised (``--oracle-slope-steps``, the
   free-slope family of ``backsub-slopes``: every sound plane on a box, offset exact).  Boxes
   can only be as tight as the true ranges, which contain the attacked ones, and a smaller box
   admits every plane a larger one does, so (up to the optimiser's reach) no method that bounds
   the margin by back-substituting per-neuron planes on per-neuron boxes -- R2-LP, R2-OPT,
   CROWN, alpha-CROWN, ours -- certifies an input this leaves open: a ceiling for the whole
   family, below the PGD one.

    python benchmarks/looseness_analysis.py --threads 1
    python benchmarks/looseness_analysis.py --checkpoint runs/repro/lstm32-regular/model.pt --dataset rt --n 50

Prints a summary and writes ``benchmarks/results/looseness.json`` (``--out``), merged by
(checkpoint, eps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certify_methods import _inputs  # noqa: E402

from rnnguard import LpBall, Perturbation  # noqa: E402
from rnnguard.branching import BranchOptions, _bound_leaves, branch_and_bound_margins  # noqa: E402
from rnnguard.cells import unroll  # noqa: E402
from rnnguard.certify import margin_specification  # noqa: E402
from rnnguard.data import correctly_classified_subset  # noqa: E402
from rnnguard.domains import _OPTIMISE_MODES  # noqa: E402
from rnnguard.domains.backsub import Graph, InputNode, LinExpr, OpNode, input_expressions  # noqa: E402
from rnnguard.models import lower  # noqa: E402
from rnnguard.relaxations import RELAXATIONS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _operand_values(graph, points: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
    """Concrete operand values ``(S, R, n)`` of every operation node at ``points (S, R, T, d)``."""
    values: dict[int, torch.Tensor] = {}
    out: dict[tuple[int, int], torch.Tensor] = {}
    S = points.shape[0]

    def evaluate(expr) -> torch.Tensor:
        acc = expr.const.expand(S, *expr.const.shape)
        for key, c in expr.terms.items():
            v = values[key]
            acc = acc + (v @ c.transpose(-1, -2) if c.dim() == 2 else torch.einsum("srn,rmn->srm", v, c))
        return acc

    frame = 0
    for node in graph.nodes:
        if isinstance(node, InputNode):
            values[node.id] = points[:, :, frame]
            frame += 1
        else:
            args = [evaluate(e) for e in node.operands]
            for i, a in enumerate(args):
                out[(node.id, i)] = a
            values[node.id] = RELAXATIONS[node.op].fn(*args)
    return out


def attacked_operand_ranges(graph, lower: torch.Tensor, upper: torch.Tensor, steps: int, seed: int):
    """Per operand neuron, the min and max that signed-gradient ascent finds inside the boxes."""
    gen = torch.Generator().manual_seed(seed)
    ranges = {}
    for node in graph.nodes:
        if not isinstance(node, OpNode):
            continue
        for i, (lo_b, _) in enumerate(node.operand_bounds):
            n = lo_b.shape[1]
            sign = torch.cat([torch.ones(n), -torch.ones(n)]).to(lower.dtype)
            neuron = torch.cat([torch.arange(n), torch.arange(n)])
            corners = (torch.rand(2 * n, *lower.shape, generator=gen) > 0.5).to(lower.dtype)
            p = (lower + (upper - lower) * corners).requires_grad_(True)
            hi = torch.full(lo_b.shape, -torch.inf, dtype=lower.dtype)
            lo = torch.full(lo_b.shape, torch.inf, dtype=lower.dtype)
            with torch.enable_grad():
                for _ in range(steps):
                    v = _operand_values(graph, p)[(node.id, i)][torch.arange(2 * n), :, neuron]  # (2n, R)
                    hi = torch.maximum(hi, v[:n].T.detach())
                    lo = torch.minimum(lo, v[n:].T.detach())
                    (grad,) = torch.autograd.grad((sign[:, None] * v).sum(), p)
                    with torch.no_grad():
                        p += 0.25 * (upper - lower) * grad.sign()
                        p.copy_(torch.maximum(torch.minimum(p, upper), lower))
            ranges[(node.id, i)] = (lo, hi)
    return ranges


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "models" / "mnist" / "r2band" / "04F_032H_1L.pt"))
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--leaves", default="4,16,64", help="leaf budgets for backsub-bab ('' for none)")
    ap.add_argument("--method", default=BranchOptions().method, help="linear relaxation method (rnnguard.relaxations.linear)")
    ap.add_argument("--oracle-steps", type=int, default=40, help="0: skip the diagnostic oracle bound")
    ap.add_argument("--oracle-slope-steps", type=int, default=300,
                    help="Adam steps on the margin's free slopes over the oracle boxes (0: skip)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "looseness.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.checkpoint)
    model, x, y, lengths, clip = _inputs(path, args.dataset, args.data_root)
    idx = correctly_classified_subset(model, x, y, args.n, seed=args.seed, lengths=lengths)
    xs, ys = x[idx].double(), y[idx]
    ls = torch.full((xs.shape[0],), xs.shape[1]) if lengths is None else lengths[idx]
    program = lower(model).to(torch.float64, xs.device)
    regions = Perturbation(LpBall(args.eps), clip=clip).regions(xs, ls)
    weight, bias = margin_specification(program, ys)
    n = xs.shape[0]
    row: dict = {"checkpoint": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
                 "eps": args.eps, "n": n, "method": args.method, "date": time.strftime("%Y-%m-%d")}
    with torch.no_grad():
        t = time.perf_counter()
        plain, _, _, _ = _bound_leaves(program, regions, weight, bias, {}, args.method)
        row["backsub"] = {"certified": int((plain > 0).all(1).sum()), "seconds_per_input": (time.perf_counter() - t) / n}
        for leaves in (int(v) for v in args.leaves.split(",") if v):
            t = time.perf_counter()
            m = branch_and_bound_margins(program, regions, weight, bias, BranchOptions(max_leaves=leaves, method=args.method))
            row[f"backsub-bab-{leaves}"] = {"certified": int((m > 0).all(1).sum()),
                                            "seconds_per_input": (time.perf_counter() - t) / n}
            assert (m >= plain - 1e-9).all()
        open_rows = (~(plain > 0).all(1)).nonzero(as_tuple=True)[0]
        row["open_after_backsub"] = int(open_rows.numel())
    if args.oracle_steps > 0 and open_rows.numel():
        _oracle(args, program, regions, weight, bias, plain, open_rows, row)
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {"rows": []}
    record["machine"] = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    record["rows"] = [r for r in record["rows"] if (r["checkpoint"], r["eps"]) != (row["checkpoint"], row["eps"])] + [row]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(row, indent=1))


def _oracle(args, program, regions, weight, bias, plain, open_rows, row: dict) -> None:
    """Re-bound the open inputs with PGD-found operand ranges as intermediate boxes (diagnostic only)."""
    with torch.no_grad():
        sub = regions.select(open_rows)
        _, graph, _, _ = _bound_leaves(program, sub, weight[open_rows], bias[open_rows], {}, args.method)
    ranges = attacked_operand_ranges(graph, sub.lower, sub.upper, args.oracle_steps, args.seed)
    with torch.no_grad():
        oracle, _, _, _ = _bound_leaves(program, sub, weight[open_rows], bias[open_rows], ranges, args.method)
    widths = [(float((hi - lo).mean()), float((ranges[(node.id, i)][1] - ranges[(node.id, i)][0]).mean()))
              for node in graph.nodes if isinstance(node, OpNode) for i, (lo, hi) in enumerate(node.operand_bounds)]
    row["oracle_intermediate_boxes_certify"] = int((oracle > 0).all(1).sum())
    if args.oracle_slope_steps > 0:
        sloped = torch.maximum(oracle, _optimised_slopes(program, sub, weight[open_rows], bias[open_rows], ranges,
                                                         args.method, args.oracle_slope_steps))
        row["oracle_boxes_optimised_slopes_certify"] = int((sloped > 0).all(1).sum())
        row["open_min_margin_oracle_slopes"] = [round(float(v), 4) for v in sloped.min(1).values]
    row["open_min_margin_backsub"] = [round(float(v), 4) for v in plain[open_rows].min(1).values]
    row["open_min_margin_oracle"] = [round(float(v), 4) for v in oracle.min(1).values]
    row["mean_operand_width_sound_vs_attacked"] = {"first_op": widths[0], "last_op": widths[-1]}
    # every operand of every operation in graph order (layer by layer, step by step): where the boxes grow
    ops = [node.op for node in graph.nodes if isinstance(node, OpNode) for _ in node.operand_bounds]
    row["operand_widths_sound_attacked"] = [[op, round(a, 4), round(b, 4)] for op, (a, b) in zip(ops, widths)]


def _optimised_slopes(program, regions, weight, bias, boxes, method: str, steps: int) -> torch.Tensor:
    """Margin lower bounds with the operand boxes ``boxes`` and the margin's plane slopes optimised
    (``backsub-slopes``' free slopes, ``steps`` Adam steps, no early stop)."""
    opts = dataclasses.replace(_OPTIMISE_MODES["slopes"](), steps=steps, patience=steps, reach_window=0)
    graph = Graph(method, opts, clamps=boxes)
    frames = input_expressions(graph, regions.lower, regions.upper, regions.masks, regions.ball_center,
                               regions.ball_eps)
    h = unroll(program, frames, regions.lengths, lambda x: LinExpr.constant(graph, x))
    return h.margin_lower(weight, bias).detach()


if __name__ == "__main__":
    main()
