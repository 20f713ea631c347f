"""Where an artifact came from (`Source`, `PromptSet`), and the Hugging Face hub: hub ids and `pull`."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import FutureLensError
from ..secrets import redact

PROMPT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
"""Files a prompt may come in: futurelens' safetensors, or any single tensor (``torch.save`` or safetensors)."""
MANIFEST = "futurelens.json"
"""What a pushed repository holds (model, layers, data, files), at its root."""

_HUB_ID = re.compile(r"^(?:hf:)?([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@([\w./-]+))?$")


@dataclass(frozen=True)
class Source:
    """Where loaded artifacts came from: shown in the lens page's header and recorded beside results."""

    kind: str
    """``package`` (shipped with futurelens), ``folder``, ``file``, ``tensor`` (a bare tensor file, the
    authors' format), ``hub``, ``memory`` (tensors given in Python) or ``fixed`` (the fixed text prompt)."""
    location: str = ""
    """The folder, file or hub repo id."""
    revision: str | None = None
    """For the hub: the commit the files were read at."""
    layers: tuple[int, ...] = ()
    note: str = ""

    def describe(self) -> str:
        layers = _layer_span(self.layers)
        at = f" ({layers})" if layers else ""
        note = f"; {self.note}" if self.note else ""
        if self.kind == "package":
            return f"learned prompts shipped with futurelens{at}: {self.location}{note}"
        if self.kind == "hub":
            return f"learned prompts from the Hugging Face hub{at}: {self.location} @ {self.revision or 'unknown revision'}{note}"
        if self.kind == "folder":
            return f"learned prompts from the folder {self.location}{at}{note}"
        if self.kind == "file":
            return f"learned prompt file {self.location}{at}{note}"
        if self.kind == "tensor":
            return f"bare tensor file {self.location} (the authors' format){at}{note}"
        if self.kind == "fixed":
            return f"fixed text prompt{note}"
        return f"soft prompts given in memory{at}{note}"

    def to_dict(self) -> dict:
        return {**asdict(self), "layers": list(self.layers), "description": self.describe()}


def _layer_span(layers: Sequence[int]) -> str:
    layers = sorted(layers)
    if not layers:
        return ""
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}..{layers[-1]}"
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(map(str, layers))


def source_layers(keys: Any) -> tuple[int, ...]:
    """The layers states are read at, from `PromptSet` keys (``L`` or ``(L, L')``)."""
    return tuple(sorted({k if isinstance(k, int) else k[0] for k in keys}))


class PromptSet(dict):
    """``{layer: soft prompt [P, d_model]}`` as `load_prompts` returns it, plus where it came from.

    A plain dict everywhere a dict goes; ``.source`` is a `Source`, ``.meta[layer]`` each file's metadata.
    A prompt trained to receive a layer-L state at another layer L' (Patchscopes' target layer,
    ``futurelens train --target-layers``) is keyed ``(L, L')``; `select_target` picks those of one L'.
    """

    source: Source
    meta: dict

    def __init__(self, prompts: dict | None = None, source: Source | None = None, meta: dict | None = None):
        super().__init__(prompts or {})
        self.source = source if source is not None else Source("memory", layers=source_layers(self))
        self.meta = meta or {}


def hub_id(location: str | os.PathLike) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` if ``location`` names a hub repo rather than an existing local path, else None.

    ``hf:owner/name[@rev]`` always means the hub; ``owner/name[@rev]`` does when no such path exists here
    and it does not end like a file (``.pt``, ``.safetensors`` ...).
    """
    text = str(location)
    match = _HUB_ID.match(text)
    if match is None:
        return None
    if not text.startswith("hf:") and (Path(text).exists() or text.lower().endswith(PROMPT_SUFFIXES + (".json", ".csv"))):
        return None
    return match.group(1), match.group(2)


def pull(repo_id: str, revision: str | None = None, allow_patterns: Sequence[str] | None = None) -> tuple[Path, str | None]:
    """Download (or reuse from the hub cache) a snapshot of ``repo_id``: ``(local folder, commit it resolved to)``.

    The commit is the snapshot folder's name (the hub cache lays snapshots out as
    ``models--owner--name/snapshots/<commit>/``); with no such name, the revision asked for.
    """
    import huggingface_hub

    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=list(allow_patterns) if allow_patterns else None,
            library_name="futurelens",
        )
    except Exception as err:  # noqa: BLE001 - offline, no such repo or revision, network: one message
        where = f"{repo_id}@{revision}" if revision else repo_id
        raise FutureLensError(
            f"Could not fetch {where} from the Hugging Face hub ({type(err).__name__}: {redact(str(err))[:400]}). "
            f"If you meant a local path, {where} does not exist here; for a private repo set HF_TOKEN."
        ) from err
    folder = Path(folder)
    resolved = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else revision
    return folder, resolved


