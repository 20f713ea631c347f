"""The hidden-state cache: building it (`build_cache`, resumable and verified shard by shard) and reading it
(`StateCache`). Its on-disk layout, checksums and index are `futurelens.artifacts.cache`.

Shards are computed from their own rows only (length-sorted batches inside a
shard), written to a temporary file and renamed, so a killed build resumes at the
first missing shard and ends bit-identical to an uninterrupted one. Memory holds
one shard at a time, whatever the number of samples.

A shard is never trusted blindly: the index records each one's size in bytes and its
sha256 as it is written. `build_cache` verifies every existing shard before it resumes
(or re-runs over a complete cache) and rebuilds, alone, any shard that is missing, truncated
or altered; a shard written just before a kill, whose checksum the index had no time to
record, is checked structurally and then recorded. `StateCache` checks each shard's size
when it opens a cache and turns a failed read into a `FutureLensError` that names the
shard and the `futurelens cache` command that repairs it.
"""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..artifacts.cache import (
    FORMAT,
    INDEX,
    cache_disk_bytes,
    layer_key,
    read_index,
    read_shard,
    save_shard,
    shard_file,
    shard_keys,
    stale_temporaries,
    verify_shard,
    write_index,
)
from ..dispatch import tensor_bytes
from ..errors import FutureLensError

if TYPE_CHECKING:
    import torch

    from ..models import LensModel

DTYPES = ("float32", "float16", "bfloat16")

log = logging.getLogger(__name__)


@dataclass
class CacheConfig:
    """Settings of `futurelens cache`: which states to cache from a dataset, and how to store them."""

    data: str = "runs/data"
    """Dataset folder written by `futurelens data`."""
    out: str = "runs/cache"
    """Folder the cache is written to (re-running resumes it)."""
    model: str = ""
    """Hub id or folder; empty = the model recorded in the dataset."""
    layers: list[int] = field(default_factory=list)
    """Layers to cache (0 = block 0's input, L = the residual stream after L blocks, up to the model's n_layers);
    empty = all."""
    dtype: str = "float32"
    """Storage dtype: float32, float16 or bfloat16."""
    shard_size: int = 512
    """Prefixes per shard file: the unit of resumption and of peak memory."""
    batch_size: int = 32
    """Prefixes per forward pass."""
    splits: list[str] = field(default_factory=lambda: ["train", "test"])
    """Dataset splits to cache."""


def check_disk(out: Path, needed: int, what: str) -> None:
    """Say what a stage will write before it does, and refuse it when the disk cannot hold it."""
    import shutil

    def size(n: int) -> str:
        return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"

    free = shutil.disk_usage(out).free
    log.warning("%s: %s to write to %s (%s free).", what, size(needed), out, size(free))
    if needed > free:
        raise FutureLensError(f"{what} needs {size(needed)} but {out} has {size(free)} free: free space, pass "
                              "another --out, cache fewer --layers, or a smaller --dtype (float16).")


def check_config(cfg: CacheConfig) -> None:
    """Refuse bad settings with a message that names the fix, before anything is loaded or read."""
    if cfg.dtype not in DTYPES:
        raise FutureLensError(f"dtype (--dtype) must be one of {', '.join(DTYPES)}, not {cfg.dtype!r}.")
    if cfg.shard_size < 1 or cfg.batch_size < 1:
        raise FutureLensError("shard_size and batch_size must be >= 1.")
    unknown = set(cfg.splits) - {"train", "test"}
    if unknown:
        raise FutureLensError(f"Unknown split(s) {sorted(unknown)}: choose from train, test.")
    from ..artifacts.dataset import META_FILE

    if not (Path(cfg.data) / META_FILE).is_file():
        raise FutureLensError(f"No dataset at {cfg.data} (no {META_FILE}): build one with `futurelens data --out {cfg.data}`.")


def repair_command(path: str | os.PathLike, index: dict) -> str:
    """The `futurelens cache` command that re-runs (and so verifies and repairs) the cache at ``path``."""
    settings = index["settings"]
    defaults = CacheConfig()
    cmd = ["futurelens", "cache", "--data", index["data"], "--out", str(path)]
    if settings["model"] != settings["dataset"]["model"]:
        cmd += ["--model", settings["model"]]
    layers = settings["layers"]
    if layers != list(range(len(layers))):  # a contiguous 0..L is what "all layers" resolves to
        for layer in layers:
            cmd += ["--layers", str(layer)]
    for name in ("dtype", "shard_size", "batch_size"):
        if settings[name] != getattr(defaults, name):
            cmd += [f"--{name.replace('_', '-')}", str(settings[name])]
    if sorted(index["splits"]) != sorted(defaults.splits):
        for split in index["splits"]:
            cmd += ["--splits", split]
    return shlex.join(cmd)


