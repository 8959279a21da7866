"""Text-classification datasets (RT, Jigsaw toxic, Yelp polarity) as GloVe frame tensors.

Pipeline: ``load_text_dataset`` reads a file into ``(tokens, label)`` examples (strict:
any malformed record raises :class:`DataFormatError` with file and line; nothing is
skipped), ``split_dataset`` cuts a seeded, label-stratified train/val/test split, and
``load_text_splits`` embeds each split with raw GloVe vectors (see
:mod:`rnnguard.data.embeddings`) into :class:`TensorSplit` tensors. Examples whose
token list is empty are dropped only there, and counted.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from rnnguard.errors import UnknownNameError

from .embeddings import GloVe, _read_bytes, embed_tokens, load_glove
from .errors import DataFormatError
from .paths import resolve_data_root

__all__ = [
    "Example",
    "DatasetName",
    "SPLITS",
    "DATASETS",
    "RT_FILES",
    "TOXIC_DEFAULT",
    "YELP_DEFAULT",
    "KAGGLE_LABELS",
    "tokenize",
    "load_rt",
    "load_toxic",
    "load_yelp",
    "load_text_dataset",
    "split_indices",
    "split_dataset",
    "TensorSplit",
    "TextClassificationData",
    "load_text_splits",
]

logger = logging.getLogger(__name__)

#: One example: its tokens and its integer label.
Example = tuple[list[str], int]
DatasetName = Literal["rt", "toxic", "yelp"]
SPLITS: tuple[str, str, str] = ("train", "val", "test")

#: ``(file name, label)`` pairs of the RT sentence-polarity dataset.
RT_FILES: tuple[tuple[str, int], ...] = (("rt-polarity.pos", 1), ("rt-polarity.neg", 0))
#: Default toxic file, relative to the data root (RobTest balanced Jigsaw subset).
TOXIC_DEFAULT = "jigsaw/robtest_jigsaw_balanced_test.csv.gz"
#: Default Yelp file, relative to the data root (TextFooler's 1,000 Yelp-polarity examples).
YELP_DEFAULT = "yelp/textfooler_yelp_polarity_1000.txt.gz"
#: Kaggle Jigsaw label columns; the binary label is 1 when any of them is 1.
KAGGLE_LABELS: tuple[str, ...] = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")

# Words, PTB-style clitics (don't -> do n't, it's -> it 's, as in GloVe 6B's vocabulary)
# and single punctuation characters.
_TOKEN_RE = re.compile(r"\w+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words, clitics and single punctuation marks.

    ``"Don't SHOUT!!"`` -> ``["do", "n't", "shout", "!", "!"]``. Used for raw text (Jigsaw,
    Zhang's Yelp CSV); already tokenised corpora (RT, TextFooler Yelp) are split on
    whitespace instead, so their tokenisation is kept as published.
    """
    return _TOKEN_RE.findall(text.lower())


# --------------------------------------------------------------------------- file reading


def _read_text(path: Path, encoding: str) -> str:
    """Whole file (gzip detected by magic bytes) decoded strictly; errors name the line."""
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    raw = _read_bytes(path)
    if not raw.strip():
        raise DataFormatError(path, None, "empty file")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataFormatError(path, line, f"cannot decode as {encoding}: {e.reason}") from None


def _lines(path: Path, encoding: str) -> list[str]:
    """Physical lines (split on LF only, trailing CR removed); line ``i`` is ``lines[i - 1]``."""
    lines = _read_text(path, encoding).split("\n")
    if lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _csv_rows(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, list[str]]]:
    """``(first physical line, fields)`` for each CSV record (quoted fields may span lines)."""
    reader = csv.reader(io.StringIO(_read_text(path, encoding), newline=""))
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataFormatError(path, start, f"CSV error: {e}") from None
        yield start, row


def _binary_label(path: Path, line: int, value: str, allowed: Mapping[str, int]) -> int:
    label = allowed.get(value.strip())
    if label is None:
        raise DataFormatError(path, line, f"bad label {value!r} (expected one of {sorted(allowed)})")
    return label


_BIN = {"0": 0, "1": 1}


# --------------------------------------------------------------------------- datasets


def load_rt(root: str | os.PathLike[str] | None = None, path: str | os.PathLike[str] | None = None) -> list[Example]:
    """Rotten Tomatoes sentence polarity v1.0 (Pang & Lee 2005): 5,331 positive + 5,331 negative.

    ``path`` (default ``<data root>/rt-polarity``) is the folder with ``rt-polarity.pos`` and
    ``rt-polarity.neg``. The files are **Latin-1** (byte 0xE9 = "é"), already lower-cased and
    tokenised, so tokens are ``line.split()`` (Python whitespace, which includes the C1 byte
    0x85 used as an ellipsis in a few lines). Label 1 = positive, 0 = negative; positives come
    first, in file order. A blank line yields an example with no tokens.
    """
    folder = Path(path).expanduser() if path is not None else resolve_data_root(root) / "rt-polarity"
    if folder.is_file():
        raise NotADirectoryError(f"rt expects the folder holding rt-polarity.pos/.neg, got file {folder}")
    items: list[Example] = []
    for name, label in RT_FILES:
        items.extend((line.lower().split(), label) for line in _lines(folder / name, "latin-1"))
    return items


