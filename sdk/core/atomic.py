"""Crash-safe file writes: fsync the data, rename over the target, fsync the folder."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_file(path: Path, data: bytes) -> None:
    """Write and fsync a new file (its folder is fsynced by whoever publishes it)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` so that a crash leaves the old content or the new, never a mix."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
