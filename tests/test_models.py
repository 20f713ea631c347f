"""Loading by folder, built model and embedded default; fast import; clear errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import build_tiny

import futurelens as fl


def test_import_is_fast_and_loads_no_model_or_torch():
    code = "import sys, time; t=time.time(); import futurelens; print(time.time()-t, 'torch' in sys.modules, 'nnsight' in sys.modules)"
    elapsed, torch_loaded, nnsight_loaded = subprocess.check_output([sys.executable, "-c", code], text=True).split()
    assert torch_loaded == "False" and nnsight_loaded == "False"
    assert float(elapsed) < 0.5


def test_load_from_local_folder_matches_built_model(tmp_path, tokenizer):
    model = build_tiny("gptj", tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    from_folder = fl.load_model(str(tmp_path))
    built = fl.load_model(model, tokenizer=tokenizer)
    assert from_folder.arch == built.arch and from_folder.name == str(tmp_path)
    rows = [[1, 2, 3], [4, 5]]
    torch.testing.assert_close(fl.cache(from_folder, rows), fl.cache(built, rows))
    assert not any(p.requires_grad for p in from_folder.nn._module.parameters())


def test_hub_id_without_network_says_what_to_do(monkeypatch):
    import huggingface_hub.constants

    # The env var is read at import; set the flag itself so the test need not wait out network retries.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    # refused at once by the library's hub check (futurelens.hub_access), as a notebook user meets it too
    with pytest.raises(fl.FutureLensError, match=r"'EleutherAI/gpt-j-6b' is not a local folder and not in the Hugging "
                       r"Face cache.*HF_HUB_OFFLINE is set.*smollm2-135m"):
        fl.load_model("EleutherAI/gpt-j-6b")


def test_bad_arguments(tokenizer):
    model = build_tiny("llama", tokenizer)
    with pytest.raises(fl.FutureLensError, match="carries no tokenizer"):
        fl.load_model(model)
    with pytest.raises(fl.FutureLensError, match="remote must be False, True or 'local'"):
        fl.load_model(model, tokenizer=tokenizer, remote="yes")
    with pytest.raises(fl.FutureLensError, match="remote=True needs a hub id"):
        fl.load_model(model, tokenizer=tokenizer, remote=True)
    with pytest.raises(fl.FutureLensError, match="Model name is empty"):
        fl.load_model("  ")


@pytest.mark.slow
def test_embedded_default_is_the_real_pretrained_smollm2(default_lm):
    lm = default_lm
    assert (lm.n_layers, lm.d_model, lm.arch.blocks) == (30, 576, "model.layers")
    prompt = "The capital of France is"
    # The cached last-layer state, decoded by the model's own final norm + unembedding, is the model's prediction.
    state = fl.cache(lm, [prompt], layers=-1)[0]
    with torch.no_grad():
        logits = lm.module(lm.arch.unembed)(lm.module(lm.arch.final_norm)(state))
        direct = lm.nn._module(**lm.tokenizer(prompt, return_tensors="pt")).logits[:, -1]
    torch.testing.assert_close(logits, direct, rtol=1e-4, atol=1e-3)
    assert lm.tokenizer.decode(logits.argmax(-1)) == " Paris"


@pytest.mark.slow
def test_fixed_prompt_patch_on_default_model_reads_the_state(default_lm):
    """Patching the last-layer state of a prompt into another context makes the model predict that prompt's next token."""
    lm = default_lm
    state = fl.cache(lm, ["The capital of France is"], layers=-1)[0]
    target = lm.tokenizer('Hello! Could you please tell me more about "', add_special_tokens=False)["input_ids"]
    out = fl.patch(lm, state, lm.n_layers, target=[target], top_k=3, rollout=2)
    assert lm.tokenizer.decode(out.top_ids[0, 0, 0]) == " Paris"
    assert out.rollout_ids[0, 0] == out.top_ids[0, 0, 0]
