"""Evaluation end to end on a tiny cache: the table's shape and its numbers against a hand count."""

from __future__ import annotations

import pytest
import torch
from conftest import BLOCKS
from hook_reference import hook_last_states, hook_patch_logits

import futurelens as fl
from futurelens.evaluate import EvalConfig, evaluate
from futurelens.train import TrainConfig, train_prompt


def _continued_cache(tiny, tokenizer, tmp_path, n=40, n_max=2):
    """A cache over random prefixes whose targets are mostly the model's own greedy continuation (HF ``generate``), as
    `futurelens data` makes them, so that precision is not zero everywhere: ``(lm, hf model, StateCache)``."""
    from conftest import synthetic_prefixes

    from futurelens.artifacts.dataset import load_prefixes, save_prefixes
    from futurelens.data.states import CacheConfig, StateCache, build_cache

    lm, model = tiny("llama")
    data, columns = synthetic_prefixes(tmp_path / "random", tokenizer, lm.name, n=n, n_max=n_max)
    # A random model's next token is mostly a function of the current one, so a prompt reads it at every layer and N:
    # a third of the rows keep random targets, and a third have text that agrees with the model, so that no count
    # below is all right or all wrong (model ~0.6, text ~0.3).
    with torch.no_grad():
        for i, p in enumerate(columns["prefix_ids"]):
            if i % 3:
                columns["target_ids"][i] = model.generate(torch.tensor([p]), max_new_tokens=n_max + 1, do_sample=False,
                                                          min_new_tokens=n_max + 1, pad_token_id=0)[0, len(p):].tolist()
            if i % 3 == 1:
                columns["next_ids"][i] = columns["target_ids"][i]
    _, meta = load_prefixes(data)
    data = save_prefixes(columns, meta, tmp_path / "data")
    return lm, model, StateCache(build_cache(lm, CacheConfig(data=str(data), out=str(tmp_path / "cache")), progress=False))


def test_evaluate_scores_every_method_layer_and_n(tiny, tokenizer, tmp_path):
    """The table's shape, and the fixed prompt's cells (precision@1 against model and text, surprisal; every layer
    and N) counted by hand over the dataset with plain hooks (before: counted from `FixedPrompt.predict`, the code
    under test, over random targets where every precision was 0).

    Seen failing with ``teacher = batch["target"][:, 1:]`` planted in `server.jobs.method_logits` (the wrong tokens
    teacher-forced) and with the tally's ``target_ids = batches[i].target[:, n]`` made ``[:, 0]`` in
    `evaluate._score` (every N scored against N=0), and with the prompt patched at ``n_prompt - 2`` in
    `server.jobs.prompt_logits`; the old hand count passed all three."""
    lm, model, cache = _continued_cache(tiny, tokenizer, tmp_path)
    train_prompt(lm, cache, 2, TrainConfig(out=str(tmp_path / "prompts"), prompt_len=3, epochs=1), progress=False)
    cfg = EvalConfig(cache=str(cache.path), prompts=str(tmp_path / "prompts"), out=str(tmp_path / "eval"),
                     layers=[2, 3], k=5, vocab_epochs=1, batch_size=4, fixed_prompt="Tell me about")
    df = evaluate(cfg, lm=lm, progress=False)
    assert set(df.against) == {"model", "text"} and (df.target_layer == df.layer).all()
    precision = df[(df.metric == "precision") & (df.against == "model")]
    expected = {("bigram", -1)} | {(m, layer) for m in ("linear (vocab)", "linear (hidden)", "fixed prompt") for layer in (2, 3)}
    assert set(zip(precision.method, precision.layer)) == expected | {("learned prompt", 2)}
    assert len(precision) == len(expected | {("learned prompt", 2)}) * (cache.n_max + 1) * 5
    for _, group in precision.groupby(["method", "layer", "n"]):
        values = group.sort_values("k").value.tolist()
        assert values == sorted(values) and 0 <= values[0] and values[-1] <= 1  # precision@k grows with k
    assert (df[df.metric == "surprisal"].value >= 0).all()
    assert {p.name for p in (tmp_path / "eval").iterdir()} >= {"results.csv", "precision.png", "surprisal.png"}

    # By hand, with nothing from futurelens' methods, cache or decode: each test prefix's state (a hook on its last
    # token) patched over the prompt's last token at the same layer, the model's own continuation teacher-forced
    # after it, logits read N positions on; scored against the continuation (model) and the corpus's next tokens
    # (text); surprisal is -log p of the guess under the model's own logits on prefix + continuation[:N].
    from futurelens.artifacts.dataset import load_prefixes

    table, _ = load_prefixes(cache.index["data"], tokenizer=lm.tokenizer)
    rows = [r for r in table if r["split"] == "test"]
    assert len(rows) == len(cache.load(3, "test").row) == 10
    prompt = lm.tokenizer("Tell me about")["input_ids"]
    for layer in (2, 3):
        with torch.no_grad():
            guess, nll = torch.empty(len(rows), 3, dtype=torch.long), torch.empty(len(rows), 3)
            for i, r in enumerate(rows):
                state = hook_last_states(model, BLOCKS["llama"], torch.tensor([r["prefix_ids"]]))[layer, -1:]
                ids = torch.tensor([prompt + r["target_ids"][:2]])
                logits = hook_patch_logits(model, BLOCKS["llama"], ids, state, layer, len(prompt) - 1)[0, len(prompt) - 1 :]
                guess[i] = logits.argmax(-1)
                own = model(input_ids=torch.tensor([r["prefix_ids"] + r["target_ids"][:2]])).logits[0, -3:].log_softmax(-1)
                nll[i] = -own.gather(1, guess[i][:, None])[:, 0]
        for n in range(3):
            cell = df[(df.method == "fixed prompt") & (df.layer == layer) & (df.n == n)]
            at_1 = cell[cell.k == 1]
            hand = sum(int(guess[i, n] == r["target_ids"][n]) for i, r in enumerate(rows)) / len(rows)
            hand_text = sum(int(guess[i, n] == r["next_ids"][n]) for i, r in enumerate(rows)) / len(rows)
            assert at_1[at_1.against == "model"].value.item() == pytest.approx(hand), (layer, n)
            assert at_1[at_1.against == "text"].value.item() == pytest.approx(hand_text), (layer, n)
            sur = cell[(cell.metric == "surprisal") & (cell.against == "model")]
            assert sur.value.item() == pytest.approx(nll[:, n].mean().item(), rel=1e-4), (layer, n)
            assert 0 < hand_text < hand < 1  # counts that a wrong target, N or patch can move


