"""The same requests through NDIF's process sandbox (how NDIF runs requests from keys it does not trust).

The block runs in a fresh runner process holding a weightless model, and the stand-in
server drives the real model for it over a socket (``ndif.services.ray.sandbox``). Each
operation either matches the local run, or futurelens refuses it with a message naming
the operation and what to do, never a server traceback.
"""

from __future__ import annotations

import pytest
import torch
from conftest import synthetic_prefixes

import futurelens as fl
from futurelens.data.states import CacheConfig, StateCache, build_cache
from futurelens.evaluate import EvalConfig, evaluate
from futurelens.lens import lens_grid
from futurelens.train import TrainConfig, train_prompt

PREFIXES = [[5, 17, 300, 42], [9, 8, 7], [11, 250, 31, 4, 60, 2]]


def close(got, want):
    torch.testing.assert_close(got.float().cpu(), want.float().cpu(), rtol=1e-4, atol=1e-5)


def test_sandboxed_primitives_match_local(ndif_pair, ndif_server):
    remote, local = ndif_pair("gptj", "sandbox")
    (s_r, f_r), (s_l, f_l) = (fl.cache_ahead(lm, PREFIXES, [[1, 2]] * 3, layers=[0, 2]) for lm in (remote, local))
    close(s_r, s_l)
    close(f_r, f_l)
    close(fl.token_states(remote, PREFIXES[2], layers=[1]), fl.token_states(local, PREFIXES[2], layers=[1]))
    # The head runs without tracer.stop() there: a stopped trace ends the runner's session.
    close(fl.decode(remote, f_l[:, 0]), fl.decode(local, f_l[:, 0]))
    assert torch.equal(fl.greedy(remote, PREFIXES, 2), fl.greedy(local, PREFIXES, 2))
    soft = torch.randn(4, remote.d_model, generator=torch.Generator().manual_seed(3))
    got, want = (fl.patch(lm, s_l[1], [1, 2, 1], soft_prompt=soft, top_k=3, rollout=2) for lm in (remote, local))
    close(got.top_probs, want.top_probs)
    assert torch.equal(got.top_ids, want.top_ids)
    # A patch written inside generate does not reach the tokens in the sandbox; futurelens rolls out by forwards there.
    assert torch.equal(got.rollout_ids, want.rollout_ids)
    close(got.rollout_probs, want.rollout_probs)
    assert {r["mode"] for r in ndif_server.requests} == {"sandbox"}


def test_sandboxed_stages_match_local_or_are_refused_clearly(ndif_pair, tokenizer, tmp_path):
    remote, local = ndif_pair("gptj", "sandbox")
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, remote.name, n=12, n_max=1)
    cfg = dict(data=str(data), layers=[2], shard_size=16)
    cache_r = StateCache(build_cache(remote, CacheConfig(out=str(tmp_path / "cache-r"), **cfg), progress=False))
    cache_l = StateCache(build_cache(local, CacheConfig(out=str(tmp_path / "cache-l"), **cfg), progress=False))
    close(cache_r.load(2, "test", final=True).final, cache_l.load(2, "test", final=True).final)

    # No gradient comes back through the sandbox's socket: training is refused, naming what to do.
    with pytest.raises(fl.FutureLensError) as info:
        train_prompt(remote, cache_l, 2, TrainConfig(out=str(tmp_path / "p"), prompt_len=3, epochs=1, batch_size=8),
                     progress=False)
    message = str(info.value)
    assert "training" in message and "trusted key" in message and "remote=False" in message
    assert "Traceback" not in message and "File " not in message

    prompt, _ = train_prompt(local, cache_l, 2, TrainConfig(out=str(tmp_path / "p"), prompt_len=3, epochs=1, batch_size=8),
                             progress=False)
    tables = [
        evaluate(EvalConfig(cache=cache_l.path, prompts=str(tmp_path / "p"), out=str(tmp_path / f"eval-{i}"), layers=[2],
                            methods=["linear", "fixed", "learned"], k=3), lm=lm, progress=False)
        for i, lm in enumerate((remote, local))
    ]
    assert tables[0].value.tolist() == pytest.approx(tables[1].value.tolist(), rel=1e-4, abs=1e-5, nan_ok=True)
    grids = [lens_grid(lm, PREFIXES[0], {2: prompt}, rollout=2, top_k=2) for lm in (remote, local)]
    assert grids[0].phrase_tokens == grids[1].phrase_tokens and grids[0].top_tokens == grids[1].top_tokens
