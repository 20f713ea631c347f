"""Real weights of a second pretrained model, not a Llama: Google's Gemma 3 270M (`load_model("gemma3-270m")`).

18 layers, width 640, a 262,144-token vocabulary, tied embeddings, a sqrt(d)-scaled embedding and sliding-window
attention; its tokenizer adds BOS (the GGUF file says so, transformers' GGUF reader does not: futurelens reads it).
Every primitive is checked against `tests/hook_reference.py` (plain PyTorch hooks, no futurelens code) and the
model's own logits. Marked slow: the first run dequantises the GGUF once (about a minute).
"""

from __future__ import annotations

import pytest
import torch
from hook_reference import hook_patch_logits, hook_rollout, hook_states

import futurelens as fl
from futurelens import tokens
from futurelens.embedded import EMBEDDED, ensure_default_model, gguf_special_tokens

pytestmark = pytest.mark.slow
BLOCKS = "model.layers"  # written out by hand, not read from futurelens' detection
TEXTS = ["The capital of France is", "Marty McFly from"]


@pytest.fixture(scope="module")
def gemma():
    return fl.load_model("gemma3-270m")


def test_loads_offline_with_its_own_head_and_bos(gemma, tmp_path):
    lm = gemma
    assert (lm.n_layers, lm.d_model, lm.vocab_size, lm.arch.blocks) == (18, 640, 262144, BLOCKS)
    assert type(lm.nn._module).__name__ == "Gemma3ForCausalLM"
    # The GGUF says add_bos_token; the converted tokenizer does it, and futurelens records it.
    work = tmp_path / "gguf"
    work.mkdir()
    assert gguf_special_tokens(EMBEDDED["gemma3-270m"].locate(work))["add_bos_token"] is True
    assert lm.tokenizer.bos_token_id == 2 and lm.tokenizer(TEXTS[0])["input_ids"][0] == 2
    assert tokens.special_tokens(lm.tokenizer) == {"prepend": [2], "append": []}
    # The last layer's cached state through futurelens' head is the model's own prediction (head check, by hand).
    state = fl.cache(lm, TEXTS[:1], layers=-1)[0]
    with torch.no_grad():
        direct = lm.nn._module(**lm.tokenizer(TEXTS[0], return_tensors="pt")).logits[:, -1]
        mine = lm.module("lm_head")(lm.module("model.norm")(state))
    torch.testing.assert_close(mine, direct, rtol=1e-4, atol=2e-3)
    assert lm.tokenizer.decode(direct.argmax(-1)) == lm.tokenizer.decode(mine.argmax(-1))
    assert ensure_default_model("gemma3-270m").name == "gemma-3-270m"


def test_cache_patch_and_rollout_equal_the_hook_reference(gemma):
    lm = gemma
    model = lm.nn._module
    ids = [torch.tensor([lm.tokenizer(t)["input_ids"]]) for t in TEXTS]
    states = fl.cache(lm, TEXTS, layers=[0, 6, 18])  # [3, 2, d]; ragged rows are right-padded
    for i, row in enumerate(ids):
        ref = hook_states(model, BLOCKS, row)[:, 0, -1]  # [19, d]
        for j, layer in enumerate([0, 6, 18]):
            # float32 with a batch of two ragged rows: Gemma's residual reaches the thousands, so relative 1e-3
            torch.testing.assert_close(states[j, i], ref[layer], rtol=1e-3, atol=5e-3)
    # Patch the layer-6 states into the fixed prompt (BOS first, as the model reads any text) at its last token.
    target = tokens.encode(lm.tokenizer, 'Hello! Could you please tell me more about "')
    assert target[0] == 2
    P = len(target)
    logits = fl.patch(lm, states[1], 6, target=[target], read=[P - 1]).logits
    out = fl.patch(lm, states[1], 6, target=[target], rollout=3, top_k=1)
    ctx = torch.tensor([target] * 2)
    with torch.no_grad():
        expected = hook_patch_logits(model, BLOCKS, ctx, states[1], 6, P - 1)[:, P - 1]
    torch.testing.assert_close(logits[:, 0], expected, rtol=1e-4, atol=2e-3)
    ref_ids, ref_p = hook_rollout(model, BLOCKS, ctx, states[1], [6, 6], P - 1, None, 3)
    assert torch.equal(out.rollout_ids, ref_ids)
    torch.testing.assert_close(out.rollout_probs, ref_p, rtol=1e-3, atol=1e-4)
    # A soft prompt (as the learned method feeds it: no BOS) at layer 18.
    soft = torch.randn(4, lm.embed_dim, generator=torch.Generator().manual_seed(0)) * 0.02
    got = fl.patch(lm, states[2], 18, soft_prompt=soft, read=[3]).logits[:, 0]
    with torch.no_grad():
        want = hook_patch_logits(model, BLOCKS, torch.zeros(2, 4, dtype=torch.long), states[2], 18, 3, soft_prompt=soft)[:, 3]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-3)


