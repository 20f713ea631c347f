"""What both dataset sources share (prefixes cut from documents, `futurelens.data.prefixes`; a given table,
`futurelens.data.table`): the document-level split, the settings a resumed build is checked against, the model's
greedy labels, and the interruption that says what was kept.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable

from ..tokens import special_tokens, tokenizer_hash

if TYPE_CHECKING:
    from ..models import LensModel
    from .prefixes import DataConfig


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during `build_prefixes`: the labelled shards are kept; the message says where and how to resume."""


def is_test(doc_id: str, seed: int, fraction: float) -> bool:
    """Document-level split by a seeded hash: stable across runs and streaming-friendly."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def settings(lm: "LensModel", cfg: "DataConfig") -> dict:
    """What the labelled shards depend on: a resume under other settings would mix two builds."""
    config = {k: v for k, v in asdict(cfg).items() if k != "out"}
    return json.loads(json.dumps({"model": lm.name, "tokenizer_hash": tokenizer_hash(lm.tokenizer),
                                  "special_tokens": special_tokens(lm.tokenizer), "config": config}))


def label(
    lm: "LensModel",
    pool: list,
    cfg: "DataConfig",
    progress: Callable[[int], Any] | None = None,
    finished: Callable[[list, list], Any] | None = None,
) -> list[list[int]]:
    """The greedy continuation (``n_max + 1`` tokens) of every candidate of a pool, in pool order.

    The whole continuation is decoded for every candidate, kept or not: with the KV cache the
    extra ``n_max`` tokens cost far less than the prefix itself, and one call per length group
    beats a second pass over the kept ones. Locally, `greedy` is called once per group of equal
    length — exactly the batches it would form over the whole pool, so the same results — and
    ``finished(candidates, targets)`` hears of each group as it is done (the progress bar's kept
    count); remotely the pool is one request.
    """
    from ..tracing import greedy

    prefixes = [c[2] for c in pool]
    n = cfg.n_max + 1
    if lm.remote:
        targets = greedy(lm, prefixes, n, batch_size=cfg.batch_size, progress=progress).tolist()
        if finished is not None:
            finished(pool, targets)
        return targets
    groups: dict[int, list[int]] = {}
    for i, prefix in enumerate(prefixes):
        groups.setdefault(len(prefix), []).append(i)
    out: list[list[int]] = [[] for _ in pool]
    for length, members in groups.items():
        rows = max(1, min(cfg.batch_size, cfg.batch_tokens // max(length, 1)))  # long prefixes: fewer per pass
        part = greedy(lm, [prefixes[i] for i in members], n, batch_size=rows, progress=progress).tolist()
        for i, target in zip(members, part):
            out[i] = target
        if finished is not None:
            finished([pool[i] for i in members], part)
    return out
