"""The bigram (n-gram) baseline's table on disk: one safetensors file, its settings as JSON in the metadata.

Tensors: ``unigram [V]`` and per N ``n<N>.offsets``, ``n<N>.ids``, ``n<N>.counts``, ``n<N>.totals`` (the sparse
successor table `futurelens.methods.ngram.NGram` builds); metadata ``futurelens``: ``{"kind": "futurelens.ngram", "n_max",
"vocab_size", "keep"}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_path
from ..errors import FutureLensError

if TYPE_CHECKING:
    import torch

NGRAM_KIND = "futurelens.ngram"


def save_ngram(path: str | os.PathLike, tensors: dict[str, "torch.Tensor"], settings: dict[str, Any]) -> Path:
    """Write an n-gram table atomically; ``settings`` (``n_max``, ``vocab_size``, ``keep``) go into the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"kind": NGRAM_KIND, **settings}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"futurelens": json.dumps(meta)})
    return path


def read_ngram(path: str | os.PathLike) -> tuple[dict[str, "torch.Tensor"], dict[str, Any]]:
    """``(tensors, settings)`` of a file `save_ngram` wrote; anything else is refused, naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FutureLensError(f"No n-gram table at {path}: fit one and save it there first.")
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("futurelens", "{}"))
        if meta.get("kind") != NGRAM_KIND:
            raise FutureLensError(f"{path} is not a futurelens n-gram table (written by NGram.save).")
        tensors = {name: fh.get_tensor(name) for name in list(fh.keys())}  # a safe_open handle is not iterable
    return tensors, meta
