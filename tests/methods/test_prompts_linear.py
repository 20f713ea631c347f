"""The patch-based methods against plain hooks, and the linear maps against exact answers."""

from __future__ import annotations

import pytest
import torch
from conftest import BLOCKS
from hook_reference import hook_patch_logits

from futurelens.methods.linear import LinearApprox, VocabProbe, ridge
from futurelens.methods.prompts import FixedPrompt, LearnedPrompt, prompt_logits
from futurelens.metrics import precision_at_k


def lstsq_ridge(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """``w [d + 1, e]`` minimising ``|[x, 1] w - y|^2 + lam |w[:-1]|^2`` (bias unpenalised), ``lam = alpha`` x the mean
    over coordinates of ``sum_rows x^2``, by LAPACK least squares on the augmented rows ``[[x, 1], [sqrt(lam) I, 0]]``
    (no normal equations, nothing from futurelens)."""
    x, y = x.double(), y.double()
    n, d = x.shape
    lam = alpha * (x**2).sum(0).mean()
    a = torch.cat([torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1),
                   torch.cat([lam.sqrt() * torch.eye(d, dtype=x.dtype), torch.zeros(d, 1, dtype=x.dtype)], 1)])
    b = torch.cat([y, torch.zeros(d, y.shape[1], dtype=y.dtype)])
    return torch.linalg.lstsq(a, b, driver="gelsd").solution.float()


@pytest.mark.parametrize("kind", ["gptj", "mamba"])
def test_prompt_logits_read_every_n_with_teacher_forcing_like_hooks(tiny_cache, kind):
    lm, model, cache = tiny_cache(kind, n=12)
    batch = next(cache.batches(2, "test", batch_size=3))
    prompt_ids = [11, 12, 13, 14]
    got = prompt_logits(lm, batch.states, 2, batch.target[:, :-1], prompt_ids=prompt_ids)  # [3, n_max + 1, V]
    for b in range(3):
        ids = torch.tensor([prompt_ids + batch.target[b, :-1].tolist()])
        with torch.no_grad():
            ref = hook_patch_logits(model, BLOCKS[kind], ids, batch.states[b : b + 1], 2, len(prompt_ids) - 1)
        torch.testing.assert_close(got[b], ref[0, len(prompt_ids) - 1 :], rtol=1e-4, atol=1e-4)
    soft = torch.randn(5, lm.d_model)
    got = prompt_logits(lm, batch.states, 1, batch.target[:, :-1], soft_prompt=soft)
    for b in range(3):
        ids = torch.tensor([[0] * 5 + batch.target[b, :-1].tolist()])
        with torch.no_grad():
            ref = hook_patch_logits(model, BLOCKS[kind], ids, batch.states[b : b + 1], 1, 4, soft_prompt=soft)
        torch.testing.assert_close(got[b], ref[0, 4:], rtol=1e-4, atol=1e-4)


def test_fixed_and_learned_predictions_are_the_top_k_of_those_logits(tiny_cache):
    """The fixed prompt's top-k are those of `prompt_logits` (checked against hooks above); the learned prompt's are
    those of the hook reference itself (before: checked by shape). Seen failing with the learned prompt written at
    ``layer - 1`` in `server.jobs.method_logits`."""
    lm, model, cache = tiny_cache("llama", n=12)
    batch = next(cache.batches(3, "test", batch_size=4))
    fixed = FixedPrompt(lm, "Tell me about")
    logits = prompt_logits(lm, batch.states, 3, batch.target[:, :-1], prompt_ids=fixed.prompt_ids)
    preds = fixed.predict(batch, 3, k=5)
    assert len(preds) == cache.n_max + 1
    for n, p in enumerate(preds):
        assert torch.equal(p.top_ids, logits[:, n].topk(5).indices)
        torch.testing.assert_close(p.logprobs.exp().sum(-1), torch.ones(len(batch.row)))
    soft = torch.randn(4, lm.d_model, generator=torch.Generator().manual_seed(0))
    learned = LearnedPrompt(lm, {3: soft}).predict(batch, 3, 2)
    assert len(learned) == cache.n_max + 1
    for b in range(len(batch.row)):
        ids = torch.tensor([[0] * 4 + batch.target[b, :-1].tolist()])
        with torch.no_grad():
            ref = hook_patch_logits(model, BLOCKS["llama"], ids, batch.states[b : b + 1], 3, 3, soft_prompt=soft)[0, 3:]
        for n, p in enumerate(learned):
            assert torch.equal(p.top_ids[b], ref[n].topk(2).indices), (b, n)
            torch.testing.assert_close(p.logprobs[b], ref[n].log_softmax(-1), rtol=1e-4, atol=1e-4)
    learned = LearnedPrompt(lm, {3: soft})
    with pytest.raises(Exception, match="No soft prompt for layer 1"):
        learned.predict(batch, 1, 2)


