"""Attacks: containment in every threat model, bookkeeping, strength and input validation.

Tiny seeded classifiers (RNN tanh, LSTM, GRU; 3 features, 6 hidden units, 3 classes) on
variable-length batches with inputs in [0, 1], so the clipping box (0, 1) is valid.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from rnnguard import AllFrames, Frames, LpBall, OneFrame, Perturbation, SequenceClassifier
from rnnguard.attacks import (
    APGD,
    FGSM,
    PGD,
    Attack,
    AttackResult,
    Ensemble,
    default_ensemble,
    margins_from_logits,
)
from rnnguard.errors import InvalidInputError, UnknownNameError

KINDS = ("rnn", "lstm", "gru")
B, T, D, H, C = 5, 5, 3, 6, 3
LENGTHS = torch.tensor([5, 4, 3, 1, 2])

ATTACKS = {
    "fgsm": lambda: FGSM(),
    "pgd": lambda: PGD(steps=5, restarts=2),
    "pgd-margin-fixed-start": lambda: PGD(steps=5, loss="margin", random_start=False),
    "apgd-ce": lambda: APGD(steps=8),
    "apgd-dlr": lambda: APGD(steps=8, loss="dlr"),
    "ensemble": lambda: default_ensemble(steps=4, restarts=2),
}
FRAMES = {"all": AllFrames(), "one": OneFrame(), "first-last": Frames([0, -1])}


def make_model(kind: str, seed: int = 0, num_classes: int = C) -> SequenceClassifier:
    torch.manual_seed(seed)
    return SequenceClassifier(kind, D, H, num_classes)


def weak_model(kind: str, seed: int = 0) -> SequenceClassifier:
    """Untrained and made input-sensitive (input and head weights x3): a deliberately weak model."""
    model = make_model(kind, seed)
    with torch.no_grad():
        model.rnn.weight_ih_l0.mul_(3.0)
        model.head.weight.mul_(3.0)
    return model


def make_data(seed: int = 0, n: int = B) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, T, D, generator=g)


def predictions(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x, lengths).argmax(dim=1)


def labels_half_right(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The model's predictions, with the last sample's label changed (one misclassified sample)."""
    y = predictions(model, x, lengths).clone()
    y[-1] = (y[-1] + 1) % C
    return y


