"""Dataset loaders (real files and malformed ones), splits and the tensor builder."""

from __future__ import annotations

import gzip
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnguard.data import (
    DATASETS,
    DataFormatError,
    GloVe,
    load_text_dataset,
    load_text_splits,
    load_toxic,
    load_yelp,
    split_dataset,
    split_indices,
    tokenize,
)
from rnnguard.errors import RnnGuardError, UnknownNameError

# --------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_rt_counts_and_latin1(shared_root: Path) -> None:
    items = load_text_dataset("rt", root=shared_root)
    assert len(items) == 10662
    assert Counter(y for _, y in items) == {1: 5331, 0: 5331}
    assert items[0][1] == 1 and items[0][0][:4] == ["the", "rock", "is", "destined"]
    assert items[5331][1] == 0 and items[5331][0][:3] == ["simplistic", ",", "silly"]
    assert any("café" in tokens for tokens, _ in items)  # byte 0xE9 decoded as Latin-1
    assert all(tokens for tokens, _ in items)


@pytest.mark.shared_data
def test_toxic_and_yelp_counts(shared_root: Path) -> None:
    toxic = load_text_dataset("toxic", root=shared_root)
    assert len(toxic) == 12180 and Counter(y for _, y in toxic) == {0: 6090, 1: 6090}
    wfa = load_toxic(path=shared_root / "jigsaw" / "wfa_toxic_test.csv.gz")
    assert len(wfa) == 6490 and Counter(y for _, y in wfa) == {1: 3288, 0: 3202}
    yelp = load_text_dataset("yelp", root=shared_root)
    assert len(yelp) == 1000 and Counter(y for _, y in yelp) == {0: 518, 1: 482}
    assert not any("\\n" in tok for tokens, _ in yelp for tok in tokens)


@pytest.mark.shared_data
def test_kaggle_schema_samples(shared_root: Path) -> None:
    train = load_toxic(path=shared_root / "jigsaw" / "kaggle_schema_sample_train.csv.gz")
    valid = load_toxic(path=shared_root / "jigsaw" / "kaggle_schema_sample_valid.csv.gz")
    assert (len(train), len(valid)) == (267, 25)
    assert Counter(y for _, y in train) == {0: 240, 1: 27}
    assert train[0][0][:3] == ["explanation", "why", "the"]  # multi-line comment text
    with pytest.raises(DataFormatError, match="no label column") as err:  # Kaggle test.csv: unlabelled
        load_toxic(path=shared_root / "jigsaw" / "kaggle_schema_sample_test.csv.gz")
    assert err.value.line == 1


@pytest.mark.shared_data
def test_load_text_splits_rt(shared_root: Path, glove: GloVe) -> None:
    data = load_text_splits("rt", root=shared_root, glove=glove)
    assert set(data) == {"train", "val", "test"} and data.n_empty_dropped == 0
    assert data.counts == {"train": 8530, "val": 1066, "test": 1066}
    tr = data["train"]
    assert tr.x.dtype == torch.float32 and tr.x.shape == (8530, int(tr.lengths.max()), 50)
    assert tr.lengths.tolist() == [len(s) for s in tr.sentences]
    assert Counter(tr.y.tolist()) == {0: 4265, 1: 4265}
    pad = torch.arange(tr.x.shape[1])[None, :] >= tr.lengths[:, None]
    assert torch.all(tr.x[pad] == 0)
    # Frames are the raw GloVe rows of the listed tokens.
    i = 0
    word = tr.sentences[i][0]
    if word in glove.index:
        assert torch.equal(tr.x[i, 0], torch.tensor(glove.vectors[glove.index[word]]))
    # An OOV word has one vector in every split.
    where: dict[str, list[torch.Tensor]] = {}
    for split in data.values():
        for s, sent in enumerate(split.sentences):
            for t, tok in enumerate(sent):
                if tok not in glove.index and len(where.setdefault(tok, [])) < 3:
                    where[tok].append(split.x[s, t])
    repeated = [v for v in where.values() if len(v) > 1]
    assert repeated and all(torch.equal(v[0], w) for v in repeated for w in v[1:])
    assert data.n_oov_types == len(where) and data.n_types > data.n_oov_types

    short = load_text_splits("rt", root=shared_root, glove=glove, max_len=5)
    assert short["test"].x.shape == (1066, 5, 50) and int(short["test"].lengths.max()) == 5
    assert short["test"].sentences == [s[:5] for s in data["test"].sentences]  # same split


