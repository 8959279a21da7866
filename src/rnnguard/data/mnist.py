"""MNIST as a sequence task: each 28x28 image is read row by row and cut into ``k`` frames.

This is the image-as-sequence setup of POPQORN (Ko et al., 2019) and R2: the 784 pixels, in
reading order and scaled to ``[0, 1]``, are split into ``k`` consecutive frames of ``784 / k``
pixels (``k = 4``: frames of 7 rows; ``k = 28``: one row per frame). Perturbations are then
per-pixel ``l_inf`` balls clipped to ``[0, 1]``.

Files are the original IDX files (``train-images-idx3-ubyte`` etc., gzipped or not) in
``<data root>/mnist/`` (see :func:`~rnnguard.data.paths.resolve_data_root`), else in
``<user cache>/mnist/``, where :func:`load_mnist` downloads them when allowed. The IDX parser is
strict: a wrong magic number, an unknown element type or a size that does not match the header
raises :class:`~rnnguard.data.errors.DataFormatError` naming the file.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from rnnguard.errors import InvalidInputError

from .errors import DataFormatError
from .paths import download as _download
from .paths import resolve_data_root, user_cache_dir

__all__ = [
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "MNIST_PIXELS",
    "MnistSplit",
    "correctly_classified_subset",
    "frames_to_images",
    "images_to_frames",
    "load_mnist",
    "parse_idx",
    "read_idx",
    "sequence_mnist",
    "valid_frame_counts",
]

logger = logging.getLogger(__name__)

MnistSplit = Literal["train", "test"]
#: Pixels per image (28 x 28).
MNIST_PIXELS = 784
_SIDE = 28
#: Canonical location first, then a widely used mirror with the same files.
MNIST_MIRRORS: tuple[str, ...] = (
    "http://yann.lecun.com/exdb/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
#: split -> ((images file, SHA-256 of its *uncompressed* bytes), (labels file, SHA-256)).
#: Digests of the uncompressed content, so that re-compressed copies verify too (their
#: MD5s are the published 6bbc9ace..., a25bea73..., 2646ac64..., 27ae3e4e...).
MNIST_FILES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "train": (
        ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    ),
    "test": (
        ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ),
}
# IDX element type code -> big-endian numpy dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------- IDX format


def parse_idx(raw: bytes, origin: str | os.PathLike[str] = "<bytes>") -> np.ndarray:
    """Decode one IDX file (uncompressed bytes) into a read-only array of its declared shape.

    Header: two zero bytes, an element-type byte, the number of dimensions ``n``, then ``n``
    big-endian uint32 sizes; the data must fill the rest of the file exactly.
    """
    if len(raw) < 4:
        raise DataFormatError(origin, None, f"IDX file too short ({len(raw)} bytes) for a header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataFormatError(origin, None, f"bad IDX magic number 0x{raw[:4].hex()} "
                                            "(expected 0x0000TTNN with a known element type TT)")
    ndim = raw[3]
    start = 4 + 4 * ndim
    if ndim == 0 or len(raw) < start:
        raise DataFormatError(origin, None, f"IDX header declares {ndim} dimensions but the file "
                                            f"has only {len(raw)} bytes")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataFormatError(origin, None, f"IDX file {what}: header {shape} x {dtype.itemsize} byte(s) "
                                            f"needs {expected} bytes, found {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=start).reshape(shape)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gunzipping it first when it starts with the gzip magic bytes."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            raise DataFormatError(path, None, f"corrupt or truncated gzip data ({e})") from None
    return parse_idx(raw, path)


# --------------------------------------------------------------------------- files


def _find_file(folders: list[Path], name: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    return None


def _download_verified(name: str, sha256: str, cache: Path) -> Path:
    """Fetch ``name.gz`` from the first mirror that works, checking the uncompressed digest."""
    errors = []
    for base in MNIST_MIRRORS:
        dest = cache / f"{name}.gz"
        try:
            path = _download(base + f"{name}.gz", dest)
        except OSError as e:
            errors.append(f"{base}: {e}")
            continue
        try:
            digest = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
        except (OSError, EOFError, zlib.error) as e:
            digest = f"unreadable ({e})"
        if digest == sha256:
            return path
        path.unlink()
        errors.append(f"{base}: wrong content (SHA-256 {digest})")
    raise FileNotFoundError(f"could not download MNIST file {name}.gz: " + "; ".join(errors))


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=4)
def _load_pair_cached(images_path: Path, labels_path: Path, _stamps: tuple) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (_SIDE, _SIDE):
        raise DataFormatError(images_path, None, f"expected uint8 images of shape (N, 28, 28), "
                                                 f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataFormatError(labels_path, None, f"expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataFormatError(labels_path, None, f"{labels.shape[0]} labels for {images.shape[0]} images "
                                                 f"in {images_path.name}")
    if labels.size and labels.max() > 9:
        raise DataFormatError(labels_path, None, f"label {int(labels.max())} outside 0..9")
    return images, labels


def load_mnist(split: MnistSplit = "train", root: str | os.PathLike[str] | None = None, *,
               download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 (N, 28, 28)`` and labels ``uint8 (N,)`` of the ``train`` (60,000) or
    ``test`` (10,000) split, as read-only arrays cached in-process.

    Looks in ``<data root>/mnist/``, ``<data root>/`` and ``<user cache>/mnist/`` for
    ``<name>`` or ``<name>.gz``; if a file is missing and ``download`` is true, fetches it into
    the user cache (``MNIST_MIRRORS``) and checks its content digest.
    """
    if split not in MNIST_FILES:
        raise InvalidInputError(f"MNIST split must be 'train' or 'test'; got {split!r}")
    data_root = resolve_data_root(root)
    cache = user_cache_dir() / "mnist"
    folders = [data_root / "mnist", data_root, cache]
    paths = []
    for name, sha256 in MNIST_FILES[split]:
        path = _find_file(folders, name)
        if path is None:
            if not download:
                raise FileNotFoundError(f"MNIST file {name}(.gz) not found in {[str(f) for f in folders]} "
                                        "and download=False; set RNNGUARD_DATA or pass root=")
            path = _download_verified(name, sha256, cache)
        paths.append(path.resolve())
    images, labels = _load_pair_cached(paths[0], paths[1], (_stamp(paths[0]), _stamp(paths[1])))
    logger.debug("MNIST %s: %s from %s", split, images.shape, paths[0])
    return images, labels


