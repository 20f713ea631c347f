"""The conformance core in the dtypes GPU users run (bfloat16, float16) on GPT-J, Llama, Mamba and Gemma2, and
one soft-prompt training step in bfloat16 (a float32 prompt against a bfloat16 model) that lowers the loss.

The reference is the same plain-hook implementation, run in the same dtype. Tolerances (relative to the
largest value compared): bfloat16 1.6e-2 (two steps of its 8-bit mantissa), float16 2e-3 (two steps of its
11-bit one); probabilities within 1e-2 (bfloat16) / 2e-3 (float16) absolute. On CPU the two agree exactly;
the margins are for kernels that round differently across batch shapes (padding), as GPU kernels may.
"""

from __future__ import annotations

import pytest
import torch
from hook_reference import hook_patch_logits, hook_rollout, hook_states

import futurelens as fl
from futurelens.server import jobs

from .zoo import ZOO, build

ROWS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
REL = {torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
PROB = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
KINDS = pytest.mark.parametrize("name", ["gptj", "llama", "mamba", "gemma2"])


def _close(got, expected, dtype, what):
    got, expected = got.float(), expected.float()
    scale = float(expected.abs().max()) + 1e-6
    err = float((got - expected).abs().max())
    assert err <= REL[dtype] * scale, f"{what}: largest difference {err:.3g} of {scale:.3g} (tolerance {REL[dtype]} relative)"


@KINDS
@DTYPES
def test_the_conformance_core_in_16_bit(tokenizer, name, dtype):
    model = build(name, dtype=dtype)
    lm = fl.load_model(model, tokenizer=tokenizer)
    blocks, L = ZOO[name].blocks, lm.n_layers
    assert lm.dtype == dtype

    states = fl.cache(lm, ROWS, layers=[0, 1, L])
    for i, row in enumerate(ROWS):
        _close(states[:, i], hook_states(model, blocks, torch.tensor([row]))[[0, 1, L], 0, -1], dtype, f"cache row {i}")

    target = torch.tensor([[30, 31, 32, 33]])
    out = fl.patch(lm, states[1], 1, target=target, position=1, read=[0, 1, 2, 3])
    with torch.no_grad():
        _close(out.logits, hook_patch_logits(model, blocks, target.expand(3, -1), states[1], 1, 1), dtype, "patch")

    with torch.no_grad():
        own = torch.stack([model(input_ids=torch.tensor([row])).logits[0, -1] for row in ROWS])
    decoded = fl.decode(lm, states[2])
    _close(decoded, own, dtype, "decode")
    torch.testing.assert_close(decoded.float().softmax(-1), own.float().softmax(-1), rtol=0, atol=PROB[dtype])

    g = torch.Generator().manual_seed(5)
    vectors, soft = torch.randn(4, lm.d_model, generator=g), torch.randn(3, lm.embed_dim, generator=g)
    ids, probs = fl.rollout(lm, vectors, [1, 0, L, 1], soft_prompt=soft, n=3)
    ref_ids, ref_p = hook_rollout(model, blocks, torch.full((4, 3), lm.pad_id), vectors, [1, 0, L, 1], 2, soft, 3)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(probs, ref_p, rtol=0, atol=PROB[dtype])


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_a_bfloat16_training_step_lowers_the_loss_and_keeps_the_prompt_float32(tokenizer, name):
    model = build(name, dtype=torch.bfloat16)
    lm = fl.load_model(model, tokenizer=tokenizer)
    g = torch.Generator().manual_seed(0)
    prefixes = torch.randint(3, 500, (8, 5), generator=g).tolist()
    continuation = fl.greedy(lm, prefixes, 2)
    states, final = fl.cache_ahead(lm, prefixes, continuation[:, :1], layers=1)
    batch = {"states": states[0], "target": continuation, "final": final}
    prompt = (torch.randn(4, lm.embed_dim, generator=g) * 0.02).float()
    settings = {"optimizer": "adamw", "lr": 5e-2, "weight_decay": 0.0, "target_n": 1, "loss": "kl", "grad_accum": 1}
    before = float(jobs.prompt_loss(lm.nn, lm.spec(), prompt, batch, 1, 1, "kl"))
    trained, _, _, _, losses = jobs.train_steps(lm.nn, lm.spec(), prompt, None, None, [],
                                                [(0, i, i == 4, batch) for i in range(5)], settings, 1)
    after = float(jobs.prompt_loss(lm.nn, lm.spec(), trained, batch, 1, 1, "kl"))
    assert trained.dtype == torch.float32 and not torch.equal(trained, prompt)
    assert after < before, (before, after, losses)
    assert all(p.grad is None for p in model.parameters())
