"""The Future Lens dataset on disk, and an unfinished build's labelled shards.

A dataset is a folder: ``table/`` (a `datasets` Arrow dataset, one row per prefix: ``doc_id``, ``offset``,
``prefix_ids``, ``next_ids``, ``target_ids``, ``split``) and ``futurelens.json`` beside it (the model, the
tokenizer's hash and special tokens, the build settings and counts). An unfinished build keeps its labelled
candidates in ``<out>.partial/``: ``build.json`` (the settings a resume must match) and ``shard-<k>.parquet``
(each candidate with the model's continuation, plus any extra id columns), every file written atomically.
`futurelens.data.prefixes` and `futurelens.data.table` build datasets; this module is all that reads or lays
them out.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..errors import FutureLensError
from ..tokens import check as check_special
from ..tokens import tokenizer_hash

log = logging.getLogger(__name__)

META_FILE = "futurelens.json"
PARTIAL_SUFFIX = ".partial"
"""``<out><PARTIAL_SUFFIX>`` holds an unfinished build's labelled shards."""
BUILD_FILE = "build.json"
"""The settings of an unfinished build, in its partial folder: a resume must use the same ones."""

COLUMNS = ("doc_id", "offset", "prefix_ids", "next_ids", "target_ids", "split")
def partial_dir(out: str | os.PathLike) -> Path:
    """Where an unfinished build of ``out`` keeps its labelled shards: ``<out>.partial`` beside it."""
    out = Path(out)
    out = out if out.name else out.resolve()  # "." has no name to extend
    return out.with_name(out.name + PARTIAL_SUFFIX)



def open_partial(work: Path, settings: dict) -> None:
    """Create ``work`` for a new build, or check that an interrupted one there used the same settings."""
    path = work / BUILD_FILE
    if path.exists() and any(work.glob("shard-*.parquet")):  # without a finished shard there is nothing to keep
        previous = json.loads(path.read_text())
        if previous != settings:
            changed = [k for k in ("model", "tokenizer_hash", "special_tokens") if previous.get(k) != settings[k]]
            old = previous.get("config", {})
            changed += sorted(k for k in set(old) | set(settings["config"]) if old.get(k) != settings["config"].get(k))
            raise FutureLensError(
                f"{work} holds an interrupted build with other settings ({', '.join(changed)} differ): re-run with "
                f"the settings it was started with to resume it, or delete {work} to start over."
            )
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(settings, indent=2))
    for stale in work.glob(".*.tmp"):  # left by a kill in the middle of a write
        stale.unlink()


def shard_path(work: Path, k: int) -> Path:
    return work / f"shard-{k:05d}.parquet"


