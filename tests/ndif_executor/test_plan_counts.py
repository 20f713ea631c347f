"""`futurelens plan`'s NDIF requests and bytes each way equal those of the real remote stages, exactly.

The stages run remotely (labelling, the state cache, soft-prompt training, evaluation's scoring of every method that
needs the model or is scored by it, the lens page with learned and with the fixed prompt) through NDIF's own executor
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
from futurelens.evaluate import EvalConfig, evaluate
from futurelens.lens import lens_grid
from futurelens.train import TrainConfig, train_prompt

LIMIT_MB = 0.002  # 2 KiB of tensors a request: each stage becomes many requests, split by the bound
TRAIN_LIMIT_MB = 0.006  # training carries the prompt and its AdamW state (1.1 KiB here) and 2 KiB batches
EVAL_LIMIT_MB = 0.006  # a scoring batch of 2 rows is ~2 KiB here (states, final states, mapped rows, ids)
LENS_LIMIT_MB = 0.0006  # a lens grid row returns 240 B here and sends its 384 B soft prompt
LENS_TEXT = "The Python interpreter reads"
EVAL_METHODS = ["ngram", "vocab", "linear", "fixed", "learned"]


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
    measured.clear()
    # Scoring at two layers (the bigram at the first only; the learned prompt only where one was trained: layer 2).
    remote.max_request_mb = EVAL_LIMIT_MB
    evaluate(EvalConfig(cache=str(cache.path), prompts=train_cfg.out, out=str(tmp_path / "eval"), layers=[1, 2],
                        methods=EVAL_METHODS, k=3, batch_size=2, vocab_epochs=1), lm=remote, progress=False)
    eval_log = list(measured)
    measured.clear()
    remote.max_request_mb = LENS_LIMIT_MB
    g = torch.Generator().manual_seed(3)
    soft = {layer: torch.randn(3, remote.d_model, generator=g) for layer in range(remote.n_layers + 1)}  # one each
    lens_grid(remote, LENS_TEXT, soft, rollout=2, top_k=3)
    lens_log = list(measured)
    measured.clear()
    lens_grid(remote, LENS_TEXT, None, rollout=2, top_k=3)
    fixed_lens_log = list(measured)

    p = fl.plan(model=remote.name, remote=True, max_request_mb=LIMIT_MB, data=data_cfg.out, n_max=2, min_len=3,
                max_len=9, layers=[1, 2], prompt_layers=[2], prompt_len=3, epochs=2, train_batch_size=4,
                data_batch_size=6, data_shard_size=24, cache_shard_size=8, methods=[], calibrate=False, states="ship")
    p_train = fl.plan(p.cfg, max_request_mb=TRAIN_LIMIT_MB)
    p_eval = fl.plan(p.cfg, max_request_mb=EVAL_LIMIT_MB, methods=EVAL_METHODS, eval_layers=[1, 2], eval_batch_size=2, k=3)
    lens = dict(max_request_mb=LENS_LIMIT_MB, lens_text=LENS_TEXT, lens_top_k=3, rollout=2)
    p_lens, p_fixed_lens = fl.plan(p.cfg, lens_prompts="learned", **lens), fl.plan(p.cfg, lens_prompts="fixed", **lens)
    checks = (("data", p, data_log), ("cache", p, cache_log), ("train", p_train, train_log),
              ("eval: linear", p_eval, eval_log), ("lens", p_lens, lens_log), ("lens", p_fixed_lens, fixed_lens_log))
    for name, plan, log in checks:
        row = plan.stage(name)
        assert row["exact"], name
        assert len(log) > (3 if name != "lens" else 1), (name, log)  # the bound made it many requests
        assert planned(row) == totals(log), name
        print(f"{name}: planned {planned(row)}, measured {totals(log)}")
    # the rows that share scoring's requests carry none of their own
    assert all(r["requests"] is None for r in p_eval.rows if r["name"].startswith("eval:") and r["name"] != "eval: linear")
