"""Every remote operation, executed by NDIF's own server code, equals the same call run here.

The remote model is what ``load_model(folder, remote=True)`` builds (weightless); its
requests are nnsight's real payloads, run by the ``ndif`` package's in-process executor
in a Python 3.12 process where futurelens cannot be imported (`server.py`), under NDIF's
production import whitelist (`protector.py`; the plain trusted path once more for one
architecture). The reference is the same checkpoint loaded and run here.
"""

from __future__ import annotations

import sys

import cloudpickle
import pytest
import torch
from conftest import synthetic_prefixes

import futurelens as fl
from futurelens.data.states import CacheConfig, StateCache, build_cache
from futurelens.evaluate import EvalConfig, evaluate
from futurelens.lens import lens_grid
from futurelens.train import TrainConfig, train_prompt

KINDS = ("gptj", "llama", "mamba")
PREFIXES = [[5, 17, 300, 42], [9, 8, 7], [11, 250, 31, 4, 60, 2]]
CONTS = [[1, 2], [3, 4], [5, 6]]


def close(got, want):
    torch.testing.assert_close(got.float().cpu(), want.float().cpu(), rtol=1e-4, atol=1e-5)


@pytest.fixture
def bytecode_functions(monkeypatch):
    """Names of functions a request shipped as CPython bytecode (no source): they break across Python versions."""
    seen: list[str] = []
    original = cloudpickle.CloudPickler._dynamic_function_reduce

    def recording(self, func):
        seen.append(f"{func.__module__}.{func.__qualname__}")
        return original(self, func)

    monkeypatch.setattr(cloudpickle.CloudPickler, "_dynamic_function_reduce", recording)
    return seen


@pytest.mark.parametrize("kind, mode", [(kind, "whitelist") for kind in KINDS] + [("llama", "trusted")])
def test_primitives_match_local(ndif_pair, ndif_server, bytecode_functions, kind, mode):
    remote, local = ndif_pair(kind, mode)
    assert remote.device.type == "meta"  # nothing of the model is here: the server has it
    # The server's Python is 3.12: a client on another Python is told what that means for its own code.
    assert bool(remote.load_warnings) == (sys.version_info[:2] != (3, 12))

    close(fl.cache(remote, PREFIXES, layers=[0, 2, 3]), fl.cache(local, PREFIXES, layers=[0, 2, 3]))
    (s_r, f_r), (s_l, f_l) = fl.cache_ahead(remote, PREFIXES, CONTS, layers=[1]), fl.cache_ahead(local, PREFIXES, CONTS, layers=[1])
    close(s_r, s_l)
    close(f_r, f_l)
    close(fl.token_states(remote, PREFIXES[2], layers=[3, 0]), fl.token_states(local, PREFIXES[2], layers=[3, 0]))
    close(fl.decode(remote, f_l[:, 0]), fl.decode(local, f_l[:, 0]))
    assert torch.equal(fl.greedy(remote, PREFIXES, 3), fl.greedy(local, PREFIXES, 3))

    state = s_l[0]
    soft = torch.randn(1, 4, remote.d_model, generator=torch.Generator().manual_seed(1))
    soft = soft.expand(3, -1, -1) * torch.tensor([1.0, 1.0, 2.0])[:, None, None]  # two rows share a prompt
    for kwargs in (
        dict(layer=2, target=[[7, 8, 9, 10]], position=1, read=[1, 3]),
        dict(layer=1, target=[[7, 8, 9]], top_k=5, rollout=3),
        dict(layer=2, soft_prompt=soft[0], target=[[3]], rollout=2),
        dict(layer=[1, 3, 1], soft_prompt=soft, top_k=4, rollout=2),
        dict(layer=0, target=[[4, 5, 6]]),
    ):
        got, want = fl.patch(remote, state, **kwargs), fl.patch(local, state, **kwargs)
        for field in ("logits", "top_probs", "rollout_probs"):
            if getattr(want, field) is not None:
                close(getattr(got, field), getattr(want, field))
        for field in ("top_ids", "rollout_ids"):
            if getattr(want, field) is not None:
                assert torch.equal(getattr(got, field), getattr(want, field)), (kwargs, field)
    # The shared-prefix path: one soft prompt for every row, chunks smaller than the batch.
    got = fl.rollout(remote, state, [2, 1, 2], soft_prompt=soft[0], n=3, chunk_size=2)
    want = fl.rollout(local, state, [2, 1, 2], soft_prompt=soft[0], n=3, chunk_size=2)
    assert torch.equal(got[0], want[0])
    close(got[1], want[1])

    assert ndif_server.requests and all(r["mode"] == mode for r in ndif_server.requests)
    assert not [f for f in bytecode_functions if f.startswith("futurelens")], bytecode_functions


@pytest.mark.parametrize("kind", KINDS)
def test_stages_match_local(ndif_pair, ndif_server, tokenizer, tmp_path, bytecode_functions, kind):
    """The four jobs that NDIF's executor used to reject: a cache shard, training, evaluation, the lens."""
    remote, local = ndif_pair(kind)
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, remote.name, n=24, n_max=2)
    caches = {}
    for name, lm in (("remote", remote), ("local", local)):
        out = build_cache(lm, CacheConfig(data=str(data), out=str(tmp_path / f"cache-{name}"), layers=[1, 2], shard_size=16),
                          progress=False)
        caches[name] = StateCache(out)
    for split in ("train", "test"):
        a, b = caches["remote"].load(2, split, final=True), caches["local"].load(2, split, final=True)
        close(a.states, b.states)
        close(a.final, b.final)

    cfg = dict(prompt_len=3, lr=5e-2, epochs=2, batch_size=8, grad_accum=2, checkpoint_every=2)
    prompts = {}
    for name, lm in (("remote", remote), ("local", local)):
        prompts[name] = train_prompt(lm, caches["local"], 2, TrainConfig(out=str(tmp_path / f"prompts-{name}"), **cfg),
                                     progress=False)
    close(prompts["remote"][0], prompts["local"][0])
    assert prompts["remote"][1] == pytest.approx(prompts["local"][1], rel=1e-4)

    tables = {}
    for name, lm in (("remote", remote), ("local", local)):
        tables[name] = evaluate(
            EvalConfig(cache=caches["local"].path, prompts=str(tmp_path / "prompts-local"), out=str(tmp_path / f"eval-{name}"),
                       layers=[2], methods=["ngram", "vocab", "linear", "fixed", "learned"], k=3, vocab_epochs=1),
            lm=lm, progress=False,
        )
    a, b = tables["remote"], tables["local"]
    assert a[["method", "layer", "n", "metric", "k"]].equals(b[["method", "layer", "n", "metric", "k"]])
    assert a.value.tolist() == pytest.approx(b.value.tolist(), rel=1e-4, abs=1e-5, nan_ok=True)

    grids = [lens_grid(lm, PREFIXES[2], {1: prompts["local"][0], 2: prompts["local"][0]}, rollout=2, top_k=3)
             for lm in (remote, local)]
    assert grids[0].phrase_tokens == grids[1].phrase_tokens and grids[0].top_tokens == grids[1].top_tokens
    close(torch.tensor(grids[0].top_probs), torch.tensor(grids[1].top_probs))

    assert all(r["mode"] == "whitelist" for r in ndif_server.requests)
    assert not [f for f in bytecode_functions if f.startswith("futurelens")], bytecode_functions
