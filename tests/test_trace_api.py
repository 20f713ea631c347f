"""The trace-side API (`futurelens.trace_api`): a user's own ``lm.trace`` block against plain PyTorch hooks.

Every read, write, soft prompt and head call in a user's trace is checked against `tests/hook_reference.py` (no
futurelens code: the block list's path is the zoo's, written by hand; logits are the model's own forward), on at
least one architecture per row of the README's "Architectures" table, locally and through NDIF's serialisation
path (``remote="local"``: the block and ``lm`` pickled as they would be for NDIF). The primitives are built on the
same accessors: `test_only_the_accessors_know_where_layers_and_the_head_are` checks that on the source.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch
from arch.zoo import ZOO, build
from hook_reference import hook_patch_logits, hook_run, hook_states

import futurelens as fl
from futurelens.server import access

# One per row of the README's Architectures table at least: plain (gptj, llama), layer 0 != the embedding output
# (gpt2, bloom, granite), a logit scale (cohere, granite, falcon_h1), a soft cap (gemma2, recurrent_gemma, xlstm),
# a projection or no final norm (opt_350m, openai_gpt, modernbert_decoder), a recurrent state (mamba, jamba).
ARCHS = ["gptj", "llama", "mamba", "gpt2", "bloom", "granite", "cohere", "gemma2", "recurrent_gemma", "falcon_h1",
         "opt_350m", "openai_gpt", "modernbert_decoder", "jamba", "xlstm"]
# The five transformed heads: two soft caps, a multiplied scale, a divided one, a multiplier.
HEADS = ["gemma2", "recurrent_gemma", "cohere", "granite", "falcon_h1"]
REMOTES = [False, "local"]
IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])

_BUILT: dict = {}


@pytest.fixture
def arch(request, tokenizer):
    """``(LensModel, raw HF model, blocks path)`` for the zoo architecture the test is parametrized with."""
    name = request.param
    if name not in _BUILT:
        model = build(name)
        _BUILT[name] = fl.load_model(model, tokenizer=tokenizer), model
    lm, model = _BUILT[name]
    return lm, model, ZOO[name].blocks


def close_logits(got, want, what=""):
    scale = float(want.abs().max()) + 1.0
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f"{what}: {m}")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("remote", REMOTES)
@pytest.mark.parametrize("arch", ARCHS, indirect=True)
def test_read_layer_at_0_middle_and_last_equals_the_hooks(arch, remote):
    lm, model, blocks = arch
    n, mid = lm.n_layers, max(1, lm.n_layers // 2)
    with lm.trace(IDS, remote=remote):
        first = lm.read_layer(0).save()
        middle = lm.read_layer(mid).save()
        last = lm.read_layer(-1).save()
    ref = hook_states(model, blocks, IDS)
    torch.testing.assert_close(first, ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(middle, ref[mid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, ref[n], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("remote", REMOTES)
@pytest.mark.parametrize("layer", ["0", "middle", "last"])
@pytest.mark.parametrize("arch", ARCHS, indirect=True)
def test_write_layer_equals_the_hook_patch_and_the_head_the_models_logits(arch, layer, remote):
    lm, model, blocks = arch
    layer = {"0": 0, "middle": max(1, lm.n_layers // 2), "last": lm.n_layers}[layer]
    state = rand(2, lm.d_model, seed=layer) * 2
    with lm.trace(IDS, remote=remote):
        lm.write_layer(layer, state, position=3)
        own = lm.nn.output.logits.save()
    with lm.trace(IDS, remote=remote):
        lm.write_layer(layer, state, position=3)
        ours = lm.head(lm.read_layer(-1)).save()
    expected = hook_patch_logits(model, blocks, IDS, state, layer, 3)
    close_logits(own, expected, f"the model's logits after write_layer({layer})")
    close_logits(ours, expected, f"lm.head after write_layer({layer})")


@pytest.mark.parametrize("remote", REMOTES)
@pytest.mark.parametrize("arch", ["gptj", "llama", "mamba", "gpt2", "opt_350m"], indirect=True)
def test_write_at_one_layer_and_read_a_later_one_with_the_head(arch, remote):
    lm, model, blocks = arch
    state = rand(2, lm.d_model, seed=3) * 2
    with lm.trace(IDS, remote=remote):
        lm.write_layer(1, state, position=2)
        later = lm.read_layer(lm.n_layers).save()
        probs, ids = lm.top_k(later[:, -1], 4)
        probs, ids = probs.save(), ids.save()
    states, logits = hook_run(model, blocks, IDS, [(1, 2, state)])
    torch.testing.assert_close(later, states[lm.n_layers], rtol=1e-5, atol=1e-5)
    p, i = logits[:, -1].float().softmax(-1).topk(4)
    assert torch.equal(ids, i)
    torch.testing.assert_close(probs, p, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("remote", REMOTES)
@pytest.mark.parametrize("arch", HEADS + ["opt_350m", "xlstm"], indirect=True)
def test_the_head_on_any_layer_is_the_models_own_and_decode_s(arch, remote):
    """The transformed heads: the last layer through lm.head is the model's own logits; a middle layer's logit lens
    in the trace is `fl.decode` of the cached state (the primitives' head)."""
    lm, model, blocks = arch
    mid = max(1, lm.n_layers // 2)
    with lm.trace(IDS, remote=remote):
        lens = lm.head(lm.read_layer(mid)).save()
        logits = lm.head(lm.read_layer(-1)).save()
        probs, ids = lm.top_k(lm.read_layer(-1), 3)
        probs, ids = probs.save(), ids.save()
    with torch.no_grad():
        own = model(input_ids=IDS).logits
    close_logits(logits, own, "lm.head on the last layer")
    p, i = own.float().softmax(-1).topk(3)
    assert torch.equal(ids, i)
    torch.testing.assert_close(probs, p, rtol=1e-4, atol=1e-6)
    states = hook_states(model, blocks, IDS)[mid]
    close_logits(lens, fl.decode(lm, states), "lm.head on a middle layer")


@pytest.mark.parametrize("remote", REMOTES)
@pytest.mark.parametrize("arch", ["gptj", "llama", "mamba", "gemma2", "opt_350m", "bloom"], indirect=True)
def test_a_soft_prompt_and_two_patches_in_one_trace_equal_the_hooks(arch, remote):
    lm, model, blocks = arch
    n = lm.n_layers
    soft = rand(3, lm.embed_dim, seed=1)
    a, b = rand(2, lm.d_model, seed=2) * 2, rand(2, lm.d_model, seed=4) * 2
    ids = torch.cat([torch.full((2, 3), lm.pad_id), IDS[:, :3]], 1)
    with lm.trace(ids, remote=remote):
        lm.write_prompt(soft)
        lm.write_layer(0, a, position=2)
        lm.write_layer(n, b, position=4)
        logits = lm.nn.output.logits.save()
    _, expected = hook_run(model, blocks, ids, [(0, 2, a), (n, 4, b)], soft_prompt=soft)
    close_logits(logits, expected, "soft prompt + two patches")
    # Two positions of one layer in one write, and the same through the primitive for one of them.
    with lm.trace(ids, remote=remote):
        lm.write_prompt(soft)
        lm.write_layer(1, torch.stack([a, b], 1), position=[2, 5])
        both = lm.nn.output.logits.save()
    _, expected = hook_run(model, blocks, ids, [(1, 2, a), (1, 5, b)], soft_prompt=soft)
    close_logits(both, expected, "two positions at one layer")
    single = fl.patch(lm, a, 1, soft_prompt=soft, target=IDS[:, :3], position=2, read=list(range(6))).logits
    close_logits(single, hook_run(model, blocks, ids, [(1, 2, a)], soft_prompt=soft)[1], "patch()")


@pytest.mark.parametrize("name", ["gptj", "mamba", "gemma2"])
def test_float32_vectors_into_a_bfloat16_model_are_written_in_its_dtype(tokenizer, name):
    """A float32 prompt and states into bfloat16 weights (Mamba's residual stays float32): cast to what they replace,
    as the hooks cast them; the head's logits are the model's own, to two steps of bfloat16's mantissa."""
    model = build(name, dtype=torch.bfloat16)
    lm = fl.load_model(model, tokenizer=tokenizer)
    soft, a = rand(3, lm.embed_dim, seed=1), rand(2, lm.d_model, seed=2) * 2
    ids = torch.cat([torch.full((2, 3), lm.pad_id), IDS[:, :3]], 1)
    with lm.trace(ids):
        lm.write_prompt(soft)
        lm.write_layer(1, a, position=2)
        last = lm.read_layer(-1).save()
        ours = lm.head(last).save()
        own = lm.nn.output.logits.save()
    states, expected = hook_run(model, ZOO[name].blocks, ids, [(1, 2, a)], soft_prompt=soft)
    # The residual in the model's own dtype; logits in the weights' (Mamba's forward casts its own to float32 after).
    assert last.dtype == states.dtype and ours.dtype == torch.bfloat16
    scale = float(expected.float().abs().max())
    assert float((ours.float() - own.float()).abs().max()) <= 1.6e-2 * scale
    assert float((own.float() - expected.float()).abs().max()) <= 1.6e-2 * scale


@pytest.mark.parametrize("arch", ["llama"], indirect=True)
def test_a_steering_vector_on_every_position_and_a_session(arch):
    lm, model, blocks = arch
    steer = rand(lm.d_model, seed=7)
    with lm.session():
        with lm.trace(IDS):
            h = lm.read_layer(1)
            lm.write_layer(1, h + steer)
            steered = lm.nn.output.logits.save()
        with lm.trace(IDS):
            clean = lm.nn.output.logits.save()
    expected = hook_run(model, blocks, IDS, [(1, p, hook_states(model, blocks, IDS)[1][:, p] + steer) for p in range(6)])[1]
    close_logits(steered, expected, "steered")
    assert not torch.allclose(steered, clean, atol=1e-3)


@pytest.mark.parametrize("arch", ["llama"], indirect=True)
def test_bad_arguments_are_refused_saying_what_to_do(arch):
    lm, _, _ = arch
    with lm.trace(IDS):
        with pytest.raises(fl.FutureLensError, match=r"out of range .* use 0\.\.2"):
            lm.read_layer(5)
        with pytest.raises(fl.FutureLensError, match="must end in d_model=32"):
            lm.write_layer(1, torch.zeros(2, 7), position=0)
        with pytest.raises(fl.FutureLensError, match="must end in embed_dim=32"):
            lm.write_prompt(torch.zeros(3, 5))
        with pytest.raises(fl.FutureLensError, match="k must be an int"):
            lm.top_k(torch.zeros(2, 32), 0)
    # Where the model is (a remote block), the accessor says the range too.
    with pytest.raises(IndexError, match=r"layer=-4 is out of range: the model has 2 blocks"):
        access.resolve_layer(lm.spec(), -4)


@pytest.mark.parametrize("arch", ["llama"], indirect=True)
def test_a_lens_model_travels_as_its_trace_view(arch):
    """What `lm` named in a remote block becomes: nnsight's model reference and the spec, no futurelens class."""
    lm, _, _ = arch
    fn, (nn, spec) = lm.__reduce__()
    assert fn is access.trace_view and nn is lm.nn and spec == lm.spec()
    view = access.trace_view(lm.nn, lm.spec())
    assert type(view).__module__ != "futurelens.models" and view.n_layers == lm.n_layers and view.spec["remote"] is False
    assert pickle.loads(pickle.dumps(lm.spec())) == lm.spec()  # the spec is plain data
    with lm.trace(IDS):
        mine = view.head(view.read_layer(-1)).save()
        theirs = lm.head(lm.read_layer(-1)).save()
    torch.testing.assert_close(mine, theirs)
    assert type(lm.__copy__()) is type(lm)


def test_real_weights_smollm2(default_lm):
    """The embedded SmolLM2-135M: the trace API's logit lens and patch equal the primitives on real weights."""
    _real_weights_check(default_lm, "model.layers")


@pytest.mark.slow
def test_real_weights_gemma3():
    _real_weights_check(fl.load_model("gemma3-270m"), "model.layers")


def _real_weights_check(lm, blocks):
    model = lm.nn._module
    ids = torch.tensor([lm.tokenizer("The Eiffel Tower is in the city of")["input_ids"]])
    mid = lm.n_layers // 2
    state = fl.cache(lm, ["Paris is the capital of France"], layers=mid)[0]
    for remote in REMOTES:
        with lm.trace(ids, remote=remote):
            read = lm.read_layer(mid).save()
            top = lm.top_k(lm.read_layer(-1)[:, -1], 5)[1].save()
        with lm.trace(ids, remote=remote):
            lm.write_layer(mid, state, position=-1)
            patched = lm.head(lm.read_layer(-1)[:, -1]).save()
        ref = hook_states(model, blocks, ids)[mid]
        torch.testing.assert_close(read, ref, rtol=1e-3, atol=2e-3)
        with torch.no_grad():
            own = model(input_ids=ids).logits[:, -1]
        assert torch.equal(top, own.topk(5).indices)
        expected = fl.patch(lm, state, mid, target=ids, position=-1).logits[:, 0]
        close_logits(patched, expected, f"real weights, remote={remote}")


# --------------------------------------------------------------------------- one implementation


SERVER = Path(access.__file__).parent
# spec keys that say where a layer or the head is, or how to read one: only access.py may use them.
PLACES = {"blocks", "final_norm", "project_out", "unembed", "is_tuple", "block_input", "logit_scale", "logit_softcap"}


def test_only_the_accessors_know_where_layers_and_the_head_are():
    for path in sorted(SERVER.glob("*.py")):
        if path.name in ("access.py", "__init__.py"):
            continue
        tree = ast.parse(path.read_text())
        used = {n.slice.value for n in ast.walk(tree) if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant)
                and isinstance(n.value, ast.Name) and n.value.id == "spec"}
        assert not used & PLACES, f"{path.name} reads spec{sorted(used & PLACES)}: call futurelens.server.access instead"
        attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not attrs & {"inputs", "tanh"}, f"{path.name} reads block inputs or applies a soft cap itself"
    client = Path(fl.__file__).parent
    for path in client.rglob("*.py"):
        if SERVER in path.parents or path.parent.name == "arch":
            continue
        assert "tanh(" not in path.read_text(), f"{path} applies a soft cap itself"
