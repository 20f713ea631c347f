"""The prefix dataset: determinism, document-level split, the correctness filter, provenance, tokenizer guard."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import futurelens as fl
from futurelens.data.corpus import documents
from futurelens.artifacts.dataset import load_prefixes
from futurelens.data.prefixes import DataConfig, build_prefixes


@pytest.fixture
def corpus(tmp_path):
    """A small local JSONL corpus of Python docs text (offline, written by no one here)."""
    path = tmp_path / "corpus.jsonl"
    with path.open("w") as fh:
        for doc in list(documents("pydoc"))[:24]:
            fh.write(json.dumps({"id": doc.id, "text": doc.text[:1500]}) + "\n")
    return str(path)


def _cfg(tmp_path, corpus, **kw):
    base = dict(source=corpus, out=str(tmp_path / "data"), n_prefixes=24, min_len=4, max_len=12, n_max=2,
                filter_correct=False, batch_size=8, test_fraction=0.3)
    base.update(kw)
    return DataConfig(**base)


def test_same_seed_same_dataset_other_seed_differs(tiny, tmp_path, corpus):
    lm, _ = tiny("llama")
    a, _ = load_prefixes(build_prefixes(lm, _cfg(tmp_path, corpus, out=str(tmp_path / "a")), progress=False))
    b, _ = load_prefixes(build_prefixes(lm, _cfg(tmp_path, corpus, out=str(tmp_path / "b")), progress=False))
    c, _ = load_prefixes(build_prefixes(lm, _cfg(tmp_path, corpus, out=str(tmp_path / "c"), seed=1), progress=False))
    assert a.to_dict() == b.to_dict()
    assert a["prefix_ids"] != c["prefix_ids"]


def test_split_is_by_document_and_provenance_recomputes_rows(tiny, tmp_path, corpus, tokenizer):
    lm, model = tiny("llama")
    ds, meta = load_prefixes(build_prefixes(lm, _cfg(tmp_path, corpus), progress=False), tokenizer)
    train_docs = set(ds.filter(lambda r: r["split"] == "train")["doc_id"])
    test_docs = set(ds.filter(lambda r: r["split"] == "test")["doc_id"])
    assert train_docs and test_docs and not train_docs & test_docs
    assert meta["n_train"] + meta["n_test"] == len(ds) == 24
    texts = {d.id: d.text for d in documents(corpus)}
    for row in ds.select(range(5)):
        tokens = tokenizer(texts[row["doc_id"]], add_special_tokens=False)["input_ids"]
        n = len(row["prefix_ids"])
        assert 4 <= n <= 12
        assert tokens[row["offset"] : row["offset"] + n] == row["prefix_ids"]
        assert tokens[row["offset"] + n : row["offset"] + n + 3] == row["next_ids"]
        # The targets are the model's own greedy continuation, checked with a plain HF loop.
        ids = torch.tensor([row["prefix_ids"]])
        with torch.no_grad():
            for _ in range(3):
                ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
        assert ids[0, n:].tolist() == row["target_ids"]


@pytest.mark.slow
def test_correctness_filter_against_a_hand_check(default_lm, tmp_path, corpus):
    lm = default_lm
    cfg = _cfg(tmp_path, corpus, n_prefixes=12, filter_correct=True, batch_size=16, n_max=1)
    ds, meta = load_prefixes(build_prefixes(lm, cfg, progress=False))
    assert len(ds) == 12 and meta["n_dropped"] > 0
    assert meta["n_candidates"] >= meta["n_kept"] + meta["n_dropped"]
    model = lm.nn._module
    for row in ds:
        with torch.no_grad():
            predicted = model(input_ids=torch.tensor([row["prefix_ids"]])).logits[0, -1].argmax().item()
        assert predicted == row["next_ids"][0] == row["target_ids"][0]
    # Hand check of the dropped ones: rebuild the same candidate stream without the filter; every
    # candidate absent from the filtered set is one the model gets wrong.
    unfiltered, _ = load_prefixes(build_prefixes(lm, _cfg(tmp_path, corpus, out=str(tmp_path / "u"), n_prefixes=20, n_max=1), progress=False))
    kept = {(r["doc_id"], r["offset"], len(r["prefix_ids"])) for r in ds}
    for row in unfiltered:
        key = (row["doc_id"], row["offset"], len(row["prefix_ids"]))
        with torch.no_grad():
            predicted = model(input_ids=torch.tensor([row["prefix_ids"]])).logits[0, -1].argmax().item()
        if predicted == row["next_ids"][0]:
            continue
        assert key not in kept


def test_other_tokenizer_is_refused(tiny, tmp_path, corpus, tokenizer):
    lm, _ = tiny("gpt2")
    path = build_prefixes(lm, _cfg(tmp_path, corpus, n_prefixes=4), progress=False)
    load_prefixes(path, tokenizer)  # the same tokenizer is accepted
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<futurelens-test-token>"])
    with pytest.raises(fl.FutureLensError, match="was tokenized for .* Rebuild it"):
        load_prefixes(path, other)


def test_bad_settings_say_what_to_do(tiny, tmp_path, corpus):
    lm, _ = tiny("llama")  # untied random weights: it almost never guesses the real next token
    with pytest.raises(fl.FutureLensError, match="min_len"):
        build_prefixes(lm, _cfg(tmp_path, corpus, min_len=20, max_len=10), progress=False)
    with pytest.raises(fl.FutureLensError, match="neither 'pydoc'"):
        build_prefixes(lm, _cfg(tmp_path, corpus, source=str(tmp_path / "nope.txt")), progress=False)
    with pytest.raises(fl.FutureLensError, match="passed the correctness filter"):
        build_prefixes(lm, _cfg(tmp_path, corpus, n_prefixes=1, filter_correct=True), progress=False)
    tiny_corpus = tmp_path / "one.txt"
    tiny_corpus.write_text("a b c d e f g h i j")
    with pytest.raises(fl.FutureLensError, match="run out of new prefixes"):
        build_prefixes(lm, _cfg(tmp_path, str(tiny_corpus), n_prefixes=500), progress=False)
    with pytest.raises(fl.FutureLensError, match="not a futurelens dataset"):
        load_prefixes(tmp_path)
