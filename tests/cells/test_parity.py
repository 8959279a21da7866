"""Point-domain parity: the lowered cell program computes exactly what PyTorch's modules compute.

The reference for a variable-length batch is each sample run ALONE on its own truncated sequence
through the ``nn.RNN/LSTM/GRU`` module and the linear head, so masking of padded frames is
checked as well.  float64 to 1e-6 (in practice ~1e-15), float32 to 1e-5.
"""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from rnnguard import SequenceClassifier  # noqa: E402
from rnnguard.cells import Program  # noqa: E402
from rnnguard.models import lower, run_program  # noqa: E402

from e2e_support import KINDS, final_hidden, make_classifier  # noqa: E402

TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-5}


def reference_logits(model: SequenceClassifier, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each sample alone, truncated to its length, through model.rnn then model.head.

    ``x`` is ``(B, T, d)`` whatever ``model.rnn.batch_first`` is."""
    rows = []
    for b in range(x.shape[0]):
        seq = x[b, : int(lengths[b])]
        if model.rnn.batch_first:
            out, _ = model.rnn(seq[None])
            last = out[0, -1]
        else:
            out, _ = model.rnn(seq[:, None])
            last = out[-1, 0]
        rows.append(model.head(last))
    return torch.stack(rows)


def reference_hidden_from_hn(model: SequenceClassifier, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Top-layer h_n of each sample alone (independent of the ``out`` tensor)."""
    rows = []
    for b in range(x.shape[0]):
        seq = x[b, : int(lengths[b])]
        seq = seq[None] if model.rnn.batch_first else seq[:, None]
        _, state = model.rnn(seq)
        h_n = state[0] if isinstance(state, tuple) else state
        rows.append(h_n[-1, 0])
    return torch.stack(rows)


def _inputs(seed: int, B: int, T: int, d: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, d, generator=g, dtype=torch.float64).to(dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    lengths[-1] = 1
    return x, lengths


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["bf", "tf"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_program_matches_torch_modules(kind, num_layers, batch_first, bias, dtype):
    seed = 17 * KINDS.index(kind) + 5 * num_layers + 3 * batch_first + bias
    model = make_classifier(kind, input_size=3, hidden_size=5, num_classes=4, num_layers=num_layers, seed=seed,
                            scale=1.5, batch_first=batch_first, bias=bias, dtype=dtype)
    x, lengths = _inputs(seed, 6, 7, 3, dtype)
    program = lower(model)
    assert isinstance(program, Program) and len(program.layers) == num_layers
    assert program.num_classes == 4 and program.input_size == 3
    tol = TOLERANCE[dtype]
    with torch.no_grad():
        expected = reference_logits(model, x, lengths)
        got = run_program(program, x, lengths)
        assert got.dtype == dtype and got.shape == (6, 4)
        torch.testing.assert_close(got, expected, rtol=0, atol=tol)
        # the module's own forward with lengths (x in the module's layout)
        fwd = model(x if batch_first else x.transpose(0, 1), lengths)
        torch.testing.assert_close(fwd, expected, rtol=0, atol=tol)
        # the final hidden state itself, against h_n
        torch.testing.assert_close(final_hidden(program, x, lengths), reference_hidden_from_hn(model, x, lengths),
                                   rtol=0, atol=tol)
        # full-length batch without lengths
        full = torch.full((6,), 7)
        torch.testing.assert_close(run_program(program, x), reference_logits(model, x, full), rtol=0, atol=tol)
        torch.testing.assert_close(model(x if batch_first else x.transpose(0, 1)), run_program(program, x),
                                   rtol=0, atol=tol)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_frames_are_ignored(kind):
    """Whatever sits after a sample's length (zeros, huge values) never changes its logits."""
    model = make_classifier(kind, input_size=3, hidden_size=6, num_layers=2, seed=3)
    program = lower(model)
    x, lengths = _inputs(4, 5, 6, 3, torch.float64)
    padded = x.clone()
    for b, L in enumerate(lengths.tolist()):
        padded[b, L:] = 1e3 * torch.randn(6 - L, 3, dtype=torch.float64)
    zeroed = x.clone()
    for b, L in enumerate(lengths.tolist()):
        zeroed[b, L:] = 0
    with torch.no_grad():
        a = run_program(program, x, lengths)
        torch.testing.assert_close(run_program(program, padded, lengths), a, rtol=0, atol=1e-12)
        torch.testing.assert_close(run_program(program, zeroed, lengths), a, rtol=0, atol=1e-12)
        torch.testing.assert_close(model(padded, lengths), a, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_single_sample_equals_batched(kind):
    """A sample's logits do not depend on the rest of its batch."""
    model = make_classifier(kind, input_size=4, hidden_size=7, num_layers=2, seed=9)
    program = lower(model)
    x, lengths = _inputs(11, 5, 4, 4, torch.float64)
    with torch.no_grad():
        batched = run_program(program, x, lengths)
        for b in range(5):
            alone = run_program(program, x[b : b + 1, : int(lengths[b])])
            torch.testing.assert_close(alone[0], batched[b], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_lowering_shares_the_modules_weights(kind):
    """The program holds the module's own parameters: editing them changes the program."""
    model = make_classifier(kind, input_size=3, hidden_size=4, seed=2)
    program = lower(model)
    layer = program.layers[0]
    assert layer.weight_ih.data_ptr() == model.rnn.weight_ih_l0.data_ptr()
    assert layer.weight_hh.data_ptr() == model.rnn.weight_hh_l0.data_ptr()
    assert program.head_weight.data_ptr() == model.head.weight.data_ptr()
    expected_kind = {"rnn": "rnn_tanh", "rnn_relu": "rnn_relu", "lstm": "lstm", "gru": "gru"}[kind]
    assert layer.kind == expected_kind
    assert lower(program) is program


def test_sequence_classifier_layout_and_config():
    m = SequenceClassifier("gru", 3, 5, 2, num_layers=2, batch_first=False, bias=False)
    assert isinstance(m.rnn, nn.GRU) and not m.rnn.batch_first and not m.rnn.bias
    assert m.config() == dict(kind="gru", input_size=3, hidden_size=5, num_classes=2, num_layers=2,
                              batch_first=False, bias=False)
    assert SequenceClassifier("rnn_relu", 2, 3, 2).rnn.nonlinearity == "relu"
    assert SequenceClassifier("rnn", 2, 3, 2).rnn.nonlinearity == "tanh"
    assert isinstance(SequenceClassifier("lstm", 2, 3, 2).rnn, nn.LSTM)
