"""Remote training with the source states recomputed by the server from the prefix ids (``--states recompute``)
gives the shipped-states way's prompt and losses, through NDIF's own executor under its production whitelist;
its requests carry ids, not states, and the byte formulas are what travels."""

from __future__ import annotations

import pytest
import torch
from conftest import synthetic_prefixes

import futurelens as fl
from futurelens.data.states import CacheConfig, StateCache, build_cache
from futurelens.train import TrainConfig, train_prompt
from futurelens.train_states import (
    choose_states,
    recompute_bytes_per_row,
    recompute_flops_per_row,
    resolve_states,
    ship_bytes_per_row,
)


def cfg(out, states, loss="kl"):
    return TrainConfig(out=str(out), prompt_len=3, lr=5e-2, epochs=2, batch_size=4, grad_accum=2, loss=loss,
                       checkpoint_every=3, states=states)


@pytest.mark.parametrize("loss", ["kl", "ce"])
def test_recomputed_states_train_the_shipped_states_prompt(ndif_pair, ndif_server, tokenizer, tmp_path, loss):
    remote, local = ndif_pair("llama")  # whitelist mode: NDIF's trusted path under its import whitelist
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, remote.name, n=40, n_max=2)
    cache = StateCache(build_cache(local, CacheConfig(data=str(data), out=str(tmp_path / "cache"), layers=[2]),
                                   progress=False))
    ndif_server.requests.clear()
    shipped, shipped_losses = train_prompt(remote, cache, 2, cfg(tmp_path / "ship", "ship", loss), progress=False)
    ship_bytes, ship_requests = sum(r["bytes"] for r in ndif_server.requests), len(ndif_server.requests)
    ndif_server.requests.clear()
    again, again_losses = train_prompt(remote, cache, 2, cfg(tmp_path / "re", "recompute", loss), progress=False)
    re_bytes = sum(r["bytes"] for r in ndif_server.requests)
    n_requests = len(ndif_server.requests)
    batches = 2 * -(-cache.size("train") // 4)  # two epochs of batches of 4, three batches a request (checkpoint_every)
    assert n_requests == ship_requests == -(-batches // 3)
    torch.testing.assert_close(again, shipped, rtol=1e-4, atol=1e-6)
    assert again_losses == pytest.approx(shipped_losses, rel=1e-4)
    assert re_bytes < ship_bytes  # ids instead of states
    # and the local run of the same settings (the reference both equal)
    local_prompt, _ = train_prompt(local, cache, 2, cfg(tmp_path / "local", "ship", loss), progress=False)
    torch.testing.assert_close(again, local_prompt, rtol=1e-4, atol=1e-6)


def test_the_choice_is_a_pure_function_of_bytes_and_compute():
    # 70B, KL, float16, 52-token prefixes: 82 KB a row against a quarter KB and 7.8 TFLOP: shipping is faster at 10 MB/s
    ship, ids = ship_bytes_per_row(8192, 3, "kl", "float16"), recompute_bytes_per_row(52, 3)
    assert ship == 8192 * 2 * 5 + 32 and ids == 4 * 52 + 8 + 32
    flops = recompute_flops_per_row(70.6e9, 52, 3)
    assert flops == 2 * 70.6e9 * 55
    assert choose_states(ship, ids, flops) == "ship"
    assert choose_states(ship, ids, flops, upload_mb_s=0.5) == "recompute"  # a slow uplink
    gptj = ship_bytes_per_row(4096, 3, "kl", "float16"), recompute_bytes_per_row(52, 3), recompute_flops_per_row(6.05e9, 52, 3)
    assert choose_states(*gptj, upload_mb_s=1.0) == "recompute" and choose_states(*gptj, upload_mb_s=100) == "ship"


def test_auto_ships_locally_and_bad_choices_are_refused(tiny_cache):
    lm, _, cache = tiny_cache("llama", n=20)
    assert resolve_states("auto", lm, cache, "kl") == "ship" and resolve_states("recompute", lm, cache, "kl") == "recompute"
    with pytest.raises(fl.FutureLensError, match="states must be one of auto, ship, recompute"):
        resolve_states("send", lm, cache, "kl")
