"""Scoring's requests: what one layer's test batches send to `futurelens.server.jobs.score_job` and get back.

`futurelens.evaluate` scores a layer's test batches where the model is, in requests split by
`futurelens.dispatch.spans`. Per batch of ``b`` rows it sends its tensors (``states [b, d]`` and
``final [b, N + 1, d]`` in the cache's dtype, ``target`` and ``text [b, N + 1]`` int64), the rows each
client-side probe mapped (``hidden [b, N + 1, d]`` float32: the linear map and the MLP probe are applied
here, where they are held, so no map travels) and the client methods' top-1 ids (``[b]`` int64 per method
and N); with every request, the methods' own tensors (a soft prompt). It gets back, per model-side method
and N, ``[b, k]`` int64 ids and three ``[b]`` float32 numbers, and per client method and N one ``[b]``
float32 surprisal. The stage sizes its own tensors (`futurelens.dispatch.payload_bytes`); the rows not
yet mapped and the results are sized here, and `futurelens plan` sizes a batch it has not seen with
`batch_bytes`, so both split by the same rule.
"""

from __future__ import annotations

from typing import Any

from .dispatch import ids_bytes, spans, tensor_bytes


def hidden_bytes(rows: int, heads: int, d: int) -> int:
    """One client-side probe's mapped rows for a batch: ``[rows, heads, d]`` float32."""
    return tensor_bytes(rows, heads, d, dtype="float32")


def client_bytes(rows: int, heads: int, client: int) -> int:
    """The top-1 ids of ``client`` client-side methods (the vocabulary probe, the bigram), ``[rows]`` int64 per N."""
    return ids_bytes(rows * heads * client)


def batch_bytes(rows: int, heads: int, d: int, dtype: str) -> int:
    """What one plain scoring batch of ``rows`` sends (`futurelens.methods.base.plain_batch` and its text), as
    `futurelens.dispatch.payload_bytes` counts it: states ``[rows, d]`` and final states ``[rows, heads, d]`` of the
    cache's ``dtype``, two id tables ``[rows, heads]``."""
    return tensor_bytes(rows, 1 + heads, d, dtype=dtype) + ids_bytes(rows * 2 * heads)


def returned_bytes(rows: int, heads: int, k: int, model_side: int, client: int) -> int:
    """What `score_job` returns for one batch: per model-side method and N ``[rows, k]`` int64 ids and three
    ``[rows]`` float32 (surprisal, target nll, text nll); per client method and N one ``[rows]`` float32."""
    return rows * heads * (model_side * (ids_bytes(k) + tensor_bytes(3)) + client * tensor_bytes(1))


def score_spans(lm: Any, sent: list[int], returned: list[int], fixed: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` batches per scoring request: each request's batches (``sent`` / ``returned`` bytes each)
    plus ``fixed`` (the methods' tensors, sent with every request) within ``lm.max_request_mb`` each way."""
    return spans(lm, len(sent), payload=sent, result=returned, fixed=fixed,
                 lower="use a smaller --batch-size or fewer methods")
