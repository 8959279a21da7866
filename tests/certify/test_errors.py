"""Typed, informative errors at rnnguard's public boundary (never a traceback from deep inside)."""

from __future__ import annotations

import math
import pathlib
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import rnnguard  # noqa: E402
from rnnguard import (  # noqa: E402
    AllFrames,
    Frames,
    InvalidInputError,
    LpBall,
    OneFrame,
    Perturbation,
    RnnGuardError,
    SequenceClassifier,
    UnknownNameError,
    UnsupportedModelError,
    certify,
)

from e2e_support import make_classifier  # noqa: E402

B, T, D, C = 3, 4, 2, 3


@pytest.fixture(scope="module")
def model():
    return make_classifier("lstm", input_size=D, hidden_size=4, num_classes=C, seed=0)


def _x():
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


Y = torch.tensor([0, 1, 2])
PERT = Perturbation(LpBall(0.1))


def _raises(exc_type, fn, *words):
    """``fn()`` raises ``exc_type`` (an RnnGuardError) whose message contains every word."""
    with pytest.raises(exc_type) as info:
        fn()
    err = info.value
    assert isinstance(err, RnnGuardError)
    msg = str(err)
    for w in words:
        assert w in msg, f"{w!r} not in message {msg!r}"
    return msg


def test_error_hierarchy():
    for cls in (InvalidInputError, UnsupportedModelError, UnknownNameError):
        assert issubclass(cls, RnnGuardError) and issubclass(cls, Exception)
    assert issubclass(InvalidInputError, ValueError)
    assert issubclass(UnsupportedModelError, TypeError)
    assert issubclass(UnknownNameError, KeyError)
    assert rnnguard.RnnGuardError is RnnGuardError
    # KeyError normally quotes its message; UnknownNameError keeps it readable
    assert str(UnknownNameError("unknown domain 'x'")) == "unknown domain 'x'"


# ----------------------------------------------------------------------------- x
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_x(model, bad):
    x = _x()
    x[1, 2, 0] = bad
    _raises(InvalidInputError, lambda: certify(model, x, Y, PERT), "NaN", "infinite")


def test_non_finite_x_rejected_in_float32_too(model):
    x = _x().float()
    x[0, 0, 1] = float("nan")
    _raises(InvalidInputError, lambda: certify(model, x, Y, PERT, dtype=torch.float32), "NaN")


def test_empty_batch(model):
    _raises(InvalidInputError, lambda: certify(model, torch.zeros(0, T, D, dtype=torch.float64),
                                               torch.zeros(0, dtype=torch.long), PERT), "empty", "(0, 4, 2)")


def test_zero_frames(model):
    _raises(InvalidInputError, lambda: certify(model, torch.zeros(B, 0, D, dtype=torch.float64), Y, PERT),
            "empty", "frame")


def test_wrong_feature_size(model):
    _raises(InvalidInputError, lambda: certify(model, torch.zeros(B, T, D + 1, dtype=torch.float64), Y, PERT),
            "3 features", "expects 2")


@pytest.mark.parametrize("shape", [(T, D), (1, B, T, D), (D,)], ids=["2d", "4d", "1d"])
def test_x_of_wrong_rank(model, shape):
    _raises(InvalidInputError, lambda: certify(model, torch.zeros(*shape, dtype=torch.float64), Y, PERT),
            "(B, T, d)")


def test_x_not_a_float_tensor(model):
    _raises(InvalidInputError, lambda: certify(model, torch.zeros(B, T, D, dtype=torch.long), Y, PERT),
            "floating-point")
    _raises(InvalidInputError, lambda: certify(model, _x().tolist(), Y, PERT), "floating-point")


# ----------------------------------------------------------------------------- labels and lengths
def test_float_labels(model):
    _raises(InvalidInputError, lambda: certify(model, _x(), Y.double(), PERT), "integer", "(3,)")


def test_labels_of_wrong_shape(model):
    _raises(InvalidInputError, lambda: certify(model, _x(), Y[:2], PERT), "y must be", "(3,)")
    _raises(InvalidInputError, lambda: certify(model, _x(), Y[:, None], PERT), "y must be")


@pytest.mark.parametrize("bad", [-1, C], ids=["negative", "too_large"])
def test_label_out_of_range(model, bad):
    y = Y.clone()
    y[1] = bad
    _raises(InvalidInputError, lambda: certify(model, _x(), y, PERT), "labels", "[0, 2]")


def test_zero_length_sequence(model):
    _raises(InvalidInputError, lambda: certify(model, _x(), Y, PERT, lengths=torch.tensor([4, 0, 2])),
            "length >= 1", "zero-length")


def test_lengths_longer_than_T(model):
    _raises(InvalidInputError, lambda: certify(model, _x(), Y, PERT, lengths=torch.tensor([4, 5, 2])),
            "exceed", "T=4")


