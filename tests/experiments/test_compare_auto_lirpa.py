"""benchmarks/compare_auto_lirpa.py: the unrolled graph handed to auto_LiRPA is the model itself.

auto_LiRPA is not installed in CI; these tests cover the parts that do not need it (the
unrolling of every cell kind and the margin specification)."""

from __future__ import annotations

import pytest
import torch

from rnnguard import SequenceClassifier


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("benchmarks/compare_auto_lirpa.py")


@pytest.mark.parametrize("kind", ["rnn", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_unrolled_graph_computes_the_models_logits(bench, kind, layers, bias):
    torch.manual_seed(0)
    model = SequenceClassifier(kind, input_size=5, hidden_size=7, num_classes=3, num_layers=layers, bias=bias).double()
    if bias:  # nonzero hidden-state biases: the first step keeps them although h0 = 0
        for name, p in model.rnn.named_parameters():
            if name.startswith("bias"):
                torch.nn.init.uniform_(p, -1.0, 1.0)
    x = torch.randn(4, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(bench.Unrolled(model, 6).double()(x), model(x), atol=1e-12)


def test_spec_rows_are_true_class_minus_each_other_class(bench):
    C = bench._spec(torch.tensor([2, 0]), 3)
    assert C.shape == (2, 2, 3)
    assert torch.equal(C[0], torch.tensor([[-1.0, 0.0, 1.0], [0.0, -1.0, 1.0]]))
    assert torch.equal(C[1], torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]))