def write_shard(path: Path, pool: list, targets: list[list[int]], extra: dict[str, list[list[int]]] | None = None) -> None:
    """One labelled shard: every candidate of the pool with its greedy continuation, written atomically.

    ``extra``: more token-id columns, by name (a prefix table's own continuation).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = pa.list_(pa.int64())
    table = pa.table({
        "doc_id": pa.array([c[0] for c in pool], pa.string()),
        "offset": pa.array([c[1] for c in pool], pa.int64()),
        "prefix_ids": pa.array([c[2] for c in pool], ids),
        "next_ids": pa.array([c[3] for c in pool], ids),
        "target_ids": pa.array(targets, ids),
        **{name: pa.array(column, ids) for name, column in (extra or {}).items()},
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_shard(path: Path, pool: list) -> list[list[int]] | None:
    """The targets of a finished shard of exactly these candidates; None when there is none (or it is unreadable)."""
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    try:
        table = pq.read_table(path).to_pydict()
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        log.warning("%s is unreadable (%s: %s); labelling it again.", path, type(err).__name__, err)
        path.unlink()
        return None
    stored = list(zip(table["doc_id"], table["offset"], table["prefix_ids"], table["next_ids"]))
    if stored != [tuple(c) for c in pool]:
        raise FutureLensError(
            f"{path} holds other candidates than this build draws: the corpus has changed since the interrupted "
            f"build. Delete {path.parent} to start over."
        )
    return table["target_ids"]


def resume_note(out: str | os.PathLike) -> str:
    """What an interrupted build of ``out`` has kept and how to go on (for a Ctrl-C message)."""
    import pyarrow.parquet as pq

    work = partial_dir(out)
    shards = sorted(work.glob("shard-*.parquet")) if work.is_dir() else []
    if not shards:
        return f"No labelled shard was finished yet ({work} holds none); run the same command again to start over."
    n = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
    return (f"Kept {len(shards)} labelled shard(s) ({n} candidates) in {work}; run the same command again to "
            "resume after them (with the same settings).")



def file_hash(path: Path) -> str:
    """xxh64 of a file's bytes, read 1 MiB at a time (16 hex digits, the form of a `datasets` fingerprint)."""
    import xxhash

    h = xxhash.xxh64()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def record(lm: Any, config: dict, *, n_candidates: int, n_passed: int, n_kept: int, n_test: int,
           **extra: Any) -> dict:
    """A dataset's ``futurelens.json``: the model, how its tokenizer tokenises, the build settings, and the counts.

    ``n_candidates`` labelled = ``n_kept`` (in the dataset) + ``n_dropped`` (failed the correctness filter) +
    ``n_unused`` (passed it after the dataset was full); ``extra`` entries (a prefix table's provenance) go in as given.
    """
    from ..tokens import special_tokens

    return {
        "model": lm.name,
        "tokenizer_hash": tokenizer_hash(lm.tokenizer),
        "special_tokens": special_tokens(lm.tokenizer),
        "config": config,
        **extra,
        "n_candidates": n_candidates,
        "n_kept": n_kept,
        "n_dropped": n_candidates - n_passed,
        "n_unused": n_passed - n_kept,
        "n_train": n_kept - n_test,
        "n_test": n_test,
    }


def save_prefixes(columns: "dict[str, list] | Path", meta: dict, out: str | os.PathLike) -> Path:
    """Write a prefix table and its metadata to ``out`` atomically; a half-written dataset never exists.

    ``columns``: the columns as lists, or the path of an Arrow IPC stream of the rows (`_assemble`), which is
    memory-mapped and copied batch by batch (never held in memory whole); its fingerprint for `datasets` is then
    the hash of that file's bytes: the same rows, the same fingerprint.
    """
    from datasets import Dataset
    from datasets.table import MemoryMappedTable

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        if isinstance(columns, dict):
            dataset = Dataset.from_dict(columns)
        else:
            dataset = Dataset(MemoryMappedTable.from_file(str(columns)), fingerprint=file_hash(Path(columns)))
        dataset.save_to_disk(str(tmp / "table"))
        del dataset
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_meta(path: str | os.PathLike) -> dict:
    """A dataset folder's metadata (``futurelens.json``: model, tokenizer hash, build settings, counts), or a
    `FutureLensError` saying how to build one when ``path`` holds no dataset."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise FutureLensError(f"{path} is not a futurelens dataset (no {META_FILE}); build one with "
                              f"`futurelens data --out {path}`.")
    return json.loads((path / META_FILE).read_text())


def load_prefixes(path: str | os.PathLike, tokenizer: Any = None) -> tuple[Any, dict]:
    """``(datasets.Dataset, metadata)``; with ``tokenizer``, refuse a dataset built with another one."""
    from datasets import load_from_disk

    path = Path(path)
    meta = read_meta(path)
    if tokenizer is not None and tokenizer_hash(tokenizer) != meta["tokenizer_hash"]:
        raise FutureLensError(
            f"{path} was tokenized for {meta['model']!r} (tokenizer {meta['tokenizer_hash']}), not this tokenizer "
            f"({tokenizer_hash(tokenizer)}): its token ids mean different words. Rebuild it with `futurelens data --model ...`."
        )
    if tokenizer is not None:
        check_special(meta.get("special_tokens"), tokenizer, f"The dataset {path}",
                      f"Rebuild it with `futurelens data --model {meta['model']} --out {path}`.")
    return load_from_disk(str(path / "table")), meta