def test_ridge_recovers_an_exact_affine_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g) * torch.tensor([1.0, 10, 0.1, 1, 100, 1])
    w, c = torch.randn(6, 3, generator=g), torch.randn(3, generator=g)
    fit = ridge(x, x @ w + c, alpha=0.0)
    torch.testing.assert_close(fit[:-1], w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fit[-1], c, rtol=1e-4, atol=1e-4)


def test_linear_approx_at_the_last_layer_for_n0_is_the_identity(tiny_cache):
    lm, _, cache = tiny_cache("llama", n=80)
    method = LinearApprox(lm, alpha=0.0).fit(cache, lm.n_layers)
    eye = method.maps[lm.n_layers][0]
    torch.testing.assert_close(eye[:-1], torch.eye(lm.d_model), rtol=1e-3, atol=1e-3)
    test = cache.load(lm.n_layers, "test", final=True)
    pred = method.predict(test, lm.n_layers, k=1)[0]
    # N=0 from the last layer's own state is the model's own next token, which is the target
    model_next = torch.stack([lm.module("lm_head")(lm.module("model.norm")(s)).argmax() for s in test.final[:, 0]])
    assert torch.equal(pred.top_ids[:, 0], model_next)


def test_vocab_probe_learns_its_training_targets_and_refines_linear_with_sgd(tiny_cache):
    """The SGD refinement of the linear map lowers its KL to the model's N-ahead distribution, measured by hand with the
    HF model's own norm and head on ``[x, 1] @ map`` (the old check, maps merely differ, passed for a diverging step).

    Fails if the refinement climbs the KL; seen failing with ``loss = -kl_div(...)`` planted in
    ``LinearApprox._refine`` (KL 0.71 -> 1.33) and with its AdamW's lr 100 times the given one (0.71 -> 5.8)."""
    lm, model, cache = tiny_cache("llama", n=40)
    train = cache.load(2, "train", final=True)
    probe = VocabProbe(lm.vocab_size, epochs=30, lr=1e-2, batch_size=16).fit(cache, 2)
    fitted = precision_at_k(probe.predict(train, 2, k=1)[0].top_ids, train.target[:, 0])[0]
    assert fitted > 0.8  # 30 memorisable random targets: a working probe fits them
    with torch.no_grad():  # a random head is near uniform, which leaves no KL to lower: sharpen it
        model.lm_head.weight.mul_(50)
    head = lambda h: model.lm_head(model.model.norm(h)).log_softmax(-1)  # noqa: E731

    def kl(maps):  # mean over rows and N of KL(model N ahead || the map's decoded guess), on the train split
        x = torch.cat([train.states.float(), torch.ones(len(train.states), 1)], 1)
        with torch.no_grad():
            target, guess = head(train.final.float()), head(torch.einsum("bd,nde->bne", x, maps))
        return float((target.exp() * (target - guess)).sum(-1).mean())

    before = kl(LinearApprox(lm).fit(cache, 2).maps[2])
    after = kl(LinearApprox(lm, sgd_epochs=3, lr=3e-3).fit(cache, 2).maps[2])
    assert before > 0.1 and after < 0.85 * before, (before, after)


