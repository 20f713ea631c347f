"""The lens page on disk: one standalone HTML file (inline CSS and JS, no network), written atomically.

`futurelens.lens.html` renders the page (presentation: templating, escaping, the bidi and font handling);
this module is where it becomes a file, and the file's default name.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import atomic_path

PAGE = "lens.html"
"""The lens page's name in a run folder (`futurelens demo`) and `futurelens lens`'s default ``--out``."""


def save_page(html: str, path: str | os.PathLike) -> Path:
    """Write a rendered page to ``path`` as UTF-8, atomically (a temporary file beside it, then `os.replace`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(html, encoding="utf-8")
    return path
