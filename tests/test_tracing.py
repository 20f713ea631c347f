"""cache() and patch() against plain PyTorch hooks, for GPT-J, Llama and Mamba (and more for cache)."""

from __future__ import annotations

import pytest
import torch
from conftest import BLOCKS, CORE
from hook_reference import hook_last_states, hook_patch_logits

import futurelens as fl
from futurelens.tracing import token_states

ROWS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_cache_matches_hooks_and_padding_is_invisible(tiny, kind):
    lm, model = tiny(kind)
    states = fl.cache(lm, ROWS)  # one padded batch, all layers
    assert states.shape == (lm.n_layers + 1, len(ROWS), lm.d_model)
    for i, row in enumerate(ROWS):
        expected = hook_last_states(model, BLOCKS[kind], torch.tensor([row]))[:, -1]
        torch.testing.assert_close(states[:, i], expected, rtol=1e-5, atol=1e-5)
        alone = fl.cache(lm, [row])[:, 0]
        torch.testing.assert_close(states[:, i], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", CORE)
def test_cache_layer_selection_and_order(tiny, kind):
    lm, _ = tiny(kind)
    full = fl.cache(lm, ROWS)
    picked = fl.cache(lm, ROWS, layers=[3, 0, -2])
    torch.testing.assert_close(picked, full[[3, 0, 2]])
    torch.testing.assert_close(fl.cache(lm, ROWS, layers=1)[0], full[1])


@pytest.mark.parametrize("kind", CORE)
def test_cache_ahead_reads_last_layer_over_teacher_tokens(tiny, kind):
    lm, model = tiny(kind)
    cont = [[40, 41], [42, 43], [44, 45]]
    states, final = fl.cache_ahead(lm, ROWS, cont, layers=[1, 2])
    torch.testing.assert_close(states, fl.cache(lm, ROWS, layers=[1, 2]), rtol=1e-5, atol=1e-5)
    assert final.shape == (len(ROWS), 3, lm.d_model)
    for i, (row, c) in enumerate(zip(ROWS, cont)):
        expected = hook_last_states(model, BLOCKS[kind], torch.tensor([row + c]))[lm.n_layers, len(row) - 1 :]
        torch.testing.assert_close(final[i], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(fl.FutureLensError, match="same number of tokens"):
        fl.cache_ahead(lm, ROWS, [[1], [2, 3], [4]])


@pytest.mark.parametrize("kind", CORE)
def test_cache_remote_local_matches_local(tiny, kind):
    lm, _ = tiny(kind)
    local = fl.cache(lm, ROWS, layers=[1, 3])
    local_final = fl.cache_ahead(lm, ROWS, [[7, 8]] * 3, layers=[2])[1]
    lm.remote = "local"
    torch.testing.assert_close(fl.cache(lm, ROWS, layers=[1, 3]), local)
    torch.testing.assert_close(fl.cache_ahead(lm, ROWS, [[7, 8]] * 3, layers=[2])[1], local_final)


def _soft(lm, n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, lm.d_model, generator=g)


@pytest.mark.parametrize("kind", CORE)
@pytest.mark.parametrize("layer", [0, 2, 3])
def test_patch_with_soft_prompt_equals_hook_patch(tiny, kind, layer):
    lm, model = tiny(kind)
    states = fl.cache(lm, ROWS, layers=layer)[0]
    soft = _soft(lm)
    target = torch.tensor([[21, 22, 23]])
    out = fl.patch(lm, states, layer, soft_prompt=soft, target=target, read=list(range(7)))
    ids = torch.cat([torch.zeros(3, 4, dtype=torch.long), target.expand(3, -1)], 1)
    with torch.no_grad():
        expected = hook_patch_logits(model, BLOCKS[kind], ids, states, layer, position=3, soft_prompt=soft)
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", CORE)
def test_patch_on_token_context_equals_hook_patch_and_leaves_earlier_positions(tiny, kind):
    lm, model = tiny(kind)
    state = fl.cache(lm, ROWS, layers=2)[0]
    target = torch.tensor([[30, 31, 32, 33, 34, 35]])
    position = 3
    out = fl.patch(lm, state, 2, target=target, position=position, read=list(range(6)))
    ids = target.expand(3, -1)
    with torch.no_grad():
        expected = hook_patch_logits(model, BLOCKS[kind], ids, state, 2, position)
        clean = model(input_ids=ids).logits
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-4)
    # Causality: positions before the patch see exactly the clean run; the patched one does not.
    torch.testing.assert_close(out.logits[:, :position], clean[:, :position], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.logits[:, position], clean[:, position], atol=1e-3)


@pytest.mark.parametrize("kind", CORE)
@pytest.mark.parametrize("layer", [1, 3])
def test_next_module_receives_exactly_the_patched_vector(tiny, kind, layer):
    lm, model = tiny(kind)
    state = torch.randn(2, lm.d_model)
    blocks = model.get_submodule(BLOCKS[kind])
    # The consumer of block layer-1's output: the next block, or the final norm after the last block.
    consumer = blocks[layer] if layer < len(blocks) else model.get_submodule(lm.arch.final_norm)
    received = []

    def grab(_m, args, kwargs):
        received.append((args[0] if args else next(iter(kwargs.values()))).detach().clone())

    handle = consumer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        fl.patch(lm, state, layer, target=[[40, 41, 42, 43]], position=2)
    finally:
        handle.remove()
    assert torch.equal(received[0][:, 2], state)


@pytest.mark.parametrize("kind", CORE)
def test_gradients_reach_soft_prompt_and_no_weight(tiny, kind):
    lm, model = tiny(kind)
    soft = (_soft(lm) * 0.02).requires_grad_()
    state = fl.cache(lm, ROWS, layers=2)[0]
    out = fl.patch(lm, state, 2, soft_prompt=soft, target=[[50, 51]], read=[3, 5])
    out.logits.log_softmax(-1)[..., 7].sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("kind", CORE)
def test_rollout_is_greedy_continuation_of_hook_patch(tiny, kind):
    lm, model = tiny(kind)
    state = fl.cache(lm, ROWS, layers=1)[0]
    soft = _soft(lm)
    out = fl.patch(lm, state, 1, soft_prompt=soft, rollout=3, top_k=5)
    ids = torch.zeros(3, 4, dtype=torch.long)
    expected_ids, expected_p = [], []
    with torch.no_grad():
        for _ in range(3):
            probs = hook_patch_logits(model, BLOCKS[kind], ids, state, 1, 3, soft)[:, -1].softmax(-1)
            p, tok = probs.max(-1)
            expected_ids.append(tok)
            expected_p.append(p)
            ids = torch.cat([ids, tok[:, None]], 1)
    assert torch.equal(out.rollout_ids, torch.stack(expected_ids, 1))
    torch.testing.assert_close(out.rollout_probs, torch.stack(expected_p, 1), rtol=1e-4, atol=1e-5)
    assert torch.equal(out.top_ids[:, 0, 0], out.rollout_ids[:, 0])
    assert out.logits is None and out.top_probs.shape == (3, 1, 5)


@pytest.mark.parametrize("kind", CORE)
def test_patch_remote_local_matches_local(tiny, kind):
    lm, _ = tiny(kind)
    state = fl.cache(lm, ROWS, layers=2)[0]
    soft = _soft(lm)
    local = fl.patch(lm, state, 2, soft_prompt=soft, target=[[60, 61]], read=[-1, -2])
    lm.remote = "local"
    remote = fl.patch(lm, state, 2, soft_prompt=soft, target=[[60, 61]], read=[-1, -2])
    torch.testing.assert_close(remote.logits, local.logits)


def test_bad_inputs_say_what_to_do(tiny):
    lm, _ = tiny("llama")
    state = torch.randn(1, lm.d_model)
    with pytest.raises(fl.FutureLensError, match=r"layer=9 is out of range .* use 0\.\.3"):
        fl.cache(lm, ROWS, layers=9)
    with pytest.raises(fl.FutureLensError, match=r"layer=-5 is out of range"):
        fl.patch(lm, state, -5, target=[[1, 2]])
    with pytest.raises(fl.FutureLensError, match=r"position=4 is out of range for a context of 2 tokens"):
        fl.patch(lm, state, 1, target=[[1, 2]], position=4)
    with pytest.raises(fl.FutureLensError, match=r"read=-3 is out of range"):
        fl.patch(lm, state, 1, target=[[1, 2]], read=-3)
    with pytest.raises(fl.FutureLensError, match=r"Prefix 1 is empty"):
        fl.cache(lm, [[1, 2], []])
    with pytest.raises(fl.FutureLensError, match=r"No prefixes"):
        fl.cache(lm, [])
    with pytest.raises(fl.FutureLensError, match=r"target context is empty"):
        fl.patch(lm, state, 1)
    with pytest.raises(fl.FutureLensError, match=r"state must be \[B, 32\]"):
        fl.patch(lm, torch.randn(1, 7), 1, target=[[1]])
    with pytest.raises(fl.FutureLensError, match=r"soft_prompt must be"):
        fl.patch(lm, state, 1, soft_prompt=torch.randn(4, 7))
    with pytest.raises(fl.FutureLensError, match=r"equal length"):
        fl.patch(lm, torch.randn(2, lm.d_model), 1, target=[[1, 2], [3]])


@pytest.mark.parametrize("kind", CORE)
def test_greedy_matches_one_row_at_a_time_generation(tiny, kind):
    lm, model = tiny(kind)
    rows = ROWS + [[17, 18], [19, 20]]  # three rows of length 2: grouped and split into chunks of 2
    got = fl.greedy(lm, rows, 3, batch_size=2)
    expected = []
    for row in rows:
        ids = torch.tensor([row])
        with torch.no_grad():
            for _ in range(3):
                ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
        expected.append(ids[0, len(row):].tolist())
    assert got.tolist() == expected
    # Greedy never stops early or avoids a token because the model calls it end-of-text.
    model.generation_config.eos_token_id = expected[0][0]
    assert fl.greedy(lm, rows, 3).tolist() == expected


@pytest.mark.parametrize("kind", CORE)
def test_decode_of_last_layer_state_is_the_models_own_logits(tiny, kind):
    lm, model = tiny(kind)
    states = fl.cache(lm, ROWS, layers=[lm.n_layers])[0]
    with torch.no_grad():
        expected = torch.stack([model(input_ids=torch.tensor([r])).logits[0, -1] for r in ROWS])
        torch.testing.assert_close(fl.decode(lm, states), expected, rtol=1e-4, atol=1e-4)
    lm.remote = "local"
    torch.testing.assert_close(fl.decode(lm, states), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(fl.FutureLensError, match="decode needs"):
        fl.decode(lm, torch.zeros(2, 5))


# --------------------------------------------------------------------------- multi-layer patch, token_states


@pytest.mark.parametrize("kind", CORE)
def test_multi_layer_patch_equals_hook_patch_row_by_row(tiny, kind):
    lm, model = tiny(kind)
    layers = [3, 0, 2, 0, 1, 3]  # unsorted, repeated, embedding included: one forward
    full = fl.cache(lm, ROWS + ROWS)  # [L + 1, 6, d]
    states = torch.stack([full[layer, b] for b, layer in enumerate(layers)])
    soft = _soft(lm)
    target = torch.tensor([[21, 22]])
    out = fl.patch(lm, states, layers, soft_prompt=soft, target=target, read=list(range(6)))
    ids = torch.cat([torch.zeros(1, 4, dtype=torch.long), target], 1)
    with torch.no_grad():
        for b, layer in enumerate(layers):
            expected = hook_patch_logits(model, BLOCKS[kind], ids, states[b : b + 1], layer, position=3, soft_prompt=soft)
            torch.testing.assert_close(out.logits[b : b + 1], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", CORE)
def test_mixed_layer_batch_equals_separate_single_layer_calls(tiny, kind):
    lm, _ = tiny(kind)
    layers = torch.tensor([2, 1, 2, 3, 1, -1])  # a LongTensor; -1 is layer 3
    states = torch.randn(6, lm.d_model)
    g = torch.Generator().manual_seed(3)
    soft = torch.randn(6, 4, lm.d_model, generator=g)  # a soft prompt per row
    mixed = fl.patch(lm, states, layers, soft_prompt=soft, rollout=3, top_k=4)
    for b, layer in enumerate(layers.tolist()):
        alone = fl.patch(lm, states[b], layer, soft_prompt=soft[b], rollout=3, top_k=4)
        assert torch.equal(mixed.rollout_ids[b], alone.rollout_ids[0])
        assert torch.equal(mixed.top_ids[b], alone.top_ids[0])
        torch.testing.assert_close(mixed.rollout_probs[b], alone.rollout_probs[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mixed.top_probs[b], alone.top_probs[0], rtol=1e-4, atol=1e-5)
    # On a plain token context too, patching at an inner position.
    target = [[30, 31, 32, 33]]
    mixed = fl.patch(lm, states[:4], [0, 3, 1, 0], target=target, position=1, read=[1, 3])
    for b, layer in enumerate([0, 3, 1, 0]):
        alone = fl.patch(lm, states[b], layer, target=target, position=1, read=[1, 3])
        torch.testing.assert_close(mixed.logits[b], alone.logits[0], rtol=1e-4, atol=1e-4)


def test_multi_layer_patch_remote_local_and_bad_layers(tiny):
    lm, _ = tiny("llama")
    states = torch.randn(3, lm.d_model)
    soft = _soft(lm)
    local = fl.patch(lm, states, [2, 0, 3], soft_prompt=soft, rollout=2)
    lm.remote = "local"
    remote = fl.patch(lm, states, [2, 0, 3], soft_prompt=soft, rollout=2)
    assert torch.equal(remote.rollout_ids, local.rollout_ids)
    lm.remote = False
    with pytest.raises(fl.FutureLensError, match=r"gives 2 layers but state has 3 rows"):
        fl.patch(lm, states, [1, 2], soft_prompt=soft)
    with pytest.raises(fl.FutureLensError, match=r"layer=7 is out of range"):
        fl.patch(lm, states, [1, 7, 2], soft_prompt=soft)
    with pytest.raises(fl.FutureLensError, match=r"integer tensor"):
        fl.patch(lm, states, torch.tensor([1.0, 2.0, 3.0]), soft_prompt=soft)


@pytest.mark.parametrize("kind", CORE)
def test_token_states_match_hooks_at_every_position(tiny, kind):
    lm, model = tiny(kind)
    row = ROWS[0]
    expected = hook_last_states(model, BLOCKS[kind], torch.tensor([row]))  # [L + 1, T, d]
    torch.testing.assert_close(token_states(lm, row), expected, rtol=1e-5, atol=1e-5)
    picked = token_states(lm, torch.tensor([row]), layers=[3, 0, -2])
    torch.testing.assert_close(picked, expected[[3, 0, 2]], rtol=1e-5, atol=1e-5)
    # The last position is what cache() reads.
    torch.testing.assert_close(picked[:, -1], fl.cache(lm, [row], layers=[3, 0, -2])[:, 0], rtol=1e-5, atol=1e-5)
    with pytest.raises(fl.FutureLensError, match="one row"):
        token_states(lm, ROWS)


@pytest.mark.parametrize("kind", CORE)
def test_greedy_and_patch_rollout_remote_local_match_local(tiny, kind):
    lm, _ = tiny(kind)
    local = fl.greedy(lm, ROWS, 3)
    state = fl.cache(lm, ROWS, layers=1)[0]
    local_roll = fl.patch(lm, state, 1, soft_prompt=_soft(lm), rollout=3)
    lm.remote = "local"
    assert torch.equal(fl.greedy(lm, ROWS, 3), local)
    remote_roll = fl.patch(lm, state, 1, soft_prompt=_soft(lm), rollout=3)
    assert torch.equal(remote_roll.rollout_ids, local_roll.rollout_ids)
    torch.testing.assert_close(remote_roll.rollout_probs, local_roll.rollout_probs)


def _count_positions(model, kind):
    """A hook on the embedding that adds up the positions each forward runs: ``(counter, handle)``."""
    seen = [0]
    handle = model.get_input_embeddings().register_forward_hook(lambda _m, inp, _o: seen.__setitem__(0, seen[0] + inp[0].numel()))
    return seen, handle


def _hook_rollout(model, kind, ids, states, layers, position, soft, n):
    """Greedy phrase of each row by re-running the whole growing context through plain hooks."""
    out_ids, out_p = [], []
    for b, layer in enumerate(layers):
        row = ids[b : b + 1]
        toks, ps = [], []
        with torch.no_grad():
            for _ in range(n):
                sp = None if soft is None else soft[b : b + 1]
                probs = hook_patch_logits(model, BLOCKS[kind], row, states[b : b + 1], layer, position, sp)[:, -1].softmax(-1)
                p, tok = probs.max(-1)
                toks.append(tok[0])
                ps.append(p[0])
                row = torch.cat([row, tok[:, None]], 1)
        out_ids.append(torch.stack(toks))
        out_p.append(torch.stack(ps))
    return torch.stack(out_ids), torch.stack(out_p)


@pytest.mark.parametrize("kind", CORE)
def test_rollout_runs_a_shared_prompt_once_and_matches_hooks(tiny, kind):
    lm, model = tiny(kind)
    B, P, n = 6, 4, 3
    states = torch.randn(B, lm.d_model, generator=torch.Generator().manual_seed(5))
    layers = [2, 0, 3, 1, 2, 3]
    two = torch.stack([_soft(lm, P, seed=1), _soft(lm, P, seed=2)])
    soft = two[[0, 1, 0, 1, 1, 0]]  # two distinct prompts over six rows
    seen, handle = _count_positions(model, kind)
    try:
        ids, probs = fl.rollout(lm, states, layers, soft_prompt=soft, n=n)
    finally:
        handle.remove()
    if lm.arch.kv_cache:
        # Each prompt's first P-1 positions run once; then each row runs n positions.
        assert seen[0] == 2 * (P - 1) + B * n
    else:  # a recurrent state is not shared: every row runs its whole context
        assert kind == "mamba" and seen[0] == B * (P + n - 1)
    ref_ids, ref_p = _hook_rollout(model, kind, torch.zeros(B, P, dtype=torch.long), states, layers, P - 1, soft, n)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(probs, ref_p, rtol=1e-4, atol=1e-5)
    # The unshared path, and chunks that split the prompts' rows, give the same phrases.
    lm.arch = lm.arch.replace(kv_cache=False)
    plain_ids, plain_p = fl.rollout(lm, states, layers, soft_prompt=soft, n=n, chunk_size=4)
    assert torch.equal(plain_ids, ids)
    torch.testing.assert_close(plain_p, probs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["gptj", "llama"])
def test_rollout_shares_token_prefixes_of_a_fixed_prompt(tiny, kind):
    lm, model = tiny(kind)
    states = torch.randn(4, lm.d_model, generator=torch.Generator().manual_seed(6))
    target = torch.tensor([[30, 31, 32, 33], [30, 31, 32, 33], [40, 41, 42, 43], [30, 31, 32, 33]])
    seen, handle = _count_positions(model, kind)
    try:
        ids, probs = fl.rollout(lm, states, [1, 3, 2, 0], target=target, n=2)
    finally:
        handle.remove()
    assert seen[0] == 2 * 3 + 4 * 2  # two distinct prefixes of 3 tokens, then 2 positions a row
    ref_ids, ref_p = _hook_rollout(model, kind, target, states, [1, 3, 2, 0], 3, None, 2)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(probs, ref_p, rtol=1e-4, atol=1e-5)
    # A patch inside the context: the rest of the context runs per row, the prefix before it once.
    inner = fl.rollout(lm, states, 2, target=target[:1], position=1, n=2)
    for b in range(4):
        alone = fl.patch(lm, states[b], 2, target=target[:1], position=1, rollout=2)
        assert torch.equal(inner[0][b], alone.rollout_ids[0])


def test_rollout_remote_local_progress_and_errors(tiny):
    lm, _ = tiny("llama")
    states = torch.randn(5, lm.d_model)
    soft = _soft(lm)
    done = []
    local = fl.rollout(lm, states, [3, 1, 2, 1, 0], soft_prompt=soft, n=2, chunk_size=2, progress=done.append)
    assert done == [2, 2, 1]
    lm.remote = "local"
    remote = fl.rollout(lm, states, [3, 1, 2, 1, 0], soft_prompt=soft, n=2, chunk_size=2)
    assert torch.equal(remote[0], local[0])
    torch.testing.assert_close(remote[1], local[1])
    lm.remote = False
    with pytest.raises(fl.FutureLensError, match=r"n must be >= 1"):
        fl.rollout(lm, states, 1, soft_prompt=soft, n=0)
    with pytest.raises(fl.FutureLensError, match=r"chunk_size must be >= 1"):
        fl.rollout(lm, states, 1, soft_prompt=soft, chunk_size=0)
    with pytest.raises(fl.FutureLensError, match=r"soft_prompt must be"):
        fl.rollout(lm, states, 1, soft_prompt=soft[None].expand(2, -1, -1))
