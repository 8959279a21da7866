"""Sequence MNIST: the IDX parser (strict on malformed files), frame splitting, the cached
download, the committed checkpoints and R2's correctly-classified subset selection.

Tests on the real files skip when ``../shared/data/mnist`` is absent; everything else builds
its own tiny IDX files."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnguard.data import (
    DataFormatError,
    correctly_classified_subset,
    frames_to_images,
    images_to_frames,
    load_mnist,
    parse_idx,
    read_idx,
    sequence_mnist,
    valid_frame_counts,
)
from rnnguard.data import mnist as mnist_mod
from rnnguard.data import paths as paths_mod
from rnnguard.errors import InvalidInputError

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models" / "mnist"


def _shared_mnist() -> Path | None:
    env = os.environ.get("RNNGUARD_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    return root if (root / "mnist" / "t10k-images-idx3-ubyte.gz").is_file() else None


SHARED = _shared_mnist()
needs_mnist = pytest.mark.skipif(SHARED is None, reason="MNIST not found in the shared data folder")


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def tiny_set(n: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, *, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (img_name, _), (lab_name, _) = mnist_mod.MNIST_FILES[split]
    for name, arr in ((img_name, images), (lab_name, labels)):
        raw = idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw, mtime=0))
        else:
            (folder / name).write_bytes(raw)


# --------------------------------------------------------------------------- IDX parser


def test_parse_idx_round_trip():
    images, labels = tiny_set()
    assert np.array_equal(parse_idx(idx_bytes(images)), images)
    assert np.array_equal(parse_idx(idx_bytes(labels)), labels)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc", "magic"),  # not 0x0000
    (b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc", "magic"),  # unknown element type
    (b"\x00\x00", "too short"),
    (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big"), "dimensions"),  # header cut off
    (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc", "truncated"),
    (b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"abc", "trailing"),
])
def test_parse_idx_rejects_malformed(raw: bytes, reason: str):
    with pytest.raises(DataFormatError, match=reason):
        parse_idx(raw, "bad-file")


def test_read_idx_names_the_file(tmp_path: Path):
    images, _ = tiny_set()
    good = gzip.compress(idx_bytes(images), mtime=0)
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])  # truncated gzip stream
    with pytest.raises(DataFormatError, match=r"cut\.gz.*(corrupt|truncated)"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "short-idx3-ubyte").write_bytes(idx_bytes(images)[:-10])  # truncated IDX data
    with pytest.raises(DataFormatError, match=r"short-idx3-ubyte.*truncated") as info:
        read_idx(tmp_path / "short-idx3-ubyte")
    assert info.value.path == tmp_path / "short-idx3-ubyte"


def test_load_mnist_from_root_gz_and_plain(tmp_path: Path):
    images, labels = tiny_set(4)
    write_split(tmp_path / "mnist", "test", images, labels, gz=True)
    got_images, got_labels = load_mnist("test", root=tmp_path, download=False)
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    assert not got_images.flags.writeable  # shared through the in-process cache
    write_split(tmp_path / "plain", "train", images[:2], labels[:2], gz=False)
    assert load_mnist("train", root=tmp_path / "plain", download=False)[0].shape == (2, 28, 28)


def test_load_mnist_checks_shapes_and_labels(tmp_path: Path):
    images, labels = tiny_set(4)
    write_split(tmp_path / "a" / "mnist", "test", images, labels[:3])
    with pytest.raises(DataFormatError, match=r"t10k-labels-idx1-ubyte\.gz.*3 labels for 4 images"):
        load_mnist("test", root=tmp_path / "a", download=False)
    write_split(tmp_path / "b" / "mnist", "test", images, labels + 10)
    with pytest.raises(DataFormatError, match="outside 0..9"):
        load_mnist("test", root=tmp_path / "b", download=False)
    write_split(tmp_path / "c" / "mnist", "test", images.reshape(4, 784), labels)
    with pytest.raises(DataFormatError, match=r"t10k-images.*\(N, 28, 28\)"):
        load_mnist("test", root=tmp_path / "c", download=False)


def test_load_mnist_missing_and_bad_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="download=False"):
        load_mnist("test", root=tmp_path, download=False)
    with pytest.raises(InvalidInputError, match="'train' or 'test'"):
        load_mnist("val", root=tmp_path)  # type: ignore[arg-type]


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_verifies_content_and_falls_back_to_the_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    images, labels = tiny_set(2)
    raw = {"t10k-images-idx3-ubyte": idx_bytes(images), "t10k-labels-idx1-ubyte": idx_bytes(labels)}
    files = dict(mnist_mod.MNIST_FILES)
    files["test"] = tuple((name, hashlib.sha256(raw[name]).hexdigest()) for name, _ in files["test"])
    monkeypatch.setattr(mnist_mod, "MNIST_FILES", files)
    monkeypatch.setattr(mnist_mod, "MNIST_MIRRORS", ("https://first.example/", "https://second.example/"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls: list[str] = []

    def fake_urlopen(url: str, timeout: float = 0):
        calls.append(url)
        name = url.rsplit("/", 1)[1].removesuffix(".gz")
        if url.startswith("https://first."):  # a broken mirror serving other bytes
            return _FakeResponse(gzip.compress(b"not mnist"))
        return _FakeResponse(gzip.compress(raw[name]))

    monkeypatch.setattr(paths_mod, "_urlopen", fake_urlopen)
    got_images, got_labels = load_mnist("test", root=tmp_path / "empty")
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    assert [c.split("/")[2] for c in calls] == ["first.example", "second.example"] * 2
    assert (tmp_path / "cache" / "rnnguard" / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    calls.clear()
    load_mnist("test", root=tmp_path / "empty")  # now served from the cache
    assert calls == []


# --------------------------------------------------------------------------- frames


def test_valid_frame_counts():
    counts = valid_frame_counts()
    assert {1, 4, 7, 14, 28, 49, 784} <= set(counts)
    assert all(784 % k == 0 for k in counts) and len(counts) == 15


@pytest.mark.parametrize("k", [4, 7, 14, 28, 16])
def test_frames_round_trip(k: int):
    images, _ = tiny_set(3)
    x = images_to_frames(images, k)
    assert x.shape == (3, k, 784 // k) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(torch.round(frames_to_images(x) * 255).to(torch.uint8), torch.from_numpy(images))
    # frame t holds pixels [t * 784/k, (t + 1) * 784/k) in reading order
    flat = torch.from_numpy(images.reshape(3, 784).astype(np.float32)) / 255
    assert torch.equal(x[:, 1], flat[:, 784 // k : 2 * 784 // k])


@pytest.mark.parametrize("k", [0, -4, 3, 5, 785, 2.0, True, "4"])
def test_bad_frame_count_rejected(k):
    images, _ = tiny_set(1)
    with pytest.raises(InvalidInputError, match=r"divide 784.*4, 7, 8, 14"):
        images_to_frames(images, k)


@needs_mnist
def test_real_mnist():
    images, labels = load_mnist("test", root=SHARED, download=False)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x, y = sequence_mnist("test", frames=7, root=SHARED, download=False)
    assert x.shape == (10000, 7, 112) and y.dtype == torch.int64 and y[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.equal(torch.round(frames_to_images(x) * 255).to(torch.uint8), torch.from_numpy(images.copy()))
    with pytest.raises(InvalidInputError, match="divide 784"):
        sequence_mnist("test", frames=5, root=SHARED)


# --------------------------------------------------------------------------- committed checkpoints


R2BAND = "## R2-band models"  # the README section of models/mnist/r2band/*.pt
R2RECIPE = "## R2-recipe models"  # the README section of models/mnist/r2recipe/*.pt
R2_BAND = (95.97, 96.95)  # R2's MNIST models: 96.46 +- 0.49 % test accuracy


def _readme_rows(section: str | None = None) -> dict[str, float]:
    """``name -> test accuracy (%)`` from a table in models/mnist/README.md: the first table
    (``section=None``, models/mnist/*.pt) or the one under the ``section`` heading. The
    accuracy column is found by its header (``test acc %``)."""
    rows: dict[str, float] = {}
    current: str | None = None
    column: int | None = None
    for line in (MODELS / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current, column = line.strip(), None
            continue
        if current != section or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if column is None and "test acc %" in cells:
            column = cells.index("test acc %")
            continue
        m = re.fullmatch(r"`?(\d\dF_\d{3}H_\dL)`?", cells[0])
        if m and column is not None:
            rows[m.group(1)] = float(cells[column].rstrip("%"))
    return rows


CHECKPOINTS = sorted(MODELS.glob("*.pt"))
R2BAND_CHECKPOINTS = sorted((MODELS / "r2band").glob("*.pt"))
R2RECIPE_CHECKPOINTS = sorted((MODELS / "r2recipe").glob("*.pt"))


def _check_committed_checkpoint(path: Path, recorded: float) -> dict:
    from rnnguard.checkpoints import load_checkpoint

    assert path.stat().st_size < 2_000_000
    model, extra = load_checkpoint(path)
    frames, hidden, layers = (int(v) for v in re.findall(r"\d+", path.stem))
    cfg = model.config()
    assert (extra["data"]["frames"], cfg["hidden_size"], cfg["num_layers"], cfg["kind"]) == (frames, hidden, layers, "lstm")
    assert abs(100 * extra["test_accuracy"] - recorded) < 0.01  # the README matches the checkpoint
    x, y = sequence_mnist("test", frames=frames, root=SHARED, download=False)
    with torch.no_grad():
        acc = float((model(x[:500]).argmax(1) == y[:500]).float().mean())
    assert abs(acc - extra["test_accuracy_first_500"]) <= 0.005  # as measured at export (1 image = 0.002)
    assert 100 * acc >= recorded - 2.0, (acc, recorded)  # near the full-test-set accuracy
    return extra


@needs_mnist
@pytest.mark.skipif(not CHECKPOINTS, reason="no committed MNIST checkpoints")
@pytest.mark.parametrize("path", CHECKPOINTS, ids=lambda p: p.stem)
def test_committed_checkpoint(path: Path):
    _check_committed_checkpoint(path, _readme_rows()[path.stem])


@needs_mnist
@pytest.mark.skipif(not R2BAND_CHECKPOINTS, reason="no committed R2-band MNIST checkpoints")
@pytest.mark.parametrize("path", R2BAND_CHECKPOINTS, ids=lambda p: f"r2band-{p.stem}")
def test_committed_r2band_checkpoint(path: Path):
    recorded = _readme_rows(R2BAND)[path.stem]
    assert R2_BAND[0] <= recorded <= R2_BAND[1], recorded  # inside R2's accuracy band
    extra = _check_committed_checkpoint(path, recorded)
    tr = extra["training"]
    assert (tr["method"], tr["lr"] <= 1e-3, tr["batch_size"], tr["seed"]) == ("regular", True, 64, 0)
    assert f"--epochs {tr['epochs']} " in tr["command"] and "--out runs/mnist/r2band/" in tr["command"]
    pgd = extra["pgd_first_100"]
    assert pgd["eps"] == 0.01 and pgd["n"] == 100 and pgd["robust"] + pgd["broken"] == 100


@needs_mnist
@pytest.mark.skipif(not R2RECIPE_CHECKPOINTS, reason="no committed R2-recipe MNIST checkpoints")
@pytest.mark.parametrize("path", R2RECIPE_CHECKPOINTS, ids=lambda p: f"r2recipe-{p.stem}")
def test_committed_r2recipe_checkpoint(path: Path):
    """R2's own training recipe (train_mnist.py: plain SGD, lr 0.5, batch 100, 5 epochs, 48,000 images)."""
    extra = _check_committed_checkpoint(path, _readme_rows(R2RECIPE)[path.stem])
    tr = extra["training"]
    assert (tr["method"], tr["optimizer"], tr["lr"], tr["batch_size"], tr["grad_clip"], tr["epochs"], tr["n_train"],
            tr["seed"]) == ("regular", "sgd", 0.5, 100, None, 5, 48000, 0)
    assert "--optimizer sgd --lr 0.5 --batch-size 100 --grad-clip 0 --epochs 5 --train-limit 48000" in tr["command"]
    pgd = extra["pgd_first_100"]
    assert pgd["eps"] == 0.01 and pgd["n"] == 100 and pgd["robust"] + pgd["broken"] == 100


def test_readme_tables_are_separate():
    """The R2-band and R2-recipe tables do not leak into the 10-epoch one (same names, different models)."""
    main, band, recipe = _readme_rows(), _readme_rows(R2BAND), _readme_rows(R2RECIPE)
    assert {p.stem for p in CHECKPOINTS} <= set(main)
    assert {p.stem for p in R2BAND_CHECKPOINTS} <= set(band)
    assert {p.stem for p in R2RECIPE_CHECKPOINTS} <= set(recipe)
    assert main != recipe and band != recipe
    assert all(R2_BAND[0] <= acc <= R2_BAND[1] for acc in band.values()), band


# --------------------------------------------------------------------------- certified subset


class _Threshold(torch.nn.Module):
    """A fixed 'classifier' predicting class 1 iff the first feature exceeds 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0]))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        s = x[:, -1, 0] * self.w - 0.5
        return torch.stack([-s, s], dim=1)


def test_correctly_classified_subset_is_seeded_and_correct():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(300, 2, 3, generator=gen)
    y = torch.randint(0, 2, (300,), generator=gen)
    model = _Threshold()
    correct = (model(x).argmax(1) == y)
    a = correctly_classified_subset(model, x, y, 40, seed=7, chunk=32)
    b = correctly_classified_subset(model, x, y, 40, seed=7, chunk=100)
    assert torch.equal(a, b) and a.numel() == 40 and len(set(a.tolist())) == 40
    assert bool(correct[a].all())
    order = np.random.default_rng(7).permutation(300)  # the documented order: first 40 correct ones in it
    assert a.tolist() == [int(i) for i in order if correct[i]][:40]
    assert not torch.equal(a, correctly_classified_subset(model, x, y, 40, seed=8))
    first = correctly_classified_subset(model, x, y, 10, seed=None)
    assert first.tolist() == torch.nonzero(correct).flatten()[:10].tolist()
    assert correctly_classified_subset(model, x, y, 10_000, seed=1).numel() == int(correct.sum())
    assert correctly_classified_subset(model, x, y, 0).numel() == 0
