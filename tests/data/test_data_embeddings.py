"""GloVe loading (real 6B.50d, classic text files) and token -> frame embedding."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnguard.data import DataFormatError, GloVe, embed_tokens, load_glove, oov_vector

SRC = Path(__file__).resolve().parents[2] / "src"


# --------------------------------------------------------------------------- real GloVe


@pytest.mark.shared_data
def test_real_glove_shape_and_first_row(glove: GloVe, shared_root: Path) -> None:
    assert glove.vectors.shape == (400000, 50) and glove.vectors.dtype == np.float32
    assert len(glove.words) == 400000 and glove.dim == 50
    assert glove.index["the"] == 0 and glove.words[0] == "the"
    np.testing.assert_array_equal(glove.vectors[0, :4], np.float32([0.418, 0.24968, -0.41242, 0.1217]))
    assert glove.vectors[0, -1] == np.float32(-0.78581)
    k, q = glove.vectors[glove.index["king"]], glove.vectors[glove.index["queen"]]
    assert abs(float(k @ q / np.linalg.norm(k) / np.linalg.norm(q)) - 0.784) < 1e-3
    assert not glove.vectors.flags.writeable  # shared through the cache
    assert load_glove(shared_root, download=False) is glove  # in-process cache
    assert load_glove(path=shared_root / "glove" / "glove.6B.50d.npz") is glove
    assert load_glove(path=shared_root / "glove") is glove


@pytest.mark.shared_data
def test_real_glove_wrong_dim_not_found(shared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_glove(shared_root, dim=7, download=False)


# --------------------------------------------------------------------------- classic text format

TINY = "the 0.1 0.2 0.3\ncat -1 2.5 0\nsat 1e-2 4 -5\n"


def test_classic_txt(tmp_path: Path) -> None:
    p = tmp_path / "tiny.txt"
    p.write_text(TINY, encoding="utf-8")
    g = load_glove(path=p, dim=3)
    assert g.words == ["the", "cat", "sat"] and g.index == {"the": 0, "cat": 1, "sat": 2}
    np.testing.assert_array_equal(g.vectors, np.float32([[0.1, 0.2, 0.3], [-1, 2.5, 0], [0.01, 4, -5]]))
    assert load_glove(path=p, dim=3) is g
    with pytest.raises(ValueError, match="dimension 3"):
        load_glove(path=p, dim=50)


def test_classic_txt_gz_with_header_and_odd_tokens(tmp_path: Path) -> None:
    p = tmp_path / "tiny.txt.gz"
    text = "4 3\n" + TINY + "a\u2028b 7 8 9\n"  # word2vec header; U+2028 inside a token
    p.write_bytes(gzip.compress(text.encode("utf-8")))
    g = load_glove(path=p, dim=3)
    assert g.words[-1] == "a\u2028b" and g.vectors.shape == (4, 3)


def test_classic_txt_folder_lookup(tmp_path: Path) -> None:
    (tmp_path / "glove.6B.3d.txt").write_text(TINY, encoding="utf-8")
    assert load_glove(path=tmp_path, dim=3).words == ["the", "cat", "sat"]
    assert load_glove(root=tmp_path, dim=3, download=False).words == ["the", "cat", "sat"]


@pytest.mark.parametrize(
    ("content", "line"),
    [
        ("the 0.1 0.2 0.3\ncat 1 2\nsat 1 2 3\n", 2),  # too few values
        ("the 0.1 0.2 0.3\ncat 1 2 3\nsat 1 x 3\n", 3),  # not a number
    ],
)
def test_malformed_glove_txt(tmp_path: Path, content: str, line: int) -> None:
    p = tmp_path / f"bad{line}.txt"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        load_glove(path=p, dim=3)
    assert err.value.line == line and err.value.path == p.resolve()
    assert f"line {line}" in str(err.value) and p.name in str(err.value)


def test_missing_glove_no_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError):
        load_glove(root=tmp_path, dim=3, download=False)
    with pytest.raises(FileNotFoundError):
        load_glove(path=tmp_path / "missing.txt", dim=3)


# --------------------------------------------------------------------------- embedding


def test_embed_shapes_padding_lengths(tiny_glove: GloVe) -> None:
    sents = [["the", "cat", "sat"], ["mat"], ["cat", "the"]]
    x, lengths = embed_tokens(tiny_glove, sents)
    assert x.dtype == torch.float32 and lengths.dtype == torch.int64
    assert x.shape == (3, 3, 3) and lengths.tolist() == [3, 1, 2]
    v = torch.from_numpy(tiny_glove.vectors)
    assert torch.equal(x[0], v[[0, 1, 2]])  # raw vectors, no normalisation
    assert torch.equal(x[1, 0], v[3]) and torch.equal(x[2, :2], v[[1, 0]])
    pad = torch.arange(3)[None, :] >= lengths[:, None]
    assert torch.all(x[pad] == 0) and torch.all(x[~pad].abs().sum(-1) > 0)


def test_embed_truncation_and_fixed_t(tiny_glove: GloVe) -> None:
    x, lengths = embed_tokens(tiny_glove, [["the", "cat", "sat", "mat"], ["sat"]], max_len=2)
    assert x.shape == (2, 2, 3) and lengths.tolist() == [2, 1]
    assert torch.equal(x[0], torch.from_numpy(tiny_glove.vectors[[0, 1]]))  # first max_len tokens
    x, lengths = embed_tokens(tiny_glove, [["the"], ["sat"]], max_len=5)
    assert x.shape == (2, 5, 3) and torch.all(x[:, 1:] == 0)
    with pytest.raises(ValueError):
        embed_tokens(tiny_glove, [["the"]], max_len=0)


def test_embed_rejects_empty_sentences(tiny_glove: GloVe) -> None:
    with pytest.raises(ValueError, match="empty"):
        embed_tokens(tiny_glove, [["the"], []])


def test_oov_deterministic(tiny_glove: GloVe) -> None:
    x1, _ = embed_tokens(tiny_glove, [["the", "zorp"], ["blah", "zorp", "zorp"]])
    x2, _ = embed_tokens(tiny_glove, [["zorp"]])  # another batch / split
    zorp = x1[0, 1]
    assert torch.equal(x1[1, 1], zorp) and torch.equal(x1[1, 2], zorp) and torch.equal(x2[0, 0], zorp)
    assert not torch.equal(x1[1, 0], zorp)  # different words, different vectors
    assert torch.all(zorp.abs() <= 0.1) and torch.any(zorp != 0)
    x3, _ = embed_tokens(tiny_glove, [["zorp"]], oov_seed=1)
    assert not torch.equal(x3[0, 0], zorp)
    np.testing.assert_array_equal(zorp.numpy(), oov_vector("zorp", 3, 0))


def test_oov_uniform_range() -> None:
    v = np.stack([oov_vector(f"w{i}", 50) for i in range(200)])
    assert v.dtype == np.float32 and v.min() >= -0.1 and v.max() < 0.1
    assert abs(float(v.mean())) < 0.01 and 0.05 < float(v.std()) < 0.065  # U(-0.1, 0.1): std 0.0577


def test_oov_stable_across_processes() -> None:
    """Independent of PYTHONHASHSEED and of the process (pinned values)."""
    code = "from rnnguard.data.embeddings import oov_vector; print(oov_vector('xyzzy', 3, 0).tolist())"
    env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(oov_vector("xyzzy", 3, 0).tolist())
    np.testing.assert_allclose(
        oov_vector("xyzzy", 3, 0), [-0.0629262626171112, -0.09902974963188171, -0.05582050979137421], rtol=1e-6
    )


@pytest.mark.shared_data
def test_embed_real_glove(glove: GloVe) -> None:
    x, lengths = embed_tokens(glove, [["the", "qwzxqwzx"], ["good"]])
    assert x.shape == (2, 2, 50)
    assert x[0, 0, 0].item() == pytest.approx(0.418)
    assert torch.equal(x[1, 0], torch.tensor(glove.vectors[glove.index["good"]]))
    assert torch.all(x[1, 1] == 0)


# --------------------------------------------------------------------------- Stanford zip (offline)


def _tiny_zip(path: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("glove.6B.3d.txt", TINY)
    return path


def test_zip_converted_to_cached_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    g = load_glove(path=_tiny_zip(tmp_path / "glove.6B.zip"), dim=3)
    cache = tmp_path / "xdg" / "rnnguard" / "glove"
    assert (cache / "glove.6B.3d.npz").is_file() and (cache / "glove.6B.3d.vocab.txt.gz").is_file()
    assert g.words == ["the", "cat", "sat"] and g.source == str((cache / "glove.6B.3d.npz").resolve())
    with pytest.raises(FileNotFoundError, match="glove.6B.7d.txt"):
        load_glove(path=tmp_path / "glove.6B.zip", dim=7)


def test_download_fallback_uses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The download branch, with the network replaced by a local copy."""
    import shutil

    from rnnguard.data import embeddings

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    src = _tiny_zip(tmp_path / "upstream.zip")
    calls: list[str] = []

    def fake_download(url: str, dest: Path, sha256: str | None = None) -> Path:
        calls.append(url)
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
        return Path(dest)

    monkeypatch.setattr(embeddings, "_download", fake_download)
    (tmp_path / "empty_root").mkdir()
    g = load_glove(root=tmp_path / "empty_root", dim=3)
    assert calls == [embeddings.GLOVE_6B_URL] and g.words == ["the", "cat", "sat"]
    assert load_glove(root=tmp_path / "empty_root", dim=3) is g and len(calls) == 1  # now cached on disk
