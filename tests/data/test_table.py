"""Prefix tables (`futurelens.data.table`): the paper's test set offline, the authors' format, a generic table,
labels, BOS, resumption and the token budget. Tiny random models; the authors' file is the shipped one."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import transformers
from conftest import build_tiny

import futurelens as fl
import futurelens.tracing
from futurelens import tokens
from futurelens.data import labels
from futurelens.data import prefixes as P
from futurelens.data import table as T
from futurelens.artifacts.dataset import load_prefixes
from futurelens.data.prefixes import DataConfig, build_prefixes
from futurelens.data.states import CacheConfig, StateCache, build_cache

PAPER = T.PAPER_DIR / T.PAPER_FILE


def _cfg(out, source, **kw):
    base = dict(source=str(source), out=str(out), n_prefixes=16, n_max=2, filter_correct=False, batch_size=4, shard_size=6)
    base.update(kw)
    return DataConfig(**base)


def _own_greedy(model, ids, n):
    """The raw HF model's greedy continuation, one argmax at a time (no futurelens code)."""
    row = torch.tensor([ids])
    out = []
    with torch.no_grad():
        for _ in range(n):
            tok = model(input_ids=row).logits[0, -1].argmax()
            out.append(int(tok))
            row = torch.cat([row, tok.view(1, 1)], 1)
    return out


def test_paper_test_is_shipped_and_read_as_given_split_by_document(tiny, tmp_path, tokenizer):
    lm, model = tiny("llama")
    authors = pd.read_csv(PAPER, keep_default_na=False, dtype=str)
    assert len(authors) == 1000 and authors["doc"].nunique() == 830
    ds, meta = load_prefixes(build_prefixes(lm, _cfg(tmp_path / "d", "paper-test", n_prefixes=12), progress=False), tokenizer)
    assert meta["table"]["format"] == "authors" and meta["n_kept"] == len(ds) == 12
    assert meta["table"]["labels"] == "the model's own greedy continuation"  # SmolLM2's tokenizer is not GPT-J's
    for row, (_, src) in zip(ds, authors.iterrows()):  # every row of the file, in its order, prefixes uncut
        assert row["doc_id"] == f"pile{src['pile']}:doc{src['doc']}" and row["offset"] == int(src["start_prefix_index"])
        assert row["prefix_ids"] == tokens.encode(tokenizer, src["decoded_prefix"])
        joint = tokenizer(src["decoded_prefix"] + src["decoded_phrase"], add_special_tokens=False)["input_ids"]
        following = joint[len(row["prefix_ids"]):][:3]
        assert row["next_ids"] == following + [-1] * (3 - len(following))  # the document's next tokens (-1: none)
        teacher = tokenizer(src["decoded_prefix"] + src["teacher_phrase"], add_special_tokens=False)["input_ids"]
        assert row["table_ids"] == teacher[len(row["prefix_ids"]):][:3]  # GPT-J's continuation, kept as a column
        assert row["target_ids"] == _own_greedy(model, row["prefix_ids"], 3)
    train = {d for d, s in zip(ds["doc_id"], ds["split"]) if s == "train"}
    test = {d for d, s in zip(ds["doc_id"], ds["split"]) if s == "test"}
    assert not train & test and all(P.is_test(d, 0, 0.2) == (s == "test") for d, s in zip(ds["doc_id"], ds["split"]))


def _authors_csv(path, tokenizer, n=8, lie=False):
    """An authors'-format table whose token counts are this tokenizer's (as the real file's are GPT-J's)."""
    docs = [d.text[:300] for d in fl.data.corpus.documents("pydoc")][:n]
    rows = []
    for i, text in enumerate(docs):
        prefix, rest = text[:200], text[200:]
        teacher = " the cat sat on the mat and"
        rows.append({"pile": 0, "doc": i // 2, "start_prefix_index": 0, "decoded_prefix": prefix,
                     "prefix_len": len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) + (1 if lie else 0),
                     "gen_len": len(tokenizer(teacher, add_special_tokens=False)["input_ids"]),
                     "decoded_phrase": rest, "teacher_phrase": teacher})
    pd.DataFrame(rows).to_csv(path)
    return path


def test_the_tables_continuation_is_the_label_when_the_tokenizer_made_it(tiny, tmp_path, tokenizer, monkeypatch):
    lm, _ = tiny("llama")
    same = _authors_csv(tmp_path / "same.csv", tokenizer)
    calls = []
    real = futurelens.tracing.greedy
    monkeypatch.setattr(futurelens.tracing, "greedy", lambda *a, **k: calls.append(1) or real(*a, **k))
    ds, meta = load_prefixes(build_prefixes(lm, _cfg(tmp_path / "a", same, n_prefixes=8), progress=False))
    teacher = tokenizer(" the cat sat on the mat and", add_special_tokens=False)["input_ids"]
    assert meta["table"]["labels"] == "the table's continuation" and not calls  # no model run to label
    assert all(t == teacher[:3] == c for t, c in zip(ds["target_ids"], ds["table_ids"]))
    other = _authors_csv(tmp_path / "other.csv", tokenizer, lie=True)  # counts of another tokenizer
    ds2, meta2 = load_prefixes(build_prefixes(lm, _cfg(tmp_path / "b", other, n_prefixes=8), progress=False))
    assert meta2["table"]["labels"] == "the model's own greedy continuation" and calls
    ds3, _ = load_prefixes(build_prefixes(lm, _cfg(tmp_path / "c", other, n_prefixes=8, labels="table"), progress=False))
    assert ds3["target_ids"] == ds["target_ids"]


