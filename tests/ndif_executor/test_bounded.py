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
    # states="ship": these requests carry the cached states (the recompute way is tests/ndif_executor/test_recompute.py)
    return TrainConfig(out=str(out), prompt_len=3, lr=5e-2, epochs=2, batch_size=4, grad_accum=3, checkpoint_every=1000,
                       states="ship")


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
    # The linear map ([N + 1, d + 1, d], 12.7 KB here) is applied on the client: only its mapped rows travel (~0.8 KB
    # per batch of 2, beside the batch's own ~1.6 KB), so a bound below the map's size holds every scoring request
    # (when the map travelled with each, this bound refused the first one).
    remote.max_request_mb = 0.008
    cfg = dict(cache=cache.path, layers=[2], methods=["ngram", "vocab", "linear", "fixed"], k=3, batch_size=2,
               vocab_epochs=1)
    a = evaluate(EvalConfig(out=str(tmp_path / "eval-remote"), **cfg), lm=remote, progress=False)
    assert len(ndif_server.requests) > 1
    assert max(r["bytes"] for r in ndif_server.requests) <= 0.008 * 2**20 + CODE_KB * 1024
    assert max(r["result"] for r in ndif_server.requests) <= 0.008 * 2**20 + RESULT_KB * 1024
    b = evaluate(EvalConfig(out=str(tmp_path / "eval-local"), **cfg), lm=local, progress=False)
    assert a[["method", "layer", "n", "metric", "k"]].equals(b[["method", "layer", "n", "metric", "k"]])
    assert a.value.tolist() == pytest.approx(b.value.tolist(), rel=1e-4, abs=1e-5, nan_ok=True)


def test_a_request_over_the_bound_is_refused_before_sending(setup, ndif_server):
    remote, *_ = setup
    remote.max_request_mb = LIMIT_MB
    state = torch.randn(1000, remote.d_model)  # 125 KB
    with pytest.raises(fl.FutureLensError, match="max_request_mb"):
        fl.patch(remote, state, 1, target=[[5, 6]])
    assert ndif_server.requests == []


def test_results_over_the_bound_are_split_and_equal_one_call(ndif_pair, ndif_server):
    """cache, cache_ahead, token_states, decode, greedy and the lens: a result over max_request_mb comes back in
    several requests, each under the bound, and equals what one request (and the local model) gives."""
    from futurelens.lens import lens_grid

    remote, local = ndif_pair("llama")
    g = torch.Generator().manual_seed(7)
    prefixes = [torch.randint(5, 400, (int(n),), generator=g).tolist() for n in torch.randint(2, 9, (48,), generator=g)]
    conts = torch.randint(5, 400, (48, 2), generator=g)
    row = torch.randint(5, 400, (40,), generator=g).tolist()
    hidden = torch.randn(2, 3, remote.d_model, generator=g)
    soft = torch.randn(3, remote.d_model, generator=g)
    calls = {
        # name: (call, bound in MB small enough that one request's result would exceed it)
        "cache": (lambda lm: fl.cache(lm, prefixes), 0.004),
        "cache_ahead": (lambda lm: torch.cat([t.flatten() for t in fl.cache_ahead(lm, prefixes, conts, layers=[1, 3])]), 0.004),
        "token_states": (lambda lm: fl.token_states(lm, row), 0.002),
        "decode": (lambda lm: fl.decode(lm, hidden), 0.5),
        "greedy": (lambda lm: fl.greedy(lm, prefixes[:12], 3), 0.0002),
        "lens": (lambda lm: lens_grid(lm, row[:6], {1: soft, 2: soft, 3: soft}, rollout=2, top_k=3), 0.0006),
    }
    for name, (call, bound) in calls.items():
        remote.max_request_mb = 32.0
        ndif_server.requests.clear()
        whole = call(remote)
        one = len(ndif_server.requests)
        remote.max_request_mb = bound
        ndif_server.requests.clear()
        split = call(remote)
        results = [r["result"] for r in ndif_server.requests]
        assert len(results) > one, (name, one, results)
        assert max(results) <= bound * 2**20 + RESULT_KB * 1024, (name, results)
        want = call(local)
        if name == "lens":
            for got in (whole, split):
                assert got.phrase_tokens == want.phrase_tokens and got.top_tokens == want.top_tokens, name
                torch.testing.assert_close(torch.tensor(got.top_probs), torch.tensor(want.top_probs), rtol=1e-4, atol=1e-5)
        else:
            # Equal to float rounding: a split batch pads its rows to another width.
            torch.testing.assert_close(split.float(), whole.float(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(split.float(), want.float(), rtol=1e-4, atol=1e-5)
