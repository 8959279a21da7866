"""Training objectives: schedules, worst-case logits and the certified-loss upper bound."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnguard as rg
from rnnguard.errors import UnknownNameError
from rnnguard.objectives import METHODS, CertifiedObjective, Ramp, make_objective, worst_case_logits


def test_ramp_is_linear_then_constant():
    r = Ramp(0.0, 1.0, begin=1.0, finish=3.0)
    assert r(0.0) == 0.0 and r(1.0) == 0.0 and r(2.0) == pytest.approx(0.5) and r(3.0) == 1.0 and r(10.0) == 1.0


def test_worst_case_logits_layout():
    # labels 0 and 2 with 3 classes; margins ordered over the other classes
    m = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    z = worst_case_logits(m, torch.tensor([0, 2]), 3)
    assert torch.equal(z, torch.tensor([[0.0, -1.0, -2.0], [-3.0, -4.0, 0.0]]))


@pytest.mark.parametrize("domain", ["box", "zonotope", "interzono"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_certified_loss_upper_bounds_clean_loss_and_has_gradients(kind, domain):
    torch.manual_seed(0)
    model = rg.SequenceClassifier(kind, 4, 6, 3)
    x, y, lengths = torch.randn(5, 4, 4), torch.randint(0, 3, (5,)), torch.tensor([4, 2, 3, 4, 1])
    obj = CertifiedObjective(domain, Ramp(0.05, 0.05), Ramp(0.0, 0.0))
    loss, logits = obj(model, x, y, lengths, epoch=1.0)
    assert loss >= F.cross_entropy(logits, y) - 1e-6  # worst case is never better than the clean point
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_one_step(method):
    torch.manual_seed(0)
    model = rg.SequenceClassifier("lstm", 4, 6, 2)
    x, y, lengths = torch.randn(6, 3, 4), torch.randint(0, 2, (6,)), torch.full((6,), 3)
    obj = make_objective(method, 0.05, epochs=2)
    loss, _ = obj(model, x, y, lengths, epoch=2.0)
    loss.backward()
    assert torch.isfinite(loss)


def test_unknown_method():
    with pytest.raises(UnknownNameError, match="unknown training method"):
        make_objective("magic", 0.1, epochs=1)