def test_the_probes_in_place_gradient_is_autograds():
    from futurelens.methods.linear import cross_entropy_grad_

    torch.manual_seed(0)
    b, d, heads, vocab = 5, 8, 3, 50
    probe = torch.nn.Linear(d, heads * vocab)
    x, target = torch.randn(b, d) * 3, torch.randint(vocab, (b, heads))
    loss = torch.nn.functional.cross_entropy(probe(x).view(b * heads, vocab), target.flatten())
    weight, bias = torch.autograd.grad(loss, [probe.weight, probe.bias])
    probe.weight.grad, probe.bias.grad = torch.zeros_like(probe.weight), torch.zeros_like(probe.bias)
    cross_entropy_grad_(probe, x, target, torch.empty(b + 2, heads * vocab))  # a scratch bigger than the batch
    torch.testing.assert_close(probe.weight.grad, weight)
    torch.testing.assert_close(probe.bias.grad, bias)


def test_the_probe_fit_allocates_its_vocabulary_sized_buffers_once_not_per_step(tiny_cache):
    from torch.profiler import ProfilerActivity, profile

    lm, _, cache = tiny_cache("llama", n=40)
    width = len(VocabProbe.train_targets(cache)) + 1  # the compact probe's rows per N (train targets + the rest)
    row = 8 * (cache.n_max + 1) * width * 4  # one batch of logits, in bytes (the scratch: allocated once)

    def big_allocations(epochs: int) -> int:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            VocabProbe(lm.vocab_size, epochs=epochs, batch_size=8).fit(cache, 2)
        return sum(1 for e in prof.events() if e.self_cpu_memory_usage >= row)

    # autograd and the default AdamW allocate about nine of them a step (114 against 42 here before); two more epochs
    # (8 more steps) may add their two checkpoints' copies of the (now compact, so batch-sized) weights, no more
    one = big_allocations(1)
    assert one > 0 and big_allocations(3) - one <= 2


# --------------------------------------------------------------------------- fitted methods are artifacts


def test_the_second_evaluate_does_no_fitting_and_gives_identical_results(tiny_cache, tmp_path, monkeypatch):
    from futurelens.evaluate import EvalConfig, evaluate

    lm, _, cache = tiny_cache("llama", n=40)
    cfg = EvalConfig(cache=str(cache.path), out=str(tmp_path / "eval"), layers=[2, 3], methods=["vocab", "linear"],
                     k=5, vocab_epochs=2, batch_size=4)
    first = evaluate(cfg, lm=lm, progress=False)
    saved = sorted(p.name for p in (tmp_path / "eval" / "probes").iterdir())
    assert saved == ["linear-layer-2.safetensors", "linear-layer-3.safetensors", "vocab-layer-2.safetensors",
                     "vocab-layer-3.safetensors"]  # no checkpoint left behind

    def refuse(*a, **k):
        raise AssertionError("fitted again")

    monkeypatch.setattr(VocabProbe, "fit", refuse)
    monkeypatch.setattr(LinearApprox, "fit", refuse)
    second = evaluate(cfg, lm=lm, progress=False)
    assert first.equals(second)
    import json

    sources = json.loads((tmp_path / "eval" / "sources.json").read_text())
    assert sources["probes"]["kind"] == "folder" and len(sources["probes"]["data"]) == 16


