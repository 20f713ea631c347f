"""Evaluation end to end on a tiny cache: the table's shape and its numbers against a hand count."""

from __future__ import annotations

import pytest
import torch

import futurelens as fl
from futurelens.evaluate import EvalConfig, evaluate
from futurelens.methods.prompts import FixedPrompt
from futurelens.train import TrainConfig, train_prompt


def test_evaluate_scores_every_method_layer_and_n(tiny_cache, tmp_path):
    lm, _, cache = tiny_cache("llama", n=40)
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

    # precision@1 of the fixed prompt at layer 3, N=1, counted by hand from its predictions
    test = cache.load(3, "test")
    top1 = FixedPrompt(lm, "Tell me about").predict(test, 3, k=1)[1].top_ids[:, 0]
    hand = sum(int(a == b) for a, b in zip(top1.tolist(), test.target[:, 1].tolist())) / len(test.row)
    row = precision[(precision.method == "fixed prompt") & (precision.layer == 3) & (precision.n == 1) & (precision.k == 1)]
    assert row.value.item() == pytest.approx(hand)
    # against the text: the same predictions counted against the corpus's real next tokens, from the dataset itself
    from futurelens.artifacts.dataset import load_prefixes

    table, _ = load_prefixes(cache.index["data"], tokenizer=lm.tokenizer)
    real = [table[int(r)]["next_ids"][1] for r in test.row]
    hand_text = sum(int(a == b) for a, b in zip(top1.tolist(), real)) / len(real)
    text_rows = df[(df.metric == "precision") & (df.against == "text")]
    row = text_rows[(text_rows.method == "fixed prompt") & (text_rows.layer == 3) & (text_rows.n == 1) & (text_rows.k == 1)]
    assert row.value.item() == pytest.approx(hand_text)
    assert real != test.target[:, 1].tolist()  # a random model's continuation is not the text: the scorings differ
    # surprisal of that prediction under the model's own distribution, by hand from the cached final states
    final = cache.load(3, "test", final=True).final[:, 1]
    with torch.no_grad():
        model_lp = fl.decode(lm, final).log_softmax(-1)
    hand_surprisal = -model_lp[torch.arange(len(top1)), top1].mean().item()
    sur = df[(df.method == "fixed prompt") & (df.layer == 3) & (df.n == 1) & (df.metric == "surprisal") & (df.against == "model")]
    assert sur.value.item() == pytest.approx(hand_surprisal, rel=1e-4)


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
