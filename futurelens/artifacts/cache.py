"""The hidden-state cache on disk: a folder of safetensors shards and one index, every file written atomically.

Layout::

    cache.json                      settings, model, tokenizer hash, dataset fingerprint, shard list
    train/shard-00000.safetensors   layer.<L> [rows, d]   one tensor per cached layer
                                    final     [rows, n_max + 1, d]  last layer over the continuation
                                    target    [rows, n_max + 1]     the model's continuation (targets)
                                    last_token [rows]               the prefix's last token
                                    row       [rows]                row index in the dataset table
    test/...

``cache.json`` (`INDEX`, format `FORMAT`) also records each shard's ``bytes`` and ``sha256`` as it is written, so a
shard is never trusted blindly: `verify_shard` checks an existing one against its record (or, for one written
just before a kill, structurally with `shard_problem`, then records it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_path

if TYPE_CHECKING:
    import torch

INDEX = "cache.json"
FORMAT = 2
"""Index format: 2 records each shard's ``bytes`` and ``sha256`` (format 1 caches are read and verified structurally)."""


def layer_key(layer: int) -> str:
    """The name of a shard's tensor of ``layer``'s states: ``layer.<L>``."""
    return f"layer.{layer}"


def shard_keys(layers: list[int]) -> set[str]:
    """Every tensor a shard of a cache of ``layers`` holds (the layout above)."""
    return {layer_key(layer) for layer in layers} | {"final", "target", "last_token", "row"}


def shard_file(split: str, k: int) -> str:
    """The ``k``-th shard of ``split``, relative to the cache folder: ``<split>/shard-<k:05d>.safetensors``."""
    return f"{split}/shard-{k:05d}.safetensors"


def kept_shards(folder: str | os.PathLike) -> list[Path]:
    """The finished shard files in a cache folder (none when it is no folder): what a killed build kept."""
    folder = Path(folder)
    return sorted(folder.glob("*/shard-*.safetensors")) if folder.is_dir() else []


def stale_temporaries(folder: Path, splits: list[str]) -> list[Path]:
    """Half-written temporaries a killed build left (the index's or a shard's, `futurelens.atomic`)."""
    return [*folder.glob(f".{INDEX}-*.tmp"), *(p for split in splits for p in (folder / split).glob(".shard-*.tmp"))]


def read_index(folder: str | os.PathLike) -> dict | None:
    """A cache folder's index (`INDEX`), or None when it has none."""
    path = Path(folder) / INDEX
    return json.loads(path.read_text()) if path.exists() else None


def read_shard(path: Path, layer: int | None, final: bool, rows: int) -> dict[str, "torch.Tensor"]:
    """One shard's ``states`` (``[rows, d]`` of ``layer``; ``[rows, 0]`` for None), ``target``, ``last_token``,
    ``row`` and, with ``final``, ``final``. A damaged file raises whatever safetensors raises: the reader names it."""
    import torch
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        part = {
            "states": f.get_tensor(layer_key(layer)) if layer is not None else torch.empty(rows, 0),
            "target": f.get_tensor("target"),
            "last_token": f.get_tensor("last_token"),
            "row": f.get_tensor("row"),
        }
        if final:
            part["final"] = f.get_tensor("final")
    return part


def cache_disk_bytes(rows: int, layers: int, n_max: int, d: int, dtype_bytes: int, shards: int = 1) -> int:
    """Bytes a cache of ``rows`` prefixes takes on disk: per row ``layers`` states and ``n_max + 1`` final states of
    ``d`` values of ``dtype_bytes``, ``n_max + 3`` int64 ids (targets, last token, row); at most 4 KB of safetensors
    header per shard file. E.g. 100k prefixes, 81 layers, d 8192, fp16: 133 GB; one layer: 8.2 GB."""
    return rows * ((layers + n_max + 1) * d * dtype_bytes + 8 * (n_max + 3)) + 4096 * shards


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_shard(tensors: dict[str, "torch.Tensor"], path: Path) -> dict:
    """Write a shard atomically; returns its ``{"bytes", "sha256"}`` record for the index."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        record = {"bytes": os.path.getsize(tmp), "sha256": sha256(tmp)}
    return record


def shard_problem(path: Path, rows: list[int], keys: set[str]) -> str | None:
    """Why a shard without a recorded checksum is unusable (None if it is whole): header, tensors, row ids."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            if set(f.keys()) != keys:
                return f"it holds tensors {sorted(f.keys())}, not {sorted(keys)}"
            bad = [k for k in f.keys() if f.get_slice(k).get_shape()[:1] != [len(rows)]]
            if bad:
                return f"tensors {bad} do not have {len(rows)} rows"
            if f.get_tensor("row").tolist() != rows:
                return "it holds other rows of the dataset"
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type, and OSError
        return f"it cannot be read ({type(err).__name__}: {err})"
    return None


def verify_shard(path: Path, shard: dict, rows: list[int], keys: set[str]) -> str | None:
    """Why an existing shard file fails its index record (None if it passes); records a checksum it lacked."""
    size = path.stat().st_size
    if "sha256" in shard:
        if size != shard["bytes"]:
            return f"it is {size} bytes, the index records {shard['bytes']}"
        if sha256(path) != shard["sha256"]:
            return "its sha256 differs from the one the index records"
        return None
    problem = shard_problem(path, rows, keys)
    if problem is None:  # whole, written just before a kill (or by format 1): record it now
        shard.update(bytes=size, sha256=sha256(path))
    return problem


def write_index(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2))