def test_a_probe_for_another_model_layer_data_or_settings_is_refused(tiny_cache, tmp_path):
    import futurelens as fl
    from futurelens.artifacts import data_fingerprint, probe_path
    from futurelens.methods.linear import fitted

    lm, _, cache = tiny_cache("llama", n=24)
    data = data_fingerprint(cache)
    folder = tmp_path / "probes"
    probe = fitted(VocabProbe(lm.vocab_size, epochs=1), cache, 2, model=lm.name, data=data, folder=folder)
    again = fitted(VocabProbe(lm.vocab_size, epochs=1), cache, 2, model=lm.name, data=data, folder=folder)
    torch.testing.assert_close(again.probes[2].weight, probe.probes[2].weight)
    with pytest.raises(fl.FutureLensError, match=r"fitted on 'LlamaForCausalLM', not 'gpt2'"):
        fitted(VocabProbe(lm.vocab_size, epochs=1), cache, 2, model="gpt2", data=data, folder=folder)
    with pytest.raises(fl.FutureLensError, match=r"fitted on other data \(fingerprint .*delete the file to refit"):
        fitted(VocabProbe(lm.vocab_size, epochs=1), cache, 2, model=lm.name, data="0" * 16, folder=folder)
    with pytest.raises(fl.FutureLensError, match=r"other settings \(epochs differ\)"):
        fitted(VocabProbe(lm.vocab_size, epochs=2), cache, 2, model=lm.name, data=data, folder=folder)
    probe_path(folder, "vocab", 2).rename(probe_path(folder, "vocab", 3))
    with pytest.raises(fl.FutureLensError, match=r"fitted at layer 2, not 3"):
        fitted(VocabProbe(lm.vocab_size, epochs=1), cache, 3, model=lm.name, data=data, folder=folder)
    probe_path(folder, "vocab", 3).write_bytes(b"\x00" * 20)
    with pytest.raises(fl.FutureLensError, match=r"Cannot read the fitted probe .*vocab-layer-3"):
        fitted(VocabProbe(lm.vocab_size, epochs=1), cache, 3, model=lm.name, data=data, folder=folder)
    # the fingerprint is the data's, not the cached layers': another dataset differs
    _, _, other = tiny_cache("gptj", n=24)
    assert data_fingerprint(other) != data


