"""Soft-prompt training: the loss against an independent computation, what moves, checkpoints, resume."""

from __future__ import annotations

import pytest
import torch
from conftest import BLOCKS
from hook_reference import hook_patch_logits

import futurelens as fl
from futurelens.methods.prompts import LearnedPrompt
from futurelens.train import TrainConfig, load_prompt, load_prompts, prompt_loss, train_prompt


def _cfg(tmp_path, **kw):
    base = dict(out=str(tmp_path / "prompts"), prompt_len=4, lr=5e-2, epochs=3, batch_size=8)
    base.update(kw)
    return TrainConfig(**base)


def test_kl_loss_matches_a_hook_computation_from_scratch(tiny_cache):
    lm, model, cache = tiny_cache("llama", n=12)
    batch = next(cache.batches(2, "train", batch_size=3, final=True))
    prompt = torch.randn(4, lm.d_model)
    table = fl.artifacts.dataset.load_prefixes(cache.index["data"])[0]
    kl = []
    for b in range(3):
        row = table[int(batch.row[b])]
        teacher = row["target_ids"][:1]
        with torch.no_grad():
            # the original model on the real prefix + the teacher token, with no cache involved
            original = model(input_ids=torch.tensor([row["prefix_ids"] + teacher])).logits[0, -1].log_softmax(-1)
            patched = hook_patch_logits(model, BLOCKS["llama"], torch.tensor([[0] * 4 + teacher]), batch.states[b : b + 1],
                                        2, 3, soft_prompt=prompt)[0, -1].log_softmax(-1)
        kl.append((original.exp() * (original - patched)).sum())
    got = prompt_loss(lm, prompt, batch, 2, 1, "kl")
    torch.testing.assert_close(got, torch.stack(kl).mean(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loss", ["kl", "ce"])
def test_training_lowers_the_loss_and_moves_only_the_prompt(tiny_cache, tmp_path, loss):
    lm, model, cache = tiny_cache("llama", n=40)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    batch = cache.load(2, "train", final=True)
    init = torch.randn(4, lm.d_model, generator=torch.Generator().manual_seed(0 + 2)) * 0.02
    prompt, losses = train_prompt(lm, cache, 2, _cfg(tmp_path, loss=loss), progress=False)
    assert len(losses) == 3 * 4  # 30 train rows, batch 8 -> 4 steps per epoch
    with torch.no_grad():
        assert prompt_loss(lm, prompt, batch, 2, 1, loss) < prompt_loss(lm, init, batch, 2, 1, loss)
    assert not torch.allclose(prompt, init)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_saved_prompt_reloads_to_identical_predictions_and_refuses_other_models(tiny_cache, tiny, tmp_path):
    lm, _, cache = tiny_cache("llama", n=20)
    prompt, _ = train_prompt(lm, cache, 1, _cfg(tmp_path, epochs=1), progress=False)
    loaded = load_prompts(tmp_path / "prompts", lm)
    assert list(loaded) == [1] and torch.equal(loaded[1], prompt)
    batch = next(cache.batches(1, "test", batch_size=5))
    a = LearnedPrompt(lm, {1: prompt}).predict(batch, 1, 5)
    b = LearnedPrompt(lm, loaded).predict(batch, 1, 5)
    assert all(torch.equal(x.top_ids, y.top_ids) and torch.equal(x.logprobs, y.logprobs) for x, y in zip(a, b))
    _, meta = load_prompt(tmp_path / "prompts" / "layer-1.safetensors")
    assert meta["layer"] == 1 and meta["config"]["prompt_len"] == 4 and len(meta["losses"]) == 2  # 15 train rows, batch 8
    other, _ = tiny("gptj")
    other.name = "another-model"
    with pytest.raises(fl.FutureLensError, match="trained on"):
        load_prompts(tmp_path / "prompts", other)


def test_interrupted_training_resumes_to_the_same_prompt(tiny_cache, tmp_path, monkeypatch):
    lm, _, cache = tiny_cache("llama", n=40)
    whole, whole_losses = train_prompt(lm, cache, 2, _cfg(tmp_path, out=str(tmp_path / "a"), grad_accum=2,
                                                          checkpoint_every=1), progress=False)
    import futurelens.server.jobs as jobs

    real, calls = jobs.prompt_loss, {"n": 0}

    def dies_after_five(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*args, **kw)

    cfg = _cfg(tmp_path, out=str(tmp_path / "b"), grad_accum=2, checkpoint_every=1)
    monkeypatch.setattr(jobs, "prompt_loss", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        train_prompt(lm, cache, 2, cfg, progress=False)
    assert (tmp_path / "b" / "layer-2.ckpt.pt").exists() and not (tmp_path / "b" / "layer-2.safetensors").exists()
    monkeypatch.setattr(jobs, "prompt_loss", real)
    resumed, resumed_losses = train_prompt(lm, cache, 2, cfg, progress=False)
    assert torch.equal(resumed, whole) and resumed_losses == whole_losses
    assert not (tmp_path / "b" / "layer-2.ckpt.pt").exists()
    with pytest.raises(fl.FutureLensError, match="other settings"):
        train_prompt(lm, cache, 2, _cfg(tmp_path, out=str(tmp_path / "b"), lr=1e-3), progress=False)


def test_bad_settings_are_clear_errors(tiny_cache, tmp_path):
    lm, _, cache = tiny_cache("llama", n=12)
    with pytest.raises(fl.FutureLensError, match="target_n must be in 0..2"):
        train_prompt(lm, cache, 1, _cfg(tmp_path, target_n=5), progress=False)
    with pytest.raises(fl.FutureLensError, match=r"loss \(--loss\) must be"):
        train_prompt(lm, cache, 1, _cfg(tmp_path, loss="mse"), progress=False)
    with pytest.raises(fl.FutureLensError, match=r"optimizer \(--optimizer\) must be"):
        train_prompt(lm, cache, 1, _cfg(tmp_path, optimizer="lion"), progress=False)


@pytest.mark.parametrize("kind", ["gptj", "llama", "mamba"])
def test_remote_training_runs_as_one_job_and_matches_local(tiny_cache, tmp_path, monkeypatch, kind):
    lm, _, cache = tiny_cache(kind, n=24)
    cfg = _cfg(tmp_path, out=str(tmp_path / "local"), epochs=2, grad_accum=2)
    local, local_losses = train_prompt(lm, cache, 2, cfg, progress=False)
    sessions = []
    real_session = type(lm.nn).session

    def counting_session(self, *a, **kw):
        sessions.append(kw.get("remote"))
        return real_session(self, *a, **kw)

    monkeypatch.setattr(type(lm.nn), "session", counting_session)
    lm.remote = "local"
    remote, remote_losses = train_prompt(lm, cache, 2, _cfg(tmp_path, out=str(tmp_path / "remote"), epochs=2, grad_accum=2),
                                         progress=False)
    assert sessions == ["local"]  # the whole layer's training was one request
    torch.testing.assert_close(remote, local, rtol=1e-5, atol=1e-6)
    assert remote_losses == pytest.approx(local_losses, rel=1e-5)
    assert lm.remote == "local"


def test_sigkilled_training_resumes_to_a_bit_identical_prompt(tiny, tokenizer, tmp_path):
    """A SIGKILL at a random moment after the first checkpoint, then the same command: the same prompt, bit for bit.

    (The same tensor bytes and metadata; safetensors writes metadata keys in a per-process hash order.)"""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from conftest import synthetic_prefixes

    from futurelens.data.states import CacheConfig, build_cache

    lm, model = tiny("llama")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, str(folder), n=48, n_max=1)
    lm.name = str(folder)
    cache = build_cache(lm, CacheConfig(data=str(data), out=str(tmp_path / "cache"), layers=[2]), progress=False)
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}

    def cmd(out):
        return [sys.executable, "-m", "futurelens", "train", "--cache", str(cache), "--out", str(out), "--layers", "2",
                "--prompt-len", "3", "--batch-size", "2", "--epochs", "3", "--grad-accum", "2", "--checkpoint-every", "1",
                "--lr", "0.05"]

    subprocess.run(cmd(tmp_path / "whole"), check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (out / "layer-2.ckpt.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "layer-2.safetensors").exists(), "the kill should land mid-training"
    subprocess.run(cmd(out), check=True, env=env, capture_output=True)
    from safetensors import safe_open

    files = [out / "layer-2.safetensors", tmp_path / "whole" / "layer-2.safetensors"]
    (a, meta_a), (b, meta_b) = [(f.get_tensor("soft_prompt"), f.metadata()) for f in map(lambda p: safe_open(p, "pt"), files)]
    assert a.numpy().tobytes() == b.numpy().tobytes() and meta_a == meta_b
    assert not (out / "layer-2.ckpt.pt").exists()