# --------------------------------------------------------------------------- tokeniser


def test_tokenize() -> None:
    assert tokenize("Don't SHOUT!! It's fine, isn't it?") == [
        "do", "n't", "shout", "!", "!", "it", "'s", "fine", ",", "is", "n't", "it", "?",
    ]
    assert tokenize("  ") == []


# --------------------------------------------------------------------------- other formats


def test_kaggle_train_csv_any_label(tmp_path: Path) -> None:
    p = tmp_path / "train.csv"
    p.write_text(
        '"id","comment_text","toxic","severe_toxic","obscene","threat","insult","identity_hate"\n'
        '"a1","Nice edit,\nthanks",0,0,0,0,0,0\n'
        '"a2","you idiot",0,0,0,0,1,0\n'
        '"a3","I will find you",0,0,0,1,0,0\n',
        encoding="utf-8",
    )
    items = load_toxic(path=p)
    assert items == [(["nice", "edit", ",", "thanks"], 0), (["you", "idiot"], 1), (["i", "will", "find", "you"], 1)]


def test_zhang_yelp_csv(tmp_path: Path) -> None:
    p = tmp_path / "test.csv.gz"
    p.write_bytes(gzip.compress(b'"1","Bad food.\\nWorse service!"\n"2","Loved it"\n'))
    assert load_yelp(path=p) == [(["bad", "food", ".", "worse", "service", "!"], 0), (["loved", "it"], 1)]


# --------------------------------------------------------------------------- malformed files


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "fname", "data", "line", "match"),
    [
        ("toxic", "t.csv", b'"ok text",0\n"more",1\n"bad label",2\n', 3, "bad label"),
        ("toxic", "t.csv", b'"ok",0\n"three","cols",1\n', 2, "expected 2 columns"),
        ("toxic", "t.csv", b'"multi\nline",0\n"x",yes\n', 3, "bad label"),  # record starts on line 3
        ("toxic", "t.csv", b'"a",0\n"b",1\n"c",0\n"caf\xe9",1\n', 4, "cannot decode"),
        ("toxic", "t.csv", b'"a",0\n\n"b",1\n', 2, "expected 2 columns"),  # blank line = empty record
        ("yelp", "y.txt", b"1 good\n2 what\n", 2, "bad label"),
        ("yelp", "y.txt", b"1 good\n0\n", 2, "expected '<label> <text>'"),
        ("yelp", "y.csv", b'"1","a"\n"3","b"\n', 2, "bad label"),
    ],
)
def test_malformed_files(tmp_path: Path, name: str, fname: str, data: bytes, line: int, match: str) -> None:
    p = _write(tmp_path / fname, data)
    with pytest.raises(DataFormatError, match=match) as err:
        load_text_dataset(name, path=p)  # type: ignore[arg-type]
    assert isinstance(err.value, ValueError) and isinstance(err.value, RnnGuardError)
    assert err.value.line == line and err.value.path == p
    assert f"{p}, line {line}:" in str(err.value)


