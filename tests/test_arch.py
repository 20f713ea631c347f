"""Auto-detection of where each architecture keeps its parts, overrides, and the errors when it can't."""

from __future__ import annotations

import pytest
import torch
import transformers
from arch.zoo import build as build_zoo
from arch.zoo import tiny_config as zoo_config
from conftest import BLOCKS, build_tiny
from hook_reference import hook_patch_logits, hook_states

import futurelens as fl
from futurelens.arch import Arch, detect, logit_transform, probe, probe_block_output

EXPECTED = {
    "gptj": ("transformer.wte", "transformer.ln_f", "tuple"),
    "llama": ("model.embed_tokens", "model.norm", "tensor"),
    "mamba": ("backbone.embeddings", "backbone.norm_f", "tensor"),
    "gpt2": ("transformer.wte", "transformer.ln_f", "tensor"),
    "neox": ("gpt_neox.embed_in", "gpt_neox.final_layer_norm", "tensor"),
    "qwen2": ("model.embed_tokens", "model.norm", "tensor"),
}


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_detects_every_part(tokenizer, kind):
    model = build_tiny(kind, tokenizer)
    arch = detect(model)
    embed, norm, output = EXPECTED[kind]
    assert (arch.blocks, arch.embed, arch.final_norm, arch.unembed) == (BLOCKS[kind], embed, norm, "lm_head")
    assert probe_block_output(model, arch) == output
    lm = fl.load_model(model, tokenizer=tokenizer)
    assert lm.arch.block_output == output and lm.n_layers == 3 and lm.d_model == 32


def test_detection_works_on_the_meta_device(tokenizer):
    from conftest import tiny_config
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(tiny_config("gptj", len(tokenizer)))
    arch = detect(model)
    assert arch.blocks == "transformer.h" and probe_block_output(model, arch) == "tuple"


def test_dict_override_replaces_only_named_fields(tokenizer):
    model = build_tiny("llama", tokenizer)
    arch = detect(model, {"final_norm": None, "block_output": "tuple"})
    assert arch.final_norm is None and arch.block_output == "tuple" and arch.blocks == "model.layers"


def test_full_override_is_validated(tokenizer):
    model = build_tiny("llama", tokenizer)
    good = Arch(blocks="model.layers", embed="model.embed_tokens", final_norm="model.norm", unembed="lm_head")
    assert detect(model, good) is good
    with pytest.raises(fl.FutureLensError, match=r"arch.final_norm='model.nrom' is not a module"):
        detect(model, good.replace(final_norm="model.nrom"))
    with pytest.raises(fl.FutureLensError, match=r"arch.blocks='model.embed_tokens' must be a torch.nn.ModuleList"):
        detect(model, good.replace(blocks="model.embed_tokens"))
    with pytest.raises(fl.FutureLensError, match=r"Unknown arch field"):
        detect(model, {"layers": "model.layers"})


class _Odd(torch.nn.Module):
    """A causal LM whose parts have no recognisable names and no HF accessors."""

    def __init__(self):
        super().__init__()
        self.tok = torch.nn.Embedding(10, 4)
        self.stack = torch.nn.Sequential(torch.nn.Linear(4, 4))
        self.head = torch.nn.Linear(4, 10)


def test_unknown_architecture_names_missing_parts_and_the_fix():
    with pytest.raises(fl.FutureLensError) as err:
        detect(_Odd())
    message = str(err.value)
    for part in ("blocks", "embed", "final_norm", "unembed"):
        assert part in message
    assert "arch={" in message and "print(model)" in message


# --------------------------------------------------------------------------- the head: from the model, checked at load


