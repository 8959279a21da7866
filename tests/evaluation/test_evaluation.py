"""rnnguard.evaluation: record structure, certified <= empirical robust accuracy, eps=0 sanity,
no soundness violations, table rows and the plot (tiny random models, synthetic data)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from rnnguard import SequenceClassifier
from rnnguard.attacks import PGD
from rnnguard.evaluation import RECORD_FORMAT, RECORD_VERSION, default_attacks, evaluate, plot_certified_accuracy, table_rows
from rnnguard.perturbations import AllFrames, Frames, OneFrame
from rnnguard.reports import to_jsonable

DOMAINS = ("box", "zonotope", "interzono")
EPS = (0.0, 0.1, 0.5, 2.0)



def _setup(kind: str = "lstm", n: int = 12, T: int = 4, d: int = 3, classes: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    model = SequenceClassifier(kind, d, 6, classes).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, T, d, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    with torch.no_grad():
        pred = model(x, lengths).argmax(1)
    y = pred.clone()
    y[::3] = (y[::3] + 1) % classes  # a third of the samples misclassified: clean accuracy ~ 67%
    return model, x, y, lengths


def _fast_attacks() -> dict:
    return {"pgd": PGD(steps=10, restarts=1, loss="margin", seed=0)}


def _check_record(record: dict, eps_list, domains, attack_names) -> None:
    assert record["format"] == RECORD_FORMAT and record["version"] == RECORD_VERSION
    assert [r["eps"] for r in record["by_eps"]] == [float(e) for e in eps_list]
    assert 0.0 <= record["clean_accuracy"] <= 100.0
    assert record["soundness_violations"] == 0
    for row in record["by_eps"]:
        assert set(row["certified"]) == set(domains) == set(row["certify_seconds"])
        assert set(row["empirical"]) == set(attack_names) | {"all_attacks"}
        assert set(row["attack_seconds"]) == set(attack_names)
        assert row["soundness_violations"] == 0
        for v in [*row["certified"].values(), *row["empirical"].values()]:
            assert 0.0 <= v <= 100.0
        for v in [*row["certify_seconds"].values(), *row["attack_seconds"].values()]:
            assert v >= 0.0
        emp = row["empirical"]["all_attacks"]
        assert emp <= record["clean_accuracy"] + 1e-9
        assert all(emp <= row["empirical"][a] + 1e-9 for a in attack_names)
        for d in domains:
            # certified samples are correctly classified and no attack may break them
            assert row["certified"][d] <= emp + 1e-9, (row["eps"], d, row)
        if row["eps"] == 0:
            for d in domains:
                assert row["certified"][d] == pytest.approx(record["clean_accuracy"]), d
            assert emp == pytest.approx(record["clean_accuracy"])
    json.dumps(to_jsonable(record), allow_nan=False)  # plain JSON-able


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_record_structure_and_invariants(kind):
    model, x, y, lengths = _setup(kind)
    record = evaluate(model, x, y, lengths, eps_list=EPS, domains=DOMAINS, attacks=_fast_attacks(), batch_size=5)
    _check_record(record, EPS, DOMAINS, ["pgd"])
    assert record["n"] == x.shape[0] and record["norm"] == "linf" and record["frames"] == "AllFrames"
    assert record["clean_accuracy"] == pytest.approx(100 * 8 / 12)
    # a bigger radius never certifies more (same domain)
    for d in DOMAINS:
        series = [r["certified"][d] for r in record["by_eps"]]
        assert series == sorted(series, reverse=True), (d, series)
    # the domains' ordering on these models: interzono and zonotope are at least as tight as box
    for r in record["by_eps"]:
        assert r["certified"]["interzono"] >= r["certified"]["box"]
    # not a vacuous check: some radius certifies part, but not all, of the correct samples
    assert any(0 < r["certified"]["interzono"] < record["clean_accuracy"] for r in record["by_eps"])


def test_default_attacks_one_frame_l2_and_clip():
    model, x, y, lengths = _setup("gru", n=8, seed=3)
    attacks = default_attacks(seed=1)
    assert set(attacks) == {"pgd", "ensemble"}
    for frames in (OneFrame(), Frames([0, -1])):
        record = evaluate(model, x, y, lengths, eps_list=[0, 0.5, 1.5], domains=DOMAINS, attacks=attacks,
                          frames=frames, norm="l2", clip=(-3.0, 3.0))
        _check_record(record, [0, 0.5, 1.5], DOMAINS, ["pgd", "ensemble"])
        assert record["norm"] == "l2" and record["clip"] == (-3.0, 3.0)
        # the attacks do break samples at the largest radius
        assert record["by_eps"][-1]["empirical"]["all_attacks"] < record["clean_accuracy"]


def test_no_attacks_and_default_lengths():
    model, x, y, _ = _setup("gru", n=6)
    record = evaluate(model, x, y, None, eps_list=[0.0, 0.05], domains=["interzono"], attacks={},
                      frames=AllFrames())
    _check_record(record, [0.0, 0.05], ["interzono"], [])
    # without attacks, "all_attacks" is the clean accuracy
    assert all(r["empirical"]["all_attacks"] == record["clean_accuracy"] for r in record["by_eps"])


def test_float32_model():
    torch.manual_seed(0)
    model = SequenceClassifier("lstm", 3, 5, 3).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 5, 3, generator=g)
    lengths = torch.randint(1, 6, (10,), generator=g)
    y = torch.randint(0, 3, (10,), generator=g)
    record = evaluate(model, x, y, lengths, eps_list=[0.0, 0.05], domains=DOMAINS, attacks=_fast_attacks())
    _check_record(record, [0.0, 0.05], DOMAINS, ["pgd"])


def test_table_rows():
    model, x, y, lengths = _setup("lstm", n=6)
    record = evaluate(model, x, y, lengths, eps_list=[0.0, 0.1], domains=["box", "interzono"],
                      attacks=_fast_attacks())
    rows = table_rows(record)
    assert len(rows) == 2 and [r["eps"] for r in rows] == [0.0, 0.1]
    assert list(rows[0]) == ["eps", "clean %", "cert box %", "cert interzono %", "emp pgd %", "emp all_attacks %",
                             "t cert box s", "t cert interzono s", "violations"]
    for row, r in zip(rows, record["by_eps"]):
        assert row["clean %"] == record["clean_accuracy"]
        assert row["cert interzono %"] == r["certified"]["interzono"]
        assert row["emp all_attacks %"] == r["empirical"]["all_attacks"]
        assert row["violations"] == 0


def test_plot_written(tmp_path):
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed")
    model, x, y, lengths = _setup("lstm", n=6)
    record = evaluate(model, x, y, lengths, eps_list=[0.0, 0.05, 0.2], domains=DOMAINS, attacks=_fast_attacks())
    path = plot_certified_accuracy({"tiny": record, "again": record}, tmp_path / "sub" / "certified_accuracy.png")
    assert path == tmp_path / "sub" / "certified_accuracy.png"
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
