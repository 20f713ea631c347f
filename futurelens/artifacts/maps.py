"""State maps (model A -> model B, `futurelens.mapping`) on disk: ``futurelens-map/1``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import atomic_path
from ..errors import FutureLensError
from ..secrets import safe_config

if TYPE_CHECKING:
    import torch


MAP_FORMAT = "futurelens-map/1"
MAP_KEY = "map"
"""The tensor name of a state map file (``[d_A + 1, d_B]``, `futurelens.mapping`)."""


def map_path(folder: str | os.PathLike, layer_a: int, layer_b: int) -> Path:
    """``<folder>/maps/layer-<layer_a>-to-<layer_b>.safetensors``: in a subfolder, so a prompts folder's
    ``*.safetensors`` stay prompts."""
    return Path(folder) / "maps" / f"layer-{layer_a}-to-{layer_b}.safetensors"


@dataclass
class MapInfo:
    """What a state map belongs to; `load_map` checks every field."""

    source_model: str
    target_model: str
    layer_a: int
    layer_b: int
    source_data: str
    """`data_fingerprint` of A's cache."""
    data: str
    """`data_fingerprint` of B's cache."""
    settings: dict = field(default_factory=dict)

    def metadata(self) -> dict[str, str]:
        from .. import __version__

        return {"format": MAP_FORMAT, "source_model": self.source_model, "target_model": self.target_model,
                "layer_a": str(self.layer_a), "layer_b": str(self.layer_b), "source_data": self.source_data,
                "data": self.data, "settings": json.dumps(safe_config(self.settings), sort_keys=True),
                "futurelens": __version__}


def save_map(path: str | os.PathLike, w: "torch.Tensor", info: MapInfo) -> Path:
    """Write a state map ``[d_A + 1, d_B]`` with its `MapInfo` as safetensors metadata (atomic)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({MAP_KEY: w.detach().float().contiguous()}, tmp, metadata=info.metadata())
    return path


def load_map(path: str | os.PathLike, expected: MapInfo) -> "torch.Tensor":
    """A state map, refused with what to do unless it belongs to ``expected``'s models, layers, data and settings."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as h:
            meta = dict(h.metadata() or {})
            w = h.get_tensor(MAP_KEY)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: name it
        raise FutureLensError(f"Cannot read the state map {path}: {e}. Delete it to refit.") from e
    if meta.get("format") != MAP_FORMAT:
        raise FutureLensError(f"{path} is not a futurelens state map (format {meta.get('format')!r}, expected {MAP_FORMAT!r}).")
    want = expected.metadata()
    wrong = [k for k in ("source_model", "target_model", "layer_a", "layer_b", "source_data", "data", "settings")
             if meta.get(k) != want[k]]
    if wrong:
        found = ", ".join(f"{k} {meta.get(k)!r} (expected {want[k]!r})" for k in wrong)
        raise FutureLensError(
            f"{path} maps other states ({found}): it belongs to other models, layers or data. Use another --out, "
            "or delete it to refit."
        )
    return w.float()