def test_unknown_method_is_a_clear_error(tiny_cache, tmp_path):
    lm, _, cache = tiny_cache("llama", n=12)
    with pytest.raises(fl.FutureLensError, match="Unknown method"):
        evaluate(EvalConfig(cache=str(cache.path), methods=["oracle"]), lm=lm, progress=False)


@pytest.mark.parametrize("kind", ["gptj", "llama", "mamba"])
def test_remote_evaluation_is_one_job_per_layer_and_matches_local(tiny_cache, tmp_path, monkeypatch, kind):
    lm, _, cache = tiny_cache(kind, n=24)
    train_prompt(lm, cache, 1, TrainConfig(out=str(tmp_path / "prompts"), prompt_len=3, epochs=1), progress=False)
    cfg = EvalConfig(cache=str(cache.path), prompts=str(tmp_path / "prompts"), out=str(tmp_path / "local"),
                     layers=[1, 3], k=3, vocab_epochs=1, batch_size=4, fixed_prompt="Tell me about")
    local = evaluate(cfg, lm=lm, progress=False)
    sessions = []
    real_session = type(lm.nn).session
    monkeypatch.setattr(type(lm.nn), "session", lambda self, *a, **kw: sessions.append(1) or real_session(self, *a, **kw))
    lm.remote = "local"
    cfg.out = str(tmp_path / "remote")
    remote = evaluate(cfg, lm=lm, progress=False)
    assert len(sessions) == 2  # one request per layer, all methods and batches inside it
    assert remote[["method", "layer", "n", "metric", "k"]].equals(local[["method", "layer", "n", "metric", "k"]])
    assert remote.value.tolist() == pytest.approx(local.value.tolist(), rel=1e-4, abs=1e-5)


def test_text_targets_are_the_datasets_next_ids(tiny_cache):
    """Read from the Arrow buffers, they equal the dataset's `next_ids` column as Python lists, row for row."""
    from futurelens.artifacts.dataset import load_prefixes
    from futurelens.evaluate import text_targets

    lm, _, cache = tiny_cache("llama", n=12, n_max=2)
    table, _ = load_prefixes(cache.index["data"])
    ids = text_targets(cache, lm)
    assert ids.dtype == torch.long and ids.shape == (12, 3)
    assert ids.tolist() == [row[:3] for row in table["next_ids"]]


def test_scoring_holds_one_batchs_distributions_at_a_time(tiny_cache):
    """A client method's log-distributions (a vocabulary per row and N) are reduced to what is tallied as each
    batch is predicted: none of an earlier batch is alive when the next is predicted, and every row is tallied."""
    import weakref

    from futurelens.evaluate import _score, text_targets
    from futurelens.methods.base import Prediction

    lm, _, cache = tiny_cache("llama", n=40)
    alive, most = [], [0]

    class Probe:
        name = "probe"

        def predict(self, batch, layer, k):
            most[0] = max(most[0], sum(ref() is not None for ref in alive))
            out = []
            for _ in range(batch.target.shape[1]):
                logprobs = torch.randn(len(batch.states), lm.vocab_size).log_softmax(-1)
                alive.append(weakref.ref(logprobs))
                out.append(Prediction(logprobs.topk(3, dim=-1).indices, logprobs))
            return out

    layer = cache.layers[-1]
    batches = list(cache.batches(layer, "test", 2, final=True))
    tallies = {}
    _score(lm, layer, batches, [Probe()], [], None, 3, text_targets(cache, lm), tallies)
    assert len(batches) >= 3 and most[0] == 0
    rows = sum(len(b.states) for b in batches)
    assert {key[3] for key in tallies} == set(range(cache.n_max + 1))
    assert all(t.result()["n"] == rows for key, t in tallies.items() if key[0] == "probe")
