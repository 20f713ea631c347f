"""BOS done as the model does it: every path that tokenises adds the tokenizer's leading special tokens, records it,
and refuses a dataset, cache or prompt made the other way.

Two tokenizers: the embedded SmolLM2's, which adds nothing (as GPT-J's), and the same one told to add its BOS
(``add_bos_token=True``, as Gemma's and Llama-3's do). The two have the same vocabulary and special tokens, so the
same tokenizer hash: only the special-token record tells their datasets apart (the GGUF case, issue 26).
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import BLOCKS, build_tiny
from hook_reference import hook_last_states, hook_patch_logits

import futurelens as fl
from futurelens import tokens
from futurelens.data.corpus import documents
from futurelens.artifacts.dataset import load_prefixes
from futurelens.data.prefixes import DataConfig, build_prefixes
from futurelens.tokens import tokenizer_hash
from futurelens.data.states import CacheConfig, StateCache, build_cache
from futurelens.methods.prompts import FixedPrompt

TEXT = "The capital of France is"


@pytest.fixture(scope="module")
def bos_tokenizer(default_dir):
    tok = transformers.AutoTokenizer.from_pretrained(default_dir)
    tok.add_bos_token = True
    return tok


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with path.open("w") as fh:
        for doc in list(documents("pydoc"))[:8]:
            fh.write(json.dumps({"id": doc.id, "text": doc.text[:600]}) + "\n")
    return str(path)


def _lm(tokenizer, seed=0):
    return fl.load_model(build_tiny("llama", tokenizer, seed=seed), tokenizer=tokenizer)


def _data(lm, out, corpus):
    cfg = DataConfig(source=corpus, out=str(out), n_prefixes=12, min_len=3, max_len=10, n_max=2, filter_correct=False,
                     batch_size=4, test_fraction=0.3, shard_size=12)
    return build_prefixes(lm, cfg, progress=False)


def test_the_record_and_encode_follow_the_tokenizer(tokenizer, bos_tokenizer, default_dir):
    assert tokenizer_hash(tokenizer) == tokenizer_hash(bos_tokenizer)  # only the record can tell them apart
    bos = bos_tokenizer.bos_token_id
    assert tokens.special_tokens(tokenizer) == {"prepend": [], "append": []}
    assert tokens.special_tokens(bos_tokenizer) == {"prepend": [bos], "append": []}
    plain = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert tokens.encode(tokenizer, TEXT) == tokenizer(TEXT)["input_ids"] == plain
    assert tokens.encode(bos_tokenizer, TEXT) == bos_tokenizer(TEXT)["input_ids"] == [bos] + plain
    # A tokenizer that appends an EOS: kept out (it would be a position the text does not have).
    eos = transformers.AutoTokenizer.from_pretrained(default_dir)
    eos.add_eos_token = True
    assert eos(TEXT)["input_ids"][-1] == eos.eos_token_id and tokens.encode(eos, TEXT) == plain
    assert tokens.special_tokens(eos)["append"] == [eos.eos_token_id]


def test_a_bos_tokenizer_starts_every_prefix_with_bos_and_records_it(tokenizer, bos_tokenizer, tmp_path, corpus):
    texts = {d.id: tokenizer(d.text, add_special_tokens=False)["input_ids"] for d in documents(corpus)}
    bos = bos_tokenizer.bos_token_id
    for tok, lead in ((bos_tokenizer, [bos]), (tokenizer, [])):
        table, meta = load_prefixes(_data(_lm(tok), tmp_path / f"d{len(lead)}", corpus), tokenizer=tok)
        assert meta["special_tokens"]["prepend"] == lead
        for row in table:
            ids, o = row["prefix_ids"], row["offset"]
            n = len(ids) - len(lead)
            assert ids[: len(lead)] == lead and 3 <= n <= 10
            assert ids[len(lead):] == texts[row["doc_id"]][o : o + n]  # provenance: the text's own tokens at offset
            assert row["next_ids"] == texts[row["doc_id"]][o + n : o + n + 3]


def test_cached_states_are_those_of_the_prefix_with_its_bos(bos_tokenizer, tmp_path, corpus):
    """The state of a row is the model's on BOS + the text (an independent hook computation), not on the text alone."""
    lm = _lm(bos_tokenizer)
    data = _data(lm, tmp_path / "d", corpus)
    cache = StateCache(build_cache(lm, CacheConfig(data=str(data), out=str(tmp_path / "c"), layers=[2]), progress=False))
    table, _ = load_prefixes(data)
    batch = cache.load(2, "train")
    model = lm.nn._module
    for b in range(3):
        ids = table[int(batch.row[b])]["prefix_ids"]
        with torch.no_grad():
            ref = hook_last_states(model, BLOCKS["llama"], torch.tensor([ids]))[2, -1]
            without = hook_last_states(model, BLOCKS["llama"], torch.tensor([ids[1:]]))[2, -1]
        torch.testing.assert_close(batch.states[b], ref, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(batch.states[b], without, atol=1e-3)


def test_fixed_prompt_and_lens_add_the_same_bos(tokenizer, bos_tokenizer):
    from futurelens.lens.compute import _text_ids

    prompt = 'Hello! Could you please tell me more about "'
    for tok in (tokenizer, bos_tokenizer):
        lm = _lm(tok)
        assert FixedPrompt(lm, prompt).prompt_ids == tok(prompt)["input_ids"]
        ids, n_pre = _text_ids(lm, TEXT)
        assert ids == tok(TEXT)["input_ids"] and n_pre == len(tokens.prepended(tok))
    assert FixedPrompt(_lm(bos_tokenizer), prompt).prompt_ids[0] == bos_tokenizer.bos_token_id


def test_a_dataset_cache_or_prompt_made_the_other_way_is_refused(tokenizer, bos_tokenizer, tmp_path, corpus):
    from futurelens.train import TrainConfig, train, train_prompt

    plain_lm, bos_lm = _lm(tokenizer), _lm(bos_tokenizer)
    data = _data(plain_lm, tmp_path / "d", corpus)
    with pytest.raises(fl.FutureLensError, match=r"tokenised with no special token before the text.*\['<\|im_start\|>'\]"
                                                 r" before the text.*Rebuild it"):
        load_prefixes(data, tokenizer=bos_tokenizer)
    cache = StateCache(build_cache(plain_lm, CacheConfig(data=str(data), out=str(tmp_path / "c"), layers=[1]), progress=False))
    cfg = TrainConfig(cache=str(cache.path), out=str(tmp_path / "p"), layers=[1], prompt_len=2, epochs=1, batch_size=4)
    with pytest.raises(fl.FutureLensError, match=r"The cache .* was tokenised with no special token.*Rebuild its dataset"):
        train(cfg, lm=bos_lm, progress=False)
    train_prompt(plain_lm, cache, 1, cfg, progress=False)
    saved = fl.artifacts.read_prompt(tmp_path / "p" / "layer-1.safetensors")[1]
    assert json.loads(saved["special_tokens"]) == {"prepend": [], "append": []}
    assert list(fl.load_prompts(tmp_path / "p", plain_lm)) == [1]
    with pytest.raises(fl.FutureLensError, match=r"The soft prompt .* was tokenised with no special token"):
        fl.load_prompts(tmp_path / "p", bos_lm)
    assert list(fl.load_prompts(tmp_path / "p", bos_lm, force=True)) == [1]


def test_records_made_before_the_rule_read_as_nothing_added(tokenizer, bos_tokenizer):
    tokens.check(None, tokenizer, "an old dataset", "")
    with pytest.raises(fl.FutureLensError, match="an old dataset was tokenised with no special token"):
        tokens.check(None, bos_tokenizer, "an old dataset", "")
    tokens.check(json.dumps({"prepend": [bos_tokenizer.bos_token_id]}), bos_tokenizer, "a prompt", "")


def test_a_soft_prompt_is_read_after_the_bos_as_text_is(tokenizer, bos_tokenizer, tmp_path, corpus):
    """With a BOS tokenizer the trained prompt starts with the embedded BOS, frozen, and the patched run equals the model
    reading the BOS *token* at position 0 and the prompt's rows after it (a hook computation from the ids). Without BOS
    (or ``lead='none'``) the prompt is the trained rows alone. Planted bug seen to fail: the lead row made part of
    the trained parameter (it moved, and the hook run on the BOS token no longer matched)."""
    from futurelens.train import TrainConfig, prompt_loss, train_prompt

    P = 2
    for tok, lead, expect in ((bos_tokenizer, "auto", [bos_tokenizer.bos_token_id]), (tokenizer, "auto", []),
                              (bos_tokenizer, "none", [])):
        lm = _lm(tok)
        model = lm.nn._module
        data = _data(lm, tmp_path / f"d-{lead}-{len(expect)}", corpus)
        cache = StateCache(build_cache(lm, CacheConfig(data=str(data), out=str(tmp_path / f"c-{lead}-{len(expect)}"),
                                                       layers=[1]), progress=False))
        out = tmp_path / f"p-{lead}-{len(expect)}"
        cfg = TrainConfig(cache=str(cache.path), out=str(out), layers=[1], prompt_len=P, epochs=2, batch_size=4,
                          lr=5e-2, lead=lead)
        prompt, _ = train_prompt(lm, cache, 1, cfg, progress=False)
        k = len(expect)
        assert prompt.shape == (k + P, lm.embed_dim)
        meta = fl.artifacts.read_prompt(out / "layer-1.safetensors")[1]
        assert json.loads(meta.get("lead_ids", "[]")) == expect
        init = torch.randn(P, lm.embed_dim, generator=torch.Generator().manual_seed(cfg.seed + 1)) * cfg.init_std
        assert not torch.allclose(prompt[k:], init)  # the soft rows trained
        if not k:
            continue
        with torch.no_grad():
            embedded = model.get_input_embeddings()(torch.tensor(expect))
        assert torch.equal(prompt[:k], embedded)  # the lead is the BOS's embedding, untouched by training

        # The training objective on the saved prompt == the model fed [BOS, pad x P, teacher] as ids, with only the
        # P soft rows written over the embedding, the state patched at the prompt's last position.
        batch = next(cache.batches(1, "train", batch_size=3, final=True))
        table, _ = load_prefixes(data)
        rows, kl = prompt[k:], []

        def soft_rows(_m, _i, out):
            out = out.clone()
            out[:, k:k + P] = rows.to(out.dtype)
            return out

        for b in range(3):
            row = table[int(batch.row[b])]
            teacher = row["target_ids"][:1]
            handle = model.get_input_embeddings().register_forward_hook(soft_rows)
            try:
                with torch.no_grad():
                    patched = hook_patch_logits(model, BLOCKS["llama"], torch.tensor([expect + [0] * P + teacher]),
                                                batch.states[b:b + 1], 1, k + P - 1)[0, -1].log_softmax(-1)
            finally:
                handle.remove()
            with torch.no_grad():
                original = model(input_ids=torch.tensor([row["prefix_ids"] + teacher])).logits[0, -1].log_softmax(-1)
            kl.append((original.exp() * (original - patched)).sum())
        torch.testing.assert_close(prompt_loss(lm, prompt, batch, 1, 1, "kl"), torch.stack(kl).mean(), rtol=1e-4,
                                   atol=1e-5)
