"""Certificates of trained models survive attacks, and results serialise to JSON.

Tiny classifiers are trained (a few hundred Adam steps) on a separable synthetic 3-class
sequence task so that a good share of the test samples certify at a moderate eps.  Every sample
certified by any domain must survive a float64 PGD attack (all-frame and one-frame threats):
its margins stay > 0 at every attacked point, and no attacked margin ever falls below the
certified margin lower bound.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from rnnguard import AllFrames, Frames, LpBall, OneFrame, Perturbation, SequenceClassifier, certify  # noqa: E402
from rnnguard.models import lower  # noqa: E402

from e2e_support import KINDS, TOL, concrete_margins, pgd_min_margins  # noqa: E402

T, D, C, H = 6, 2, 3, 8
EPS = 0.4  # moderate: a mix of certified and uncertified samples
MEANS = torch.tensor([[1.0, 0.0], [-0.5, 0.866], [-0.5, -0.866]], dtype=torch.float64)


def make_task(n: int, seed: int):
    """Class c: every frame is MEANS[c] + 0.35 N(0, I); lengths 3..T; padding is noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    x = MEANS[y][:, None, :] + 0.35 * torch.randn(n, T, D, generator=g, dtype=torch.float64)
    lengths = torch.randint(3, T + 1, (n,), generator=g)
    return x, y, lengths


@functools.lru_cache(maxsize=None)
def trained(kind: str) -> SequenceClassifier:
    torch.manual_seed(KINDS.index(kind))
    model = SequenceClassifier(kind, D, H, C).double()
    x, y, lengths = make_task(192, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(250):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x, lengths), y)
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=None)
def held_out():
    return make_task(24, seed=2)


THREATS = {"all": AllFrames(), "one": OneFrame()}


@functools.lru_cache(maxsize=None)
def results(kind: str, threat: str):
    model = trained(kind)
    x, y, lengths = held_out()
    pert = Perturbation(LpBall(EPS), THREATS[threat])
    return {d: certify(model, x, y, pert, domain=d, lengths=lengths) for d in ("box", "zonotope", "interzono")}


@pytest.mark.parametrize("kind", KINDS)
def test_training_worked(kind):
    model = trained(kind)
    x, y, lengths = held_out()
    with torch.no_grad():
        acc = (model(x, lengths).argmax(1) == y).double().mean()
    assert acc >= 0.9
    # the test is only meaningful if some samples certify and some do not
    n = int(results(kind, "all")["interzono"].certified.sum())
    assert 3 <= n < x.shape[0]


@pytest.mark.parametrize("threat", list(THREATS))
@pytest.mark.parametrize("kind", KINDS)
def test_certified_samples_survive_pgd(kind, threat):
    model = trained(kind)
    program = lower(model)
    x, y, lengths = held_out()
    res = results(kind, threat)
    certified_any = torch.zeros_like(res["box"].certified)
    for r in res.values():
        certified_any |= r.certified
    assert certified_any.any()
    with torch.no_grad():
        clean = concrete_margins(program, x, lengths, y)
    # certified => correctly classified on the clean input
    assert (clean[certified_any] > 0).all()
    pert = Perturbation(LpBall(EPS), THREATS[threat])
    regions = pert.regions(x, lengths)
    attacked = pgd_min_margins(program, regions.lower, regions.upper, regions.lengths, y[regions.sample_index],
                               steps=50, restarts=3, seed=5)
    per_sample = torch.full((x.shape[0], C - 1), math.inf, dtype=torch.float64)
    per_sample = per_sample.scatter_reduce(0, regions.sample_index[:, None].expand_as(attacked), attacked, "amin")
    assert (per_sample[certified_any] > 0).all(), f"a certified sample was broken: {per_sample[certified_any]}"
    for domain, r in res.items():
        assert (per_sample >= r.margin_lower - TOL).all(), f"{domain}: attack went below the certified bound"
    # the attack is real: it lowers margins and breaks some uncertified samples
    assert (per_sample <= clean + 1e-12).all()
    assert (per_sample < clean - 1e-3).any()


@pytest.mark.parametrize("kind", KINDS)
def test_domain_ranking_on_trained_models(kind):
    """InterZono certifies at least what Box certifies (support component >= intervals), and
    all-frame certification implies one-frame certification."""
    all_r, one_r = results(kind, "all"), results(kind, "one")
    assert not (all_r["box"].certified & ~all_r["interzono"].certified).any()
    for d in all_r:
        assert not (all_r[d].certified & ~one_r[d].certified).any()
    assert one_r["interzono"].certified.sum() >= all_r["interzono"].certified.sum()


@pytest.mark.parametrize("pert", [
    Perturbation(LpBall(EPS)),
    Perturbation(LpBall(0.5, "l2"), OneFrame()),
    Perturbation(LpBall(0.0), Frames([0, -1])),
    Perturbation(LpBall(0.05), AllFrames(), clip=(-5.0, 5.0)),
], ids=["linf-all", "l2-one", "eps0-frames", "clip"])
def test_result_to_dict_is_json(pert):
    x, y, lengths = held_out()
    res = certify(trained("gru"), x[:5], y[:5], pert, domain="interzono", lengths=lengths[:5])
    d = res.to_dict()
    text = json.dumps(d, allow_nan=False)  # strict JSON: no NaN / inf
    back = json.loads(text)
    assert back["domain"] == "interzono"
    assert back["eps"] == pert.eps and back["norm"] == pert.ball.norm
    assert back["clip"] == (list(pert.clip) if pert.clip is not None else None)
    assert isinstance(back["frames"], str) and type(pert.frames).__name__ in back["frames"]
    assert back["certified"] == res.certified.tolist() and all(isinstance(c, bool) for c in back["certified"])
    assert back["certified_fraction"] == pytest.approx(res.certified.double().mean().item())
    assert torch.equal(torch.tensor(back["margin_lower"], dtype=torch.float64), res.margin_lower)
    assert isinstance(back["seconds"], float) and back["seconds"] >= 0
    assert res.certified_fraction == back["certified_fraction"]
