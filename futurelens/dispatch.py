"""Sending work to the model: a server function as ONE job (`run_job`), and work split into requests by size (`spans`).

THE RULE: every stage that runs on NDIF sends its work through `run_job`, and splits it with `spans` (or
`request_spans`, its form for a list of tensors) so that no request sends or returns more than
``lm.max_request_mb``. No other module does byte arithmetic for requests. Locally the same calls are plain
function calls over one span, so local and remote runs take the same path.
"""

from __future__ import annotations

from typing import Any, Sequence

from .errors import FutureLensError
from .ndif_errors import ndif_errors

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


def request_spans(lm: Any, items: list, fixed: Any = None) -> list[tuple[int, int]]:
    """`spans` over ``items`` by the tensors each carries (plus ``fixed``, sent with each)."""
    return spans(lm, len(items), payload=[payload_bytes(i) for i in items], fixed=payload_bytes(fixed),
                 lower="use a smaller batch_size")


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
