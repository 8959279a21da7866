"""Lowering users' own modules: what is accepted (and certified with the user's own weights) and
what is rejected with an UnsupportedModelError naming the offending submodule or class."""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from rnnguard import (  # noqa: E402
    LpBall,
    Perturbation,
    RnnGuardError,
    SequenceClassifier,
    UnsupportedModelError,
    certify,
)
from rnnguard.models import lower, run_program  # noqa: E402

from e2e_support import TOL, concrete_margins, pgd_min_margins  # noqa: E402

D, H, C = 3, 5, 3


class LastOut(nn.Module):
    """The common user pattern: ``linear(out[:, -1])``."""

    def __init__(self, rnn: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = rnn
        self.classifier = head if head is not None else nn.Linear(rnn.hidden_size, C)

    def forward(self, x):
        out, _ = self.encoder(x)
        last = out[:, -1] if self.encoder.batch_first else out[-1]
        return self.classifier(last)


class LastHn(nn.Module):
    """``linear(h_n[-1])`` (h_n of an LSTM is the first element of its state tuple)."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(rnn.hidden_size, C)

    def forward(self, x):
        _, state = self.rnn(x)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.fc(self.drop(h_n[-1]))


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.uniform_(p, -0.8, 0.8)
    return module.double().eval()


def _data(seed=0, B=4, T=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    return x


def _as_sequence_classifier(rnn: nn.Module, head: nn.Linear) -> SequenceClassifier:
    kind = {nn.LSTM: "lstm", nn.GRU: "gru"}.get(type(rnn)) or ("rnn_relu" if rnn.nonlinearity == "relu" else "rnn")
    ref = SequenceClassifier(kind, rnn.input_size, rnn.hidden_size, head.out_features, num_layers=rnn.num_layers,
                             batch_first=True, bias=rnn.bias).double()
    with torch.no_grad():
        for name, p in ref.rnn.named_parameters():
            p.copy_(getattr(rnn, name))
        ref.head.weight.copy_(head.weight)
        ref.head.bias.copy_(head.bias if head.bias is not None else torch.zeros_like(ref.head.bias))
    return ref.eval()


RNNS = {
    "lstm": lambda bf, L=1, bias=True: nn.LSTM(D, H, num_layers=L, batch_first=bf, bias=bias),
    "gru": lambda bf, L=1, bias=True: nn.GRU(D, H, num_layers=L, batch_first=bf, bias=bias),
    "rnn": lambda bf, L=1, bias=True: nn.RNN(D, H, num_layers=L, batch_first=bf, bias=bias),
    "rnn_relu": lambda bf, L=1, bias=True: nn.RNN(D, H, num_layers=L, batch_first=bf, bias=bias, nonlinearity="relu"),
}


@pytest.mark.parametrize("wrapper", [LastOut, LastHn], ids=["out_last", "h_n"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["bf", "tf"])
@pytest.mark.parametrize("name", list(RNNS))
def test_user_module_is_certified_with_its_own_weights(name, batch_first, wrapper):
    model = _seeded(wrapper(RNNS[name](batch_first, L=2)), seed=len(name) + batch_first)
    rnn = model.encoder if wrapper is LastOut else model.rnn
    head = model.classifier if wrapper is LastOut else model.fc
    program = lower(model)
    assert program.layers[0].weight_ih is rnn.weight_ih_l0 and program.head_weight is head.weight
    x = _data()
    with torch.no_grad():
        user_logits = model(x if batch_first else x.transpose(0, 1))
        torch.testing.assert_close(run_program(program, x), user_logits, rtol=0, atol=1e-10)
    y = user_logits.argmax(1)
    reference = _as_sequence_classifier(rnn, head)
    for domain in ("box", "zonotope", "interzono"):
        pert = Perturbation(LpBall(0.05))
        res = certify(model, x, y, pert, domain=domain)  # x is (B, T, d) whatever the user's layout
        ref = certify(reference, x, y, pert, domain=domain)
        torch.testing.assert_close(res.margin_lower, ref.margin_lower, rtol=0, atol=1e-12)
        assert torch.equal(res.certified, ref.certified)
        # and the bounds are sound for the user's model, evaluated by the user's forward
        regions = pert.regions(x, torch.full((4,), 5))
        attacked = pgd_min_margins(program, regions.lower, regions.upper, regions.lengths, y, steps=20, restarts=1)
        assert (attacked >= res.margin_lower - TOL).all()
        with torch.no_grad():
            corner = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.5,
                                 regions.lower, regions.upper)
            m = concrete_margins(program, corner, regions.lengths, y)
            user_m = model(corner if batch_first else corner.transpose(0, 1))
            torch.testing.assert_close(run_program(program, corner), user_m, rtol=0, atol=1e-10)
        assert (m >= res.margin_lower - TOL).all()
    assert model.training is False


def test_lowering_keeps_train_mode_and_accepts_headless_bias():
    model = _seeded(LastOut(nn.GRU(D, H, batch_first=True), nn.Linear(H, C, bias=False)), seed=4)
    model.train()
    program = lower(model)
    assert model.training  # restored after the parity check
    assert torch.equal(program.head_bias, torch.zeros(C, dtype=torch.float64))
    x = _data(1)
    with torch.no_grad():
        torch.testing.assert_close(run_program(program, x), model.eval()(x), rtol=0, atol=1e-10)


def test_float32_user_model_is_certified_in_float64():
    model = LastOut(nn.LSTM(D, H, batch_first=True)).eval()
    x = _data(2).float()
    with torch.no_grad():
        y = model(x).argmax(1)
    res = certify(model, x, y, Perturbation(LpBall(0.0)), domain="zonotope")
    assert res.certified.all()
    assert res.margin_lower.dtype == torch.float64


# ----------------------------------------------------------------------------- rejected modules
class ExtraRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(D, H, batch_first=True)
        self.act = nn.ReLU()
        self.fc = nn.Linear(H, C)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(self.act(out[:, -1]))


class TwoRecurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.LSTM(D, H, batch_first=True)
        self.second = nn.LSTM(H, H, batch_first=True)
        self.fc = nn.Linear(H, C)

    def forward(self, x):
        out, _ = self.second(self.first(x)[0])
        return self.fc(out[:, -1])


class MeanPool(nn.Module):
    def __init__(self, rnn=None):
        super().__init__()
        self.lstm = rnn if rnn is not None else nn.LSTM(D, H, batch_first=True)
        self.fc = nn.Linear(H, C)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out.mean(dim=1))


class FirstFrame(MeanPool):
    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, 0])


class Softmaxed(MeanPool):
    def forward(self, x):
        out, _ = self.lstm(x)
        return torch.softmax(self.fc(out[:, -1]), dim=-1)


class Crashes(MeanPool):
    def forward(self, x, mask):  # needs an extra argument
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(D, C, batch_first=True)

    def forward(self, x):
        return self.gru(x)[0][:, -1]


class Bidirectional(nn.Module):
    """Realistic: the head takes both directions (2H features)."""

    def __init__(self, head_features=2 * H):
        super().__init__()
        self.rnn = nn.LSTM(D, H, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(head_features, C)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


class Projected(nn.Module):
    """Realistic: the head takes the projected hidden state (proj_size features)."""

    def __init__(self, head_features=2):
        super().__init__()
        self.rnn = nn.LSTM(D, H, batch_first=True, proj_size=2)
        self.fc = nn.Linear(head_features, C)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


def _rejected(model) -> str:
    with pytest.raises(UnsupportedModelError) as info:
        lower(model)
    assert isinstance(info.value, RnnGuardError)
    with pytest.raises(UnsupportedModelError):
        certify(model, _data().float(), torch.zeros(4, dtype=torch.long), Perturbation(LpBall(0.1)))
    return str(info.value)


def test_extra_relu_child_is_rejected():
    msg = _rejected(ExtraRelu())
    assert "'act'" in msg and "ReLU" in msg


def test_two_recurrent_children_are_rejected():
    msg = _rejected(TwoRecurrent())
    assert "first" in msg and "second" in msg and "TwoRecurrent" in msg


def test_linear_in_features_mismatch_is_rejected():
    msg = _rejected(LastOut(nn.LSTM(D, H, batch_first=True), nn.Linear(H + 1, C)))
    assert "'classifier'" in msg and "in_features=6" in msg and "hidden_size=5" in msg


@pytest.mark.parametrize("cls", [MeanPool, FirstFrame, Softmaxed], ids=lambda c: c.__name__)
def test_forward_that_is_not_linear_of_last_state_is_detected(cls):
    msg = _rejected(_seeded(cls(), seed=0))
    assert cls.__name__ in msg and "forward" in msg


def test_mean_pooling_gru_with_batch_first_false_is_detected():
    class MeanPoolTF(MeanPool):
        def forward(self, x):
            out, _ = self.lstm(x)
            return self.fc(out.mean(dim=0))

    msg = _rejected(_seeded(MeanPoolTF(nn.GRU(D, H)), seed=1))
    assert "MeanPoolTF" in msg


def test_forward_that_crashes_is_reported():
    msg = _rejected(Crashes())
    assert "Crashes" in msg and "forward" in msg


def test_missing_linear_head_is_rejected():
    msg = _rejected(NoLinear())
    assert "NoLinear" in msg and "nn.Linear" in msg


def test_not_a_module_is_rejected():
    msg = _rejected(lambda x: x)
    assert "nn.Module" in msg and "function" in msg


def test_nested_containers_are_rejected_naming_the_child():
    model = nn.Sequential(nn.LSTM(D, H, batch_first=True), nn.Linear(H, C))  # Sequential can't unpack (out, h)
    msg = str(pytest.raises(UnsupportedModelError, lower, model).value)
    assert "Sequential" in msg
    wrapped = nn.Module()
    wrapped.body = nn.Sequential(nn.Linear(D, H))
    msg = str(pytest.raises(UnsupportedModelError, lower, wrapped).value)
    assert "'body'" in msg and "Sequential" in msg


def test_bidirectional_lstm_is_rejected_naming_the_recurrent_submodule_if_head_matches_hidden():
    msg = _rejected(Bidirectional(head_features=H))
    assert "'rnn'" in msg and "bidirectional" in msg


def test_proj_size_is_rejected_naming_the_recurrent_submodule_if_head_matches_hidden():
    msg = _rejected(Projected(head_features=H))
    assert "'rnn'" in msg and "proj_size" in msg


def test_realistic_bidirectional_lstm_is_rejected_naming_the_recurrent_submodule():
    msg = _rejected(Bidirectional())
    assert "'rnn'" in msg and "bidirectional" in msg


def test_realistic_proj_size_lstm_is_rejected_naming_the_recurrent_submodule():
    msg = _rejected(Projected())
    assert "'rnn'" in msg and "proj_size" in msg


def test_realistic_bidirectional_and_projected_models_are_still_rejected():
    """Whatever the message, such models must never be certified."""
    for model in (Bidirectional(), Projected()):
        with pytest.raises(UnsupportedModelError):
            lower(model)
