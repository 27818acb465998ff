"""Crash-safe file writes: a file either exists complete or not at all."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable


def atomic_write(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write to a temporary file beside ``path``, then rename over it. ``data`` may be an
    iterable of chunks (a large file streamed without holding it whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                for chunk in data:
                    f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_exclusive(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data`` in one step, or raise FileExistsError: written to a
    temporary file, then hard-linked into place. Created empty and then written, it could be
    read empty by another process starting at the same moment."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    tmp.write_bytes(data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: exclusive create, then write
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    finally:
        tmp.unlink(missing_ok=True)


def to_json(obj: Any, indent: int | None = 2) -> str:
    """JSON text as every metadata file has it (sorted keys, numpy values as plain numbers)."""
    return json.dumps(obj, indent=indent, sort_keys=True, default=_jsonable)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (to_json(obj) + "\n").encode())


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` as ``dst`` (no second encode, no second copy on disk); copy where
    the filesystem has no hard links. Replaces ``dst`` atomically either way."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no stray temporary file when the copy or rename fails
        raise


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
