"""What keeps `apply` from damaging user files: content hashes, project-root containment, atomic writes."""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from ..errors import UserError


class UnsafePathError(UserError):
    """A fix names a file outside the project root (absolute, `..`, or through a symlink)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    """The hash `Fix.file_sha256` / `patched_sha256` carry: of the file's UTF-8 bytes."""
    return sha256_bytes(text.encode("utf-8", "surrogateescape"))


def decode(data: bytes) -> str:
    # surrogateescape: a stray non-UTF-8 byte round-trips instead of failing or being replaced
    return data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def contained_path(root: Path, rel: str) -> Path:
    """The real file that `rel` names inside `root`, with symlinks resolved; raises UnsafePathError when
    `rel` is absolute, or it or any symlink on its way leads outside the (resolved) root."""
    if not rel or "\0" in rel:
        raise UnsafePathError(f"invalid file name {rel!r}")
    p = Path(rel)
    if p.is_absolute() or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise UnsafePathError(f"{rel}: absolute path; a fix may only name files inside the project root")
    real_root = Path(os.path.realpath(root))
    target = Path(os.path.realpath(real_root / p))
    if target != real_root and real_root not in target.parents:
        raise UnsafePathError(f"{rel}: resolves to {target}, outside the project root {real_root}")
    return target


def atomic_write(path: Path, data: bytes):
    """Replace `path`'s content by `data` so that a crash leaves either the old or the new file, never a
    partial one; keeps the file's permission bits."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npa-tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
