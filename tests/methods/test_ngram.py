"""The n-gram baseline: skip-gram counts checked by hand, ties, fallback, errors, save/load."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from futurelens.errors import FutureLensError
from futurelens.methods.ngram import NGram

# Tokens 0 and 5 never occur; V = 6.
ROWS = [[1, 2, 3, 1, 2, 4], [2, 4, 1, 3]]
V = 6
# Pairs counted by hand (pairs never cross the row boundary):
# n=0 (next token): 1->2 x2, 1->3; 2->3, 2->4 x2; 3->1; 4->1.     targets: 1,2,3,4 twice each
# n=1 (2 ahead):    1->3, 1->4 (tie); 2->1 x2; 3->2; 4->3.         targets: 1 x2, 3 x2, 2, 4
# n=2 (3 ahead):    1->1; 2->2, 2->3 (tie); 3->4.                  targets: 1, 2, 3, 4 once each


@pytest.fixture
def ngram():
    return NGram().fit(ROWS, n_max=2, vocab_size=V)


def _ids_probs(model, last, n, k):
    ids, probs = model.predict(torch.tensor(last), n, k)
    assert ids.dtype == torch.long and probs.dtype == torch.float32 and ids.shape == probs.shape == (len(last), k)
    return ids.tolist(), probs.numpy()


def test_bigram_counts_by_hand(ngram):
    ids, probs = _ids_probs(ngram, [1, 2, 3], n=0, k=2)
    assert ids[:2] == [[2, 3], [4, 3]]
    assert probs[:2] == pytest.approx(np.array([[2 / 3, 1 / 3], [2 / 3, 1 / 3]]))
    # 3 has one successor; the second slot is the most frequent target it lacks (2: ties 1..4 by id), at p = 0
    assert ids[2] == [1, 2] and probs[2].tolist() == [1.0, 0.0]
    # the raw counts behind those probabilities
    assert ngram.totals[0].tolist() == [0, 3, 3, 1, 1, 0]
    assert ngram.unigram.tolist() == [[0, 2, 2, 2, 2, 0], [0, 2, 1, 2, 1, 0], [0, 1, 1, 1, 1, 0]]
    assert ngram.counts[0][ngram.offsets[0][2] : ngram.offsets[0][3]].tolist() == [2, 1]


def test_skip_gram_offsets_and_ties_by_hand(ngram):
    ids, probs = _ids_probs(ngram, [1, 2, 4], n=1, k=2)
    assert ids == [[3, 4], [1, 3], [3, 1]]  # 1: tie 3/4 -> smaller first; 2: pad with unigram 1, 3 minus 1
    assert probs == pytest.approx(np.array([[0.5, 0.5], [1.0, 0.0], [1.0, 0.0]]))
    ids, probs = _ids_probs(ngram, [2, 3, 1], n=2, k=1)
    assert ids == [[2], [4], [1]]
    assert probs == pytest.approx(np.array([[0.5], [1.0], [1.0]]))


def test_unseen_source_falls_back_to_the_unigram_of_targets(ngram):
    # 0 and 5 never occur; 4 never has a token 3 ahead of it.
    ids, probs = _ids_probs(ngram, [0, 5], n=1, k=3)
    assert ids == [[1, 3, 2], [1, 3, 2]]  # 1 and 3 twice, then 2 and 4 once: ties by id
    assert probs == pytest.approx(np.array([[2 / 6, 2 / 6, 1 / 6]] * 2))
    ids, probs = _ids_probs(ngram, [4], n=2, k=2)
    assert ids == [[1, 2]] and probs == pytest.approx(np.array([[0.25, 0.25]]))


def test_probabilities_use_all_counts_when_the_list_is_truncated():
    model = NGram(keep=1).fit(ROWS, n_max=0, vocab_size=V)
    ids, probs = _ids_probs(model, [1, 2], n=0, k=1)
    assert ids == [[2], [4]] and probs == pytest.approx(np.array([[2 / 3], [2 / 3]]))


def test_matches_a_brute_force_count():
    rng = random.Random(0)
    rows = [[rng.randrange(12) for _ in range(rng.randrange(0, 40))] for _ in range(30)]
    V, n_max, k = 15, 3, 4
    # chunk=7 forces many partial merges; rows as lists, arrays and tensors all count the same.
    mixed = [r if i % 3 == 0 else np.array(r, dtype=np.int32) if i % 3 == 1 else torch.tensor(r) for i, r in enumerate(rows)]
    model = NGram(keep=k).fit(mixed, n_max=n_max, vocab_size=V, chunk=7)
    for n in range(n_max + 1):
        pairs = Counter((r[i], r[i + n + 1]) for r in rows for i in range(len(r) - n - 1))
        ids, probs = model.predict(torch.arange(12), n, k)
        for x in range(12):
            succ = sorted(((c, y) for (a, y), c in pairs.items() if a == x), key=lambda cy: (-cy[0], cy[1]))[:k]
            total = sum(c for (a, _), c in pairs.items() if a == x)
            got = list(zip(ids[x].tolist(), probs[x].tolist()))[: len(succ)]
            assert [y for y, _ in got] == [y for _, y in succ]
            assert [p for _, p in got] == pytest.approx([c / total for c, _ in succ])


def test_save_load_round_trip(ngram, tmp_path):
    path = ngram.save(tmp_path / "sub" / "ngram.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["ngram.safetensors"]  # no temp file left behind
    loaded = NGram.load(path)
    assert (loaded.n_max, loaded.vocab_size, loaded.keep) == (2, V, ngram.keep)
    last = torch.arange(V)
    for n in range(3):
        for a, b in zip(ngram.predict(last, n, 3), loaded.predict(last, n, 3)):
            assert a.equal(b)


def test_errors_say_what_to_do(ngram, tmp_path):
    with pytest.raises(FutureLensError, match=r"fitted for N = 0..2; refit with n_max >= 3"):
        ngram.predict(torch.tensor([1]), n=3, k=1)
    with pytest.raises(FutureLensError, match="larger keep"):
        NGram(keep=2).fit(ROWS, 0, V).predict(torch.tensor([1]), n=0, k=3)
    with pytest.raises(FutureLensError, match="outside"):
        ngram.predict(torch.tensor([V]), n=0, k=1)
    with pytest.raises(FutureLensError, match="vocab_size"):
        NGram().fit([[1, 2, V]], n_max=0, vocab_size=V)
    with pytest.raises(FutureLensError, match="not fitted"):
        NGram().predict(torch.tensor([1]), n=0, k=1)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(FutureLensError, match="not a futurelens n-gram"):
        NGram.load(tmp_path / "other.safetensors")


# --------------------------------------------------------------------------- streaming fit: exact, bounded memory


def _tables(model):
    return [[t.tolist() for t in getattr(model, name)] for name in ("offsets", "ids", "counts", "totals")] + [
        model.unigram.tolist()
    ]


def test_a_streamed_fit_with_many_flushes_equals_the_one_shot_fit_exactly():
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, 40, size=rng.integers(0, 60)).tolist() for _ in range(300)]
    V, n_max = 41, 3
    one_shot = NGram(keep=5).fit(rows, n_max=n_max, vocab_size=V, chunk=1 << 30)  # one merge per N, at the end
    assert one_shot.counts[0].sum() > 1000  # enough keys that chunk=3 means hundreds of merges
    for chunk in (1, 3, 64):
        streamed = NGram(keep=5).fit((r for r in rows), n_max=n_max, vocab_size=V, chunk=chunk)  # a one-pass generator
        assert _tables(streamed) == _tables(one_shot)
    # and those counts are the true ones
    pairs = Counter((r[i], r[i + 2]) for r in rows for i in range(len(r) - 2))
    assert one_shot.totals[1].tolist() == [sum(c for (a, _), c in pairs.items() if a == x) for x in range(V)]
    with pytest.raises(FutureLensError, match="chunk must be >= 1"):
        NGram().fit(rows, n_max=0, vocab_size=V, chunk=0)


def _fake_data(monkeypatch, n_rows):
    """`evaluate._ngram`'s inputs: a prefix table of ``n_rows`` rows (3 in 4 train), a cache, a model."""
    from types import SimpleNamespace

    import datasets

    import futurelens.artifacts.dataset as dataset

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 30, size=(n_rows, 40))
    table = datasets.Dataset.from_dict({
        "split": ["test" if i % 4 == 3 else "train" for i in range(n_rows)],
        "prefix_ids": tokens[:, :32].tolist(),
        "target_ids": tokens[:, 32:].tolist(),
    })
    monkeypatch.setattr(dataset, "load_prefixes", lambda *a, **k: (table, {}))
    return SimpleNamespace(index={"data": "unused"}, n_max=2), SimpleNamespace(tokenizer=None, vocab_size=32), tokens


