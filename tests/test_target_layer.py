"""Patchscopes' target layer: a state read at layer L and written at L' != L, against plain hooks.

Every expected number here comes from `hook_reference` (forward hooks on the HF model, no futurelens
code): the prompt methods' logits, the trained prompt's loss, the evaluation's precision and the
lens' phrases.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BLOCKS
from hook_reference import hook_last_states, hook_patch_logits, hook_rollout

import futurelens as fl
from futurelens.artifacts import load_prompts, prompt_path
from futurelens.evaluate import EvalConfig, evaluate
from futurelens.lens import lens_grid
from futurelens.methods.prompts import FixedPrompt, LearnedPrompt
from futurelens.train import TrainConfig, prompt_loss, train, train_prompt

SOURCE, TARGET = 1, 3


def _hook_logits(model, kind, batch, ids_of, state_layer_write, position, soft=None):
    out = []
    for b in range(len(batch.row)):
        with torch.no_grad():
            out.append(hook_patch_logits(model, BLOCKS[kind], ids_of(b), batch.states[b : b + 1], state_layer_write,
                                         position, soft_prompt=soft)[0, position:])
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["gptj", "mamba"])
def test_fixed_and_learned_prompt_write_the_state_at_the_target_layer(tiny_cache, kind):
    lm, model, cache = tiny_cache(kind, n=12)
    batch = next(cache.batches(SOURCE, "test", batch_size=3))  # states read at layer 1
    fixed = FixedPrompt(lm, "Tell me about", target_layer=TARGET)
    ids = fixed.prompt_ids
    ref = _hook_logits(model, kind, batch, lambda b: torch.tensor([ids + batch.target[b, :-1].tolist()]), TARGET, len(ids) - 1)
    got = torch.stack([p.logprobs for p in fixed.predict(batch, SOURCE, k=3)], 1)
    torch.testing.assert_close(got, ref.float().log_softmax(-1), rtol=1e-4, atol=1e-4)
    # ... and not where it was read: the hooks at layer 1 give other logits (the test can tell the layers apart)
    at_source = _hook_logits(model, kind, batch, lambda b: torch.tensor([ids + batch.target[b, :-1].tolist()]), SOURCE, len(ids) - 1)
    assert not torch.allclose(got, at_source.float().log_softmax(-1), atol=1e-3)

    soft = torch.randn(4, lm.d_model, generator=torch.Generator().manual_seed(0))
    learned = LearnedPrompt(lm, {(SOURCE, TARGET): soft})
    assert learned.has(SOURCE, TARGET) and not learned.has(SOURCE)
    ref = _hook_logits(model, kind, batch, lambda b: torch.tensor([[0] * 4 + batch.target[b, :-1].tolist()]), TARGET, 3, soft)
    got = torch.stack([p.logprobs for p in learned.predict(batch, SOURCE, k=3, target=TARGET)], 1)
    torch.testing.assert_close(got, ref.float().log_softmax(-1), rtol=1e-4, atol=1e-4)
    with pytest.raises(fl.FutureLensError, match="No soft prompt"):
        learned.predict(batch, SOURCE, k=3)  # no prompt writes layer 1's state at layer 1


def _hook_kl(model, table, batch, prompt, write):
    """KL(original model N=1 ahead || hook-patched soft prompt with the state written at ``write``), by hand."""
    kl = []
    for b in range(len(batch.row)):
        row = table[int(batch.row[b])]
        teacher = row["target_ids"][:1]
        with torch.no_grad():
            original = model(input_ids=torch.tensor([row["prefix_ids"] + teacher])).logits[0, -1].log_softmax(-1)
            patched = hook_patch_logits(model, BLOCKS["llama"], torch.tensor([[0] * len(prompt) + teacher]),
                                        batch.states[b : b + 1], write, len(prompt) - 1, soft_prompt=prompt)[0, -1]
        patched = patched.log_softmax(-1)
        kl.append((original.exp() * (original - patched)).sum())
    return torch.stack(kl).mean()


def test_training_a_prompt_for_another_target_layer(tiny_cache, tmp_path):
    lm, model, cache = tiny_cache("llama", n=40)
    table = fl.artifacts.dataset.load_prefixes(cache.index["data"])[0]
    cfg = TrainConfig(out=str(tmp_path / "prompts"), prompt_len=4, epochs=3, batch_size=8, lr=3e-2, seed=0)
    prompt, losses = train_prompt(lm, cache, SOURCE, cfg, progress=False, target_layer=TARGET)
    path = prompt_path(tmp_path / "prompts", SOURCE, TARGET)
    assert path.name == "layer-1-to-3.safetensors" and path.exists()
    batch = cache.load(SOURCE, "train", final=True)
    # the library's loss is the hand-computed KL with the state written at layer 3
    torch.testing.assert_close(prompt_loss(lm, prompt, batch, TARGET, 1, "kl"), _hook_kl(model, table, batch, prompt, TARGET),
                               rtol=1e-4, atol=1e-5)
    init = torch.randn(4, lm.embed_dim, generator=torch.Generator().manual_seed(cfg.seed + SOURCE)) * cfg.init_std
    assert _hook_kl(model, table, batch, prompt, TARGET) < 0.9 * _hook_kl(model, table, batch, init, TARGET)
    loaded = load_prompts(tmp_path / "prompts", lm)
    assert set(loaded) == {(SOURCE, TARGET)} and loaded.meta[(SOURCE, TARGET)]["target_layer"] == TARGET
    assert torch.equal(loaded[(SOURCE, TARGET)], prompt)
    # train() over layers x target layers: one file per pair, the paper's L' = L under its old name
    got = train(TrainConfig(cache=str(cache.path), out=str(tmp_path / "grid"), prompt_len=4, epochs=1,
                            layers=[1, 2], target_layers=[2, 3]), lm=lm, progress=False)
    assert set(got) == {(1, 2), (1, 3), 2, (2, 3)}
    assert sorted(p.name for p in (tmp_path / "grid").glob("*.safetensors")) == [
        "layer-1-to-2.safetensors", "layer-1-to-3.safetensors", "layer-2-to-3.safetensors", "layer-2.safetensors"]


def test_evaluation_has_a_target_layer_dimension_counted_by_hand(tiny_cache, tmp_path):
    lm, model, cache = tiny_cache("llama", n=40)
    soft = {(1, 3): torch.randn(4, lm.d_model) * 0.5, 1: torch.randn(4, lm.d_model) * 0.5}
    folder = tmp_path / "prompts"
    folder.mkdir()
    for key, tensor in soft.items():
        layer, target = key if isinstance(key, tuple) else (key, key)
        fl.artifacts.save_prompt(prompt_path(folder, layer, target), tensor, model=lm.name, layer=layer, config={},
                                 losses=[], extra={} if layer == target else {"target_layer": target})
    cfg = EvalConfig(cache=str(cache.path), prompts=str(folder), out=str(tmp_path / "eval"), layers=[1],
                     target_layers=[1, 3], methods=["fixed", "learned"], k=3, batch_size=4, fixed_prompt="Tell me about")
    df = evaluate(cfg, lm=lm, progress=False)
    p1 = df[(df.metric == "precision") & (df.k == 1) & (df.against == "model")]
    assert set(zip(p1.method, p1.layer, p1.target_layer)) == {
        ("fixed prompt", 1, 1), ("fixed prompt", 1, 3), ("learned prompt", 1, 1), ("learned prompt", 1, 3)}
    test = cache.load(1, "test")
    ids = [0] * 4
    hits = 0
    for b in range(len(test.row)):
        with torch.no_grad():
            logits = hook_patch_logits(model, BLOCKS["llama"], torch.tensor([ids + test.target[b, :1].tolist()]),
                                       test.states[b : b + 1], 3, 3, soft_prompt=soft[(1, 3)])[0, -1]
        hits += int(logits.argmax() == test.target[b, 1])
    row = p1[(p1.method == "learned prompt") & (p1.target_layer == 3) & (p1.n == 1)]
    assert row.value.item() == pytest.approx(hits / len(test.row))
    assert (tmp_path / "eval" / "target_layers.png").read_bytes()[:4] == b"\x89PNG"


def test_lens_writes_every_row_at_the_chosen_target_layer(tiny):
    lm, model = tiny("llama")
    text = [5, 6, 7]
    prompts = fl.artifacts.PromptSet({(1, 3): torch.randn(3, lm.d_model), (2, 3): torch.randn(3, lm.d_model),
                                      2: torch.randn(3, lm.d_model)})
    grid = lens_grid(lm, text, prompts, rollout=2, top_k=2, target_layer=3)
    assert grid.layers == [1, 2] and "written at layer 3" in grid.method
    states = hook_last_states(model, BLOCKS["llama"], torch.tensor([text]))  # [n_layers + 1, T, d]
    for i, layer in enumerate(grid.layers):
        rows = torch.zeros(len(text), 3, dtype=torch.long)
        ids, probs = hook_rollout(model, BLOCKS["llama"], rows, states[layer], [3] * len(text), 2,
                                  prompts[(layer, 3)], 2)
        assert grid.phrase_tokens[i] == [[lm.tokenizer.decode([t]) for t in r] for r in ids.tolist()]
        np.testing.assert_allclose(grid.phrase_probs[i], probs.numpy(), rtol=1e-4, atol=1e-6)
    # without target_layer only the prompt for a state at its own layer is used; a missing target is refused
    assert lens_grid(lm, text, prompts, rollout=1, top_k=1).layers == [2]
    with pytest.raises(fl.FutureLensError, match="target-layers"):
        lens_grid(lm, text, prompts, rollout=1, top_k=1, target_layer=1)
