"""Verified downloads shared by every dataset of the library.

``fetch`` streams a URL into a temporary file in the destination folder, checks its sha256
and only then renames it onto the destination, so a failed or corrupt download never leaves
a file behind. ``resolve_data_dir`` decides where data files live:

1. the ``data_dir`` argument (the ``--data-dir`` option of the command line),
2. else the environment variable ``MAMBAMIXER_DATA``,
3. else ``~/.cache/mambamixer/data``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from mambamixer.io import atomic_write

__all__ = ["DATA_ENV_VAR", "DEFAULT_DATA_DIR", "fetch", "resolve_data_dir", "sha256_file"]

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "MAMBAMIXER_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/mambamixer/data")
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
# Errors of the network side of a download (disk errors are left to propagate as they are).
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: ``data_dir``, else ``$MAMBAMIXER_DATA``, else ``~/.cache/mambamixer/data``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR.expanduser()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected(sha256: str | Sequence[str] | None) -> tuple[str, ...]:
    if sha256 is None:
        return ()
    digests = (sha256,) if isinstance(sha256, str) else tuple(sha256)
    return tuple(d.strip().lower() for d in digests)


def _check(path: str | os.PathLike, expected: tuple[str, ...], what: str) -> None:
    """Raise ``ValueError`` when ``path``'s sha256 is none of ``expected`` (no-op if empty)."""
    if not expected:
        return
    got = sha256_file(path)
    if got not in expected:
        want = expected[0] if len(expected) == 1 else " or ".join(expected)
        raise ValueError(f"sha256 mismatch for {what}: expected {want}, got {got}")


def _offline_message(url: str, dest: Path, err: BaseException) -> str:
    return (
        f"could not download {url} ({type(err).__name__}: {err}).\n"
        f"Looked for the file at {dest} (data folder {dest.parent}).\n"
        f"To get it by hand: download {url} on a machine with network access and put it at {dest}, "
        f"or put it into another folder and point the library at that folder with the environment "
        f"variable {DATA_ENV_VAR} or the --data-dir option (data_dir= in Python)."
    )


def _download(url: str, fh, desc: str) -> None:
    """Stream ``url`` into the open binary file ``fh`` with a progress bar."""
    request = urllib.request.Request(url, headers={"User-Agent": "mambamixer"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:  # noqa: S310 (https/file only)
        length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        total = int(length) if length and str(length).isdigit() else None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=None) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                fh.write(chunk)
                bar.update(len(chunk))


def fetch(
    url: str,
    dest: str | os.PathLike,
    sha256: str | Sequence[str] | None,
    *,
    decompress: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying its sha256; returns ``dest``.

    ``sha256`` is the expected hex digest of the file written at ``dest`` (after
    decompression), or a sequence of accepted digests (mirrors that differ only in line
    endings), or ``None`` to skip verification with a logged warning. ``decompress="gzip"``
    gunzips the download before it is verified and written.

    An existing ``dest`` is verified and returned without downloading (a mismatch raises
    ``ValueError`` and leaves the file untouched). A checksum mismatch of the download
    raises ``ValueError`` naming the expected and obtained digests and leaves nothing
    behind. A network failure raises ``FileNotFoundError`` saying where the file was looked
    for, the URL, and how to provide the file by hand.
    """
    dest = Path(dest).expanduser()
    if decompress not in (None, "gzip"):
        raise ValueError(f"decompress must be None or 'gzip', got {decompress!r}")
    expected = _expected(sha256)
    if dest.is_file():
        try:
            _check(dest, expected, str(dest))
        except ValueError as err:
            raise ValueError(
                f"{err}. The existing file {dest} is corrupt or a different version: delete it to "
                f"download it again from {url}."
            ) from None
        return dest
    if not expected:
        logger.warning("no sha256 known for %s: downloading %s without verification", dest.name, url)

    def write(tmp: str) -> None:
        try:
            if decompress is None:
                with open(tmp, "wb") as fh:
                    _download(url, fh, dest.name)
            else:
                with open(tmp + ".gz", "wb") as fh:
                    _download(url, fh, dest.name)
                try:
                    with gzip.open(tmp + ".gz", "rb") as src, open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
                except (OSError, EOFError) as err:
                    raise ValueError(f"{url} is not a valid gzip file ({err})") from err
        except _NETWORK_ERRORS as err:
            raise FileNotFoundError(_offline_message(url, dest, err)) from err
        finally:
            if decompress is not None and os.path.exists(tmp + ".gz"):
                os.unlink(tmp + ".gz")
        _check(tmp, expected, f"{url} (download discarded, nothing was written to {dest})")

    return atomic_write(dest, write)
