"""Resumable checkpoints: a ``torch.save``d dict that carries the ``settings`` it was made under, written atomically.

A long fit or training keeps one beside where its finished artifact goes (a soft prompt's ``layer-<L>.ckpt.pt``,
a probe fit's ``<kind>-layer-<L>.ckpt.pt``) and deletes it once that artifact is written; a re-run with the same
settings resumes from it, one with other settings is refused, naming the file. Python objects (optimizer state)
travel inside, so it is read with ``weights_only=False``: only a checkpoint futurelens wrote is ever opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..errors import FutureLensError


def save_checkpoint(path: str | os.PathLike, blob: dict) -> None:
    """Write ``blob`` (with its ``settings``) to ``path`` atomically: a kill leaves the previous checkpoint whole."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load_checkpoint(path: str | os.PathLike, settings: dict, what: str, fix: str,
                    map_location: Any = None) -> dict | None:
    """The checkpoint at ``path`` if there is one made under ``settings`` (None if there is none); one made under
    other settings is a `FutureLensError`: ``"<path> is a checkpoint <what> with other settings: <fix>."``"""
    path = Path(path)
    if not path.exists():
        return None
    import torch

    saved = torch.load(path, weights_only=False, map_location=map_location)
    if saved.get("settings") != settings:
        raise FutureLensError(f"{path} is a checkpoint {what} with other settings: {fix}.")
    return saved


def checkpoint_field(path: str | os.PathLike, name: str) -> Any:
    """One field of a checkpoint (e.g. training's position ``state``) for a note, or None if it cannot be read."""
    try:
        import torch

        return torch.load(path, weights_only=False, map_location="cpu")[name]
    except Exception:  # noqa: BLE001 - a note only: the stage itself checks the checkpoint when it resumes
        return None
