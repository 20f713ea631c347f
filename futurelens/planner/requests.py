"""NDIF requests of each remote stage, and their bytes each way, split by the stages' own helpers.

Every function here walks the items a stage sends (prefix rows, cache rows, training batches) in the
stage's order and groups them with `futurelens.dispatch` (`spans`, or `stream_requests` for training, whose
carried state grows as it runs), the one place remote work is split by size, with the per-item sizes the stage
declares (`tensor_bytes`, `ids_bytes`; cited at each function). What a request carries besides its tensors (the
job's source, the model's envoy tree: ~120 KB) is not counted. tests/ndif_executor/test_plan_counts.py checks
the counts and bytes against requests executed by NDIF's own server code.

Each returns ``[(sent, returned)]``, one pair per request.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable, Iterable, Sequence

from ..dispatch import ids_bytes, spans, stream_requests, tensor_bytes
from ..train_states import ship_bytes_per_row

Requests = list[tuple[int, int]]


def bound(max_request_mb: float) -> SimpleNamespace:
    """What `spans` reads of a remote `LensModel`: ``remote`` and ``max_request_mb``."""
    return SimpleNamespace(remote=True, max_request_mb=max_request_mb)


def split(lm: SimpleNamespace, sent: Sequence[int], back: Sequence[int], fixed: int = 0) -> Requests:
    """`spans` over items sending ``sent[i]`` and returning ``back[i]``, ``fixed`` sent with every request."""
    out = []
    for a, b in spans(lm, len(sent), payload=list(sent), result=list(back), fixed=fixed):
        out.append((fixed + sum(sent[a:b]), sum(back[a:b])))
    return out


def greedy(lm: SimpleNamespace, pools: Iterable[Sequence[int]], n: int, batch_size: int) -> Requests:
    """Labelling (`futurelens.data.labels.label` remotely -> `futurelens.tracing.greedy`): per pool of candidate
    prefix lengths, rows grouped by exact length (first-seen order), ``batch_size`` at a time, each chunk split by
    ``payload=ids_bytes(length), result=ids_bytes(n)`` per row."""
    out: Requests = []
    for pool in pools:
        groups: dict[int, int] = {}
        for length in pool:
            groups[length] = groups.get(length, 0) + 1
        for length, count in groups.items():
            for start in range(0, count, batch_size):
                rows = min(batch_size, count - start)
                out += split(lm, [ids_bytes(length)] * rows, [ids_bytes(n)] * rows)
    return out


def cache(lm: SimpleNamespace, shards: Iterable[Sequence[int]], n_layers: int, n_max: int, d_model: int,
          dtype: str) -> Requests:
    """The state cache (`futurelens.data.states._shard` remotely): per shard of prefix lengths, rows split by
    ``payload=ids_bytes(length + n_max)`` and ``result=tensor_bytes(layers + n_max + 1, d, dtype=dtype)`` per row."""
    row = tensor_bytes(n_layers + n_max + 1, d_model, dtype=dtype)
    out: Requests = []
    for shard in shards:
        out += split(lm, [ids_bytes(length + n_max) for length in shard], [row] * len(shard))
    return out


def train_batch_bytes(rows: int, d_model: int, n_max: int, dtype: str, kl: bool) -> int:
    """Bytes of one plain training batch (`futurelens.methods.base.plain_batch`: ``states [b, d]``, ``target
    [b, n_max + 1]`` int64 and, for the KL loss, ``final [b, n_max + 1, d]``): `train_states.ship_bytes_per_row`."""
    return rows * ship_bytes_per_row(d_model, n_max, "kl" if kl else "ce", dtype)


def train(lm: SimpleNamespace, n_train: int, batch_size: int, epochs: int, prompt_len: int, embed_dim: int,
          d_model: int, n_max: int, dtype: str, kl: bool, grad_accum: int = 1, checkpoint_every: int = 50,
          optimizer: str = "adamw", batch_bytes: "Callable[[int], int] | None" = None, lead: int = 0) -> Requests:
    """One soft prompt's training (`futurelens.train.train_prompt`'s ``chunks``, the same `stream_requests` call):
    batches join a request while its bytes (the prompt, the carried optimizer state and gradient, the step settings'
    ``lead`` rows of ``embed_dim``, plus each batch's) stay under the bound, and at most ``checkpoint_every``
    batches; each returns the prompt, the optimizer state and the gradient of a step still accumulating.
    ``batch_bytes(rows)``: what one batch sends, when not the shipped states (`train_batch_bytes`), e.g. a
    recompute request's ids."""
    prompt = tensor_bytes(prompt_len, embed_dim)  # float32
    lead_bytes = tensor_bytes(lead, embed_dim)
    # torch's Adam(W) state: exp_avg and exp_avg_sq like the prompt, and `step` as a float32 scalar tensor.
    adam = 2 * prompt + tensor_bytes(dtype="float32")
    state = {"adamw": adam, "adam": adam, "sgd": 0}[optimizer]
    per_epoch = math.ceil(n_train / batch_size)
    size_of = batch_bytes or (lambda rows: train_batch_bytes(rows, d_model, n_max, dtype, kl))
    sizes = [size_of(min(batch_size, n_train - i * batch_size)) for i in range(per_epoch)]
    batches = ((nbytes, i == per_epoch - 1) for _ in range(epochs) for i, nbytes in enumerate(sizes))
    out: Requests = []
    stepped, accumulated = False, 0  # whether the optimizer has state yet; batches into the current step
    carried = prompt
    for chunk in stream_requests(lm, batches, size=lambda item: item[0], fixed=lambda: carried + lead_bytes,
                                 most=checkpoint_every):
        sent = carried + lead_bytes + sum(b for b, _ in chunk)
        # one batch and the carried state alone over the bound: `futurelens.dispatch.run_job` refuses it
        spans(lm, 1, payload=sent, lower="use a smaller train batch size")
        for _, last in chunk:
            accumulated += 1
            if accumulated >= grad_accum or last:
                stepped, accumulated = True, 0
        carried = prompt + (state if stepped else 0) + (prompt if accumulated else 0)
        out.append((sent, carried))
    return out


def total(requests: Requests) -> dict[str, int]:
    """``{"requests", "sent", "returned", "largest"}`` of a list of requests (largest: the biggest one either way)."""
    return {"requests": len(requests), "sent": sum(s for s, _ in requests), "returned": sum(r for _, r in requests),
            "largest": max((max(s, r) for s, r in requests), default=0)}