def test_a_generic_table_with_bos_caches_what_fl_cache_gives_on_the_same_text(tmp_path, default_dir):
    """The done-when of issue 26 on a BOS tokenizer: a dataset row starts with BOS, and its cached state is
    `fl.cache` on the row's text."""
    bos = transformers.AutoTokenizer.from_pretrained(default_dir)
    bos.add_bos_token = True
    lm = fl.load_model(build_tiny("llama", bos), tokenizer=bos)
    texts = ["The capital of France is", "Marty McFly from", "def f(x):\n    return", "Once upon a time, there",
             "import numpy as", "The quick brown fox jumps over the"]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"prefix": t, "doc": f"d{i % 3}"}) + "\n" for i, t in enumerate(texts)))
    data = build_prefixes(lm, _cfg(tmp_path / "d", path, filter_correct=True), progress=False)
    ds, meta = load_prefixes(data, bos)
    assert meta["table"]["format"] == "generic" and meta["table"]["filter"] == "not applied"  # no following text
    assert len(ds) == len(texts) and all(r["prefix_ids"][0] == bos.bos_token_id for r in ds)
    assert ds["next_ids"] == ds["target_ids"]  # no real next tokens: the labels stand in
    cache = StateCache(build_cache(lm, CacheConfig(data=str(data), out=str(tmp_path / "c"), layers=[0, 2]), progress=False))
    assert cache.size("train") + cache.size("test") == len(texts)
    for split in [s for s in ("train", "test") if cache.size(s)]:
        for layer in (0, 2):
            batch = cache.load(layer, split)
            given = [texts[int(i)] for i in batch.row]
            torch.testing.assert_close(batch.states, fl.cache(lm, given, layers=[layer])[0], rtol=1e-5, atol=1e-5)


def test_bad_tables_say_what_to_do(tiny, tmp_path):
    lm, _ = tiny("llama")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["a b c"]}).to_csv(bad, index=False)
    with pytest.raises(fl.FutureLensError, match=r"neither the authors' format .* nor a prefix table \(a 'prefix' column"):
        build_prefixes(lm, _cfg(tmp_path / "x", bad), progress=False)
    plain = tmp_path / "p.csv"
    pd.DataFrame({"prefix": ["a b c", "d e f"]}).to_csv(plain, index=False)
    with pytest.raises(fl.FutureLensError, match="labels='table' needs the table's continuation"):
        build_prefixes(lm, _cfg(tmp_path / "y", plain, labels="table"), progress=False)
    with pytest.raises(fl.FutureLensError, match="labels must be one of auto, model, table"):
        P.check_config(_cfg(tmp_path / "z", plain, labels="gptj"))
    # A .jsonl of documents (no 'prefix' column) is still a corpus to cut, not a table.
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "x"}) + "\n")
    assert T.table_path(str(docs)) is None and T.table_path(str(plain)) == plain


def test_an_interrupted_table_build_resumes_to_the_same_dataset(tiny, tmp_path, monkeypatch):
    lm, _ = tiny("llama")
    whole, _ = load_prefixes(build_prefixes(lm, _cfg(tmp_path / "w", "paper-test", n_prefixes=14), progress=False))
    calls = []
    real = labels.label

    def dies_on_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(labels, "label", dies_on_the_second)
    with pytest.raises(P.Interrupted, match=r"Kept 1 labelled shard\(s\) \(6 candidates\)"):
        build_prefixes(lm, _cfg(tmp_path / "r", "paper-test", n_prefixes=14), progress=False)
    resumed, _ = load_prefixes(build_prefixes(lm, _cfg(tmp_path / "r", "paper-test", n_prefixes=14), progress=False))
    assert len(calls) == 4  # the first shard was kept, not labelled again: shards 2 and 3 after the resume
    assert resumed.to_dict() == whole.to_dict()


def test_long_prefixes_are_labelled_in_batches_under_the_token_budget(tiny, tmp_path, monkeypatch):
    lm, _ = tiny("llama")
    seen = []
    real = futurelens.tracing.greedy

    def record(lm_, prefixes, n, batch_size=64, progress=None):
        seen.append((batch_size, len(prefixes[0])))
        return real(lm_, prefixes, n, batch_size=batch_size, progress=progress)

    monkeypatch.setattr(futurelens.tracing, "greedy", record)
    build_prefixes(lm, _cfg(tmp_path / "b", "paper-test", n_prefixes=6, batch_tokens=1000), progress=False)
    assert seen and all(bs * length <= 1000 or bs == 1 for bs, length in seen)
    assert any(bs < 4 for bs, _ in seen)  # the budget, not batch_size=4, bounded some group


def test_a_row_whose_following_text_is_short_is_kept_with_missing_targets(tiny, tmp_path, tokenizer):
    lm, _ = tiny("llama")
    path = tmp_path / "t.jsonl"
    rows = [{"prefix": "The cat sat on the", "next": " mat and then it slept"}, {"prefix": "Hello", "next": "."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds, meta = load_prefixes(build_prefixes(lm, _cfg(tmp_path / "d", path), progress=False))
    assert len(ds) == 2 and meta["table"]["n_next_short"] == 1
    short = ds[[r["prefix_ids"] for r in ds].index(tokenizer("Hello", add_special_tokens=False)["input_ids"])]
    assert short["next_ids"] == tokenizer(".", add_special_tokens=False)["input_ids"] + [-1, -1]