def load_toxic(root: str | os.PathLike[str] | None = None, path: str | os.PathLike[str] | None = None) -> list[Example]:
    """Jigsaw toxic comments, binary (1 = toxic).

    Default file: ``<data root>/jigsaw/robtest_jigsaw_balanced_test.csv.gz`` (12,180 rows,
    6,090 per class; a *subset* of Kaggle's data). ``path`` may name any UTF-8 CSV (optionally
    gzip'd) in one of two layouts, recognised by the first row:

    * headerless ``text,label`` (RobTest, ``wfa_toxic_test.csv.gz``), label 0/1;
    * Kaggle's header ``id,comment_text,toxic,severe_toxic,obscene,threat,insult,identity_hate``
      (``train.csv``, ``kaggle_schema_sample_*.csv.gz``): label = 1 if any of the label
      columns present is 1. A header without label columns (Kaggle ``test.csv``) is an error.

    Text is tokenised with :func:`tokenize`.
    """
    p = Path(path).expanduser() if path is not None else resolve_data_root(root) / TOXIC_DEFAULT
    rows = _csv_rows(p)
    first = next(rows, None)
    if first is None:
        raise DataFormatError(p, None, "no rows")
    header_line, header = first
    names = [h.strip().lower() for h in header]
    if "comment_text" in names or names == ["text", "label"]:
        text_col = names.index("comment_text") if "comment_text" in names else names.index("text")
        if "label" in names:
            label_cols = [names.index("label")]
        else:
            label_cols = [names.index(c) for c in KAGGLE_LABELS if c in names]
        if not label_cols:
            raise DataFormatError(
                p, header_line,
                f"header has no label column (need 'label' or any of {list(KAGGLE_LABELS)}); "
                "Kaggle's test.csv is unlabelled",
            )
        width, data = len(names), rows
    else:
        text_col, label_cols, width, data = 0, [1], 2, itertools.chain([first], rows)
    items: list[Example] = []
    for line, row in data:
        if len(row) != width:
            raise DataFormatError(p, line, f"expected {width} columns, got {len(row)}")
        labels = [_binary_label(p, line, row[c], _BIN) for c in label_cols]
        items.append((tokenize(row[text_col]), int(any(labels))))
    if not items:
        raise DataFormatError(p, None, "no data rows")
    return items


def load_yelp(root: str | os.PathLike[str] | None = None, path: str | os.PathLike[str] | None = None) -> list[Example]:
    """Yelp review polarity (Zhang et al. 2015), binary (1 = positive).

    Default file: ``<data root>/yelp/textfooler_yelp_polarity_1000.txt.gz``, lines
    ``<label> <text>`` with label 0/1 (518 neg / 482 pos; a *subset*), text already
    lower-cased and tokenised by TextFooler, so tokens are whitespace-split. A ``path``
    whose name contains ``.csv`` is read as Zhang's original CSV ``"class","text"`` (class
    1 = negative -> 0, 2 = positive -> 1), tokenised with :func:`tokenize`. In both, the
    literal two-character sequence ``\\n`` (an escaped newline) is treated as whitespace.
    """
    p = Path(path).expanduser() if path is not None else resolve_data_root(root) / YELP_DEFAULT
    items: list[Example] = []
    if ".csv" in p.suffixes:
        for line, row in _csv_rows(p):
            if len(row) != 2:
                raise DataFormatError(p, line, f"expected 2 columns (class, text), got {len(row)}")
            label = _binary_label(p, line, row[0], {"1": 0, "2": 1})
            items.append((tokenize(row[1].replace("\\n", " ")), label))
    else:
        for line, text in enumerate(_lines(p, "utf-8"), start=1):
            label_s, sep, body = text.partition(" ")
            if not sep:
                raise DataFormatError(p, line, "expected '<label> <text>'")
            items.append((body.replace("\\n", " ").lower().split(), _binary_label(p, line, label_s, _BIN)))
    if not items:
        raise DataFormatError(p, None, "no data rows")
    return items


#: Registry of dataset loaders: ``name -> loader(root=None, path=None) -> list[Example]``.
DATASETS: dict[str, Callable[..., list[Example]]] = {"rt": load_rt, "toxic": load_toxic, "yelp": load_yelp}