def test_a_killed_probe_fit_resumes_after_its_last_epoch_and_ends_identical(tiny_cache, tmp_path, monkeypatch):
    import futurelens.methods.linear as linear

    lm, _, cache = tiny_cache("llama", n=24)
    whole = VocabProbe(lm.vocab_size, epochs=3).fit(cache, 2)
    ckpt = tmp_path / "vocab-layer-2.ckpt.pt"
    real, saves = linear.save_fit_checkpoint, []

    def killed_after_two(path, blob):
        real(path, blob)
        saves.append(blob["epoch"])
        if blob["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(linear, "save_fit_checkpoint", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        VocabProbe(lm.vocab_size, epochs=3).fit(cache, 2, checkpoint=ckpt)
    monkeypatch.setattr(linear, "save_fit_checkpoint", real)
    assert saves == [1, 2] and torch.load(ckpt, weights_only=False)["epoch"] == 2
    resumed = VocabProbe(lm.vocab_size, epochs=3).fit(cache, 2, checkpoint=ckpt)
    assert torch.equal(resumed.probes[2].weight, whole.probes[2].weight)
    assert torch.equal(resumed.probes[2].bias, whole.probes[2].bias)
    # the linear approximation's SGD epochs checkpoint and resume the same way
    full = LinearApprox(lm, sgd_epochs=2).fit(cache, 3)
    lin = tmp_path / "linear-layer-3.ckpt.pt"

    def killed_after_one(path, blob):
        real(path, blob)
        raise KeyboardInterrupt

    monkeypatch.setattr(linear, "save_fit_checkpoint", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        LinearApprox(lm, sgd_epochs=2).fit(cache, 3, checkpoint=lin)
    monkeypatch.setattr(linear, "save_fit_checkpoint", real)
    again = LinearApprox(lm, sgd_epochs=2).fit(cache, 3, checkpoint=lin)
    torch.testing.assert_close(again.maps[3], full.maps[3], rtol=0, atol=0)
    with pytest.raises(Exception, match=r"other settings"):
        VocabProbe(lm.vocab_size, epochs=4).fit(cache, 2, checkpoint=ckpt)


# --------------------------------------------------------------------------- the linear map, streamed shard by shard


def test_ridge_is_its_normal_equations_solved_and_those_sum_over_row_blocks():
    """`ridge` and `ridge_solve` of summed row blocks equal LAPACK least squares on the augmented rows (`lstsq_ridge`);
    before, ``ridge_solve`` was compared with ``ridge``, which is built from it. Seen failing with
    ``penalty[-1, -1] = 0`` removed from `ridge_solve` (the bias penalised)."""
    from futurelens.methods.linear import normal_equations, ridge_solve

    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 5, generator=g) * torch.tensor([1.0, 50, 0.1, 1, 1])
    y = x @ torch.randn(5, 4, generator=g) + torch.randn(300, 4, generator=g)
    gram, xty = normal_equations(x, y)
    parts = [normal_equations(x[a : a + 37], y[a : a + 37]) for a in range(0, 300, 37)]
    torch.testing.assert_close(sum(p[0] for p in parts), gram, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(sum(p[1] for p in parts), xty, rtol=1e-12, atol=1e-9)
    for alpha in (0.0, 0.1, 10.0):  # both equal a least-squares solve of the augmented rows
        torch.testing.assert_close(ridge_solve(gram, xty, alpha), lstsq_ridge(x, y, alpha), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ridge(x, y, alpha), lstsq_ridge(x, y, alpha), rtol=1e-4, atol=1e-4)
    # the penalty is alpha x the mean squared coordinate (bias excluded) on the weights, none on the bias
    w = ridge_solve(gram, xty, 10.0).double()
    xb = torch.cat([x.double(), torch.ones(300, 1, dtype=torch.float64)], 1)
    lam = 10.0 * (x.double() ** 2).sum(0).mean()
    grad = xb.T @ (xb @ w - y.double()) + lam * torch.cat([w[:-1], torch.zeros(1, 4, dtype=torch.float64)])
    assert grad.abs().max() < 1e-3 * (xb.T @ y.double()).abs().max()


@pytest.mark.parametrize("alpha", [1e-3, 0.0])
def test_linear_approx_streams_the_cache_and_equals_the_one_shot_ridge(tiny_cache, monkeypatch, alpha):
    """The streamed fit equals least squares on the whole split solved by LAPACK (`lstsq_ridge`, not futurelens'
    `ridge`, which shares `ridge_solve` with the streamed fit and so would share its bugs).

    Fails if a shard is dropped from the totals or the penalty is wrong; seen failing with ``penalty[-1, -1] = 0``
    removed from `ridge_solve` (the bias penalised) and with the totals overwritten by each batch's (``gram = g``)."""
    from futurelens.methods.linear import streamed_ridge

    lm, _, cache = tiny_cache("llama", n=90, shard_size=16)  # several shards, batches straddling them
    layer = 2
    train = cache.load(layer, "train", final=True)
    one_shot = torch.stack([lstsq_ridge(train.states, train.final[:, n], alpha) for n in range(cache.n_max + 1)])
    for batch_size in (5, 1024):
        got = streamed_ridge(cache, layer, alpha, batch_size=batch_size)
        torch.testing.assert_close(got, one_shot, rtol=1e-5, atol=1e-5)

    def whole_split(*a, **k):
        raise AssertionError("LinearApprox.fit loaded the whole train split")

    monkeypatch.setattr(type(cache), "load", whole_split)
    fit = LinearApprox(lm, alpha=alpha).fit(cache, layer).maps[layer]
    assert fit.shape == (cache.n_max + 1, lm.d_model + 1, lm.d_model)
    torch.testing.assert_close(fit, one_shot, rtol=1e-5, atol=1e-5)