@pytest.mark.parametrize("name", ["toxic", "yelp"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    p = _write(tmp_path / "empty.csv.gz", gzip.compress(b""))
    with pytest.raises(DataFormatError, match="empty file") as err:
        load_text_dataset(name, path=p)  # type: ignore[arg-type]
    assert err.value.line is None and err.value.path == p


def test_rt_empty_file(tmp_path: Path) -> None:
    _write(tmp_path / "rt-polarity.pos", b"good .\n")
    _write(tmp_path / "rt-polarity.neg", b"")
    with pytest.raises(DataFormatError, match="rt-polarity.neg: empty file"):
        load_text_dataset("rt", path=tmp_path)


def test_unknown_dataset() -> None:
    assert set(DATASETS) == {"rt", "toxic", "yelp"}
    with pytest.raises(UnknownNameError, match="unknown dataset"):
        load_text_dataset("imdb")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- splits


def _toy_items(n_pos: int = 50, n_neg: int = 30) -> list[tuple[list[str], int]]:
    return [([f"p{i}"], 1) for i in range(n_pos)] + [([f"n{i}"], 0) for i in range(n_neg)]


def test_split_deterministic_disjoint_stratified() -> None:
    items = _toy_items()
    labels = [y for _, y in items]
    a = split_indices(labels, seed=3)
    b = split_indices(labels, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], split_indices(labels, seed=4)[k]) for k in a)
    allidx = np.concatenate([a["train"], a["val"], a["test"]])
    assert sorted(allidx.tolist()) == list(range(len(items)))  # disjoint, complete
    counts = {k: Counter(labels[i] for i in v) for k, v in a.items()}
    assert counts == {"train": {1: 40, 0: 24}, "val": {1: 5, 0: 3}, "test": {1: 5, 0: 3}}
    assert len(set(np.array(labels)[a["train"][:10]].tolist())) == 2  # classes interleaved

    s = split_dataset(items, seed=3)
    assert [items[i] for i in a["val"]] == s["val"]
    assert split_dataset(items, seed=3, fractions=(0.5, 0.0, 0.5))["val"] == []
    with pytest.raises(ValueError, match="fractions"):
        split_dataset(items, fractions=(0.8, 0.1, 0.2))


@pytest.mark.shared_data
def test_rt_split_pinned(shared_root: Path) -> None:
    """The default RT split is fixed: changing the algorithm would change published numbers."""
    items = load_text_dataset("rt", root=shared_root)
    idx = split_indices([y for _, y in items], seed=0)
    assert {k: len(v) for k, v in idx.items()} == {"train": 8530, "val": 1066, "test": 1066}
    assert not set(idx["train"]) & set(idx["test"]) and not set(idx["val"]) & set(idx["test"])
    assert idx["test"][:5].tolist() == PINNED_RT_TEST_HEAD


PINNED_RT_TEST_HEAD = [7461, 7744, 9365, 8300, 7747]


# --------------------------------------------------------------------------- empty examples


def test_empty_examples_dropped_and_counted(tmp_path: Path, tiny_glove: GloVe, caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path / "rt-polarity.pos", b"the cat sat\n\nthe mat\ncat\n")
    _write(tmp_path / "rt-polarity.neg", b"sat\n   \nmat the\nthe\n")
    assert sum(1 for t, _ in load_text_dataset("rt", path=tmp_path) if not t) == 2  # loader keeps them
    with caplog.at_level(logging.WARNING, logger="rnnguard.data.text"):
        data = load_text_splits("rt", path=tmp_path, glove=tiny_glove, fractions=(0.5, 0.0, 0.5))
    assert data.n_empty_dropped == 2 and "dropped 2 of 8" in caplog.text
    assert sum(data.counts.values()) == 6 and data.counts["val"] == 0
    assert data["val"].x.shape == (0, 0, 3)
    assert all(int(s.lengths.min()) > 0 for s in data.values() if len(s))


@pytest.mark.shared_data
@pytest.mark.parametrize("name,kind,accuracy", [("lstm32-regular", "lstm", 70.9), ("gru32-regular", "gru", 71.0)])
def test_committed_rt_checkpoint(shared_root: Path, name: str, kind: str, accuracy: float) -> None:
    """models/rt/*.pt (the verifier comparison's text models): 32-unit models whose test accuracy
    on the seeded RT split is the one their README and metadata record."""
    from rnnguard.checkpoints import load_checkpoint

    path = Path(__file__).resolve().parents[2] / "models" / "rt" / f"{name}.pt"
    assert path.stat().st_size < 200_000
    model, extra = load_checkpoint(path)
    cfg, info = model.config(), extra["data"]
    assert (cfg["kind"], cfg["hidden_size"], cfg["num_layers"], info["dataset"], info["max_len"]) == (kind, 32, 1, "rt", 20)
    assert f"{accuracy}% test accuracy" in (path.parent / "README.md").read_text(encoding="utf-8")
    test = load_text_splits("rt", root=shared_root, max_len=info["max_len"], seed=info["seed"])["test"]
    with torch.no_grad():
        acc = float((model(test.x, test.lengths).argmax(1) == test.y).float().mean())
    assert abs(acc - extra["test_accuracy"]) < 1e-6 and round(100 * acc, 1) == accuracy  # 1 text = 9e-4
