"""Atomic file writes: a file either has its old content or its complete new content, never half of it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block completes.

    The temporary file lives in the same folder (so the final `os.replace` is an atomic
    rename on one filesystem) and is named ``.<name>-*<suffix>``: pass the real suffix when
    the writer picks its format from it (matplotlib, pandas).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; an output should be readable like any other file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