@pytest.mark.parametrize(
    "model_type, fields, expected",
    [
        ("cohere", {"logit_scale": 0.5}, (0.5, None)),  # multiplies
        ("granite", {"logits_scaling": 4.0}, (0.25, None)),  # divides
        ("granitemoehybrid", {"logits_scaling": 8.0}, (0.125, None)),
        ("hyperclovax", {"logits_scaling": 2.0}, (2.0, None)),  # the same field name, multiplied
        ("falcon_h1", {"lm_head_multiplier": 0.5}, (0.5, None)),
        ("minicpm3", {"hidden_size": 64, "dim_model_base": 16, "num_attention_heads": 4}, (0.25, None)),  # hidden / 4
        ("gemma2", {"final_logit_softcapping": 30.0}, (None, 30.0)),
        ("recurrent_gemma", {"logits_soft_cap": 20.0}, (None, 20.0)),
        ("granite", {"logits_scaling": 1.0}, (None, None)),  # a scale of 1 is none
        ("llama", {}, (None, None)),
    ],
)
def test_the_logit_transform_is_read_from_the_config_with_each_models_meaning(model_type, fields, expected):
    config = transformers.AutoConfig.for_model(model_type, **fields)
    got = logit_transform(config)
    assert (got["logit_scale"], got["logit_softcap"]) == expected


def test_an_override_of_the_head_wins_and_is_checked_against_the_models_logits(tokenizer):
    model = build_zoo("cohere")  # logit_scale 0.5 in its config
    assert fl.load_model(model, tokenizer=tokenizer).arch.logit_scale == 0.5
    assert fl.load_model(model, tokenizer=tokenizer, arch={"logit_scale": 0.5}).arch.logit_scale == 0.5
    with pytest.raises(fl.FutureLensError, match=r"does not reproduce the model's own logits.*check_head=False"):
        fl.load_model(model, tokenizer=tokenizer, arch={"logit_scale": 0.7})
    unchecked = fl.load_model(model, tokenizer=tokenizer, arch={"logit_scale": 0.7}, check_head=False)
    assert unchecked.spec()["logit_scale"] == 0.7


@pytest.mark.parametrize(
    "name, override, message",
    [
        ("gemma2", {"logit_softcap": None}, r"Gemma2ForCausalLM: the head futurelens found \(model.norm -> lm_head\) does not"),
        ("granite", {"logit_scale": None}, r"GraniteForCausalLM: the head .* does not reproduce"),
        ("opt_350m", {"project_out": None}, r"cannot take the last block's 64-wide state.*projection .* is missing"),
        ("llama", {"final_norm": None}, r"does not reproduce the model's own logits"),
    ],
)
def test_a_missing_head_piece_is_refused_at_load_naming_it(tokenizer, name, override, message):
    with pytest.raises(fl.FutureLensError, match=message):
        fl.load_model(build_zoo(name), tokenizer=tokenizer, arch=override)


def test_the_opt_350m_layout_has_a_residual_wider_than_its_embeddings(tokenizer):
    model = build_zoo("opt_350m")  # 32-wide embeddings, project_in to 64, post-LN blocks, project_out, no final norm
    lm = fl.load_model(model, tokenizer=tokenizer)
    assert lm.arch.final_norm is None and lm.arch.project_out == "model.decoder.project_out"
    assert (lm.d_model, lm.embed_dim) == (64, 32)
    states = fl.cache(lm, [[5, 6, 7]])
    assert states.shape == (3, 1, 64)
    # Layer 0 is what block 0 receives: after project_in and the position embeddings.
    torch.testing.assert_close(states[:, 0], hook_states(model, "model.decoder.layers", torch.tensor([[5, 6, 7]]))[:, 0, -1])
    with pytest.raises(fl.FutureLensError, match=r"soft_prompt must be \[P, 32\] .*the embedding's width"):
        fl.patch(lm, states[1], 1, soft_prompt=torch.zeros(3, 64))
    with torch.device("meta"):  # what a remote model is here: widths come from the probe's shapes alone
        meta = transformers.AutoModelForCausalLM.from_config(zoo_config("opt_350m"))
    seen = probe(meta, detect(meta))
    assert (seen.d_model, seen.embed_dim) == (64, 32)


