"""The training-time zonotope propagation: same values as certification, and the optional
symbol cap (order reduction) is sound."""

from __future__ import annotations

import pytest
import torch

import rnnguard as rg
from rnnguard.certify import propagate_margins
from rnnguard.domains import get_domain
from rnnguard.domains.zonotope import SymbolTable, Zonotope, consolidate
from rnnguard.models import lower
from rnnguard.objectives import CertifiedObjective, Ramp, make_objective, training_margins
from rnnguard.perturbations import AllFrames, LpBall, OneFrame, Perturbation


def _setup(kind: str, frames=None, seed: int = 0):
    torch.manual_seed(seed)
    model = rg.SequenceClassifier(kind, 4, 6, 3).double()
    x = torch.randn(5, 6, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    lengths = torch.tensor([6, 2, 4, 6, 1])
    threat = Perturbation(LpBall(0.1, "linf"), frames or AllFrames())
    return model, x, y, lengths, threat


@pytest.mark.parametrize("domain", ["zonotope", "interzono"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_graph_path_computes_what_certification_computes(kind, domain):
    """Under autograd the generator algebra takes another code path; its margins must equal the
    no-grad (certification) path's, and so must their gradients' existence."""
    model, x, y, lengths, threat = _setup(kind)
    regions = threat.regions(x, lengths)
    program = lower(model, check=False)
    with torch.no_grad():
        reference = propagate_margins(program, regions, y[regions.sample_index], domain)
    graph = propagate_margins(program, regions, y[regions.sample_index], domain)
    assert graph.requires_grad
    torch.testing.assert_close(graph, reference, rtol=1e-12, atol=1e-12)
    graph.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _concrete_margins(model, x, y, lengths, threat, n: int = 400) -> torch.Tensor:
    """Min over ``n`` sampled points (uniform and corners) of ``logit[y] - logit[j]``, shape (B, C-1)."""
    gen = torch.Generator().manual_seed(1)
    B, C = x.shape[0], 3
    worst = torch.full((B, C - 1), float("inf"), dtype=x.dtype)
    others = torch.stack([torch.tensor([c for c in range(C) if c != int(t)]) for t in y])
    with torch.no_grad():
        for k in range(n):
            u = torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1
            if k % 2:
                u = u.sign()
            logits = model(x + threat.eps * u, lengths)
            m = logits.gather(1, y[:, None]) - logits.gather(1, others)
            worst = torch.minimum(worst, m)
    return worst


@pytest.mark.parametrize("domain", ["zonotope", "interzono"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("cap", [1, 12, 30])
def test_symbol_cap_is_sound(kind, domain, cap):
    model, x, y, lengths, threat = _setup(kind, seed=3)
    regions = threat.regions(x, lengths)
    program = lower(model, check=False)
    with torch.no_grad():
        capped = training_margins(program, regions, y, domain, max_symbols=cap)
    concrete = _concrete_margins(model, x, y, lengths, threat)
    assert (capped <= concrete + 1e-9).all()


def test_symbol_cap_bounds_the_generators_and_keeps_inputs():
    model, x, y, lengths, threat = _setup("lstm")
    regions = threat.regions(x, lengths)
    frames, _ = get_domain("zonotope").start(regions)
    table = frames[0].symbols.cap(12)
    assert table.protected == 6  # one input block per frame, handed out before the cap
    z = frames[0]
    for t in range(1, 6):  # a chain of nonlinear sums: each adds 4 non-input symbols
        z = Zonotope.apply_sum([("tanh", (z + frames[t],))])
        non_input = sum(size for bid, size in z.blocks if bid >= table.protected)
        assert non_input <= 12
        assert {bid for bid, _ in z.blocks if bid < table.protected} == set(range(t + 1))


def test_consolidate_keeps_bounds_and_contains_the_value():
    torch.manual_seed(0)
    table = SymbolTable()
    table.new_block()  # block 0: the input symbols
    table.cap(4)
    gens = torch.randn(3, 9, 2, dtype=torch.float64)
    blocks = ((0, 3), (5, 2), (6, 2), (7, 2))
    table._next = 8
    out, out_blocks = consolidate(gens, blocks, table)
    assert out_blocks[0] == (0, 3) and out_blocks[-1] == (8, 2)
    assert sum(s for b, s in out_blocks if b >= table.protected) <= 4
    torch.testing.assert_close(out.abs().sum(1), gens.abs().sum(1))  # same interval bounds
    # every point of the original zonotope is a point of the consolidated one
    eps = torch.rand(50, 9, dtype=torch.float64) * 2 - 1
    points = torch.einsum("ks,rsn->krn", eps, gens)
    old_part = torch.einsum("ks,rsn->krn", eps[:, 3:7], gens[:, 3:7])
    radius = gens[:, 3:7].abs().sum(1)
    new_eps = old_part / radius  # the fresh symbols' values, within [-1, 1]
    assert (new_eps.abs() <= 1 + 1e-12).all()
    rebuilt = torch.einsum("ks,rsn->krn", eps[:, :3], out[:, :3]) + torch.einsum("ks,rsn->krn", eps[:, 7:], out[:, 3:5])
    rebuilt = rebuilt + new_eps * radius
    torch.testing.assert_close(rebuilt, points)
    torch.testing.assert_close(out[:, 5:7], torch.diag_embed(radius))


def test_cap_only_through_the_option():
    """Certification never caps; the objectives cap only when asked, and say so in their repr."""
    assert SymbolTable().max_symbols is None
    plain = make_objective("rnnguard", 0.03, epochs=2)
    capped = make_objective("rnnguard", 0.03, epochs=2, max_symbols=64)
    assert "max_symbols" not in repr(plain) and "max_symbols=64" in repr(capped)
    assert isinstance(capped, CertifiedObjective) and capped.max_symbols == 64


@pytest.mark.parametrize("frames", [AllFrames(), OneFrame()])
def test_capped_objective_trains(frames):
    model, x, y, lengths, _ = _setup("gru")
    model = model.float()
    obj = CertifiedObjective("interzono", Ramp(0.05, 0.05), Ramp(0.5, 0.5), frames=frames, max_symbols=8)
    loss, _ = obj(model, x.float(), y, lengths, epoch=1.0)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
