"""Target model != source model: states of tiny model A (llama, d=32) mapped into tiny model B (gptj, d=48).

Expected numbers come from outside `futurelens.mapping`: least squares by `torch.linalg.lstsq` and a ridge
written here, the patched logits by `hook_reference` (plain forward hooks on B's HF model, the mapped state
computed by hand), and the remote runs from NDIF's own server code (tests/ndif_executor).
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import BLOCKS, N_LAYERS, build_tiny, synthetic_prefixes
from hook_reference import hook_patch_logits
from ndif_executor.conftest import checkpoints, ndif_pair, ndif_server  # noqa: F401 - fixtures

import futurelens as fl
from futurelens.data.states import CacheConfig, StateCache, build_cache
from futurelens.evaluate import EvalConfig, evaluate
from futurelens.mapping import MappedCache, fit_map
from futurelens.methods.prompts import FixedPrompt, LearnedPrompt
from futurelens.train import TrainConfig, train, train_prompt

SOURCE, TARGET = 1, 2
D_B = 48


def _gptj_48(tokenizer):
    torch.manual_seed(1)
    config = transformers.GPTJConfig(n_embd=D_B, n_layer=N_LAYERS, n_head=4, rotary_dim=4, n_positions=256,
                                     vocab_size=len(tokenizer))
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def pair(tokenizer, tmp_path_factory):
    """``(lm_a, lm_b, hf model b, cache a, cache b, tmp)``: one dataset cached by both models."""
    tmp = tmp_path_factory.mktemp("mapping")
    lm_a = fl.load_model(build_tiny("llama", tokenizer), tokenizer=tokenizer)
    model_b = _gptj_48(tokenizer)
    lm_b = fl.load_model(model_b, tokenizer=tokenizer)
    assert (lm_a.d_model, lm_b.d_model) == (32, D_B) and lm_a.name != lm_b.name
    data, _ = synthetic_prefixes(tmp / "data", tokenizer, lm_a.name, n=80, n_max=2)
    caches = [StateCache(build_cache(lm, CacheConfig(data=str(data), out=str(tmp / f"cache-{x}"), shard_size=32),
                                     progress=False)) for x, lm in (("a", lm_a), ("b", lm_b))]
    return lm_a, lm_b, model_b, *caches, tmp


def test_fit_map_is_least_squares_on_paired_states(pair):
    lm_a, lm_b, _, cache_a, cache_b, _ = pair
    x, y = cache_a.load(SOURCE, "train"), cache_b.load(TARGET, "train")
    assert x.row.equal(y.row) and len(x.row) == 60  # more rows than d_A + 1 = 33
    xb = torch.cat([x.states.double(), torch.ones(len(x.row), 1, dtype=torch.float64)], 1)
    w = fit_map(cache_a, SOURCE, cache_b, TARGET, alpha=0.0)
    assert w.shape == (32 + 1, D_B)
    want = torch.linalg.lstsq(xb, y.states.double()).solution.float()
    torch.testing.assert_close(w, want, rtol=1e-3, atol=1e-3)
    # The default ridge against one written here: alpha * mean diagonal of the Gram matrix, bias unpenalised.
    gram = xb.T @ xb
    pen = torch.diag(torch.cat([torch.full((32,), 1e-3 * gram.diagonal()[:-1].mean().item()), torch.zeros(1)]))
    ridge = torch.linalg.solve(gram + pen.double(), xb.T @ y.states.double()).float()
    torch.testing.assert_close(fit_map(cache_a, SOURCE, cache_b, TARGET), ridge, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ridge, want, atol=1e-3)  # the penalty is not nothing: the two checks differ

    # The view train and evaluate read: A's states mapped, B's targets and final states, rows in step.
    view = MappedCache(cache_a, cache_b, TARGET, maps={SOURCE: ridge})
    assert (view.layers, view.d_model, view.n_max) == (cache_a.layers, D_B, cache_b.n_max)
    assert view.settings["source_model"] == lm_a.name and view.settings["model"] == lm_b.name
    for got, a, b in zip(view.batches(SOURCE, "train", 16, shuffle=True, seed=3, final=True),
                         cache_a.batches(SOURCE, "train", 16, shuffle=True, seed=3),
                         cache_b.batches(None, "train", 16, shuffle=True, seed=3, final=True), strict=True):
        assert got.row.equal(a.row) and got.row.equal(b.row) and got.target.equal(b.target)
        torch.testing.assert_close(got.states, a.states @ ridge[:-1] + ridge[-1])
        torch.testing.assert_close(got.final, b.final)


def _hook_logits(model, batch, states, ids_of, position, soft=None):
    out = []
    for b in range(len(batch.row)):
        with torch.no_grad():
            out.append(hook_patch_logits(model, BLOCKS["gptj"], ids_of(b), states[b : b + 1], TARGET, position,
                                         soft_prompt=soft)[0, position:])
    return torch.stack(out).float().log_softmax(-1)


def test_prompts_patch_the_mapped_state_into_b(pair):
    _, lm_b, model_b, cache_a, cache_b, _ = pair
    w = fit_map(cache_a, SOURCE, cache_b, TARGET)
    batch = next(cache_a.batches(SOURCE, "test", batch_size=4))  # A's states, d = 32
    by_hand = batch.states.float() @ w[:-1] + w[-1]  # [4, 48]
    fixed = FixedPrompt(lm_b, "Tell me about", target_layer=TARGET, mapping=w)
    ids = fixed.prompt_ids
    ref = _hook_logits(model_b, batch, by_hand, lambda b: torch.tensor([ids + batch.target[b, :-1].tolist()]), len(ids) - 1)
    got = torch.stack([p.logprobs for p in fixed.predict(batch, SOURCE, k=3)], 1)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert fixed.describe(SOURCE) == FixedPrompt(lm_b, "Tell me about", target_layer=TARGET).describe(SOURCE)

    soft = torch.randn(4, D_B, generator=torch.Generator().manual_seed(0))
    learned = LearnedPrompt(lm_b, {(SOURCE, TARGET): soft}, mapping=w)
    ref = _hook_logits(model_b, batch, by_hand, lambda b: torch.tensor([[0] * 4 + batch.target[b, :-1].tolist()]), 3, soft)
    got = torch.stack([p.logprobs for p in learned.predict(batch, SOURCE, k=3, target=TARGET)], 1)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_train_in_b_on_a_states_and_evaluate(pair):
    lm_a, lm_b, _, cache_a, cache_b, tmp = pair
    out = tmp / "prompts"
    cfg = TrainConfig(cache=str(cache_b.path), source_cache=str(cache_a.path), out=str(out), layers=[SOURCE],
                      target_layers=[TARGET], prompt_len=4, epochs=4, batch_size=8, lr=3e-2, seed=0)
    prompts = train(cfg, lm=lm_b, progress=False)
    assert set(prompts) == {(SOURCE, TARGET)} and prompts[(SOURCE, TARGET)].shape == (4, D_B)
    saved = fl.artifacts.load_prompts(out, lm_b)
    meta = saved.meta[(SOURCE, TARGET)]
    assert meta["source_model"] == lm_a.name and meta["model"] == lm_b.name and meta["target_layer"] == TARGET
    losses = meta["losses"]
    assert len(losses) == 4 * 8 and sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
    assert (out / "maps" / f"layer-{SOURCE}-to-{TARGET}.safetensors").is_file()

    df = evaluate(EvalConfig(cache=str(cache_b.path), source_cache=str(cache_a.path), prompts=str(out),
                             out=str(tmp / "eval"), layers=[SOURCE], target_layers=[TARGET], k=3), lm=lm_b, progress=False)
    assert set(df.method) == {"fixed prompt", "learned prompt"}  # the default's other methods are skipped
    assert set(df.layer) == {SOURCE} and set(df.target_layer) == {TARGET}
    assert json.loads((tmp / "eval" / "sources.json").read_text())["source_model"]["model"] == lm_a.name

    # The table's precision@1 (against B's continuation) from the learned prompt given A's mapped test states.
    w = fit_map(cache_a, SOURCE, cache_b, TARGET)
    test_a, test_b = cache_a.load(SOURCE, "test"), cache_b.load(None, "test")
    learned = LearnedPrompt(lm_b, {(SOURCE, TARGET): prompts[(SOURCE, TARGET)]}, mapping=w)
    preds = learned.predict(test_a, SOURCE, k=3, target=TARGET)
    sel = df[(df.method == "learned prompt") & (df.metric == "precision") & (df.k == 1) & (df.against == "model")]
    for n, p in enumerate(preds):
        want = (p.top_ids[:, 0] == test_b.target[:, n]).float().mean().item()
        assert sel[sel.n == n].value.item() == pytest.approx(want, abs=1e-6)


def test_unpaired_caches_are_refused(pair, tokenizer):
    lm_a, lm_b, _, cache_a, cache_b, tmp = pair
    other, _ = synthetic_prefixes(tmp / "data-other", tokenizer, lm_a.name, n=80, n_max=2, seed=7)
    cache_c = StateCache(build_cache(lm_b, CacheConfig(data=str(other), out=str(tmp / "cache-c"), shard_size=32,
                                                       layers=[TARGET]), progress=False))
    with pytest.raises(fl.FutureLensError, match="not paired.*other prefixes.*one `futurelens data` folder"):
        fit_map(cache_a, SOURCE, cache_c, TARGET)
    with pytest.raises(fl.FutureLensError, match="not paired"):
        train(TrainConfig(cache=str(cache_c.path), source_cache=str(cache_a.path), out=str(tmp / "p-bad"),
                          layers=[SOURCE], target_layers=[TARGET], epochs=1), lm=lm_b, progress=False)
    cache_d = StateCache(build_cache(lm_b, CacheConfig(data=str(cache_a.index["data"]), out=str(tmp / "cache-d"),
                                                       shard_size=16, layers=[TARGET]), progress=False))
    with pytest.raises(fl.FutureLensError, match="shard-size"):
        MappedCache(cache_a, cache_d, TARGET)
    # A saved map belongs to its models, layers and data.
    from futurelens.artifacts import MapInfo, load_map, map_path, save_map

    info = MapInfo(lm_a.name, lm_b.name, SOURCE, TARGET, "aaaa", "bbbb")
    path = save_map(map_path(tmp / "m", SOURCE, TARGET), torch.zeros(33, D_B), info)
    assert load_map(path, info).shape == (33, D_B)
    with pytest.raises(fl.FutureLensError, match="other models, layers or data"):
        load_map(path, MapInfo(lm_a.name, lm_b.name, SOURCE, TARGET, "aaaa", "cccc"))


def test_remote_both_models_on_ndif_match_local(ndif_pair, ndif_server, tokenizer, tmp_path):  # noqa: F811
    """A's cache built on the stand-in NDIF, B's prompt trained and evaluated there: equal to the local runs."""
    remote_a, local_a = ndif_pair("llama")
    remote_b, local_b = ndif_pair("gptj")
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, local_a.name, n=24, n_max=2)
    caches = {}
    for name, lm in (("a-remote", remote_a), ("a-local", local_a), ("b", local_b)):
        caches[name] = StateCache(build_cache(lm, CacheConfig(data=str(data), out=str(tmp_path / f"cache-{name}"),
                                                              layers=[SOURCE, TARGET], shard_size=16), progress=False))
    torch.testing.assert_close(caches["a-remote"].load(SOURCE).states, caches["a-local"].load(SOURCE).states,
                               rtol=1e-4, atol=1e-5)
    cfg = {"prompt_len": 3, "lr": 5e-2, "epochs": 2, "batch_size": 8, "checkpoint_every": 2}
    got = {}
    for name, lm, a in (("remote", remote_b, "a-remote"), ("local", local_b, "a-local")):
        view = MappedCache(caches[a], caches["b"], TARGET)
        got[name] = train_prompt(lm, view, SOURCE, TrainConfig(out=str(tmp_path / f"prompts-{name}"), **cfg),
                                 progress=False, target_layer=TARGET)
    torch.testing.assert_close(got["remote"][0], got["local"][0], rtol=1e-3, atol=1e-4)
    assert got["remote"][1] == pytest.approx(got["local"][1], rel=1e-3)

    tables = {}
    for name, lm, a in (("remote", remote_b, "a-remote"), ("local", local_b, "a-local")):
        tables[name] = evaluate(EvalConfig(cache=str(caches["b"].path), source_cache=str(caches[a].path),
                                           prompts=str(tmp_path / "prompts-local"), out=str(tmp_path / f"eval-{name}"),
                                           layers=[SOURCE], target_layers=[TARGET], methods=["fixed", "learned"], k=3),
                                lm=lm, progress=False)
    a, b = tables["remote"], tables["local"]
    assert set(a.method) == {"fixed prompt", "learned prompt"}
    assert a[["method", "layer", "target_layer", "n", "metric", "k"]].equals(b[["method", "layer", "target_layer", "n", "metric", "k"]])
    assert a.value.tolist() == pytest.approx(b.value.tolist(), rel=1e-3, abs=1e-4, nan_ok=True)
    assert ndif_server.requests and all(r["mode"] == "whitelist" for r in ndif_server.requests)
