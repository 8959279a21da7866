"""rnnguard against auto_LiRPA (IBP, CROWN, alpha-CROWN) on the same models, inputs and radius.

auto_LiRPA bounds general computational graphs; it cannot read ``nn.LSTM``/``nn.GRU`` directly,
so the checkpoint's own weights are unrolled into plain ``Linear``/``sigmoid``/``tanh``/``*``
operations (:class:`Unrolled`, checked against the model's logits). Both tools then bound the
margins ``y_true - y_other`` of the same inputs (R2's protocol as in ``certify_methods.py``:
the first ``--n`` correctly classified test inputs of a seeded permutation, l_inf ball on every
frame, MNIST pixels clipped to [0, 1]), and every certificate of either tool is cross-checked
with PGD (violations must be 0). rnnguard runs in float64 as ``certify_methods.py``; auto_LiRPA
in float32, its own dtype (its sigmoid/tanh relaxations' lookup tables are float32).

auto_LiRPA is not a dependency of rnnguard. The newest release on PyPI (0.3, 2022) pins torch
< 1.13; on torch 2.13 it runs after four small compatibility shims (``_import_auto_lirpa``:
moved ONNX helpers, ``Node`` attribute access, a ``_named_members`` keyword and NumPy 2's
``isin``). Install it without its pinned dependencies:

    pip install --no-deps auto_LiRPA==0.3 appdirs tqdm
    python benchmarks/compare_auto_lirpa.py --models 04F_032H_1L
    python benchmarks/compare_auto_lirpa.py --checkpoint models/rt/lstm32-regular.pt --dataset rt --n 50

Results: printed as a markdown table and merged into ``benchmarks/results/auto_lirpa.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certify_methods import ROOT, _inputs  # noqa: E402

from rnnguard import LpBall, Perturbation, certify  # noqa: E402
from rnnguard.attacks import PGD  # noqa: E402
from rnnguard.data import correctly_classified_subset  # noqa: E402
from rnnguard.models import lower  # noqa: E402

METHODS = {"ibp": "IBP", "crown": "CROWN", "alpha-crown": "CROWN-Optimized", "alpha-crown-all": "CROWN-Optimized"}


def _import_auto_lirpa():
    """Import auto_LiRPA 0.3 on torch 2.x / NumPy 2 (shims for APIs that moved since 2022)."""
    sys.modules.setdefault("numpy.lib.arraysetops", types.SimpleNamespace(isin=np.isin))
    from torch.onnx._internal.torchscript_exporter import utils as ts_utils
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    def set_opset(version: int) -> None:
        GLOBALS.export_onnx_opset_version = version

    importlib.import_module("torch.onnx.utils")._optimize_graph = ts_utils._optimize_graph
    importlib.import_module("torch.onnx.symbolic_helper")._set_opset_version = set_opset
    torch._C.Node.__getitem__ = lambda node, key: getattr(node, node.kindOf(key))(key)
    try:
        import auto_LiRPA
    except ImportError as exc:
        raise SystemExit(f"auto_LiRPA is not installed ({exc}): pip install --no-deps auto_LiRPA==0.3 appdirs tqdm")
    members = auto_LiRPA.BoundedModule._named_members
    auto_LiRPA.BoundedModule._named_members = (
        lambda self, get_members_fn, prefix="", recurse=True, remove_duplicate=True: members(self, get_members_fn, prefix, recurse))
    return auto_LiRPA


class Unrolled(nn.Module):
    """A lowered rnnguard program unrolled over ``T`` frames in auto_LiRPA-friendly operations.

    One ``Linear`` per gate and per input (frame / hidden state), PyTorch's gate order and
    equations; the initial state is zero, so the first step keeps only the hidden-state biases."""

    def __init__(self, model: nn.Module, frames: int) -> None:
        super().__init__()
        program = lower(model)
        self.frames = frames
        self.kinds = [layer.kind for layer in program.layers]
        self.ih, self.hh = nn.ModuleList(), nn.ModuleList()
        for layer in program.layers:
            gates = {"lstm": 4, "gru": 3}.get(layer.kind, 1)
            h = layer.hidden_size
            zeros = layer.weight_ih.new_zeros(gates * h)
            b_ih = zeros if layer.bias_ih is None else layer.bias_ih
            b_hh = zeros if layer.bias_hh is None else layer.bias_hh
            self.ih.append(nn.ModuleList(self._linear(layer.weight_ih[k * h:(k + 1) * h], b_ih[k * h:(k + 1) * h])
                                         for k in range(gates)))
            self.hh.append(nn.ModuleList(self._linear(layer.weight_hh[k * h:(k + 1) * h], b_hh[k * h:(k + 1) * h])
                                         for k in range(gates)))
        self.head = self._linear(program.head_weight, program.head_bias)

    @staticmethod
    def _linear(weight: Tensor, bias: Tensor) -> nn.Linear:
        lin = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.dtype)
        lin.weight.data.copy_(weight.detach())
        lin.bias.data.copy_(bias.detach())
        return lin

    def forward(self, x: Tensor) -> Tensor:
        seq = [x[:, t, :] for t in range(self.frames)]
        for kind, ih, hh in zip(self.kinds, self.ih, self.hh):
            h = c = None
            out = []
            for x_t in seq:
                a = [lin(x_t) for lin in ih]
                if kind == "lstm":
                    a = [a_k + (lin.bias if h is None else lin(h)) for a_k, lin in zip(a, hh)]
                    i, f, g, o = torch.sigmoid(a[0]), torch.sigmoid(a[1]), torch.tanh(a[2]), torch.sigmoid(a[3])
                    c = i * g if c is None else f * c + i * g
                    h = o * torch.tanh(c)
                elif kind == "gru":
                    if h is None:  # h = 0: W_hn h + b_hn is the bias alone
                        r, z = torch.sigmoid(a[0] + hh[0].bias), torch.sigmoid(a[1] + hh[1].bias)
                        n = torch.tanh(a[2] + r * hh[2].bias)
                        h = (1 - z) * n
                    else:
                        r, z = torch.sigmoid(a[0] + hh[0](h)), torch.sigmoid(a[1] + hh[1](h))
                        n = torch.tanh(a[2] + r * hh[2](h))
                        h = (1 - z) * n + z * h
                else:
                    pre = a[0] + (hh[0].bias if h is None else hh[0](h))
                    h = torch.relu(pre) if kind == "rnn_relu" else torch.tanh(pre)
                out.append(h)
            seq = out
        return self.head(seq[-1])


def _spec(y: Tensor, classes: int) -> Tensor:
    """``C`` with rows ``e_y - e_j`` for every ``j != y``: (B, classes - 1, classes)."""
    eye = torch.eye(classes)
    others = torch.stack([torch.tensor([j for j in range(classes) if j != int(t)]) for t in y])
    return eye[y].unsqueeze(1) - eye[others]


def _auto_lirpa_margins(lirpa, model: nn.Module, xs: Tensor, ys: Tensor, eps: float, clip, method: str,
                        iterations: int) -> tuple[Tensor, float]:
    """Lower bounds of every margin and the seconds spent building auto_LiRPA's graph (not bounding).

    ``alpha-crown`` is auto_LiRPA's default alpha-CROWN: slopes optimised for the final margins only,
    the intermediate bounds fixed at CROWN's (as rnnguard's ``backsub-slopes``); ``alpha-crown-all``
    also optimises every intermediate bound (``fix_intermediate_layer_bounds=False``, as
    ``backsub-alpha``)."""
    start = time.perf_counter()
    unrolled = Unrolled(model, xs.shape[1]).float().eval()
    xs = xs.float()
    bounded = lirpa.BoundedModule(unrolled, torch.zeros_like(xs[:1]), bound_opts={"conv_mode": "matrix"}, verbose=False)
    build = time.perf_counter() - start
    if method.startswith("alpha-crown"):
        bounded.set_bound_opts({"optimize_bound_args": {
            "iteration": iterations, "fix_intermediate_layer_bounds": method == "alpha-crown"}})
    lo = (xs - eps).clamp(*clip) if clip else xs - eps
    hi = (xs + eps).clamp(*clip) if clip else xs + eps
    x = lirpa.BoundedTensor(xs, lirpa.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=lo, x_U=hi))
    lower, _ = bounded.compute_bounds(x=(x,), C=_spec(ys, unrolled.head.out_features), method=METHODS[method],
                                      bound_upper=False)
    return lower.detach(), build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", help="checkpoint path (repeatable); default: the --models")
    ap.add_argument("--models", default="04F_032H_1L")
    ap.add_argument("--model-dir", default=str(ROOT / "models" / "mnist" / "r2recipe"))
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--eps", default="0.01")
    ap.add_argument("--methods", default="ibp,crown,alpha-crown", help=f"auto_LiRPA methods: {', '.join(METHODS)}")
    ap.add_argument("--alpha-iterations", type=int, default=20, help="alpha-CROWN steps (auto_LiRPA's default: 20)")
    ap.add_argument("--lirpa-batch", type=int, default=25,
                    help="inputs per auto_LiRPA call (alpha-CROWN held 20 GB for 100 4-frame inputs)")
    ap.add_argument("--ours", default="box,backsub,backsub-slopes,backsub-alpha-shared", help="rnnguard domains")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "auto_lirpa.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lirpa = _import_auto_lirpa()
    paths = [Path(p) for p in args.checkpoint] if args.checkpoint else \
        [Path(args.model_dir) / f"{m}.pt" for m in args.models.split(",")]
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {"rows": []}
    record["machine"] = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    record["auto_lirpa"] = getattr(lirpa, "__version__", "0.3")
    rows = {(r["checkpoint"], r["eps"], r["tool"], r["method"], r["n"]): r for r in record["rows"]}
    print("| model | eps | tool | method | certified % | s / input | median worst margin | PGD-robust % | violations |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|")
    for path in paths:
        label = path.parent.name if path.stem == "model" else path.stem
        model, x, y, lengths, clip = _inputs(path, args.dataset, args.data_root)
        model = model.double().eval()
        idx = correctly_classified_subset(model, x.double(), y, args.n, seed=args.seed, lengths=lengths)
        xs, ys = x[idx].double(), y[idx]
        ls = torch.full((len(idx),), xs.shape[1]) if lengths is None else lengths[idx]
        groups = [(ls == t).nonzero().flatten() for t in ls.unique().tolist()]
        chunks = [g[s:s + args.lirpa_batch] for g in groups for s in range(0, len(g), args.lirpa_batch)]
        with torch.no_grad():  # the unrolled graph computes the model's own logits
            for g in groups:
                t = int(ls[g[0]])
                ref = model(xs[g, :t])
                assert torch.allclose(Unrolled(model, t).double()(xs[g, :t]), ref, atol=1e-9), "unrolling mismatch"
        for eps in (float(e) for e in args.eps.split(",")):
            pert = Perturbation(LpBall(eps), clip=clip)
            attack = PGD(steps=50, restarts=2)(model, xs, ys, pert, lengths=ls)
            robust = ~attack.success
            runs = [("auto_LiRPA", m) for m in args.methods.split(",") if m] + \
                   [("rnnguard", d) for d in args.ours.split(",") if d]
            for tool, method in runs:
                start, build = time.perf_counter(), 0.0
                if tool == "rnnguard":
                    result = certify(model, xs, ys, pert, domain=method, lengths=ls, batch_size=len(idx))
                    certified, worst = result.certified, result.margin_lower.amin(dim=1)
                else:
                    certified = torch.zeros(len(idx), dtype=torch.bool)
                    worst = torch.zeros(len(idx), dtype=torch.float64)
                    for g in chunks:
                        t = int(ls[g[0]])
                        lower_bounds, seconds = _auto_lirpa_margins(lirpa, model, xs[g, :t], ys[g], eps, clip, method,
                                                                    args.alpha_iterations)
                        certified[g] = (lower_bounds > 0).all(dim=1)
                        worst[g] = lower_bounds.amin(dim=1).double()
                        build += seconds
                seconds = time.perf_counter() - start - build
                violations = int((certified & ~robust).sum())
                row = {"checkpoint": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
                       "dataset": args.dataset, "eps": eps, "tool": tool, "method": method, "n": len(idx),
                       "certified_pct": 100 * float(certified.double().mean()), "seconds_per_input": seconds / len(idx),
                       "pgd_robust_pct": 100 * float(robust.double().mean()), "violations": violations,
                       "median_worst_margin": float(worst.median()), "threads": torch.get_num_threads()}
                if tool == "auto_LiRPA":
                    row["graph_build_seconds"] = build
                    row["lirpa_batch"] = args.lirpa_batch
                if method.startswith("alpha-crown"):
                    row["alpha_iterations"] = args.alpha_iterations
                rows[(row["checkpoint"], eps, tool, method, row["n"])] = row
                print(f"| {label} | {eps:g} | {tool} | {method} | {row['certified_pct']:.1f} | "
                      f"{row['seconds_per_input']:.4f} | {row['median_worst_margin']:.3f} | {row['pgd_robust_pct']:.1f} | "
                      f"{violations} |", flush=True)
                record["rows"] = list(rows.values())
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(record, indent=1))
                if violations and tool == "rnnguard":  # auto_LiRPA's are reported in its rows, ours stop the run
                    raise SystemExit(f"SOUNDNESS VIOLATION: {violations} certified inputs broken by PGD ({method})")


if __name__ == "__main__":
    main()
