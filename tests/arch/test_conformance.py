"""Architecture conformance: every primitive on every architecture in `zoo.ZOO`, against plain PyTorch hooks.

The reference (`hook_reference`) shares no code with futurelens: the block list's path is written
out by hand in the zoo, the embedding is ``get_input_embeddings()``, and logits are the model's own
forward (so its final norm, projections, logit scale and soft cap are whatever the model does).
Layers checked: 0 (what enters block 0), 1 and the last; patches at the middle layer.
"""

from __future__ import annotations

import dataclasses
import pytest
import torch
from hook_reference import hook_patch_logits, hook_rollout, hook_states

import futurelens as fl
from futurelens.dispatch import run_job
from futurelens.server import jobs

from .zoo import VOCAB, ZOO, build

NAMES = [name for name, spec in ZOO.items() if spec.refused is None]
REFUSED = [name for name, spec in ZOO.items() if spec.refused is not None]
ROWS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]  # ragged: right-padded into one batch
CONT = [[40, 41], [42, 43], [44, 45]]
TOL = dict(rtol=1e-4, atol=1e-4)


_BUILT: dict = {}


def _load(name: str, tokenizer):
    if name not in _BUILT:
        model = build(name)
        _BUILT[name] = fl.load_model(model, tokenizer=tokenizer), model
    return _BUILT[name]


@pytest.fixture
def arch(request, tokenizer):
    """``(LensModel, raw HF model, zoo entry)`` for the architecture the test is parametrized with (built once per process)."""
    lm, model = _load(request.param, tokenizer)
    return lm, model, ZOO[request.param]


