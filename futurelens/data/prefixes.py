"""The Future Lens dataset: prefixes cut from documents, with the real next tokens and the model's own.

One row per prefix: provenance (document id, token offset), the prefix ids, the
real next ``n_max + 1`` tokens, and the model's greedy continuation of the same
length — the targets for N = 0..n_max. Stored as an Arrow dataset with a
``futurelens.json`` beside it recording the model, tokenizer hash and settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import FutureLensError
from .corpus import EMBEDDED, documents

if TYPE_CHECKING:
    from ..models import LensModel

META_FILE = "futurelens.json"


@dataclass
class DataConfig:
    """Settings of `futurelens data`: which prefixes to cut and how to label them."""

    model: str = "smollm2-135m"
    """Hub id, local folder, or the embedded default 'smollm2-135m'."""
    source: str = EMBEDDED
    """Corpus: 'pydoc' (offline Python docs), a .txt/.jsonl/.parquet file or folder, or 'hf:<dataset>[:config]'."""
    out: str = "runs/data"
    """Folder the dataset is written to."""
    n_prefixes: int = 2000
    """Prefixes to keep in total (train + test), after the correctness filter."""
    min_len: int = 8
    """Shortest prefix, in tokens."""
    max_len: int = 96
    """Longest prefix, in tokens."""
    length_dist: str = "uniform"
    """Prefix-length distribution: 'uniform' or 'loguniform' between min_len and max_len."""
    n_max: int = 3
    """Furthest token ahead to predict: targets are N = 0..n_max."""
    test_fraction: float = 0.2
    """Fraction of documents (not prefixes) held out for testing."""
    filter_correct: bool = True
    """Keep only prefixes whose next token the model predicts correctly (the paper's setup)."""
    seed: int = 0
    """Seed for the split and the sampling; the same seed gives the same dataset."""
    batch_size: int = 32
    """Prefixes per forward pass while labelling."""
    text_field: str = "text"
    """Field holding the text in .jsonl/.parquet/hub records."""
    max_documents: int = 0
    """Read at most this many documents (0 = all; set it for a streamed hub corpus)."""


def tokenizer_hash(tokenizer: Any) -> str:
    """A fingerprint of the vocabulary and special tokens: same hash, same ids."""
    payload = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def is_test(doc_id: str, seed: int, fraction: float) -> bool:
    """Document-level split by a seeded hash: stable across runs and streaming-friendly."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _candidates(docs: list[tuple[str, list[int]]], cfg: DataConfig) -> Iterator[tuple[str, int, list[int], list[int]]]:
    """An endless, seeded stream of (doc id, offset, prefix, real next tokens), round-robin over documents."""
    import numpy as np

    rng = np.random.default_rng(cfg.seed)
    need = cfg.n_max + 1
    usable = [(d, t) for d, t in docs if len(t) >= cfg.min_len + need]
    if not usable:
        raise FutureLensError(
            f"No document has the {cfg.min_len + need} tokens a prefix of min_len={cfg.min_len} plus "
            f"{need} next tokens needs: lower --min-len or use a larger corpus."
        )
    seen: set[tuple[str, int, int]] = set()
    misses = 0  # consecutive repeats; a small corpus can run out of distinct prefixes
    while True:
        if misses > 100 * len(usable):
            raise FutureLensError(
                f"The corpus has run out of new prefixes after {len(seen)}: lower --n-prefixes, widen "
                "--min-len/--max-len, or use a larger corpus."
            )
        for i in rng.permutation(len(usable)):
            doc_id, tokens = usable[i]
            hi = min(cfg.max_len, len(tokens) - need)
            if cfg.length_dist == "loguniform":
                length = int(round(np.exp(rng.uniform(np.log(cfg.min_len), np.log(hi))))) if hi > cfg.min_len else hi
            else:
                length = int(rng.integers(cfg.min_len, hi + 1))
            offset = int(rng.integers(0, len(tokens) - length - need + 1))
            if (doc_id, offset, length) in seen:
                misses += 1
                continue
            misses = 0
            seen.add((doc_id, offset, length))
            yield doc_id, offset, tokens[offset : offset + length], tokens[offset + length : offset + length + need]


def build_prefixes(lm: "LensModel", cfg: DataConfig, progress: bool = True) -> Path:
    """Cut, label and filter prefixes; write the dataset to ``cfg.out`` atomically. Returns the folder."""
    from tqdm.auto import tqdm

    if cfg.length_dist not in ("uniform", "loguniform"):
        raise FutureLensError(f"length_dist must be 'uniform' or 'loguniform', not {cfg.length_dist!r}.")
    if not 1 <= cfg.min_len <= cfg.max_len:
        raise FutureLensError(f"Need 1 <= min_len <= max_len, got min_len={cfg.min_len}, max_len={cfg.max_len}.")
    if not 0 <= cfg.test_fraction < 1:
        raise FutureLensError(f"test_fraction must be in [0, 1), got {cfg.test_fraction}.")

    docs = []
    for i, doc in enumerate(documents(cfg.source, cfg.text_field)):
        if cfg.max_documents and i >= cfg.max_documents:
            break
        docs.append((doc.id, lm.tokenizer(doc.text, add_special_tokens=False)["input_ids"]))
    stream = _candidates(docs, cfg)
    columns: dict[str, list] = {k: [] for k in ("doc_id", "offset", "prefix_ids", "next_ids", "target_ids", "split")}
    n_candidates = n_dropped = 0
    max_candidates = 50 * cfg.n_prefixes  # a model that never predicts right would otherwise loop forever
    # Candidates are decoded in groups of equal length, so a pool must be large enough to fill them.
    pool_size = 128 * cfg.batch_size
    bar = tqdm(total=0, desc="Labelling candidates", unit="prefix", disable=not progress)
    while len(columns["doc_id"]) < cfg.n_prefixes:
        if n_candidates >= max_candidates:
            raise FutureLensError(
                f"Only {len(columns['doc_id'])} of {n_candidates} candidate prefixes passed the correctness filter; "
                "use --no-filter-correct or a corpus the model knows better."
            )
        # Size the pool from the keep rate seen so far, so a small dataset labels few spare candidates.
        rate = (n_candidates - n_dropped) / n_candidates if n_candidates else 0.5
        wanted = int(1.2 * (cfg.n_prefixes - len(columns["doc_id"])) / max(rate, 0.05)) + 1
        pool = [next(stream) for _ in range(min(pool_size, max(cfg.batch_size, wanted)))]
        n_candidates += len(pool)
        bar.total += len(pool)
        keep = _label(lm, pool, cfg, bar.update)
        n_dropped += len(pool) - len(keep)
        for (doc_id, offset, prefix, nxt), target in keep:
            if len(columns["doc_id"]) == cfg.n_prefixes:
                break
            columns["doc_id"].append(doc_id)
            columns["offset"].append(offset)
            columns["prefix_ids"].append(prefix)
            columns["next_ids"].append(nxt)
            columns["target_ids"].append(target)
            columns["split"].append("test" if is_test(doc_id, cfg.seed, cfg.test_fraction) else "train")
        bar.set_postfix(kept=f"{len(columns['doc_id'])}/{cfg.n_prefixes}")
    bar.close()

    meta = {
        "model": lm.name,
        "tokenizer_hash": tokenizer_hash(lm.tokenizer),
        "config": asdict(cfg),
        "n_candidates": n_candidates,
        "n_kept": len(columns["doc_id"]),
        "n_dropped": n_dropped,
        "n_train": columns["split"].count("train"),
        "n_test": columns["split"].count("test"),
    }
    return save_prefixes(columns, meta, cfg.out)


def save_prefixes(columns: dict[str, list], meta: dict, out: str | os.PathLike) -> Path:
    """Write a prefix table and its metadata to ``out`` atomically (a half-written dataset never exists)."""
    from datasets import Dataset

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        Dataset.from_dict(columns).save_to_disk(str(tmp / "table"))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _label(lm: "LensModel", pool: list, cfg: DataConfig, progress=None) -> list:
    """Greedy targets for a pool of candidates, in pool order, dropping wrong ones when filtering.

    The whole continuation is decoded for every candidate: with the KV cache the
    extra ``n_max`` tokens cost far less than the prefix itself, and one call per
    length group beats a second pass over the kept ones.
    """
    from ..tracing import greedy

    targets = greedy(lm, [c[2] for c in pool], cfg.n_max + 1, batch_size=cfg.batch_size, progress=progress).tolist()
    return [(c, t) for c, t in zip(pool, targets) if not cfg.filter_correct or t[0] == c[3][0]]


def load_prefixes(path: str | os.PathLike, tokenizer: Any = None) -> tuple[Any, dict]:
    """``(datasets.Dataset, metadata)``; with ``tokenizer``, refuse a dataset built with another one."""
    from datasets import load_from_disk

    path = Path(path)
    if not (path / META_FILE).exists():
        raise FutureLensError(f"{path} is not a futurelens dataset (no {META_FILE}); build one with `futurelens data`.")
    meta = json.loads((path / META_FILE).read_text())
    if tokenizer is not None and tokenizer_hash(tokenizer) != meta["tokenizer_hash"]:
        raise FutureLensError(
            f"{path} was tokenized for {meta['model']!r} (tokenizer {meta['tokenizer_hash']}), not this tokenizer "
            f"({tokenizer_hash(tokenizer)}): its token ids mean different words. Rebuild it with `futurelens data --model ...`."
        )
    return load_from_disk(str(path / "table")), meta
