"""`futurelens plan`'s NDIF requests and bytes each way equal those of the real remote stages, exactly.

The stages run remotely (labelling, the state cache, soft-prompt training) through NDIF's own executor
(`server.py`) on a tiny model, under a small request bound so each is many requests. What they send and
receive is counted at the backend boundary (`ExecutorBackend.request`), independently of futurelens'
byte accounting: the tensors (``numel * element_size``) and token-id rows (8 bytes an id, as the bound
counts them) among the variables nnsight ships with the request (`reduce_block`: only what the traced
code names), and the tensors in the result nnsight hands back. ``plan(data=<the table>)`` must predict
the same number of requests and the same bytes each way, stage by stage.
"""

from __future__ import annotations

import pytest
import torch
from ndif_executor.backend import ExecutorBackend
from nnsight.intervention.serialization import reduce_block

import futurelens as fl
from futurelens.data.prefixes import DataConfig, build_prefixes
from futurelens.data.states import CacheConfig, StateCache, build_cache
from futurelens.train import TrainConfig, train_prompt

LIMIT_MB = 0.002  # 2 KiB of tensors a request: each stage becomes many requests, split by the bound
TRAIN_LIMIT_MB = 0.006  # training carries the prompt and its AdamW state (1.1 KiB here) and 2 KiB batches


def _rows_of_ids(obj) -> bool:
    return isinstance(obj, list) and bool(obj) and all(
        isinstance(r, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in r) for r in obj)


def wire_bytes(obj, seen=None) -> int:
    """Tensors at numel x element size and rows of token ids at 8 bytes an id, anywhere in ``obj``; each object once."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if _rows_of_ids(obj):
        return 8 * sum(len(r) for r in obj)
    if isinstance(obj, dict):
        return sum(wire_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(wire_bytes(v, seen) for v in obj)
    return 0


@pytest.fixture
def measured(monkeypatch):
    """Every request's ``(sent, returned)`` bytes, counted where nnsight hands the request to the transport."""
    log: list[tuple[int, int]] = []
    real = ExecutorBackend.request

    def counting(self, request, tracer):
        _, _, variables = reduce_block(tracer.node, tracer.info.frame.f_globals, dict(tracer.info.frame.f_locals))
        sent = wire_bytes(variables)
        result = real(self, request, tracer)
        log.append((sent, wire_bytes(result)))
        return result

    monkeypatch.setattr(ExecutorBackend, "request", counting)
    return log


def totals(log: list[tuple[int, int]]) -> dict[str, int]:
    return {"requests": len(log), "sent": sum(s for s, _ in log), "returned": sum(r for _, r in log)}


def planned(row: dict) -> dict[str, int]:
    q = row["requests"]
    assert q is not None and "error" not in q, q
    return {k: q[k] for k in ("requests", "sent", "returned")}


def test_plan_counts_equal_the_remote_stages(ndif_pair, measured, tmp_path):
    remote, _ = ndif_pair("llama")
    remote.max_request_mb = LIMIT_MB
    # No correctness filter: every candidate drawn is labelled and kept, so the table holds all of them in order.
    data_cfg = DataConfig(model=remote.name, out=str(tmp_path / "data"), n_prefixes=40, min_len=3, max_len=9, n_max=2,
                          filter_correct=False, batch_size=6, shard_size=24, test_fraction=0.25)
    build_prefixes(remote, data_cfg, progress=False)
    data_log = list(measured)
    measured.clear()
    cache = StateCache(build_cache(remote, CacheConfig(data=data_cfg.out, out=str(tmp_path / "cache"), layers=[1, 2],
                                                       shard_size=8), progress=False))
    cache_log = list(measured)
    measured.clear()
    remote.max_request_mb = TRAIN_LIMIT_MB
    train_cfg = TrainConfig(out=str(tmp_path / "prompts"), prompt_len=3, epochs=2, batch_size=4,
                            states="ship")
    train_prompt(remote, cache, 2, train_cfg, progress=False)
    train_log = list(measured)

    p = fl.plan(model=remote.name, remote=True, max_request_mb=LIMIT_MB, data=data_cfg.out, n_max=2, min_len=3,
                max_len=9, layers=[1, 2], prompt_layers=[2], prompt_len=3, epochs=2, train_batch_size=4,
                data_batch_size=6, data_shard_size=24, cache_shard_size=8, methods=[], calibrate=False, states="ship")
    p_train = fl.plan(p.cfg, max_request_mb=TRAIN_LIMIT_MB)
    for name, log in (("data", data_log), ("cache", cache_log), ("train", train_log)):
        row = (p_train if name == "train" else p).stage(name)
        assert row["exact"], name
        assert len(log) > 3, (name, log)  # the bound made it many requests
        assert planned(row) == totals(log), name
        print(f"{name}: planned {planned(row)}, measured {totals(log)}")