def _settings(lm: "LensModel", cfg: CacheConfig, meta: dict, layers: list[int]) -> dict:
    """What a cache's contents depend on: resuming under other settings would mix two caches."""
    from ..tokens import tokenizer_hash

    return {
        "model": lm.name,
        "tokenizer_hash": tokenizer_hash(lm.tokenizer),
        # A dataset's special-token record (futurelens.tokens) is part of it; one made before records existed has none.
        "dataset": {k: meta[k] for k in ("model", "tokenizer_hash", "config", "n_kept", "special_tokens") if k in meta},
        "layers": layers,
        "dtype": cfg.dtype,
        "shard_size": cfg.shard_size,
        "batch_size": cfg.batch_size,
        "d_model": lm.d_model,
        "n_max": meta["config"]["n_max"],
    }


def build_cache(lm: "LensModel", cfg: CacheConfig, progress: bool = True) -> Path:
    """Cache the states of ``cfg.data``'s prefixes into ``cfg.out``, resuming a partial cache. Returns the folder."""
    import torch
    from tqdm.auto import tqdm

    from ..artifacts.dataset import load_prefixes

    check_config(cfg)
    table, meta = load_prefixes(cfg.data, tokenizer=lm.tokenizer)
    layers = sorted({lm.check_layer(layer) for layer in cfg.layers}) if cfg.layers else list(range(lm.n_layers + 1))

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(lm, cfg, meta, layers)
    index_path = out / INDEX
    records: dict[str, dict] = {}  # what the previous index recorded of each shard file
    previous = read_index(out)
    if previous is not None:
        records = {s["file"]: s for split in previous["splits"].values() for s in split}
        if previous["settings"] != settings:
            changed = sorted(k for k in settings if previous["settings"].get(k) != settings[k])
            raise FutureLensError(
                f"{out} holds a cache built with other settings ({', '.join(changed)} differ): "
                "pass another --out, or delete the folder to rebuild it."
            )
    split_col = table["split"]
    plan = {s: [i for i, x in enumerate(split_col) if x == s] for s in cfg.splits}
    shards: dict[str, list[dict]] = {}
    for split, rows in plan.items():
        shards[split] = []
        for k, a in enumerate(range(0, len(rows), cfg.shard_size)):
            shard = {"file": shard_file(split, k), "rows": len(rows[a : a + cfg.shard_size])}
            old = records.get(shard["file"], {})
            if old.get("rows") == shard["rows"] and "sha256" in old:
                shard.update(bytes=old["bytes"], sha256=old["sha256"])
            shards[split].append(shard)
        (out / split).mkdir(exist_ok=True)
    # Left by a killed build mid-write: a shard's or the index's half-written temporary file.
    for stale in stale_temporaries(out, list(shards)):
        stale.unlink()

    # Verify what is there before trusting it: a damaged shard is rebuilt, alone.
    keys = shard_keys(layers)
    done = 0
    for split in shards:
        for k, shard in enumerate(shards[split]):
            path = out / shard["file"]
            chunk = plan[split][k * cfg.shard_size : (k + 1) * cfg.shard_size]
            problem = verify_shard(path, shard, chunk, keys) if path.exists() else "missing"
            if problem is None:
                done += shard["rows"]
                continue
            if problem != "missing" or "sha256" in shard:
                log.warning("Cache shard %s is damaged (%s): rebuilding it.", path, problem)
            path.unlink(missing_ok=True)
            shard.pop("bytes", None)
            shard.pop("sha256", None)
    index = {"format": FORMAT, "settings": settings, "data": str(Path(cfg.data).resolve()), "complete": False,
             "splits": shards}
    write_index(index, index_path)

    dtype = getattr(torch, cfg.dtype)
    total = sum(len(r) for r in plan.values())
    todo = [s for split in shards for s in shards[split] if "sha256" not in s]
    check_disk(out, cache_disk_bytes(sum(s["rows"] for s in todo), len(layers), settings["n_max"], lm.d_model,
                                     tensor_bytes(dtype=dtype), len(todo)),
               f"Caching {sum(s['rows'] for s in todo)} prefixes x {len(layers)} layer(s) {layers} x d {lm.d_model} "
               f"in {cfg.dtype}")
    bar = tqdm(total=total, initial=done, desc="Caching states", unit="prefix", disable=not progress, smoothing=0.1)
    for split, rows in plan.items():
        for k, shard in enumerate(shards[split]):
            if "sha256" in shard:
                continue
            chunk = rows[k * cfg.shard_size : (k + 1) * cfg.shard_size]
            tensors = _shard(lm, table.select(chunk), chunk, layers, cfg.batch_size, dtype, bar)
            shard.update(save_shard(tensors, out / shard["file"]))
            del tensors
            write_index(index, index_path)  # the shard's size and checksum, recorded as soon as it exists
    bar.close()
    index["complete"] = True
    write_index(index, index_path)
    return out