# ---------------------------------------------------------------------------------------------
# containment and frame discipline, every attack x threat model x norm x clip
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [None, (0.0, 1.0)], ids=["noclip", "clip01"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("frames", list(FRAMES), ids=list(FRAMES))
@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_result_stays_in_threat_region(attack, frames, norm, clip):
    for i, kind in enumerate(KINDS):
        model = make_model(kind, seed=i)
        x = make_data(seed=i)
        y = labels_half_right(model, x, LENGTHS)
        p = Perturbation(LpBall(0.4, norm), FRAMES[frames], clip)
        result = ATTACKS[attack]()(model, x, y, p, lengths=LENGTHS)

        assert isinstance(result, AttackResult)
        assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
        assert p.contains(x, result.x_adv, LENGTHS).all()
        changed = (result.x_adv != x).any(dim=-1)  # (B, T)
        beyond = torch.arange(T)[None, :] >= LENGTHS[:, None]
        assert not (changed & beyond).any(), "frames beyond a sample's length moved"
        if frames == "one":
            assert (changed.sum(dim=1) <= 1).all(), "one-frame attack moved several frames"
        if frames == "first-last":
            allowed = torch.zeros(B, T, dtype=torch.bool)
            allowed[:, 0] = True
            allowed[torch.arange(B), LENGTHS - 1] = True
            assert not (changed & ~allowed).any()
        if clip is not None:
            assert ((result.x_adv >= 0) & (result.x_adv <= 1)).all()

        # success is "misclassified at x_adv, or already at x", checked with the module itself
        clean_wrong = predictions(model, x, LENGTHS) != y
        adv_wrong = predictions(model, result.x_adv, LENGTHS) != y
        assert torch.equal(result.success, clean_wrong | adv_wrong)
        assert bool(result.success[-1]) and result.broken_by[-1] == "clean"
        assert torch.equal(result.x_adv[-1], x[-1])  # already misclassified: left as is
        for s, b in zip(result.success.tolist(), result.broken_by):
            assert (b is not None) == s
        with torch.no_grad():
            expected_margin = margins_from_logits(model(result.x_adv, LENGTHS), y)
        torch.testing.assert_close(result.margin, expected_margin, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# success at large eps, none at eps = 0
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_success_at_large_eps_and_none_at_zero(attack):
    model = weak_model("lstm", seed=3)
    x = make_data(seed=3, n=8)
    lengths = torch.tensor([5, 4, 3, 1, 2, 5, 5, 3])
    y = predictions(model, x, lengths)  # every sample correctly classified
    for frames in FRAMES.values():
        for norm in ("linf", "l2"):
            strong = ATTACKS[attack]()(model, x, y, Perturbation(LpBall(3.0, norm), frames), lengths=lengths)
            assert strong.success.any(), (frames, norm)
            zero = ATTACKS[attack]()(model, x, y, Perturbation(LpBall(0.0, norm), frames), lengths=lengths)
            assert not zero.success.any()
            assert torch.equal(zero.x_adv, x)
            assert zero.broken_by == [None] * x.shape[0]


# ---------------------------------------------------------------------------------------------
# ensemble bookkeeping
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", list(FRAMES), ids=list(FRAMES))
def test_ensemble_equals_manual_sequencing(frames):
    model = weak_model("lstm", seed=5)
    n = 12
    g = torch.Generator().manual_seed(5)
    x = torch.rand(n, T, D, generator=g)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    y = predictions(model, x, lengths)
    y[0] = (y[0] + 1) % C  # one sample misclassified already
    p = Perturbation(LpBall(0.2, "linf"), FRAMES[frames])
    members = [FGSM(), PGD(steps=4, seed=1), APGD(steps=6, loss="dlr", seed=2)]

    ens = Ensemble(members)(model, x, y, p, lengths=lengths)

    broken_by: list = [None] * n
    alive = torch.arange(n)
    for attack in members:
        if alive.numel() == 0:
            break
        r = attack(model, x[alive], y[alive], p, lengths=lengths[alive])
        for i, b in zip(alive.tolist(), r.broken_by):
            broken_by[i] = b
        alive = alive[~r.success]
    assert ens.broken_by == broken_by
    assert torch.equal(ens.success, torch.tensor([b is not None for b in broken_by]))
    assert ens.broken_by[0] == "clean"
    assert "FGSM" in ens.broken_by and None in ens.broken_by  # later members ran on real survivors
    assert p.contains(x, ens.x_adv, lengths).all()


def test_ensemble_keeps_the_first_breaker_and_nests():
    model = make_model("rnn", seed=2)
    x = make_data(seed=2)
    y = predictions(model, x, LENGTHS)
    p = Perturbation(LpBall(3.0, "linf"))
    first = FGSM()
    single = first(model, x, y, p, lengths=LENGTHS)
    assert single.success.any()
    ens = Ensemble([first, Ensemble([PGD(steps=3), APGD(steps=3)])])(model, x, y, p, lengths=LENGTHS)
    for s, b_single, b_ens in zip(single.success.tolist(), single.broken_by, ens.broken_by):
        if s:
            assert b_ens == b_single == "FGSM"
        else:
            assert b_ens in (None, "PGD-CE", "APGD-CE")


# ---------------------------------------------------------------------------------------------
# strength, determinism, dtypes, losses
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_at_least_as_strong_as_fgsm(norm):
    fgsm_margins, pgd_margins = [], []
    for i, kind in enumerate(KINDS):
        model = weak_model(kind, seed=20 + i)
        x = make_data(seed=20 + i)
        y = predictions(model, x, LENGTHS)
        p = Perturbation(LpBall(0.5, norm))
        fgsm_margins.append(FGSM()(model, x, y, p, lengths=LENGTHS).margin)
        pgd_margins.append(PGD()(model, x, y, p, lengths=LENGTHS).margin)
    assert torch.cat(pgd_margins).mean() <= torch.cat(fgsm_margins).mean()


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_deterministic_for_fixed_seed(attack):
    model = make_model("lstm", seed=7)
    x = make_data(seed=7)
    y = predictions(model, x, LENGTHS)
    p = Perturbation(LpBall(0.3, "l2"), OneFrame(), (0.0, 1.0))
    a = ATTACKS[attack]()(model, x, y, p, lengths=LENGTHS)
    b = ATTACKS[attack]()(model, x, y, p, lengths=LENGTHS)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success) and a.broken_by == b.broken_by


def test_seed_changes_random_start():
    model = make_model("gru", seed=8)
    x = make_data(seed=8)
    y = predictions(model, x, LENGTHS)
    p = Perturbation(LpBall(0.2, "linf"))
    a = PGD(steps=1, seed=0)(model, x, y, p, lengths=LENGTHS)
    b = PGD(steps=1, seed=1)(model, x, y, p, lengths=LENGTHS)
    assert not torch.equal(a.x_adv, b.x_adv)


def test_dlr_falls_back_to_margin_with_two_classes():
    model = make_model("lstm", seed=4, num_classes=2)
    x = make_data(seed=4)
    y = predictions(model, x, LENGTHS)
    p = Perturbation(LpBall(0.5, "linf"))
    dlr = APGD(steps=6, loss="dlr", seed=3)(model, x, y, p, lengths=LENGTHS)
    margin = APGD(steps=6, loss="margin", seed=3)(model, x, y, p, lengths=LENGTHS)
    assert torch.equal(dlr.x_adv, margin.x_adv)
    default_ensemble(steps=3, restarts=1)(model, x, y, p, lengths=LENGTHS)


def test_user_module_float64_inputs_and_modes():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(D, H, batch_first=True)
            self.drop = nn.Dropout(0.5)
            self.fc = nn.Linear(H, C)

        def forward(self, x):
            out, _ = self.gru(x)
            return self.fc(self.drop(out[:, -1]))

    torch.manual_seed(0)
    net = Net()
    net.train()
    x = make_data(seed=0).double()
    with torch.no_grad():
        y = net.eval()(x.float()).argmax(dim=1)
    net.train()
    p = Perturbation(LpBall(0.3, "linf"), OneFrame(), (0.0, 1.0))
    with torch.no_grad():  # attacks need gradients even when called under no_grad
        result = PGD(steps=5)(net, x, y, p)
    assert net.training, "the model's mode must be restored"
    assert result.x_adv.dtype == torch.float64
    assert p.contains(x, result.x_adv).all()
    assert ((result.x_adv != x).any(dim=-1).sum(dim=1) <= 1).all()
    assert all(param.grad is None for param in net.parameters())
    json.dumps(result.to_dict())
    assert 0.0 <= result.success_rate <= 1.0


def test_one_frame_keeps_strongest_position():
    model = make_model("rnn", seed=9)
    x = make_data(seed=9)
    y = predictions(model, x, LENGTHS)
    attack = FGSM()
    one = attack(model, x, y, Perturbation(LpBall(0.5, "linf"), OneFrame()), lengths=LENGTHS)
    for t in range(T):
        ok = LENGTHS > t
        single = attack(model, x[ok], y[ok], Perturbation(LpBall(0.5, "linf"), Frames([t])), lengths=LENGTHS[ok])
        assert (one.margin[ok] <= single.margin + 1e-6).all()


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise_invalid_input():
    model = make_model("lstm")
    x = make_data()
    y = predictions(model, x, LENGTHS)
    p = Perturbation(LpBall(0.1, "linf"), clip=(0.0, 1.0))
    attack = FGSM()
    nan = x.clone()
    nan[0, 0, 0] = float("nan")
    bad_calls = [
        lambda: attack(model, nan, y, p),
        lambda: attack(model, x[0], y, p),
        lambda: attack(model, x[:, :, :2], y, p),
        lambda: attack(model, x[:0], y[:0], p),
        lambda: attack(model, x.long(), y, p),
        lambda: attack(model, x, y.float(), p),
        lambda: attack(model, x, y[:3], p),
        lambda: attack(model, x, torch.full_like(y, C), p),
        lambda: attack(model, x, -torch.ones_like(y), p),
        lambda: attack(model, x, y, p, lengths=torch.zeros(B, dtype=torch.long)),
        lambda: attack(model, x, y, p, lengths=torch.full((B,), T + 1)),
        lambda: attack(model, x, y, p, lengths=LENGTHS.float()),
        lambda: attack(model, x + 2.0, y, p),  # outside the clipping box
        lambda: attack(model, x, y, "eps=0.1"),
    ]
    for call in bad_calls:
        with pytest.raises(InvalidInputError):
            call()


def test_bad_attack_parameters():
    for make in (lambda: PGD(steps=0), lambda: PGD(restarts=0), lambda: PGD(step_size=-1.0),
                 lambda: APGD(steps=0), lambda: FGSM(eps_step=float("nan")), lambda: Ensemble([]),
                 lambda: Ensemble([FGSM(), "pgd"]), lambda: PGD(seed=-1)):
        with pytest.raises(InvalidInputError):
            make()
    for make in (lambda: PGD(loss="hinge"), lambda: APGD(loss="cw"), lambda: FGSM(loss="x")):
        with pytest.raises(UnknownNameError):
            make()


def test_call_is_final():
    with pytest.raises(TypeError):
        class Bad(Attack):  # noqa: F841
            def __call__(self, *args, **kwargs):
                return None