def _soft(width: int, n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def _assert_logits_close(got, expected, what=""):
    # Relative to the logits' size: soft-capped logits are ~2, plain ones ~20.
    scale = float(expected.abs().max()) + 1.0
    torch.testing.assert_close(got.float(), expected.float(), rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f"{what}: {m}")


parametrize = pytest.mark.parametrize("arch", NAMES, indirect=True)


@pytest.mark.parametrize("name", REFUSED)
def test_an_unsupported_architecture_is_refused_at_load_saying_why(name, tokenizer):
    with pytest.raises(fl.FutureLensError, match=ZOO[name].refused):
        fl.load_model(build(name), tokenizer=tokenizer)


@parametrize
def test_detects_blocks_widths_and_head(arch):
    lm, model, spec = arch
    assert lm.arch.blocks == spec.blocks
    assert lm.n_layers == len(model.get_submodule(spec.blocks))
    assert lm.d_model == spec.d_model and lm.embed_dim == (spec.embed_dim or spec.d_model)
    assert lm.vocab_size == VOCAB


@parametrize
def test_cache_at_layers_0_1_last_matches_hooks_on_a_ragged_batch(arch):
    lm, model, spec = arch
    layers = [0, 1, lm.n_layers]
    states = fl.cache(lm, ROWS, layers=layers)
    assert states.shape == (3, len(ROWS), lm.d_model)
    for i, row in enumerate(ROWS):
        ids = torch.tensor([row])
        expected = hook_states(model, spec.blocks, ids)[layers, 0, -1]
        torch.testing.assert_close(states[:, i], expected, **TOL)
        if spec.hs0:  # layer 0 is what transformers itself reports as hidden_states[0]
            with torch.no_grad():
                hs0 = model(input_ids=ids, output_hidden_states=True).hidden_states[0][0, -1]
            torch.testing.assert_close(states[0, i], hs0, **TOL)


@parametrize
def test_cache_ahead_reads_the_last_layer_over_the_continuation(arch):
    lm, model, spec = arch
    states, final = fl.cache_ahead(lm, ROWS, CONT, layers=[0, 1, lm.n_layers])
    torch.testing.assert_close(states, fl.cache(lm, ROWS, layers=[0, 1, lm.n_layers]), **TOL)
    assert final.shape == (len(ROWS), 3, lm.d_model)
    for i, (row, cont) in enumerate(zip(ROWS, CONT)):
        expected = hook_states(model, spec.blocks, torch.tensor([row + cont]))[lm.n_layers, 0, len(row) - 1 :]
        torch.testing.assert_close(final[i], expected, **TOL)


@parametrize
def test_patch_at_the_middle_layer_equals_the_hook_patch(arch):
    lm, model, spec = arch
    mid = max(1, lm.n_layers // 2)
    state = fl.cache(lm, ROWS, layers=mid)[0]
    target = torch.tensor([[30, 31, 32, 33, 34, 35]])
    out = fl.patch(lm, state, mid, target=target, position=2, read=list(range(6)))
    top = fl.patch(lm, state, mid, target=target, position=2, top_k=3)
    with torch.no_grad():
        expected = hook_patch_logits(model, spec.blocks, target.expand(3, -1), state, mid, 2)
    _assert_logits_close(out.logits, expected, "patched logits")
    # Probabilities too: they are the model's own (its logit scale or soft cap applied).
    p, i = expected[:, -1].float().softmax(-1).topk(3)
    assert torch.equal(top.top_ids[:, 0], i)
    torch.testing.assert_close(top.top_probs[:, 0], p, rtol=1e-4, atol=1e-5)


@parametrize
@pytest.mark.parametrize("layer", ["0", "last"])
def test_soft_prompt_and_patch_equal_the_hook_patch(arch, layer):
    lm, model, spec = arch
    layer = 0 if layer == "0" else lm.n_layers
    state = fl.cache(lm, ROWS, layers=layer)[0]
    soft = _soft(lm.embed_dim)
    target = torch.tensor([[21, 22, 23]])
    out = fl.patch(lm, state, layer, soft_prompt=soft, target=target, read=list(range(6)))
    ids = torch.cat([torch.full((3, 3), lm.pad_id), target.expand(3, -1)], 1)
    with torch.no_grad():
        expected = hook_patch_logits(model, spec.blocks, ids, state, layer, 2, soft_prompt=soft)
    _assert_logits_close(out.logits, expected, f"soft prompt, patch at layer {layer}")


@parametrize
def test_per_row_layers_in_one_forward_equal_the_hook_patch_row_by_row(arch):
    lm, model, spec = arch
    L = lm.n_layers
    layers = [L, 0, 1, 0, L]
    full = fl.cache(lm, ROWS + ROWS[:2])  # [L + 1, 5, d]
    states = torch.stack([full[layer, b] for b, layer in enumerate(layers)])
    soft = _soft(lm.embed_dim)
    target = torch.tensor([[21, 22]])
    out = fl.patch(lm, states, layers, soft_prompt=soft, target=target, read=list(range(5)))
    ids = torch.cat([torch.full((1, 3), lm.pad_id), target], 1)
    with torch.no_grad():
        for b, layer in enumerate(layers):
            expected = hook_patch_logits(model, spec.blocks, ids, states[b : b + 1], layer, 2, soft_prompt=soft)
            _assert_logits_close(out.logits[b : b + 1], expected, f"row {b} at layer {layer}")


@parametrize
def test_rollout_equals_a_hook_rerun_of_the_growing_context(arch):
    lm, model, spec = arch
    L = lm.n_layers
    layers = [1, 0, L, 1]
    states = torch.randn(4, lm.d_model, generator=torch.Generator().manual_seed(5))
    soft = _soft(lm.embed_dim)
    ids, probs = fl.rollout(lm, states, layers, soft_prompt=soft, n=3)  # one prompt for every row: a shared prefix
    ref_ids, ref_p = hook_rollout(model, spec.blocks, torch.full((4, 3), lm.pad_id), states, layers, 2, soft, 3)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(probs, ref_p, rtol=1e-4, atol=1e-5)
    # Within one call, the top-k probability and the rollout's are the same number (the model's own head in both).
    out = fl.patch(lm, states, layers, soft_prompt=soft, top_k=1, rollout=1)
    assert torch.equal(out.top_ids[:, 0, 0], out.rollout_ids[:, 0])
    torch.testing.assert_close(out.top_probs[:, 0, 0], out.rollout_probs[:, 0], rtol=1e-4, atol=1e-5)


@parametrize
def test_decode_and_greedy_are_the_models_own(arch):
    lm, model, spec = arch
    last = fl.cache(lm, ROWS, layers=lm.n_layers)[0]
    expected = torch.stack([_logits(model, row)[-1] for row in ROWS])
    got = fl.decode(lm, last)
    _assert_logits_close(got, expected, "decode")
    torch.testing.assert_close(got.float().softmax(-1), expected.float().softmax(-1), rtol=1e-4, atol=1e-6)
    continued = []
    for row in ROWS:
        ids = list(row)
        for _ in range(2):
            ids.append(int(_logits(model, ids)[-1].argmax()))
        continued.append(ids[len(row):])
    assert fl.greedy(lm, ROWS, 2).tolist() == continued


@parametrize
def test_lens_top1_at_the_last_layer_is_the_models_greedy_next_token(arch):
    lm, model, spec = arch
    L, row = lm.n_layers, ROWS[0]
    soft = _soft(lm.embed_dim)
    # The lens job as `lens_grid` runs it: logit lens and a 1-token phrase per cell, a soft prompt at the last layer.
    top_p, top_i, phrase_ids, phrase_p = run_job(lm, jobs.lens_job, row, 0, [L], {L: soft}, None, 1, 1, 512, None)
    logits = _logits(model, row)
    assert top_i[:, 0].tolist() == logits.argmax(-1).tolist()
    torch.testing.assert_close(top_p[:, 0], logits.float().softmax(-1).max(-1).values, rtol=1e-4, atol=1e-5)
    states = hook_states(model, spec.blocks, torch.tensor([row]))[L, 0]
    with torch.no_grad():
        ref = hook_patch_logits(model, spec.blocks, torch.full((len(row), 3), lm.pad_id), states, L, 2, soft_prompt=soft)
    assert phrase_ids[:, 0].tolist() == ref[:, -1].argmax(-1).tolist()


# NDIF's serialisation path where the remote head or layer 0 differs from the plain case: every head transform,
# projection, missing final norm, reused norm, keyword/list/tuple block, recurrent state (the rest share these code paths).
REMOTE = [name for name in NAMES if name in {
    "gpt2", "gptj", "llama", "mamba", "opt_350m", "openai_gpt", "modernbert_decoder", "nanochat", "gemma2", "gemma3",
    "recurrent_gemma", "cohere", "granite", "falcon_h1", "hyperclovax", "minicpm3", "inkling", "xlstm", "bloom",
    "jamba", "zamba2", "qwen3_next", "minimax", "granitemoehybrid",
}]


@pytest.mark.parametrize("arch", REMOTE, indirect=True)
def test_remote_local_patch_and_decode_equal_local(arch):
    lm, _, _ = arch
    mid = max(1, lm.n_layers // 2)
    state = fl.cache(lm, ROWS, layers=mid)[0]
    soft = _soft(lm.embed_dim)
    local = fl.patch(lm, state, mid, soft_prompt=soft, target=[[60, 61]], read=[-1, -2])
    last = fl.cache(lm, ROWS, layers=lm.n_layers)[0]
    remote = dataclasses.replace(lm, remote="local", _envoys={})
    torch.testing.assert_close(fl.patch(remote, state, mid, soft_prompt=soft, target=[[60, 61]], read=[-1, -2]).logits, local.logits)
    torch.testing.assert_close(fl.decode(remote, last), fl.decode(lm, last), rtol=1e-5, atol=1e-5)


HEADS = ["gemma2", "recurrent_gemma", "cohere", "granite", "falcon_h1", "opt_350m"]


@pytest.mark.parametrize("arch", HEADS, indirect=True)
def test_the_kl_target_and_eval_surprisal_are_the_models_own_distribution(arch):
    """Where the model transforms its logits (soft cap, scale) or projects before unembedding."""
    lm, model, spec = arch
    rows = [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
    cont = fl.greedy(lm, rows, 2)
    states, final = fl.cache_ahead(lm, rows, cont[:, :1], layers=1)
    batch = {"states": states[0], "target": cont, "final": final}
    soft = _soft(lm.embed_dim, n=4) * 0.5
    own = [[_logits(model, row + cont[b, :n].tolist())[-1].float().log_softmax(-1) for n in range(2)]
           for b, row in enumerate(rows)]
    # The soft prompt's KL target: the model's own distribution one token ahead.
    kl = []
    for b in range(3):
        ids = torch.tensor([[lm.pad_id] * 4 + cont[b, :1].tolist()])
        with torch.no_grad():
            patched = hook_patch_logits(model, spec.blocks, ids, states[0, b : b + 1], 1, 3, soft_prompt=soft)[0, -1]
        patched = patched.float().log_softmax(-1)
        kl.append((own[b][1].exp() * (own[b][1] - patched)).sum())
    got = jobs.prompt_loss(lm.nn, lm.spec(), soft, batch, 1, 1, "kl")
    torch.testing.assert_close(got, torch.stack(kl).mean(), rtol=1e-4, atol=1e-5)
    # Eval surprisal of a prediction: -log p under the model's own distribution N ahead.
    tops = [torch.tensor([17, 18, 19]), torch.tensor([20, 21, 22])]
    scored = jobs.score_job(lm.nn, lm.spec(), [], [batch], 1, 1, [{"probe": tops}])
    for _, _, n, _, surprisal, *_ in scored:
        expected = torch.stack([-own[b][n][tops[n][b]] for b in range(3)])
        torch.testing.assert_close(surprisal, expected, rtol=1e-4, atol=1e-5)