def _shard(lm: "LensModel", rows: Any, ids: list[int], layers: list[int], batch_size: int, dtype, bar) -> dict:
    """All tensors of one shard; batches are length-sorted within the shard only, so a shard never
    depends on what was computed before it (the basis of bit-identical resumption). Remotely a
    shard is as many requests as keep each result under ``lm.max_request_mb``."""
    import torch

    from ..dispatch import ids_bytes, run_job, spans
    from ..server import jobs

    columns = rows.to_dict()  # plain lists: they travel with a remote request, datasets' lazy columns would not
    prefixes, targets = columns["prefix_ids"], columns["target_ids"]
    n_max = len(targets[0]) - 1
    conts = [t[:n_max] for t in targets]
    if lm.remote:
        # Results are the big part of a cache request: rows per request so each stays under lm.max_request_mb.
        row_bytes = tensor_bytes(len(layers) + n_max + 1, lm.d_model, dtype=dtype)
        sent = [ids_bytes(len(p) + n_max) for p in prefixes]
        parts = []
        for a, b in spans(lm, len(prefixes), payload=sent, result=row_bytes, lower="cache fewer layers"):
            parts.append(run_job(lm, jobs.cache_shard, prefixes[a:b], conts[a:b], layers, batch_size, dtype, None))
            bar.update(len(parts[-1][1]))
        states, final = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 0)
    else:
        from ..allocator import release_free_memory

        def done(n: int) -> None:
            bar.update(n)
            release_free_memory()  # the batch's freed activations, which glibc's heap would keep (see there)

        states, final = run_job(lm, jobs.cache_shard, prefixes, conts, layers, batch_size, dtype, done)
    tensors = {layer_key(layer): states[i] for i, layer in enumerate(layers)}
    tensors["final"] = final
    tensors["target"] = torch.tensor(targets, dtype=torch.long)
    tensors["last_token"] = torch.tensor([p[-1] for p in prefixes], dtype=torch.long)
    tensors["row"] = torch.tensor(ids, dtype=torch.long)
    return tensors


# --------------------------------------------------------------------------- reading


@dataclass
class StateBatch:
    """One batch from the cache. ``b`` rows, ``n_max + 1`` targets."""

    states: "torch.Tensor"
    """``[b, d]`` the prefix's last-token state at the requested layer."""
    target: "torch.Tensor"
    """``[b, n_max + 1]`` the model's own continuation: ``target[:, N]`` is the N-ahead target."""
    last_token: "torch.Tensor"
    """``[b]`` the prefix's last token (what the n-gram baseline sees)."""
    row: "torch.Tensor"
    """``[b]`` row indices into the dataset table."""
    final: "torch.Tensor | None" = None
    """``[b, n_max + 1, d]`` last-layer states over the continuation (when asked for)."""