def test_ngram_baseline_streams_the_train_rows_and_counts_them_exactly(monkeypatch):
    from futurelens.evaluate import _ngram

    cache, lm, tokens = _fake_data(monkeypatch, 200)
    got = _ngram(cache, lm)
    train = [row.tolist() for i, row in enumerate(tokens) if i % 4 != 3]
    assert _tables(got) == _tables(NGram().fit(train, n_max=2, vocab_size=32))
    assert int(got.totals[0].sum()) == 150 * 39  # only the 150 train rows, each prefix + target as one row


def test_ngram_baseline_memory_does_not_grow_with_the_train_rows(monkeypatch):
    """Python-heap peak (tracemalloc: lists, ints, numpy buffers) of `_ngram` over 3k vs 12k rows of 40 tokens.

    Bound: with a 4 096-key chunk the peak may grow by at most 25 % + 1 MB from 3k to 12k rows; holding the rows
    (or every pair key until the end) grows it ~4x, by >= 8 MB (12k x 40 ids as list slots alone are 3.8 MB, the
    three N's keys 11 MB).
    """
    import gc
    import tracemalloc

    import futurelens.methods.ngram as ngram
    from futurelens.evaluate import _ngram

    monkeypatch.setattr(ngram, "CHUNK", 1 << 12, raising=False)  # the default chunk, scaled to this test's size
    peaks = []
    for n_rows in (3000, 12000):
        cache, lm, tokens = _fake_data(monkeypatch, n_rows)
        del tokens
        gc.collect()
        tracemalloc.start()
        try:
            model = _ngram(cache, lm)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert int(model.totals[0].sum()) == n_rows * 3 // 4 * 39
    small, big = peaks
    assert big <= 1.25 * small + (1 << 20), f"peak {small / 2**20:.1f} MB at 3k rows, {big / 2**20:.1f} MB at 12k"
