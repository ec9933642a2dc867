"""Atomic file writes: write beside the target, then rename, so an interrupted run never leaves a
finished-looking file."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager


def _file_mode() -> int:
    """What open() would give a new file (0o666 less the umask); mkstemp makes its files 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()  # read once, at import: changing the umask is process-wide


@contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yield a temporary path in the target's folder; rename it onto ``path`` if the block succeeds.
    ``suffix`` keeps the extension for writers that pick a format from it (imageio, trimesh)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_torch(obj, path: str) -> None:
    import errno
    import shutil

    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch reports a failed write as "[enforce fail at inline_container.cc] ..."
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 2**20
            if "inline_container" not in str(e) and free > 1024:
                raise
            raise OSError(
                errno.ENOSPC, f"could not write {path} (is the disk full? {free:.0f} MB free; torch: {e})"
            ) from e
