"""A user's own trace (`futurelens.trace_api`) executed by NDIF's own server code equals the same block run here.

``lm`` named in a remote block travels as ``(access.trace_view, (model, spec))`` and is rebuilt on the stand-in
server (Python 3.12, futurelens not importable, NDIF's production import whitelist) as the same trace methods; the
README's "Your own experiment" blocks run there verbatim. The reference is the same checkpoint loaded here.
"""

from __future__ import annotations

import pytest
import torch
from test_readme import run_block, section_blocks

import futurelens as fl

from .test_executor import bytecode_functions  # noqa: F401 - the fixture

KINDS = ("gptj", "llama", "mamba")
IDS = torch.tensor([[5, 17, 300, 42, 9, 8], [11, 250, 31, 4, 60, 2]])


def close(got, want):
    torch.testing.assert_close(got.float().cpu(), want.float().cpu(), rtol=1e-4, atol=1e-5)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def experiment(lm, soft, a, b, steer):
    """Reads at 0 / middle / last, a soft prompt with two patches and the head, a two-trace session."""
    n = lm.n_layers
    with lm.trace(IDS):
        first = lm.read_layer(0).save()
        middle = lm.read_layer(n // 2).save()
        last = lm.read_layer(-1).save()
    placeholders = torch.cat([torch.full((2, soft.shape[0]), lm.pad_id), IDS[:, :3]], 1)
    with lm.trace(placeholders):
        lm.write_prompt(soft)
        lm.write_layer(0, a, position=2)
        lm.write_layer(n, b, position=4)
        logits = lm.head(lm.read_layer(-1)).save()
        probs, ids = lm.top_k(lm.read_layer(-1)[:, -1], 5)
        probs, ids = probs.save(), ids.save()
        own = lm.nn.output.logits.save()
    with lm.session():
        with lm.trace(IDS):
            hidden = lm.read_layer(1)
            lm.write_layer(1, hidden + steer)
            lm.write_layer(2, torch.stack([a, b], 1), position=[1, 3])
            steered = lm.nn.output.logits.save()
        with lm.trace(IDS):
            lens = lm.head(lm.read_layer(-3)).save()  # a logit lens at layer 1 of 3, counted from the end
    return dict(first=first, middle=middle, last=last, logits=logits, probs=probs, ids=ids, own=own, steered=steered,
                lens=lens)


@pytest.mark.parametrize("kind, mode", [(kind, "whitelist") for kind in KINDS] + [("llama", "sandbox")])
def test_a_users_trace_runs_on_the_stand_in_server_as_here(ndif_pair, ndif_server, bytecode_functions, kind, mode):
    """Under the production whitelist (what NDIF runs), and in NDIF's process sandbox (its untrusted-key path)."""
    remote, local = ndif_pair(kind, mode)
    assert remote.device.type == "meta"  # nothing of the model is here
    soft = rand(3, local.embed_dim, seed=1)
    a, b, steer = rand(2, local.d_model, seed=2), rand(2, local.d_model, seed=3), rand(local.d_model, seed=4)
    got, want = experiment(remote, soft, a, b, steer), experiment(local, soft, a, b, steer)
    for key in want:
        if key == "ids":
            assert torch.equal(got[key], want[key])
        else:
            close(got[key], want[key])
    close(want["logits"], want["own"])  # the head on the last layer is the model's own logits, after the patches
    # One request per remote trace, one for the session; all under the production whitelist.
    assert len(ndif_server.requests) == 3 and all(r["mode"] == mode for r in ndif_server.requests)
    assert not [f for f in bytecode_functions if f.startswith("futurelens")], bytecode_functions


@pytest.mark.parametrize("kind", KINDS)
def test_an_out_of_range_layer_says_so_from_the_server(ndif_pair, kind):
    remote, _ = ndif_pair(kind)
    with pytest.raises(Exception, match=r"layer=7 is out of range: the model has 3 blocks"):
        with remote.trace(IDS):
            remote.read_layer(7).save()


@pytest.mark.parametrize("kind", KINDS)
def test_the_readme_experiments_run_on_the_stand_in_server(ndif_pair, ndif_server, bytecode_functions, tmp_path, kind):
    """The README's experiment blocks, verbatim; its setup block (which model, which prompts) is this test's."""
    remote, local = ndif_pair(kind)
    setup, *blocks = section_blocks("Your own experiment")
    assert "fl.load_prompts(" in setup and len(blocks) == 3
    mid = local.n_layers // 2
    fl.save_prompt(tmp_path / f"layer-{mid}.safetensors", rand(4, local.embed_dim, seed=5), model=local.name, layer=mid,
                   config={}, losses=[])
    done = {}
    for name, lm in (("remote", remote), ("local", local)):
        a, b = fl.cache(local, [[5, 6, 7, 300], [8, 9, 41]], layers=mid)[0]
        context = torch.tensor([lm.tokenizer('Hello! Could you please tell me more about "')["input_ids"]])
        namespace = dict(torch=torch, fl=fl, lm=lm, mid=mid, prompts=fl.load_prompts(tmp_path, lm), a=a, b=b,
                         context=context)
        for i, code in enumerate(blocks):
            run_block(code, f"README.md experiment {i + 1}", namespace)
        done[name] = namespace
    for key in ("top_ids", "lens", "steered"):
        assert torch.equal(done["remote"][key], done["local"][key]), key
    assert done["local"]["lens"].shape == (1, local.n_layers - 2)
    assert all(r["mode"] == "whitelist" for r in ndif_server.requests)
    assert not [f for f in bytecode_functions if f.startswith("futurelens")], bytecode_functions
