"""NDIF requests of each remote stage, and their bytes each way, split by the stages' own helper.

Every function here walks the items a stage sends (prefix rows, cache rows, training batches) in the
stage's order and splits them with `futurelens.dispatch.spans`, the one place remote work is split by
size, with the per-item byte sizes the stage passes it (cited at each function). A request's bytes are
what `spans` bounds: tensors at ``numel * element_size`` and token ids at 8 bytes (int64) each; what a
request carries besides (the job's source, the model's envoy tree: ~120 KB) is not counted.
tests/ndif_executor/test_plan_counts.py checks the counts and bytes against requests executed by
NDIF's own server code.

Each returns ``[(sent, returned)]``, one pair per request.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable, Iterable, Sequence

from ..errors import FutureLensError
from ..dispatch import spans

Requests = list[tuple[int, int]]


def bound(max_request_mb: float) -> SimpleNamespace:
    """What `spans` reads of a remote `LensModel`: ``remote`` and ``max_request_mb``."""
    return SimpleNamespace(remote=True, max_request_mb=max_request_mb)


def _split(lm: SimpleNamespace, sent: Sequence[int], back: Sequence[int], fixed: int = 0) -> Requests:
    out = []
    for a, b in spans(lm, len(sent), payload=list(sent), result=list(back), fixed=fixed):
        out.append((fixed + sum(sent[a:b]), sum(back[a:b])))
    return out


def greedy(lm: SimpleNamespace, pools: Iterable[Sequence[int]], n: int, batch_size: int) -> Requests:
    """Labelling (`futurelens.data.prefixes._label` remotely -> `futurelens.tracing.greedy`): per pool of candidate
    prefix lengths, rows grouped by exact length (first-seen order), ``batch_size`` at a time, each chunk split by
    ``payload=8 * length, result=8 * n`` per row."""
    out: Requests = []
    for pool in pools:
        groups: dict[int, int] = {}
        for length in pool:
            groups[length] = groups.get(length, 0) + 1
        for length, count in groups.items():
            for start in range(0, count, batch_size):
                rows = min(batch_size, count - start)
                out += _split(lm, [8 * length] * rows, [8 * n] * rows)
    return out


def cache(lm: SimpleNamespace, shards: Iterable[Sequence[int]], n_layers: int, n_max: int, d_model: int,
          itemsize: int) -> Requests:
    """The state cache (`futurelens.data.states._shard` remotely): per shard of prefix lengths, rows split by
    ``payload=8 * (length + n_max)`` and ``result=(layers + n_max + 1) * d * itemsize`` per row."""
    row = (n_layers + n_max + 1) * d_model * itemsize
    out: Requests = []
    for shard in shards:
        out += _split(lm, [8 * (length + n_max) for length in shard], [row] * len(shard))
    return out


def train_batch_bytes(rows: int, d_model: int, n_max: int, itemsize: int, kl: bool) -> int:
    """Bytes of one plain training batch (`futurelens.methods.base.plain_batch`: ``states [b, d]``, ``target
    [b, n_max + 1]`` int64 and, for the KL loss, ``final [b, n_max + 1, d]``), as `futurelens.train._batch_bytes`
    counts it."""
    return rows * d_model * itemsize + rows * (n_max + 1) * 8 + (rows * (n_max + 1) * d_model * itemsize if kl else 0)


def train(lm: SimpleNamespace, n_train: int, batch_size: int, epochs: int, prompt_len: int, embed_dim: int,
          d_model: int, n_max: int, itemsize: int, kl: bool, grad_accum: int = 1, checkpoint_every: int = 50,
          optimizer: str = "adamw", batch_bytes: "Callable[[int], int] | None" = None) -> Requests:
    """One soft prompt's training (`futurelens.train.train_prompt`'s ``chunks``): batches are added to a request
    while its bytes, the prompt and the carried optimizer state and gradient (``payload_bytes((prompt,
    carried))``) plus each batch's, stay under the bound, and at most ``checkpoint_every`` batches; each returns the
    prompt, the optimizer state and the gradient of a step still accumulating. ``batch_bytes(rows)``: what one
    batch sends, when not the shipped states (`train_batch_bytes`), e.g. a recompute request's ids."""
    limit = lm.max_request_mb * 2**20
    prompt = prompt_len * embed_dim * 4  # float32
    # torch's Adam(W) state: exp_avg and exp_avg_sq like the prompt, and `step` as a float32 scalar tensor.
    state = {"adamw": 2 * prompt + 4, "adam": 2 * prompt + 4, "sgd": 0}[optimizer]
    per_epoch = math.ceil(n_train / batch_size)
    size_of = batch_bytes or (lambda rows: train_batch_bytes(rows, d_model, n_max, itemsize, kl))
    sizes = [size_of(min(batch_size, n_train - i * batch_size)) for i in range(per_epoch)]
    out: Requests = []
    stepped, accumulated = False, 0  # whether the optimizer has state yet; batches into the current step
    chunk: list[tuple[int, bool]] = []
    carried = prompt
    size = carried

    def run(chunk: list[tuple[int, bool]]) -> None:
        nonlocal stepped, accumulated, carried
        sent = carried + sum(b for b, _ in chunk)
        if sent > limit:  # one batch and the carried state alone: `futurelens.dispatch.run_job` refuses it
            raise FutureLensError(
                f"One training request would send {sent / 2**20:.3g} MB (the prompt, its optimizer state and one "
                f"batch), over the request bound max_request_mb={lm.max_request_mb:g}: use a smaller train batch "
                "size, or raise the bound.")
        for _, last in chunk:
            accumulated += 1
            if accumulated >= grad_accum or last:
                stepped, accumulated = True, 0
        carried = prompt + (state if stepped else 0) + (prompt if accumulated else 0)
        out.append((sent, carried))

    for _ in range(epochs):
        for i, nbytes in enumerate(sizes):
            if chunk and (len(chunk) >= checkpoint_every or size + nbytes > limit):
                run(chunk)
                chunk, size = [], carried
            chunk.append((nbytes, i == per_epoch - 1))
            size += nbytes
    if chunk:
        run(chunk)
    return out


def total(requests: Requests) -> dict[str, int]:
    """``{"requests", "sent", "returned", "largest"}`` of a list of requests (largest: the biggest one either way)."""
    return {"requests": len(requests), "sent": sum(s for s, _ in requests), "returned": sum(r for _, r in requests),
            "largest": max((max(s, r) for s, r in requests), default=0)}
