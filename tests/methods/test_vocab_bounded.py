"""The vocabulary probe's fit is bounded: per-N rows, no gradient buffer, a memory budget past which the rarest
targets share the "other" row. Within the budget it is the full-vocabulary AdamW fit (checked against autograd
and torch.optim.AdamW on the whole vocabulary); past it, the rows kept are the most frequent targets (a hand
count) and the fit still learns them; the memory formulas are the sizes of what the fit allocates."""

from __future__ import annotations

import pytest
import torch

from futurelens.methods.linear import VocabProbe
from futurelens.methods.vocab import (
    BYTES_PER_PARAM,
    budget_rows,
    full_probe_fit_bytes,
    head_rows,
    vocab_logits,
    vocab_probe_fit_bytes,
    vocab_probe_peak_bytes,
    vocab_probe_rows,
)


class MemoryCache:
    """The part of `StateCache` a probe fit reads, over tensors in memory (same shuffling as the real one)."""

    def __init__(self, states: torch.Tensor, target: torch.Tensor, shard: int = 32):
        self.states, self.target, self.shard = states, target, shard
        self.n_max, self.d_model = target.shape[1] - 1, states.shape[1]

    def batches(self, layer, split="train", batch_size=64, shuffle=False, seed=0, final=False):
        from futurelens.data.states import StateCache

        n = len(self.target)
        fake = StateCache.__new__(StateCache)
        fake.index = {"splits": {"train": [{"rows": min(self.shard, n - a), "a": a} for a in range(0, n, self.shard)]}}
        fake.settings = {"layers": [0]}

        def read(shard, layer, final):
            sl = slice(shard["a"], shard["a"] + shard["rows"])
            return {"states": self.states[sl] if layer is not None else torch.empty(shard["rows"], 0), "target": self.target[sl],
                    "last_token": self.target[sl, 0], "row": torch.arange(n)[sl]}

        fake._read = read
        yield from StateCache.batches(fake, 0 if layer is not None else None, split, batch_size, shuffle, seed, final)


def _data(n=96, d=16, heads=3, vocab=500, seed=0, zipf=False):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n, d, generator=g) * 2
    if zipf:  # a few frequent targets and a long tail, as in text
        weights = 1 / torch.arange(1, vocab + 1).float()
        target = torch.multinomial(weights, n * heads, replacement=True, generator=g).view(n, heads)
    else:
        target = torch.randint(vocab, (n, heads), generator=g)
    return MemoryCache(states, target)


