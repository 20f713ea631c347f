"""Auto-detection of where each architecture keeps its parts, overrides, and the errors when it can't."""

from __future__ import annotations

import pytest
import torch
from conftest import BLOCKS, build_tiny

import futurelens as fl
from futurelens.arch import Arch, detect, probe_block_output

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
