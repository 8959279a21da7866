"""Where data files live, and a small cached downloader.

The project is offline-first: every loader reads local files and only falls back
to a download when nothing usable is found locally. :func:`resolve_data_root`
fixes the single place a loader looks, in this order:

1. the explicit ``root`` argument;
2. the environment variable ``RNNGUARD_DATA``;
3. a ``shared/data`` folder found as ``../shared/data`` relative to the current
   working directory, or relative to the git checkout that contains this package
   (developer convenience: a checkout next to a ``shared/`` folder just works);
4. the user cache directory (``$XDG_CACHE_HOME/rnnguard`` or ``~/.cache/rnnguard``),
   which is also where :func:`download` puts files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

__all__ = ["ENV_VAR", "resolve_data_root", "user_cache_dir", "download"]

logger = logging.getLogger(__name__)

#: Environment variable that overrides the data root.
ENV_VAR = "RNNGUARD_DATA"

# Indirection so tests can substitute the network opener.
_urlopen: Callable[..., Any] = urllib.request.urlopen


def user_cache_dir() -> Path:
    """Per-user cache folder for rnnguard: ``$XDG_CACHE_HOME/rnnguard`` or ``~/.cache/rnnguard``.

    Not created here; :func:`download` creates what it needs.
    """
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rnnguard"


def _package_checkout() -> Path | None:
    """The git working tree containing this source file, or ``None`` (e.g. an installed wheel)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / ".git").exists():  # a directory, or a file in worktrees/submodules
            return parent
    return None


def _shared_data_candidates() -> list[Path]:
    candidates = [Path.cwd().parent / "shared" / "data"]
    checkout = _package_checkout()
    if checkout is not None:
        candidates.append(checkout.parent / "shared" / "data")
    return candidates


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder that data loaders read from (see the module docstring for the order).

    An explicit ``root`` or ``RNNGUARD_DATA`` is returned as given (user-expanded), even
    if it does not exist, so that a typo fails loudly in the loader with the path in the
    message instead of silently falling back to another folder.
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    for candidate in _shared_data_candidates():
        if candidate.is_dir():
            return candidate.resolve()
    return user_cache_dir()


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    *,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` unless a (verified) copy is already there; return the file path.

    ``dest`` may be a file path or an existing directory (the file name is then taken
    from the URL). The transfer streams into a temporary file in the destination folder
    and is renamed into place only when complete and, if ``sha256`` is given, verified;
    a cached file whose digest does not match is downloaded again. Raises ``OSError``
    (``urllib.error.URLError``) when the network is unreachable and ``ValueError`` on a
    digest mismatch.
    """
    dest = Path(dest).expanduser()
    if dest.is_dir():
        name = Path(urllib.parse.urlparse(url).path).name
        if not name:
            raise ValueError(f"cannot derive a file name from URL {url!r}; pass a file path as dest")
        dest = dest / name
    expected = sha256.lower() if sha256 else None
    if dest.is_file():
        if expected is None or _sha256_file(dest) == expected:
            logger.debug("using cached %s", dest)
            return dest
        logger.warning("cached %s has a wrong SHA-256; downloading it again", dest)

    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s -> %s", url, dest)
    h = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, _urlopen(url, timeout=timeout) as response:
            while True:
                block = response.read(1 << 20)
                if not block:
                    break
                h.update(block)
                out.write(block)
        digest = h.hexdigest()
        if expected is not None and digest != expected:
            raise ValueError(f"SHA-256 mismatch for {url}: expected {expected}, got {digest}")
        os.replace(tmp, dest)  # same folder: an atomic rename
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest
