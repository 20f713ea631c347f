"""Fitted probes on disk (``futurelens-probe/1``) and the data fingerprint they are checked against."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import atomic_path
from ..errors import FutureLensError
from ..secrets import safe_config
from .checkpoint import load_checkpoint, save_checkpoint
from .source import MANIFEST, Source, hub_id, pull

if TYPE_CHECKING:
    import torch

    from ..data.states import StateCache

PROBE_FORMAT = "futurelens-probe/1"
PROBE_KINDS = ("vocab", "linear", "mlp")
"""``vocab``: the direct vocabulary probe (`VocabProbe`); ``linear``: the linear model approximation (`LinearApprox`);
``mlp``: the residual-MLP probe read by the model's own head (`MLPProbe`)."""


PROBES_DIR = "probes"
"""The folder of fitted probes inside an eval folder (`futurelens eval --out`), unless --probes names another."""


def data_fingerprint(cache: "StateCache") -> str:
    """What a fitted method belongs to: the cache's model, tokenizer, dataset, dtype, and its train rows' targets.

    A sha256 (16 hex digits) of the cache settings that decide the train states (model, tokenizer hash,
    the dataset's build settings and size, dtype, n_max) and of every train row's ids, targets and last token,
    read from the shards (cheap: no states are read). The same dataset cached again, with any set of layers,
    gives the same fingerprint; another dataset, model or dtype does not.
    """
    s = cache.settings
    digest = hashlib.sha256()
    identity = {k: s.get(k) for k in ("model", "tokenizer_hash", "dataset", "dtype", "n_max")}
    if s.get("source_model"):  # a `futurelens.mapping.MappedCache`: B's rows, A's states
        identity["source_model"] = s["source_model"]
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
    for batch in cache.batches(None, "train", batch_size=1 << 30):
        for t in (batch.row, batch.target, batch.last_token):
            digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def probe_path(folder: str | os.PathLike, kind: str, layer: int) -> Path:
    """``<folder>/<kind>-layer-<layer>.safetensors`` (kind ``vocab``, ``linear`` or ``mlp``)."""
    if kind not in PROBE_KINDS:
        raise FutureLensError(f"Unknown probe kind {kind!r}: choose from {', '.join(PROBE_KINDS)}.")
    return Path(folder) / f"{kind}-layer-{layer}.safetensors"


def probe_checkpoint_path(folder: str | os.PathLike, kind: str, layer: int) -> Path:
    """The resumable checkpoint of a fit in progress, beside where the finished probe goes."""
    return Path(folder) / f"{kind}-layer-{layer}.ckpt.pt"


def kept_fits(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """``(finished probes, fit checkpoints)`` in ``folder`` (both empty when it is no folder): what a killed
    evaluation kept, and a re-run reuses."""
    folder = Path(folder)
    if not folder.is_dir():
        return [], []
    return sorted(folder.glob("*-layer-*.safetensors")), sorted(folder.glob("*-layer-*.ckpt.pt"))


@dataclass
class ProbeInfo:
    """What a fitted probe belongs to; its reader checks every field."""

    kind: str
    model: str
    layer: int
    data: str
    """`data_fingerprint` of the cache it was fitted on."""
    settings: dict = field(default_factory=dict)
    """The fit's settings (epochs, lr, ridge alpha ...)."""

    def metadata(self) -> dict[str, str]:
        from .. import __version__

        return {"format": PROBE_FORMAT, "kind": self.kind, "model": self.model, "layer": str(self.layer),
                "data": self.data, "settings": json.dumps(safe_config(self.settings), sort_keys=True),
                "futurelens": __version__}


def save_probe(path: str | os.PathLike, tensors: dict[str, "torch.Tensor"], info: ProbeInfo) -> Path:
    """Write a fitted probe's tensors with its `ProbeInfo` as safetensors metadata (atomic)."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp, metadata=info.metadata())
    return path


def read_probe(path: str | os.PathLike) -> tuple[dict[str, "torch.Tensor"], dict]:
    """``(tensors, metadata)`` of a probe file, unchecked (``layer`` int, ``settings`` parsed)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as h:
            meta = dict(h.metadata() or {})
            tensors = {k: h.get_tensor(k) for k in h.keys()}
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: name it
        raise FutureLensError(f"Cannot read the fitted probe {path}: {e}. Delete it to refit.") from e
    if meta.get("format") != PROBE_FORMAT:
        raise FutureLensError(f"{path} is not a futurelens probe (format {meta.get('format')!r}, expected {PROBE_FORMAT!r}).")
    meta["layer"] = int(meta["layer"])
    meta["settings"] = json.loads(meta.get("settings", "{}"))
    return tensors, meta


def load_probe(path: str | os.PathLike, expected: ProbeInfo) -> dict[str, "torch.Tensor"]:
    """A fitted probe's tensors, refused with a clear message unless it belongs to ``expected``'s model, layer,
    data and settings."""
    path = Path(path)
    tensors, meta = read_probe(path)
    what = "--probes folder (or --out)"
    if meta["kind"] != expected.kind:
        raise FutureLensError(f"{path} is a {meta['kind']!r} probe, not {expected.kind!r}.")
    if meta["model"] != expected.model:
        raise FutureLensError(
            f"{path} was fitted on {meta['model']!r}, not {expected.model!r}: a probe only means something to its own "
            f"model. Use another {what}, or delete the file to refit."
        )
    if meta["layer"] != expected.layer:
        raise FutureLensError(f"{path} was fitted at layer {meta['layer']}, not {expected.layer}: use another {what}.")
    if meta["data"] != expected.data:
        raise FutureLensError(
            f"{path} was fitted on other data (fingerprint {meta['data']}; this cache's is {expected.data}): "
            f"use another {what}, or delete the file to refit on this cache."
        )
    wanted = safe_config(expected.settings)
    if meta["settings"] != json.loads(json.dumps(wanted, sort_keys=True)):
        changed = sorted(k for k in set(meta["settings"]) | set(wanted) if meta["settings"].get(k) != wanted.get(k))
        raise FutureLensError(
            f"{path} was fitted with other settings ({', '.join(changed)} differ): use another {what}, or delete it to refit."
        )
    return tensors


def probes_folder(location: str | os.PathLike, revision: str | None = None) -> tuple[Path, Source]:
    """A folder of fitted probes: a local path, or a hub id (its ``probes/``), with its `Source`."""
    hub = hub_id(location)
    if hub is None:
        return Path(location), Source("folder", str(location))
    repo, rev = hub
    folder, resolved = pull(repo, revision or rev, allow_patterns=["probes/*", MANIFEST])
    return (folder / "probes" if (folder / "probes").is_dir() else folder), Source("hub", repo, resolved)


def load_fit_checkpoint(path: Path | None, settings: dict) -> dict | None:
    """An unfinished fit's checkpoint (``torch.save``d dict with its ``settings``) if there is one for these settings;
    one for other settings is refused, naming the file."""
    if path is None:
        return None
    return load_checkpoint(path, settings, "of a fit", "use another --probes folder, or delete it", map_location="cpu")


def save_fit_checkpoint(path: Path | None, blob: dict) -> None:
    """Write an unfinished fit's checkpoint atomically (nothing when ``path`` is None)."""
    if path is not None:
        save_checkpoint(path, blob)
