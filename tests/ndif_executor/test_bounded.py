"""Remote work in requests of bounded size, and a remote run that fails part-way resumes to the same result.

Through NDIF's own executor (`server.py`): the bytes are nnsight's real request payloads.
"""

from __future__ import annotations

import pytest
import torch
from conftest import synthetic_prefixes
from ndif_executor.backend import ExecutorBackend
from nnsight.intervention.backends.remote import RemoteError

import futurelens as fl
from futurelens.data.states import CacheConfig, StateCache, build_cache
from futurelens.evaluate import EvalConfig, evaluate
from futurelens.train import TrainConfig, train_prompt

LIMIT_MB = 0.004  # 4 KB of tensors per request, so a tiny run still needs many requests
CODE_KB = 120  # what a request carries besides its tensors: the job's source and the model's envoy tree
RESULT_KB = 8  # torch.save's framing around a result's tensors


@pytest.fixture
def setup(ndif_pair, ndif_server, tokenizer, tmp_path):
    remote, local = ndif_pair("llama")
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, remote.name, n=40, n_max=2)
    cache = StateCache(build_cache(local, CacheConfig(data=str(data), out=str(tmp_path / "cache"), layers=[2]), progress=False))
    ndif_server.requests.clear()
    return remote, local, data, cache


def train_cfg(out):
    return TrainConfig(out=str(out), prompt_len=3, lr=5e-2, epochs=2, batch_size=4, grad_accum=3, checkpoint_every=1000)


def test_training_is_many_bounded_requests_and_resumes_identically(setup, ndif_server, tmp_path, monkeypatch):
    remote, local, _, cache = setup
    remote.max_request_mb = LIMIT_MB
    whole, whole_losses = train_prompt(remote, cache, 2, train_cfg(tmp_path / "whole"), progress=False)
    sizes = [r["bytes"] for r in ndif_server.requests]
    assert len(sizes) >= 8  # 30 train rows, batch 4, 2 epochs = 16 batches of ~2 KB each
    assert max(sizes) <= LIMIT_MB * 2**20 + CODE_KB * 1024, sizes
    # The same steps as one local run: chunking carries the optimizer state and the accumulated gradient.
    local_prompt, local_losses = train_prompt(local, cache, 2, train_cfg(tmp_path / "local"), progress=False)
    torch.testing.assert_close(whole, local_prompt, rtol=1e-4, atol=1e-6)
    assert whole_losses == pytest.approx(local_losses, rel=1e-4)

    real, calls = ExecutorBackend.request, []

    def fails_on_the_fourth(self, request, tracer):
        calls.append(1)
        if len(calls) == 4:
            raise RemoteError("Service temporarily unavailable")
        return real(self, request, tracer)

    monkeypatch.setattr(ExecutorBackend, "request", fails_on_the_fourth)
    with pytest.raises(fl.FutureLensError, match="Could not reach NDIF|unavailable"):
        train_prompt(remote, cache, 2, train_cfg(tmp_path / "resumed"), progress=False)
    assert (tmp_path / "resumed" / "layer-2.ckpt.pt").exists()
    ndif_server.requests.clear()
    resumed, resumed_losses = train_prompt(remote, cache, 2, train_cfg(tmp_path / "resumed"), progress=False)
    assert len(ndif_server.requests) == len(sizes) - 3  # only what had not finished ran again
    assert torch.equal(resumed, whole) and resumed_losses == whole_losses


def test_cache_and_evaluation_requests_stay_bounded_and_match(setup, ndif_server, tmp_path):
    remote, local, data, cache = setup
    remote.max_request_mb = LIMIT_MB
    got = StateCache(build_cache(remote, CacheConfig(data=str(data), out=str(tmp_path / "remote"), layers=[2], shard_size=16),
                                 progress=False))
    # A cache request's result is the big part: rows of (1 layer + N + 1) x d float32 = 512 B, 8 rows a request.
    assert len(ndif_server.requests) >= 40 / 8
    assert max(r["result"] for r in ndif_server.requests) <= LIMIT_MB * 2**20 + RESULT_KB * 1024
    for split in ("train", "test"):
        torch.testing.assert_close(got.load(2, split, final=True).final, cache.load(2, split, final=True).final,
                                   rtol=1e-4, atol=1e-5)

    ndif_server.requests.clear()
    # The linear map ([N + 1, d + 1, d], 12.7 KB here) travels with every scoring request, then ~1 KB per batch of 2.
    remote.max_request_mb = 0.016
    cfg = dict(cache=cache.path, layers=[2], methods=["linear", "fixed"], k=3, batch_size=2)
    a = evaluate(EvalConfig(out=str(tmp_path / "eval-remote"), **cfg), lm=remote, progress=False)
    assert len(ndif_server.requests) > 1
    assert max(r["bytes"] for r in ndif_server.requests) <= 0.016 * 2**20 + CODE_KB * 1024
    b = evaluate(EvalConfig(out=str(tmp_path / "eval-local"), **cfg), lm=local, progress=False)
    assert a.value.tolist() == pytest.approx(b.value.tolist(), rel=1e-4, abs=1e-5, nan_ok=True)


def test_a_request_over_the_bound_is_refused_before_sending(setup, ndif_server):
    remote, *_ = setup
    remote.max_request_mb = LIMIT_MB
    state = torch.randn(1000, remote.d_model)  # 125 KB
    with pytest.raises(fl.FutureLensError, match="max_request_mb"):
        fl.patch(remote, state, 1, target=[[5, 6]])
    assert ndif_server.requests == []