def test_a_lens_reads_the_models_own_next_tokens_at_the_last_layer(gemma):
    from futurelens.lens.compute import lens_grid

    lm = gemma
    grid = lens_grid(lm, TEXTS[1], None, layers=[9, 18], rollout=2, top_k=1)
    ids = lm.tokenizer(TEXTS[1], return_tensors="pt")["input_ids"]
    assert len(grid.tokens) == ids.shape[1] - 1  # BOS is in the context but has no column
    with torch.no_grad():
        own = lm.nn._module(input_ids=ids).logits[0, 1:].argmax(-1)
    assert grid.top_tokens[1] == [[lm.tokenizer.decode([int(t)])] for t in own]
    assert grid.phrase_probs.shape == (2, len(grid.tokens), 2)


def test_a_local_gguf_file_or_folder_and_gguf_file_load_with_the_files_bos(tmp_path, monkeypatch):
    """Any .gguf path (and folder + gguf_file=) is dequantised once, tokenizer included, honouring its BOS flag."""
    from futurelens import embedded

    monkeypatch.setenv("FUTURELENS_HOME", str(tmp_path / "home"))
    gguf = embedded._gguf_path()  # SmolLM2's file: add_bos_token False, the converse of Gemma's
    assert gguf_special_tokens(gguf) == {"add_bos_token": False}
    lm = fl.load_model(str(gguf))
    assert lm.n_layers == 30 and tokens.special_tokens(lm.tokenizer)["prepend"] == []
    calls = []
    monkeypatch.setattr(embedded, "convert_gguf", lambda *a: calls.append(a))
    again = fl.load_model(str(gguf.parent), gguf_file=gguf.name)  # the same file: converted already, not again
    assert not calls and again.name == str(gguf) and again.n_layers == 30
    with pytest.raises(fl.FutureLensError, match="No GGUF file at .*missing.gguf"):
        fl.load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(fl.FutureLensError, match="is not a .gguf file name"):
        fl.load_model(str(gguf.parent), gguf_file="model.bin")


def test_a_gemma_dataset_starts_with_bos_and_caches_what_fl_cache_gives_on_its_text(gemma, tmp_path):
    import json

    from futurelens.artifacts.dataset import load_prefixes
    from futurelens.data.prefixes import DataConfig, build_prefixes
    from futurelens.data.states import CacheConfig, StateCache, build_cache

    texts = [*TEXTS, "def add(a, b):\n    return"]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"prefix": t, "doc": t}) + "\n" for t in texts))
    data = build_prefixes(gemma, DataConfig(source=str(path), out=str(tmp_path / "d"), n_max=1, test_fraction=0.0),
                          progress=False)
    ds, meta = load_prefixes(data, gemma.tokenizer)
    assert meta["special_tokens"]["prepend"] == [2] and all(r["prefix_ids"][0] == 2 for r in ds)
    cache = StateCache(build_cache(gemma, CacheConfig(data=str(data), out=str(tmp_path / "c"), layers=[6, 18],
                                                      splits=["train"]), progress=False))
    for layer in (6, 18):
        batch = cache.load(layer, "train")
        expected = fl.cache(gemma, [texts[int(i)] for i in batch.row], layers=[layer])[0]
        torch.testing.assert_close(batch.states, expected, rtol=1e-3, atol=5e-3)
    # The labels are the model's own greedy next tokens on BOS + text (its logits, not futurelens').
    with torch.no_grad():
        own = gemma.nn._module(input_ids=torch.tensor([ds[0]["prefix_ids"]])).logits[0, -1].argmax()
    assert ds[0]["target_ids"][0] == int(own)