def test_layer_0_is_the_residual_stream_entering_block_0_not_the_embedding_output(tokenizer):
    model = build_zoo("gpt2")  # position embeddings are added after wte
    lm = fl.load_model(model, tokenizer=tokenizer)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        embedded = model.get_input_embeddings()(ids)
    layer0 = fl.token_states(lm, ids[0], layers=0)[0]
    torch.testing.assert_close(layer0, out.hidden_states[0][0])
    assert not torch.allclose(layer0, embedded[0], atol=1e-3)
    # Patching layer 0 writes block 0's input; a soft prompt is still written where the model embeds tokens.
    state, soft = torch.randn(1, lm.d_model), torch.randn(2, lm.embed_dim)
    got = fl.patch(lm, state, 0, soft_prompt=soft, target=[[9, 10]], position=2, read=[0, 1, 2, 3]).logits
    with torch.no_grad():
        want = hook_patch_logits(model, "transformer.h", torch.tensor([[lm.pad_id] * 2 + [9, 10]]), state, 0, 2, soft_prompt=soft)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


class _KwConfig(transformers.PretrainedConfig):
    model_type = "futurelens_kw_toy"


def _kw_model():
    """A causal LM whose model calls its blocks by keyword (``block(mask=..., hidden_states=h)``), after a scale and positions."""

    class Block(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.mix = torch.nn.Linear(d, d)

        def forward(self, mask=None, hidden_states=None):
            n = torch.arange(1, hidden_states.shape[1] + 1)[None, :, None]
            return hidden_states + torch.tanh(self.mix(hidden_states.cumsum(1) / n))

    class Kw(transformers.PreTrainedModel, transformers.GenerationMixin):
        config_class = _KwConfig

        def __init__(self, config):
            super().__init__(config)
            self.embed = torch.nn.Embedding(64, 16)
            self.pos = torch.nn.Parameter(torch.randn(32, 16))
            self.layers = torch.nn.ModuleList([Block(16), Block(16)])
            self.norm = torch.nn.LayerNorm(16)
            self.lm_head = torch.nn.Linear(16, 64)

        def get_input_embeddings(self):
            return self.embed

        def get_output_embeddings(self):
            return self.lm_head

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            h = self.embed(input_ids) * 2 + self.pos[: input_ids.shape[1]]
            for layer in self.layers:
                h = layer(mask=attention_mask, hidden_states=h)
            return transformers.modeling_outputs.CausalLMOutput(logits=self.lm_head(self.norm(h)))

    torch.manual_seed(0)
    return Kw(_KwConfig(vocab_size=64, num_hidden_layers=2)).eval()


def test_a_block_that_takes_its_hidden_state_by_keyword_is_read_and_patched_at_layer_0(tokenizer):
    model = _kw_model()
    lm = fl.load_model(model, tokenizer=tokenizer)
    assert lm.arch.block_input == "hidden_states" and not lm.arch.kv_cache
    rows = [[3, 4, 5, 6], [7, 8]]
    states = fl.cache(lm, rows, layers=[0, 1, 2])
    for i, row in enumerate(rows):
        torch.testing.assert_close(states[:, i], hook_states(model, "layers", torch.tensor([row]))[:, 0, -1])
    got = fl.patch(lm, states[0], 0, target=[[9, 10, 11]], position=1, read=[0, 1, 2]).logits
    with torch.no_grad():
        want = hook_patch_logits(model, "layers", torch.tensor([[9, 10, 11]] * 2), states[0], 0, 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bad_head_fields_are_refused(tokenizer):
    model = build_tiny("llama", tokenizer)
    with pytest.raises(fl.FutureLensError, match=r"arch.logit_scale must be a nonzero number"):
        detect(model, {"logit_scale": "big"})
    with pytest.raises(fl.FutureLensError, match=r"arch.block_input must be"):
        detect(model, {"block_input": 1.5})
    with pytest.raises(fl.FutureLensError, match=r"arch.project_out='model.nope' is not a module"):
        detect(model, {"project_out": "model.nope"})
