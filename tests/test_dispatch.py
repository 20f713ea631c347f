"""`futurelens.dispatch`'s sizing helpers, the one place request bytes are counted, against torch's own byte
counts and hand-counted groupings."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import futurelens as fl
from futurelens.dispatch import ids_bytes, payload_bytes, request_spans, spans, stream_requests, tensor_bytes, top_bytes


def remote(mb: float) -> SimpleNamespace:
    return SimpleNamespace(remote=True, max_request_mb=mb)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, "float16", "int32"])
def test_tensor_bytes_is_what_torch_allocates(dtype):
    made = torch.zeros(3, 5, 7, dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    assert tensor_bytes(3, 5, 7, dtype=dtype) == made.nbytes == payload_bytes(made)
    assert tensor_bytes(dtype=dtype) == made.element_size()
    assert ids_bytes(11) == torch.zeros(11, dtype=torch.long).nbytes
    assert top_bytes(4) == torch.zeros(4).nbytes + torch.zeros(4, dtype=torch.long).nbytes


def test_request_spans_bound_what_goes_and_what_comes_back():
    lm = remote(100 / 2**20)  # 100 bytes a request
    items = [torch.zeros(5) for _ in range(7)]  # 20 bytes each
    assert request_spans(lm, items) == [(0, 5), (5, 7)]  # 5 x 20 = 100 fits, a sixth does not
    assert request_spans(lm, items, fixed=torch.zeros(10)) == [(0, 3), (3, 6), (6, 7)]  # 40 + 3 x 20
    assert request_spans(lm, items, result=30) == [(0, 3), (3, 6), (6, 7)]  # 3 x 30 = 90 back
    with pytest.raises(fl.FutureLensError, match="returns .* over the request bound"):
        request_spans(lm, items, result=101)
    assert spans(SimpleNamespace(remote=False, max_request_mb=1e-9), 7, payload=10**9) == [(0, 7)]  # local: one


def test_stream_requests_reads_the_carried_state_again_for_each_request():
    lm = remote(100 / 2**20)
    carried = {"bytes": 0}
    groups = []
    for group in stream_requests(lm, iter(range(10)), size=lambda i: 20, fixed=lambda: carried["bytes"], most=4):
        groups.append(group)
        carried["bytes"] = 40  # after the first request the state it carries back travels with every later one
    # 4 (most) | then 40 + 3 x 20 = 100 | 3 | the last 0
    assert groups == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    local = SimpleNamespace(remote=False, max_request_mb=1e-9)
    assert [len(g) for g in stream_requests(local, range(10), size=lambda i: 10**9, most=4)] == [4, 4, 2]
