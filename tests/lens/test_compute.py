"""lens_grid: every batched cell equals an independent per-cell computation; prompts; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import BLOCKS
from hook_reference import hook_last_states

import futurelens as fl
from futurelens.methods import PAPER_PROMPT
from futurelens.lens import LensGrid, lens_grid, load_prompts

# The final norm of each tiny architecture, written out by hand (independent of futurelens.arch).
FINAL_NORM = {"gptj": "transformer.ln_f", "llama": "model.norm", "mamba": "backbone.norm_f"}
TEXT = [5, 6, 7, 8]  # token ids: 4 columns
ROLLOUT, TOP_K = 3, 4


def _prompt(lm, n=3, seed=0):
    return torch.randn(n, lm.d_model, generator=torch.Generator().manual_seed(seed))


def _expected(lm, model, kind, layers, prompt_for, rollout=ROLLOUT):
    """Per-cell reference: hook states, HF final norm + unembedding, one fl.patch call per cell."""
    states = hook_last_states(model, BLOCKS[kind], torch.tensor([TEXT]))  # [n_layers + 1, T, d]
    norm, unembed = model.get_submodule(FINAL_NORM[kind]), model.get_output_embeddings()
    top, phrase = [], []
    for layer in layers:
        top_row, phrase_row = [], []
        for t in range(len(TEXT)):
            state = states[layer, t]
            with torch.no_grad():
                probs = unembed(norm(state)).float().softmax(-1)
            top_row.append(probs.topk(TOP_K))
            kwargs = prompt_for(layer)
            out = fl.patch(lm, state, layer, rollout=rollout, **kwargs)
            phrase_row.append((out.rollout_ids[0], out.rollout_probs[0]))
        top.append(top_row)
        phrase.append(phrase_row)
    return top, phrase


def _assert_cells_equal(lm, grid, top, phrase):
    dec = lambda ids: [lm.tokenizer.decode([i]) for i in ids.tolist()]  # noqa: E731
    for i in range(len(grid.layers)):
        for t in range(len(TEXT)):
            probs, ids = top[i][t]
            assert grid.top_tokens[i][t] == dec(ids)
            np.testing.assert_allclose(grid.top_probs[i, t], probs.numpy(), rtol=1e-4, atol=1e-6)
            ids, probs = phrase[i][t]
            assert grid.phrase_tokens[i][t] == dec(ids), (grid.layers[i], t)
            np.testing.assert_allclose(grid.phrase_probs[i, t], probs.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["gptj", "llama", "mamba"])
def test_batched_grid_equals_per_cell_with_layer_matched_prompts(tiny, kind):
    lm, model = tiny(kind)
    prompts = {layer: _prompt(lm, seed=layer) for layer in range(lm.n_layers + 1)}
    grid = lens_grid(lm, TEXT, prompts, rollout=ROLLOUT, top_k=TOP_K)
    assert isinstance(grid, LensGrid) and grid.shape == (lm.n_layers + 1, len(TEXT), TOP_K, ROLLOUT)
    assert grid.layers == list(range(lm.n_layers + 1)) and grid.model == lm.name and "per layer" in grid.method
    assert grid.tokens == [lm.tokenizer.decode([i]) for i in TEXT]
    top, phrase = _expected(lm, model, kind, grid.layers, lambda layer: {"soft_prompt": prompts[layer]})
    _assert_cells_equal(lm, grid, top, phrase)
    # Chunks of 3 rows cut across layers and tokens: nothing changes.
    small = lens_grid(lm, TEXT, prompts, rollout=ROLLOUT, top_k=TOP_K, chunk_size=3)
    assert small.phrase_tokens == grid.phrase_tokens and small.top_tokens == grid.top_tokens
    np.testing.assert_allclose(small.phrase_probs, grid.phrase_probs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["gptj", "llama", "mamba"])
def test_batched_grid_equals_per_cell_with_shared_and_fixed_prompt(tiny, kind):
    lm, model = tiny(kind)
    layers = [3, 0]  # any order, as given
    shared = _prompt(lm, n=5)
    grid = lens_grid(lm, torch.tensor([TEXT]), shared, layers=layers, rollout=ROLLOUT, top_k=TOP_K, chunk_size=5)
    assert grid.layers == layers and "shared" in grid.method
    _assert_cells_equal(lm, grid, *_expected(lm, model, kind, layers, lambda layer: {"soft_prompt": shared}))

    target = [lm.tokenizer(PAPER_PROMPT)["input_ids"]]
    fixed = lens_grid(lm, TEXT, layers=layers, rollout=ROLLOUT, top_k=TOP_K)
    assert "fixed prompt" in fixed.method
    _assert_cells_equal(lm, fixed, *_expected(lm, model, kind, layers, lambda layer: {"target": target}))


@pytest.mark.parametrize("kind", ["gptj", "llama", "mamba"])
def test_remote_local_gives_the_same_grid(tiny, kind):
    lm, _ = tiny(kind)
    prompts = {1: _prompt(lm, seed=1), 3: _prompt(lm, seed=3)}
    local = lens_grid(lm, TEXT, prompts, rollout=2, top_k=3)
    lm.remote = "local"
    remote = lens_grid(lm, TEXT, prompts, rollout=2, top_k=3)
    assert remote.layers == local.layers == [1, 3]  # a dict without `layers`: the layers that have a prompt
    assert remote.top_tokens == local.top_tokens and remote.phrase_tokens == local.phrase_tokens
    np.testing.assert_allclose(remote.top_probs, local.top_probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(remote.phrase_probs, local.phrase_probs, rtol=1e-5, atol=1e-7)


def test_text_progress_and_rollout_zero(tiny):
    lm, _ = tiny("gptj")
    done = []
    grid = lens_grid(lm, "Marty McFly from", layers=[1, 2], rollout=2, top_k=2, chunk_size=4, progress=done.append)
    ids = lm.tokenizer("Marty McFly from", add_special_tokens=False)["input_ids"]
    assert grid.tokens == [lm.tokenizer.decode([i]) for i in ids] and grid.title == "Marty McFly from"
    assert sum(done) == 2 * len(ids) and max(done) <= 4
    bare = lens_grid(lm, TEXT, layers=[1], rollout=0, top_k=2)
    assert bare.shape == (1, len(TEXT), 2, 0)
    assert isinstance(bare.top_probs, np.ndarray) and bare.top_probs.dtype == np.float64


def test_prompt_errors_say_what_to_do(tiny):
    lm, _ = tiny("llama")
    prompts = {1: _prompt(lm), 2: _prompt(lm)}
    with pytest.raises(fl.FutureLensError, match=r"No soft prompt for layer\(s\) \[0\]: prompts are given for layers \[1, 2\]"):
        lens_grid(lm, TEXT, prompts, layers=[0, 1])
    with pytest.raises(fl.FutureLensError, match=r"prompts must be a \[P, 32\] soft prompt .* got \(4, 7\)"):
        lens_grid(lm, TEXT, torch.randn(4, 7))
    with pytest.raises(fl.FutureLensError, match=r"prompts\[1\] must be a \[P, 32\] soft prompt .* got \(2, 4, 32\)"):
        lens_grid(lm, TEXT, {1: torch.randn(2, 4, 32)})
    with pytest.raises(fl.FutureLensError, match=r"prompt layer=9 is out of range"):
        lens_grid(lm, TEXT, {9: _prompt(lm)})
    with pytest.raises(fl.FutureLensError, match=r"layers has repeats"):
        lens_grid(lm, TEXT, layers=[1, 1])
    with pytest.raises(fl.FutureLensError, match=r"text is empty"):
        lens_grid(lm, "")
    with pytest.raises(fl.FutureLensError, match=r"chunk_size must be >= 1"):
        lens_grid(lm, TEXT, chunk_size=0)


def _save(path, prompt, layer, model):
    from safetensors.torch import save_file

    meta = {"model": model, "layer": str(layer), "config": json.dumps({"layer": layer, "steps": 1})}
    save_file({"soft_prompt": prompt.contiguous()}, str(path), metadata=meta)


def test_load_prompts_reads_files_and_folders_and_checks_the_model(tiny, tmp_path):
    lm, _ = tiny("llama")
    p1, p3 = _prompt(lm, seed=1), _prompt(lm, seed=3)
    _save(tmp_path / "layer1.safetensors", p1, 1, lm.name)
    _save(tmp_path / "layer3.safetensors", p3, 3, lm.name)
    loaded = load_prompts(tmp_path, lm)
    assert sorted(loaded) == [1, 3]
    torch.testing.assert_close(loaded[1], p1)
    assert list(load_prompts(tmp_path / "layer3.safetensors")) == [3]
    # A path goes straight into lens_grid too.
    grid = lens_grid(lm, TEXT, str(tmp_path), rollout=1, top_k=1)
    assert grid.layers == [1, 3]

    other = tmp_path / "other"
    other.mkdir()
    _save(other / "p.safetensors", p1, 2, "gpt2")
    with pytest.raises(fl.FutureLensError, match=r"trained on 'gpt2', not .* force=True"):
        load_prompts(other, lm)
    assert list(load_prompts(other, lm, force=True)) == [2]
    with pytest.raises(fl.FutureLensError, match=r"Two soft prompts for layer 1"):
        load_prompts([tmp_path / "layer1.safetensors", tmp_path / "layer1.safetensors"])
    with pytest.raises(fl.FutureLensError, match=r"does not exist"):
        load_prompts(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(fl.FutureLensError, match=r"No \*\.safetensors soft prompts in"):
        load_prompts(empty)


# --------------------------------------------------------------------------- the real default model


def test_real_model_last_layer_lens_is_the_models_next_token(default_lm):
    lm = default_lm
    text = "The Eiffel Tower"
    ids = lm.tokenizer(text)["input_ids"]
    assert len(ids) == 4
    grid = lens_grid(lm, text, layers=[0, 15, lm.n_layers], rollout=2, top_k=3)
    assert grid.shape == (3, 4, 3, 2) and grid.tokens == [lm.tokenizer.decode([i]) for i in ids]
    next_id = fl.greedy(lm, [ids], 1)[0, 0].item()
    assert grid.top_tokens[-1][-1][0] == lm.tokenizer.decode([next_id])


def test_cli_lens_writes_html_on_the_default_model(tmp_path, tokenizer):
    from typer.testing import CliRunner

    from futurelens.cli import app
    from futurelens.lens.html import esc

    default_tok = tokenizer

    out = tmp_path / "lens.html"
    result = CliRunner().invoke(
        app, ["lens", "Tom & <Jerry>", "--layers", "1", "--layers", "30", "--rollout", "2", "--top-k", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    page = out.read_text()
    tokens = [default_tok.decode([i]) for i in default_tok("Tom & <Jerry>", add_special_tokens=False)["input_ids"]]
    for token in tokens:
        assert f'<div class="fl-h"><bdi>{esc(token)}</bdi></div>' in page
    assert "<Jerry" not in page and "&lt;" in page and "&amp;" in page
    assert "layer" in result.output and "lens.html" in result.output
