"""Downloading data files: atomic, checksummed, with a progress bar; unpacking archives safely.

Users have internet; the build machines do not. Tests exercise this code on ``file://`` URLs of files the
tests write themselves, so the same code path runs as for a real download.

Glossary
    data_home   where downloads and imported user data sets go ($LOCALITY_DATA_DIR or ~/.local/share/...)
    offline     LOCALITY_OFFLINE=1: never touch the network, fail with a message saying how to get the files
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from locality_core import settings
from locality_core.data.base import DatasetError


def data_home() -> Path:
    """Where downloads and imported user data sets go: $LOCALITY_DATA_DIR or ~/.local/share/locality-explorer."""
    return settings.DATA_DIR.path() or Path.home() / ".local" / "share" / "locality-explorer"


def offline() -> bool:
    return settings.OFFLINE.flag()


def file_md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def download(url: str, dest: Path, md5: str | None, *, progress: bool = True, timeout: float = 30.0) -> Path:
    """Fetch ``url`` to ``dest`` (written to a temporary name, checked, then renamed).

    A file already at ``dest`` with the right checksum is kept. A checksum mismatch deletes the partial
    download and raises DatasetError; so does any network failure, with the URL in the message.
    """
    dest = Path(dest)
    if dest.exists() and (md5 is None or file_md5(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"could not download {url}: {exc}. Check your internet connection, or place "
                           f"the file at {dest} yourself.") from exc
    if md5 is not None:
        got = file_md5(tmp)
        if got != md5:
            tmp.unlink(missing_ok=True)
            raise DatasetError(f"checksum mismatch for {url}: expected md5 {md5}, got {got}. The download "
                               "was corrupted or the file changed upstream; nothing was kept.")
    os.replace(tmp, dest)
    return dest


def check_tar_members(members: list[tarfile.TarInfo], *, max_bytes: int, max_members: int = 10_000) -> None:
    """Refuse an archive with links, devices, absolute or ``..`` paths, too many members or too many bytes."""
    if len(members) > max_members:
        raise DatasetError(f"archive holds {len(members)} entries, more than the {max_members} expected; refused.")
    total = 0
    for m in members:
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
            raise DatasetError(f"archive entry {m.name!r} is a link, a device or points outside the folder; "
                               "refused (the archive is not the expected one).")
        total += m.size
    if total > max_bytes:
        raise DatasetError(f"archive would unpack to {total:,} bytes, more than the {max_bytes:,} expected; refused.")


def _extract_checked(tar: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path) -> None:
    """Write ``members`` (already passed by `check_tar_members`) under ``dest``.

    With tarfile's "data" filter where Python has it (3.11.4 on; Debian 12's 3.11.2 has not). Without it, the
    same effect by hand: only files and folders (the checks refused the rest), each inside ``dest``, written with
    this process's default permissions and owner (never the archive's modes, owners or times)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, members=members, filter="data")
        return
    root = dest.resolve()
    root.mkdir(parents=True, exist_ok=True)
    for member in members:
        target = (root / member.name).resolve()
        if not target.is_relative_to(root):
            raise DatasetError(f"archive entry {member.name!r} points outside the folder; refused.")
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with tar.extractfile(member) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)


def extract_tar(archive: Path, dest: Path, *, max_bytes: int, max_members: int = 10_000) -> Path:
    """Unpack ``archive`` (any tar compression) into ``dest`` after checking every entry; atomic per call.

    The archive is unpacked into a temporary sibling folder that is renamed into place only when complete.
    """
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            check_tar_members(members, max_bytes=max_bytes, max_members=max_members)
            _extract_checked(tar, members, tmp)
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetError(f"{archive} is not a readable archive ({exc}); delete it and download it again.") from exc
    except DatasetError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dest.mkdir(parents=True, exist_ok=True)
    for child in tmp.iterdir():
        target = dest / child.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(child, target)
    tmp.rmdir()
    return dest
