"""The GPU user's path, provable on a CPU: a bfloat16 model end to end, and an accelerate-dispatched model with
offloaded layers under every primitive. References are the model's own forward and plain hooks."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import build_tiny, synthetic_prefixes
from hook_reference import hook_last_states, hook_patch_logits

import futurelens as fl
from futurelens.data.states import CacheConfig, StateCache, build_cache
from futurelens.evaluate import EvalConfig, evaluate
from futurelens.lens import lens_grid
from futurelens.train import TrainConfig, prompt_loss, train_prompt


@pytest.fixture
def folder(tmp_path, tokenizer):
    path = tmp_path / "llama"
    build_tiny("llama", tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_bfloat16_model_end_to_end(folder, tokenizer, tmp_path):
    lm = fl.load_model(str(folder), dtype=torch.bfloat16)
    assert lm.dtype == torch.bfloat16
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, lm.name, n=24, n_max=1)
    cache = StateCache(build_cache(lm, CacheConfig(data=str(data), out=str(tmp_path / "cache"), layers=[2], dtype="bfloat16"),
                                   progress=False))
    batch = cache.load(2, "train", final=True)
    assert batch.states.dtype == torch.bfloat16
    # The cached bf16 states are the model's own (a plain hook on the same bf16 model).
    row = fl.artifacts.dataset.load_prefixes(data)[0][int(batch.row[0])]
    want = hook_last_states(lm.nn._module, "model.layers", torch.tensor([row["prefix_ids"]]))[2, -1]
    torch.testing.assert_close(batch.states[0], want)

    cfg = TrainConfig(out=str(tmp_path / "prompts"), prompt_len=3, lr=5e-2, epochs=3, batch_size=6)
    init = torch.randn(3, lm.d_model, generator=torch.Generator().manual_seed(cfg.seed + 2)) * cfg.init_std
    prompt, losses = train_prompt(lm, cache, 2, cfg, progress=False)
    assert prompt.dtype == torch.float32  # a float32 prompt against the bf16 model
    with torch.no_grad():
        assert prompt_loss(lm, prompt, batch, 2, 1, "kl") < prompt_loss(lm, init, batch, 2, 1, "kl")
    df = evaluate(EvalConfig(cache=str(cache.path), prompts=cfg.out, out=str(tmp_path / "eval"), layers=[2],
                             methods=["ngram", "vocab", "linear", "fixed", "learned"], k=3, vocab_epochs=1),
                  lm=lm, progress=False)
    assert set(df.method) >= {"learned prompt", "fixed prompt", "linear (hidden)"} and df.value.notna().any()
    grid = lens_grid(lm, "def f(x):", {2: prompt}, rollout=2, top_k=2)
    # The last-layer logit lens is the model's own next token, in bf16.
    top = lens_grid(lm, "def f(x):", None, layers=[lm.n_layers], rollout=0, top_k=1)
    ids = torch.tensor([lm.tokenizer("def f(x):")["input_ids"]])
    with torch.no_grad():
        own = lm.nn._module(input_ids=ids).logits[0].argmax(-1)
    assert [c[0] for c in top.top_tokens[0]] == [lm.tokenizer.decode([i]) for i in own.tolist()][-len(top.tokens):]
    assert len(grid.layers) == 1


def test_offloaded_layers_work_with_every_primitive(folder, tmp_path, tokenizer):
    # Blocks on disk and on the CPU: accelerate's hooks load each offloaded module when it runs, and the offloaded
    # ones hold meta parameters: the model must not be taken for NDIF's weightless sandbox runner. (An offloaded
    # embedding fails inside transformers' pipeline, which nnsight builds: device "disk" is not a torch device.)
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cpu", "model.layers.2": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    lm = fl.load_model(str(folder), device_map=device_map, offload_folder=str(tmp_path / "offload"))
    assert getattr(lm.nn._module, "hf_device_map", None)
    from futurelens.server.traces import weightless

    assert not weightless(lm.nn)
    plain = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = [5, 17, 300, 42, 9]
    states = fl.cache(lm, [ids], layers=None)[:, 0]
    torch.testing.assert_close(states, hook_last_states(plain, "model.layers", torch.tensor([ids]))[:, -1])
    torch.testing.assert_close(fl.token_states(lm, ids, layers=[3]), hook_last_states(plain, "model.layers", torch.tensor([ids]))[3:4])
    soft = torch.randn(2, lm.d_model)
    got = fl.patch(lm, states[1], 2, target=[[7, 8, 9]], soft_prompt=soft, read=[4]).logits
    want = hook_patch_logits(plain, "model.layers", torch.tensor([[0, 0, 7, 8, 9]]), states[1:2], 2, 1, soft_prompt=soft)[:, 4]
    torch.testing.assert_close(got[:, 0], want, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        own = plain(input_ids=torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(fl.decode(lm, fl.cache(lm, [ids], layers=[3])[0])[0], own, rtol=1e-4, atol=1e-4)
    assert torch.equal(fl.greedy(lm, [ids], 3)[0], plain.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False,
                                                                    eos_token_id=None, pad_token_id=0)[0, len(ids):])
    ro = fl.rollout(lm, states[1:2].expand(3, -1), [1, 2, 1], soft_prompt=soft, n=2)
    assert ro[0].shape == (3, 2)
    grid = lens_grid(lm, ids, {1: soft, 2: soft}, rollout=2, top_k=2)
    assert len(grid.layers) == 2