def load_text_dataset(
    name: DatasetName,
    *,
    root: str | os.PathLike[str] | None = None,
    path: str | os.PathLike[str] | None = None,
) -> list[Example]:
    """All examples of dataset ``name`` as ``(tokens, label)``; see the loaders in :data:`DATASETS`."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise UnknownNameError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None
    return loader(root=root, path=path)


# --------------------------------------------------------------------------- splits


def split_indices(
    labels: Sequence[int] | np.ndarray,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict[str, np.ndarray]:
    """Seeded, label-stratified train/val/test indices.

    One permutation ``perm = np.random.default_rng(seed).permutation(n)`` fixes everything:
    for each label, its examples taken in ``perm`` order go ``round(f_train * n_c)`` to train,
    the next ``round(f_val * n_c)`` to val and the rest to test; each split lists its
    indices in ``perm`` order (so classes are interleaved). Same labels + seed + fractions
    give the same split on every platform; the three index sets are disjoint and cover all.
    """
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or (f < 0).any() or abs(f.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    y = np.asarray(labels)
    n = y.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    rank = np.empty(n, dtype=np.int64)
    rank[perm] = np.arange(n)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in SPLITS}
    for c in np.unique(y):
        members = perm[y[perm] == c]
        m = members.size
        n_train = int(np.floor(f[0] * m + 0.5))
        n_val = min(int(np.floor(f[1] * m + 0.5)), m - n_train)
        parts["train"].append(members[:n_train])
        parts["val"].append(members[n_train : n_train + n_val])
        parts["test"].append(members[n_train + n_val :])
    out: dict[str, np.ndarray] = {}
    for k in SPLITS:
        idx = np.concatenate(parts[k]) if parts[k] else np.empty(0, dtype=np.int64)
        out[k] = idx[np.argsort(rank[idx], kind="stable")].astype(np.int64)
    return out


def split_dataset(
    items: Sequence[Example],
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict[str, list[Example]]:
    """Split examples into ``{"train", "val", "test"}`` lists with :func:`split_indices`."""
    idx = split_indices([label for _, label in items], seed=seed, fractions=fractions)
    return {k: [items[i] for i in v] for k, v in idx.items()}


# --------------------------------------------------------------------------- tensors


@dataclass
class TensorSplit:
    """One split as model inputs: ``x`` float32 ``(N, T, dim)`` raw GloVe frames (zeros after
    ``lengths[i]``), ``lengths`` int64 ``(N,)``, ``y`` int64 ``(N,)``, and the (truncated)
    token lists, so that ``sentences[i][t]`` is the word embedded at ``x[i, t]``."""

    x: torch.Tensor
    lengths: torch.Tensor
    y: torch.Tensor
    sentences: list[list[str]]

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if not (self.lengths.shape == (n,) and self.y.shape == (n,) and len(self.sentences) == n):
            raise ValueError("x, lengths, y and sentences must have the same length")

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(eq=False)
class TextClassificationData(Mapping[str, TensorSplit]):
    """The ``train``/``val``/``test`` :class:`TensorSplit` s of a dataset (a read-only mapping),
    plus what was done to build them: ``n_empty_dropped`` examples had no tokens and were
    removed before splitting; ``n_types``/``n_oov_types`` count distinct tokens and those
    missing from GloVe (they get deterministic random vectors)."""

    name: str
    splits: dict[str, TensorSplit]
    glove_source: str
    dim: int
    max_len: int | None
    seed: int
    oov_seed: int
    n_empty_dropped: int = 0
    n_types: int = 0
    n_oov_types: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, key: str) -> TensorSplit:
        return self.splits[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.splits)

    def __len__(self) -> int:
        return len(self.splits)


def load_text_splits(
    name: DatasetName,
    *,
    root: str | os.PathLike[str] | None = None,
    path: str | os.PathLike[str] | None = None,
    max_len: int | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    oov_seed: int = 0,
    glove: GloVe | None = None,
    dim: int = 50,
) -> TextClassificationData:
    """Load dataset ``name``, drop (and count, with a warning) examples without tokens,
    split it with :func:`split_dataset` and embed every split with the same GloVe table and
    ``oov_seed`` via :func:`~rnnguard.data.embeddings.embed_tokens`.

    ``glove`` defaults to ``load_glove(root, dim)``. ``max_len=None`` keeps whole texts; long
    corpora (toxic, yelp) then pad to their longest text, so pass a ``max_len`` there.
    """
    items = load_text_dataset(name, root=root, path=path)
    kept = [it for it in items if it[0]]
    n_dropped = len(items) - len(kept)
    if n_dropped:
        logger.warning("%s: dropped %d of %d examples with no tokens", name, n_dropped, len(items))
    if glove is None:
        glove = load_glove(root, dim=dim)
    types = {tok for tokens, _ in kept for tok in tokens}
    n_oov = sum(1 for tok in types if tok not in glove.index)
    splits: dict[str, TensorSplit] = {}
    for split, part in split_dataset(kept, seed=seed, fractions=fractions).items():
        sentences = [tokens[:max_len] if max_len is not None else tokens for tokens, _ in part]
        x, lengths = embed_tokens(glove, sentences, max_len=max_len, oov_seed=oov_seed)
        y = torch.tensor([label for _, label in part], dtype=torch.int64)
        splits[split] = TensorSplit(x=x, lengths=lengths, y=y, sentences=sentences)
    return TextClassificationData(
        name=name,
        splits=splits,
        glove_source=glove.source,
        dim=glove.dim,
        max_len=max_len,
        seed=seed,
        oov_seed=oov_seed,
        n_empty_dropped=n_dropped,
        n_types=len(types),
        n_oov_types=n_oov,
        counts={k: len(v) for k, v in splits.items()},
    )