class StateCache:
    """Read a cache written by `build_cache`: stream ``(layer, batch)`` slices, one shard in memory at a time."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index = read_index(self.path)
        if index is None:
            raise FutureLensError(f"No state cache at {self.path} (no {INDEX}): build one with `futurelens cache --out {self.path}`.")
        self.index = index
        if not self.index["complete"]:
            raise FutureLensError(
                f"The cache in {self.path} is incomplete (the build was interrupted): re-run `futurelens cache` "
                f"with the same settings to finish it: {repair_command(self.path, self.index)}"
            )
        self.settings = self.index["settings"]
        bad = [(s, problem) for split in self.index["splits"] for s in self.index["splits"][split]
               if (problem := self._size_problem(s)) is not None]
        if bad:
            shard, problem = bad[0]
            more = f" (and {len(bad) - 1} other shard(s))" if len(bad) > 1 else ""
            raise self._damaged(shard, problem + more)

    def _size_problem(self, shard: dict) -> str | None:
        """A cheap check of a shard file against its index record: present, and of the recorded size."""
        path = self.path / shard["file"]
        if not path.exists():
            return "it is missing"
        size = path.stat().st_size
        if "bytes" in shard and size != shard["bytes"]:
            return f"it is {size} bytes, the index records {shard['bytes']}: truncated or overwritten"
        return None

    def _damaged(self, shard: dict, problem: str) -> FutureLensError:
        return FutureLensError(
            f"Cache shard {self.path / shard['file']} is damaged ({problem}). Repair it (the command verifies every "
            f"shard and rebuilds only the damaged ones): {repair_command(self.path, self.index)}"
        )

    def _read(self, shard: dict, layer: int | None, final: bool) -> dict[str, "torch.Tensor"]:
        """One shard's tensors (`futurelens.artifacts.cache.read_shard`), or a `FutureLensError` naming the shard
        and its repair."""
        problem = self._size_problem(shard)
        if problem is not None:
            raise self._damaged(shard, problem)
        try:
            part = read_shard(self.path / shard["file"], layer, final, shard["rows"])
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, a missing tensor: all mean a bad shard
            raise self._damaged(shard, f"{type(err).__name__}: {err}") from err
        if len(part["row"]) != shard["rows"]:
            raise self._damaged(shard, f"it holds {len(part['row'])} rows, the index records {shard['rows']}")
        return part

    @property
    def layers(self) -> list[int]:
        return self.settings["layers"]

    @property
    def special_tokens(self) -> dict:
        """The special tokens its dataset's prefixes start with (`futurelens.tokens`; none for a cache made before
        they were recorded)."""
        from ..tokens import recorded

        return recorded(self.settings.get("dataset", {}).get("special_tokens"))

    def check_tokens(self, tokenizer: Any) -> None:
        """Refuse a tokenizer that puts other special tokens before a text than this cache's dataset was built with."""
        from ..tokens import check

        check(self.special_tokens, tokenizer, f"The cache {self.path}",
              "Rebuild its dataset (`futurelens data`) and then the cache (`futurelens cache`) with this model.")

    @property
    def n_max(self) -> int:
        return self.settings["n_max"]

    @property
    def d_model(self) -> int:
        return self.settings["d_model"]

    def __len__(self) -> int:
        return sum(self.size(s) for s in self.index["splits"])

    def size(self, split: str) -> int:
        return sum(s["rows"] for s in self._shards(split))

    def _shards(self, split: str) -> list[dict]:
        if split not in self.index["splits"]:
            raise FutureLensError(f"The cache has no {split!r} split; it has {sorted(self.index['splits'])}.")
        return self.index["splits"][split]

    def _check_layer(self, layer: int) -> int:
        if layer not in self.layers:
            raise FutureLensError(f"Layer {layer} is not cached; the cache holds layers {self.layers}.")
        return layer

    def batches(
        self,
        layer: int | None,
        split: str = "train",
        batch_size: int = 64,
        shuffle: bool = False,
        seed: int = 0,
        final: bool = False,
    ) -> Iterator[StateBatch]:
        """Stream batches of one layer (``None``: no states, e.g. for the n-gram baseline).

        With ``shuffle``, shard order and rows within each shard are permuted (seeded):
        enough mixing for SGD while only one shard is read at a time.
        """
        import torch

        if layer is not None:
            self._check_layer(layer)
        shards = self._shards(split)
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(shards), generator=g).tolist() if shuffle else range(len(shards))
        carry: list[dict] = []
        for k in order:
            part = self._read(shards[k], layer, final)
            if shuffle:
                perm = torch.randperm(len(part["row"]), generator=g)
                part = {name: t[perm] for name, t in part.items()}
            carry.append(part)
            merged = {name: torch.cat([c[name] for c in carry]) for name in carry[0]}
            n_full = len(merged["row"]) // batch_size * batch_size
            for a in range(0, n_full, batch_size):
                yield StateBatch(**{name: t[a : a + batch_size] for name, t in merged.items()})
            carry = [{name: t[n_full:] for name, t in merged.items()}]
        if carry and len(carry[0]["row"]):
            yield StateBatch(**carry[0])

    def load(self, layer: int | None, split: str = "train", final: bool = False) -> StateBatch:
        """A whole split as one batch (for methods fitted in closed form, and small caches)."""
        return whole_split(self, layer, split, final)


def whole_split(view: Any, layer: int | None, split: str, final: bool) -> StateBatch:
    """Every batch of ``view.batches`` (a `StateCache` or a view with the same ``batches``) joined into one."""
    import torch

    parts = list(view.batches(layer, split, batch_size=1 << 30, final=final))
    if len(parts) == 1:
        return parts[0]
    names = [k for k, v in vars(parts[0]).items() if v is not None]
    return StateBatch(**{n: torch.cat([getattr(p, n) for p in parts]) for n in names})