# --------------------------------------------------------------------------- sequences


def valid_frame_counts() -> tuple[int, ...]:
    """Every ``k`` that splits the 784 pixels into equal frames (the divisors of 784)."""
    return tuple(k for k in range(1, MNIST_PIXELS + 1) if MNIST_PIXELS % k == 0)


def _check_frames(frames: object) -> int:
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1 \
            or MNIST_PIXELS % int(frames) != 0:
        raise InvalidInputError(f"MNIST frames must divide 784 (one of {', '.join(map(str, valid_frame_counts()))}); "
                                f"got {frames!r}")
    return int(frames)


def images_to_frames(images: np.ndarray | torch.Tensor, frames: int) -> torch.Tensor:
    """``uint8`` images ``(N, 28, 28)`` -> float32 frames ``(N, frames, 784 // frames)`` in ``[0, 1]``
    (pixels in reading order, row after row)."""
    k = _check_frames(frames)
    shape = tuple(images.shape)
    if len(shape) != 3 or shape[1:] != (_SIDE, _SIDE):
        raise InvalidInputError(f"expected images of shape (N, 28, 28), got {shape}")
    if isinstance(images, torch.Tensor):
        t = images.to(torch.float32) / 255.0
    else:  # a fresh float array: the (read-only) cached uint8 array is never shared with torch
        t = torch.from_numpy(np.asarray(images).astype(np.float32) / np.float32(255.0))
    return t.reshape(shape[0], k, MNIST_PIXELS // k)


def frames_to_images(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`images_to_frames`: frames ``(N, k, 784 // k)`` -> images ``(N, 28, 28)``."""
    if x.dim() != 3 or x.shape[1] * x.shape[2] != MNIST_PIXELS:
        raise InvalidInputError(f"expected frames of shape (N, k, 784 // k), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], _SIDE, _SIDE)


def sequence_mnist(split: MnistSplit = "train", frames: int = 4, root: str | os.PathLike[str] | None = None, *,
                   download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` as sequences: ``x`` float32 ``(N, frames, 784 // frames)`` in ``[0, 1]`` and
    ``y`` int64 ``(N,)``. ``frames`` must divide 784 (4, 7, 14, 28, ...)."""
    k = _check_frames(frames)
    images, labels = load_mnist(split, root, download=download)
    return images_to_frames(images, k), torch.from_numpy(labels.astype(np.int64))


# --------------------------------------------------------------------------- evaluation subsets


@torch.no_grad()
def correctly_classified_subset(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int, *,
                                seed: int | None = 0, lengths: torch.Tensor | None = None,
                                chunk: int = 512) -> torch.Tensor:
    """Indices of the first ``n`` samples, in a seeded order, that ``model`` classifies correctly.

    R2's protocol certifies only correctly classified test inputs: ``seed=None`` walks the data
    in order ("the first 100 correctly classified images"), an integer seed walks
    ``np.random.default_rng(seed).permutation(N)`` ("randomly sampled"), so the same seed
    gives the same subset on every machine. Fewer than ``n`` indices come back when the data
    has fewer correct samples. Predictions use the model's own forward pass, in eval mode.
    """
    if n < 0:
        raise InvalidInputError(f"n must be >= 0; got {n}")
    N = int(x.shape[0])
    order = np.arange(N) if seed is None else np.random.default_rng(seed).permutation(N)
    order_t = torch.from_numpy(order.astype(np.int64))
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    picked: list[torch.Tensor] = []
    found = 0
    try:
        for s in range(0, N, chunk):
            if found >= n:
                break
            idx = order_t[s : s + chunk]
            xb = x[idx].to(device=param.device, dtype=param.dtype)
            lb = None if lengths is None else lengths[idx].to(param.device)
            pred = model(xb, lb) if lb is not None else model(xb)
            ok = idx[(pred.argmax(dim=1).cpu() == y[idx])]
            picked.append(ok[: n - found])
            found += int(picked[-1].numel())
    finally:
        model.train(was_training)
    return torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long)
