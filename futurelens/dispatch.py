"""Sending work to the model: a server function as ONE job (`run_job`), and work split into requests by size (`spans`).

THE RULE: every stage that runs on NDIF sends its work through `run_job`, and splits it with `spans` (or
`request_spans`, its form for a list of tensors, or `stream_requests`, its form for a stream whose per-request
state grows as it runs) so that no request sends or returns more than ``lm.max_request_mb``. No other module does
byte arithmetic for requests: a stage says what an item carries, as tensors (`payload_bytes`), as the shape and
dtype of a tensor not made yet (`tensor_bytes`), as token ids (`ids_bytes`) or as reduced top-k pairs
(`top_bytes`). Locally the same calls are plain function calls over one span, so local and remote runs take the
same path.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Sequence

from .errors import FutureLensError
from .ndif_errors import ndif_errors


@lru_cache(maxsize=None)
def _itemsize(dtype: Any) -> int:
    import torch

    return torch.empty(0, dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype).element_size()


def tensor_bytes(*shape: int, dtype: Any = "float32") -> int:
    """Bytes of a ``shape`` tensor of ``dtype`` (a torch dtype or its name; ``tensor_bytes(dtype=...)`` is one value):
    what an item will send or return, declared before the tensor exists."""
    n = 1
    for size in shape:
        n *= int(size)
    return n * _itemsize(dtype)


def ids_bytes(n: int) -> int:
    """Bytes of ``n`` token ids as a request carries them (int64 at most)."""
    return tensor_bytes(n, dtype="int64")


def top_bytes(n: int) -> int:
    """Bytes of ``n`` (probability, token id) pairs, as a job reduced to top-k returns them (float32 and int64)."""
    return tensor_bytes(n, dtype="float32") + ids_bytes(n)


def payload_bytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested lists, tuples and dicts): what a request carries, to within its framing."""
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):
        return int(obj.numel() * obj.element_size())
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    return 0


def spans(
    lm: Any,
    n: int,
    *,
    payload: "int | Sequence[int]" = 0,
    result: "int | Sequence[int]" = 0,
    fixed: int = 0,
    lower: str = "pass fewer or smaller inputs per call",
) -> list[tuple[int, int]]:
    """``[(start, stop)]`` spans of ``n`` items such that each request sends and returns at most ``lm.max_request_mb``.

    The one place remote work is split by size. ``payload`` and ``result`` are the bytes of tensors
    each item sends and returns (one number for every item, or one per item); ``fixed`` is sent with
    every request. Locally everything is one span. An item that alone exceeds the bound is a
    `FutureLensError` naming the setting, and ``lower`` says what else to make smaller.
    """
    if not lm.remote or n == 0:
        return [(0, n)]
    limit = lm.max_request_mb * 2**20
    sent = [payload] * n if isinstance(payload, int) else list(payload)
    back = [result] * n if isinstance(result, int) else list(result)
    out, start, size_sent, size_back = [], 0, fixed, 0
    for i in range(n):
        if fixed + sent[i] > limit or back[i] > limit:
            biggest = max(fixed + sent[i], back[i])
            raise FutureLensError(
                f"One item of this job {'sends' if fixed + sent[i] > limit else 'returns'} {biggest / 2**20:.3g} MB, "
                f"over the request bound lm.max_request_mb={lm.max_request_mb:g} (--max-request-mb): {lower}, "
                "or raise the bound."
            )
        if i > start and (size_sent + sent[i] > limit or size_back + back[i] > limit):
            out.append((start, i))
            start, size_sent, size_back = i, fixed, 0
        size_sent += sent[i]
        size_back += back[i]
    out.append((start, n))
    return out


def request_spans(lm: Any, items: list, fixed: Any = None, *, result: "int | Sequence[int]" = 0,
                  lower: str = "use a smaller batch_size") -> list[tuple[int, int]]:
    """`spans` over ``items`` by the tensors each carries (plus ``fixed``, sent with each); ``result`` as in `spans`."""
    return spans(lm, len(items), payload=[payload_bytes(i) for i in items], result=result, fixed=payload_bytes(fixed),
                 lower=lower)


def stream_requests(lm: Any, items: Iterable, *, size: Callable[[Any], int] = payload_bytes,
                    fixed: Callable[[], int] = lambda: 0, most: int | None = None) -> Iterator[list]:
    """Group a stream of ``items`` into requests as they come: each list sends at most ``lm.max_request_mb``
    (remotely; locally only ``most`` bounds it) and holds at most ``most`` items.

    ``size(item)`` is what an item sends; ``fixed()`` what travels with every request besides its items, read
    again as each new request starts: a request's results may change it before the next one is grouped (training's
    prompt and optimizer state, carried from request to request). The caller runs each list before asking for the
    next. Unlike `spans`, an item over the bound alone still forms a request (`run_job` then refuses it).
    """
    limit = lm.max_request_mb * 2**20 if lm.remote else float("inf")
    chunk: list = []
    total = fixed()
    for item in items:
        nbytes = size(item)
        if chunk and ((most is not None and len(chunk) >= most) or total + nbytes > limit):
            yield chunk
            chunk, total = [], fixed()
        chunk.append(item)
        total += nbytes
    if chunk:
        yield chunk


def run_job(lm: Any, fn: Any, *args: Any) -> Any:
    """Run ``fn(lm.nn, lm.spec(), *args)`` as one job: a plain call locally, ONE nnsight session (request) remotely.

    ``fn`` is a function of `futurelens.server` (its rule says what it may be): remotely,
    every trace it opens and the Python between them (loops, optimizer steps, reductions)
    run on the server inside the session; only its return value comes back, so it
    reduces there. futurelens' own source travels with the request (``nnsight.register``).
    NDIF failures become a `FutureLensError` that says what to do.
    """
    model, spec = lm.nn, lm.spec()
    if not lm.remote:
        return fn(model, spec, *args)
    size = payload_bytes(args)
    if size > lm.max_request_mb * 2**20:
        raise FutureLensError(
            f"This request would send {size / 2**20:.3g} MB to NDIF, over lm.max_request_mb={lm.max_request_mb:g}: "
            "pass fewer or shorter inputs per call (a smaller batch or chunk), or raise lm.max_request_mb."
        )
    import nnsight

    nnsight.register("futurelens")
    # Inside the session the traces are plain (the session is the request), and the head
    # runs inside traces rather than as direct module calls.
    spec = dict(spec, remote=False, direct=False)
    with ndif_errors(lm.name):
        with model.session(remote=lm.remote):
            result = nnsight.save(fn(model, spec, *args))
    return result
