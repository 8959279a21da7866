"""Data-root resolution order and the cached downloader (no network: file:// and fakes)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from rnnguard.data import ENV_VAR, download, resolve_data_root, user_cache_dir
from rnnguard.data import paths as paths_mod


@pytest.fixture()
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No env override, no checkout next to shared/, cwd and cache inside tmp_path."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(paths_mod, "_package_checkout", lambda: None)
    (tmp_path / "nowhere" / "cwd").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "nowhere" / "cwd")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def test_explicit_root_beats_env(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(isolated / "from_env"))
    assert resolve_data_root(isolated / "explicit") == isolated / "explicit"
    assert resolve_data_root(str(isolated / "explicit")) == isolated / "explicit"


def test_env_beats_shared_folder(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / "nowhere" / "shared" / "data").mkdir(parents=True)
    monkeypatch.setenv(ENV_VAR, str(isolated / "from_env"))
    assert resolve_data_root() == isolated / "from_env"


def test_shared_folder_next_to_cwd(isolated: Path) -> None:
    shared = isolated / "nowhere" / "shared" / "data"
    shared.mkdir(parents=True)
    assert resolve_data_root() == shared.resolve()


def test_shared_folder_next_to_checkout(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = isolated / "co" / "shared" / "data"
    shared.mkdir(parents=True)
    (isolated / "co" / "repo").mkdir()
    monkeypatch.setattr(paths_mod, "_package_checkout", lambda: isolated / "co" / "repo")
    assert resolve_data_root() == shared.resolve()


def test_cache_fallback_xdg(isolated: Path) -> None:
    assert resolve_data_root() == isolated / "xdg" / "rnnguard"
    assert user_cache_dir() == isolated / "xdg" / "rnnguard"


def test_cache_fallback_home(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(isolated / "home"))
    assert resolve_data_root() == isolated / "home" / ".cache" / "rnnguard"


def test_download_file_url_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src" / "payload.bin"
    src.parent.mkdir()
    src.write_bytes(b"hello data" * 1000)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out_dir = tmp_path / "cache"
    out_dir.mkdir()
    got = download(src.as_uri(), out_dir, sha256=digest)
    assert got == out_dir / "payload.bin" and got.read_bytes() == src.read_bytes()

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("cached file must not be downloaded again")

    monkeypatch.setattr(paths_mod, "_urlopen", no_network)
    assert download(src.as_uri(), out_dir, sha256=digest) == got
    assert download("https://example.invalid/payload.bin", got) == got  # no digest: any file is a hit
    assert list(out_dir.iterdir()) == [got]  # no temporary files left


def test_download_redownloads_bad_cache_and_checks_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"x" * 5000
    calls: list[str] = []

    def fake_open(url: str, timeout: float) -> io.BytesIO:
        calls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(paths_mod, "_urlopen", fake_open)
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"stale")
    good = hashlib.sha256(payload).hexdigest()
    assert download("https://example.invalid/f.bin", dest, sha256=good).read_bytes() == payload
    assert len(calls) == 1

    other = tmp_path / "g.bin"
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        download("https://example.invalid/g.bin", other, sha256="0" * 64)
    assert not other.exists() and not list(tmp_path.glob("*.part"))