def test_lengths_wrong_type_or_shape(model):
    _raises(InvalidInputError, lambda: certify(model, _x(), Y, PERT, lengths=torch.tensor([4.0, 3.0, 2.0])),
            "lengths", "integer")
    _raises(InvalidInputError, lambda: certify(model, _x(), Y, PERT, lengths=torch.tensor([4, 3])),
            "lengths", "(3,)")
    _raises(InvalidInputError, lambda: certify(model, _x(), Y, PERT, lengths=[4, 3, 2]), "lengths")


# ----------------------------------------------------------------------------- the perturbation
@pytest.mark.parametrize("eps", [-0.1, -1e-300, float("nan"), float("inf")], ids=["neg", "tiny_neg", "nan", "inf"])
def test_bad_eps(eps):
    msg = _raises(InvalidInputError, lambda: LpBall(eps), "eps", ">= 0")
    assert repr(eps) in msg or (math.isnan(eps) and "nan" in msg)


def test_eps_not_a_number():
    _raises(InvalidInputError, lambda: LpBall("0.1"), "eps")
    _raises(InvalidInputError, lambda: LpBall(None), "eps")


def test_unknown_norm_raises_a_typed_error_naming_the_choices():
    with pytest.raises(RnnGuardError) as info:
        LpBall(0.1, "l1")
    msg = str(info.value)
    assert "'l1'" in msg and "linf" in msg and "l2" in msg


def test_unknown_norm_is_an_unknown_name_error():
    with pytest.raises(UnknownNameError):
        LpBall(0.1, "l1")


def test_bad_perturbation_parts():
    _raises(InvalidInputError, lambda: Perturbation(0.1), "LpBall", "float")
    _raises(InvalidInputError, lambda: Perturbation(LpBall(0.1), frames="all"), "frames", "AllFrames()")
    _raises(InvalidInputError, lambda: Perturbation(LpBall(0.1), clip=(1.0, 0.0)), "clip", "low <= high")
    _raises(InvalidInputError, lambda: Frames([]), "at least one position")


def test_perturbation_not_a_perturbation(model):
    _raises(InvalidInputError, lambda: certify(model, _x(), Y, LpBall(0.1)), "rnnguard.Perturbation", "LpBall")


def test_x_outside_the_clipping_box(model):
    x = _x().abs() / 10  # inside [0, 1] ...
    x[2, 3, 1] = 1.5  # ... except one entry
    _raises(InvalidInputError, lambda: certify(model, x, Y, Perturbation(LpBall(0.1), clip=(0.0, 1.0))),
            "clipping box", "(0.0, 1.0)")
    x[2, 3, 1] = 1.0  # the boundary itself is inside
    certify(model, x, Y, Perturbation(LpBall(0.1), clip=(0.0, 1.0)), domain="box")


# ----------------------------------------------------------------------------- names and models
@pytest.mark.parametrize("name", ["Box", "deeppoly", "", "zono"])
def test_unknown_domain(model, name):
    msg = _raises(UnknownNameError, lambda: certify(model, _x(), Y, PERT, domain=name), repr(name))
    for known in ("box", "zonotope", "interzono"):
        assert known in msg


def test_unknown_domain_is_reported_before_any_input_problem(model):
    _raises(UnknownNameError, lambda: certify(model, torch.zeros(0, 1, 1), Y, PERT, domain="nope"), "'nope'")


def test_unknown_model_kind():
    msg = _raises(UnknownNameError, lambda: SequenceClassifier("transformer", 2, 3, 2), "'transformer'")
    for known in ("rnn", "rnn_relu", "lstm", "gru"):
        assert known in msg


@pytest.mark.parametrize("bad_model", [
    nn.Linear(D, C),
    nn.Conv1d(D, C, 1),
    nn.TransformerEncoderLayer(d_model=D, nhead=1, dim_feedforward=4),
], ids=["linear", "conv", "transformer"])
def test_unsupported_module(bad_model):
    msg = _raises(UnsupportedModelError, lambda: certify(bad_model, _x(), Y, PERT))
    assert type(bad_model).__name__ in msg or any(n in msg for n, _ in bad_model.named_children())


def test_errors_do_not_depend_on_domain(model):
    """Input validation is the same whatever the domain."""
    for domain in ("box", "zonotope", "interzono"):
        _raises(InvalidInputError, lambda: certify(model, _x(), Y, PERT, domain=domain,
                                                   lengths=torch.tensor([4, 0, 2])), "length")


def test_valid_call_still_works(model):
    """Control: the fixtures above are only broken where each test breaks them."""
    for frames in (AllFrames(), OneFrame(), Frames([0, -1])):
        res = certify(model, _x(), Y, Perturbation(LpBall(0.1), frames), lengths=torch.tensor([4, 1, 2]))
        assert res.certified.shape == (B,) and res.margin_lower.shape == (B, C - 1)
