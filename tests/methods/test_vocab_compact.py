"""The vocabulary probe fitted compactly (one row for every id that is no train target) is the full probe, exactly:
checked against an independent full-vocabulary fit with autograd; its size is said before the fit, and is small."""

from __future__ import annotations

import logging

import torch

from futurelens.methods.linear import VocabProbe, vocab_logits


def _full_reference(cache, layer, vocab, epochs, lr, batch_size, weight_decay, seed=0):
    """A plain full-vocabulary probe: zero init, autograd cross-entropy, the same AdamW and the same batches."""
    heads = cache.n_max + 1
    probe = torch.nn.Linear(cache.d_model, heads * vocab)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for epoch in range(epochs):
        for batch in cache.batches(layer, "train", batch_size=batch_size, shuffle=True, seed=seed + epoch):
            x = batch.states.float()
            loss = torch.nn.functional.cross_entropy(probe(x).view(-1, vocab), batch.target.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe


def test_the_compact_probe_equals_a_full_vocabulary_fit(tiny_cache, caplog):
    lm, _, cache = tiny_cache("llama", n=40)
    V = lm.vocab_size
    with caplog.at_level(logging.INFO, logger="futurelens.methods.linear"):
        probe = VocabProbe(V, epochs=3, lr=1e-2, batch_size=8).fit(cache, 2)
    ref = _full_reference(cache, 2, V, epochs=3, lr=1e-2, batch_size=8, weight_decay=1e-5)
    test = cache.load(2, "test")
    tokens = probe.tokens[2]  # each N's own ids, one N after another
    train = cache.load(None, "train").target
    rows = [len(torch.unique(train[:, n])) + 1 for n in range(cache.n_max + 1)]  # per N: its targets + the rest
    assert probe.rows[2].tolist() == rows and probe.probes[2].weight.shape[0] == sum(rows) == len(tokens) + len(rows)
    assert sum(rows) < (cache.n_max + 1) * (len(VocabProbe.train_targets(cache)) + 1) < V  # less than one joint set
    with torch.no_grad():
        want = ref(test.states.float()).view(len(test.row), -1, V)
    got = vocab_logits(probe.tensors(2), test.states, V)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    preds = probe.predict(test, 2, k=5)
    for n, p in enumerate(preds):
        torch.testing.assert_close(p.logprobs, want[:, n].log_softmax(-1), rtol=1e-4, atol=1e-4)
    # Every id that is no train target has one logit (the rows the full fit keeps equal), and it is not a target's.
    other = torch.ones(V, dtype=torch.bool)
    other[torch.unique(train)] = False
    assert torch.allclose(want[:, :, other], want[:, :, other][:, :, :1].expand(-1, -1, int(other.sum())), atol=1e-5)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"rows per N {rows} (each N's distinct train targets + 1 row for the other ids of the {V})" in said
    assert "checkpoint per epoch" in said


def test_a_full_probe_saved_before_reads_the_same(tiny_cache):
    lm, _, cache = tiny_cache("llama", n=40)
    probe = VocabProbe(lm.vocab_size, epochs=1, batch_size=8).fit(cache, 2)
    test = cache.load(2, "test")
    full = {"weight": vocab_logits(probe.tensors(2), torch.eye(cache.d_model), lm.vocab_size).reshape(cache.d_model, -1).T
            - vocab_logits(probe.tensors(2), torch.zeros(1, cache.d_model), lm.vocab_size).reshape(1, -1).T,
            "bias": vocab_logits(probe.tensors(2), torch.zeros(1, cache.d_model), lm.vocab_size).reshape(-1)}
    old = VocabProbe(lm.vocab_size).restore(2, full)
    assert 2 not in old.tokens
    torch.testing.assert_close(old.predict(test, 2, 3)[1].logprobs, probe.predict(test, 2, 3)[1].logprobs,
                               rtol=1e-4, atol=1e-4)