def _full_autograd(cache, vocab, epochs, lr, batch_size, weight_decay):
    """Independent: the whole vocabulary per N, autograd cross-entropy (mean over every N's rows), torch's AdamW."""
    heads = cache.n_max + 1
    probe = torch.nn.Linear(cache.d_model, heads * vocab)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay, foreach=False)
    for epoch in range(epochs):
        for batch in cache.batches(0, "train", batch_size=batch_size, shuffle=True, seed=epoch):
            loss = torch.nn.functional.cross_entropy(probe(batch.states).view(-1, vocab), batch.target.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe


@pytest.mark.parametrize("chunk", [2048, 7])  # one chunk, or rows updated seven at a time
def test_within_the_budget_the_bounded_fit_is_the_full_vocabulary_fit(chunk, monkeypatch):
    import futurelens.methods.vocab as vocab_module

    monkeypatch.setattr(vocab_module, "CHUNK", chunk)
    cache, vocab = _data(), 500
    probe = VocabProbe(vocab, epochs=3, lr=1e-2, batch_size=8).fit(cache, 0)
    ref = _full_autograd(cache, vocab, epochs=3, lr=1e-2, batch_size=8, weight_decay=1e-5)
    x = torch.randn(20, cache.d_model)
    with torch.no_grad():
        want = ref(x).view(20, -1, vocab)
    torch.testing.assert_close(vocab_logits(probe.tensors(0), x, vocab), want, rtol=1e-4, atol=1e-4)
    # its rows: per N, that N's distinct targets and one more, far fewer than the vocabulary per N
    assert probe.rows[0].tolist() == [len(torch.unique(cache.target[:, n])) + 1 for n in range(3)]


def test_past_the_budget_the_most_frequent_targets_keep_their_rows_and_are_still_learned():
    cache, vocab = _data(n=256, zipf=True, seed=1), 500
    d, heads = cache.d_model, 3
    cap = 12
    memory_mb = cap * BYTES_PER_PARAM * heads * (d + 1) / 2**20
    assert budget_rows(d, heads, memory_mb) == cap
    probe = VocabProbe(vocab, epochs=20, lr=3e-2, batch_size=16, memory_mb=memory_mb).fit(cache, 0)
    assert probe.rows[0].tolist() == [cap] * heads and probe.probes[0].weight.shape == (cap * heads, d)
    kept = probe.tokens[0].view(heads, cap - 1)
    for n in range(heads):  # a hand count: the cap - 1 most frequent ids of that column (ties: smaller id first)
        counts = {}
        for t in cache.target[:, n].tolist():
            counts[t] = counts.get(t, 0) + 1
        best = sorted(counts, key=lambda t: (-counts[t], t))[: cap - 1]
        assert kept[n].tolist() == sorted(best)
    # every id without a row reads the other row's logit; the kept, frequent targets are predicted on train rows
    logits = vocab_logits(probe.tensors(0), cache.states, vocab)
    others = torch.ones(vocab, dtype=torch.bool)
    others[kept[0]] = False
    assert torch.equal(logits[:, 0, others], logits[:, 0, others][:, :1].expand(-1, int(others.sum())))
    top1 = logits.argmax(-1)
    hit = [((top1[:, n] == cache.target[:, n]) & torch.isin(cache.target[:, n], kept[n])).float().sum()
           / torch.isin(cache.target[:, n], kept[n]).float().sum() for n in range(heads)]
    assert min(hit) > 0.3, hit  # random 16-d states, ~11 classes each: well above chance (~0.1)


def test_head_rows_cap_and_the_formulas_agree_with_what_the_fit_allocates():
    target = torch.tensor([[5, 1], [5, 2], [7, 2], [5, 3], [7, 4], [9, 2]])
    assert [t.tolist() for t in head_rows(target, 10)] == [[5, 7, 9], [1, 2, 3, 4]]
    assert [t.tolist() for t in head_rows(target, 3)] == [[5, 7], [1, 2]]  # ties (1, 3, 4 once each): smallest
    cache, vocab = _data(n=64, d=24), 5000
    probe = VocabProbe(vocab, epochs=1, batch_size=16).fit(cache, 0)
    rows = probe.rows[0].tolist()
    assert rows == vocab_probe_rows(24, vocab, 3, [len(torch.unique(c)) for c in cache.target.T], 4096)
    w = probe.probes[0]
    params = w.weight.numel() + w.bias.numel()
    # the formula's parameters are the probe's; what it adds is two [chunk, d] buffers, the logits and the batch
    assert vocab_probe_fit_bytes(24, rows, 16) == BYTES_PER_PARAM * params + 2 * 4 * max(rows) * 24 \
        + 4 * 16 * max(rows) + 4 * 16 * 24
    # bounded: at 70B width and vocabulary the worst case stays near the budget, the unbounded joint fit does not
    bound = vocab_probe_peak_bytes(8192, 128_256, 4, 64)
    assert bound < 4.5 * 2**30 < 60 * 2**30 < full_probe_fit_bytes(8192, 128_256, 4, 64)
    assert vocab_probe_peak_bytes(8192, 128_256, 4, 64, n_train=1000) < 0.5 * 2**30  # 1,000 train rows: at most 1,000 ids per N


def test_a_checkpoint_of_another_row_layout_or_budget_is_not_resumed(tmp_path):
    cache, vocab = _data(n=64), 500
    ckpt = tmp_path / "vocab.ckpt.pt"
    whole = VocabProbe(vocab, epochs=2, batch_size=16).fit(cache, 0)
    VocabProbe(vocab, epochs=1, batch_size=16).fit(cache, 0, checkpoint=ckpt)
    blob = torch.load(ckpt, weights_only=False)
    blob["settings"]["epochs"] = 2  # the first epoch of a two-epoch fit: resumed, it ends as the whole fit
    torch.save(blob, ckpt)
    resumed = VocabProbe(vocab, epochs=2, batch_size=16).fit(cache, 0, checkpoint=ckpt)
    assert all(torch.equal(a, b) for a, b in zip(resumed.tensors(0).values(), whole.tensors(0).values()))
    from futurelens.errors import FutureLensError

    with pytest.raises(FutureLensError, match="other settings"):
        VocabProbe(vocab, epochs=2, batch_size=16, memory_mb=1).fit(cache, 0, checkpoint=ckpt)

