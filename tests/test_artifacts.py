"""Artifacts: soft prompt files in every format (futurelens', a bare tensor as the authors' gptj_soft_prefix.pt),
the shipped prompts, `fl.lens` and the prompt source in the page header."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import BLOCKS
from hook_reference import hook_rollout, hook_states

import futurelens as fl
from futurelens import artifacts
from futurelens.artifacts import load_prompt, load_prompts, save_prompt

TEXT = [5, 6, 7, 8]


def _authors_file(path, prompt):
    """A file in the format of the authors' gptj_soft_prefix.pt: ``torch.save`` of an ``nn.Parameter``, bf16, [P, d]."""
    torch.save(torch.nn.Parameter(prompt.to(torch.bfloat16)), path)
    return path


def _same_cells(a, b):
    assert a.layers == b.layers and a.tokens == b.tokens
    assert a.top_tokens == b.top_tokens and a.phrase_tokens == b.phrase_tokens
    np.testing.assert_allclose(a.top_probs, b.top_probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a.phrase_probs, b.phrase_probs, rtol=1e-5, atol=1e-7)


def test_the_authors_format_gives_the_lens_of_the_same_prompt_saved_by_futurelens(tiny, tmp_path):
    lm, model = tiny("gptj")
    prompt = (torch.randn(10, lm.d_model, generator=torch.Generator().manual_seed(0)) * 0.5).to(torch.bfloat16).float()
    pt = _authors_file(tmp_path / "gptj_soft_prefix.pt", prompt)
    ours = save_prompt(tmp_path / "layer-2.safetensors", prompt, model=lm.name, layer=2, config={}, losses=[])
    single = tmp_path / "bare.safetensors"  # any single-tensor safetensors file too
    from safetensors.torch import save_file

    save_file({"prefix": prompt.to(torch.float16).float()}, str(single))

    # a bare tensor records no layer: it is asked for, naming the authors' case
    with pytest.raises(fl.FutureLensError, match=r"records no layer.*--layer.*14"):
        load_prompts(pt, lm)
    loaded = load_prompts(pt, lm, layer=2)
    assert list(loaded) == [2] and loaded[2].dtype == torch.float32
    torch.testing.assert_close(loaded[2], prompt)
    assert loaded.source.kind == "tensor" and "the authors' format" in loaded.source.describe()
    assert load_prompts(single, lm, layer=2).source.kind == "tensor"

    theirs = fl.lens(lm, TEXT, prompts=str(pt), layer=2, rollout=3, top_k=3)
    mine = fl.lens(lm, TEXT, prompts=str(ours), layer=2, rollout=3, top_k=3)
    _same_cells(theirs, mine)
    assert theirs.layers == list(range(lm.n_layers + 1))  # every row's state, patched at the prompt's layer
    assert "gptj_soft_prefix.pt" in theirs.source and "authors" in theirs.source and "layer 2" in theirs.source
    assert "gptj_soft_prefix.pt" in theirs.to_html()

    # What the authors' demo (demo/lens.py: show_future_lens) computes, with plain hooks: each layer's state
    # at each token overwrites the prompt's last position at the output of the prompt's block (block 13 for
    # GPT-J = layer 14; here block 1 = layer 2) over "_ _ ... _" whose embeddings are all replaced by the
    # prompt (no BOS), and the model generates greedily, the patch held in its KV cache.
    states = hook_states(model, BLOCKS["gptj"], torch.tensor([TEXT]))[:, 0]  # [n_layers + 1, T, d]
    flat = states.reshape(-1, lm.d_model)
    ids = torch.zeros(len(flat), 10, dtype=torch.long)
    want_ids, want_p = hook_rollout(model, BLOCKS["gptj"], ids, flat, [2] * len(flat), 9, prompt, 3)
    dec = lambda row: [lm.tokenizer.decode([i]) for i in row.tolist()]  # noqa: E731
    got = [cell for row in theirs.phrase_tokens for cell in row]
    assert got == [dec(r) for r in want_ids]
    np.testing.assert_allclose(theirs.phrase_probs.reshape(-1, 3), want_p.numpy(), rtol=1e-4, atol=1e-6)
    # ... and its logit lens: the model's own ln_f + lm_head on each state
    with torch.no_grad():
        top = model.lm_head(model.transformer.ln_f(flat)).softmax(-1).topk(3)
    assert [cell for row in theirs.top_tokens for cell in row] == [dec(r) for r in top.indices]

    # the CLI: --prompt FILE --layer L (the command, on a local tiny GPT-J)
    from typer.testing import CliRunner

    from futurelens.cli import app

    folder = tmp_path / "gptj"
    model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    out = tmp_path / "lens.html"
    result = CliRunner().invoke(app, ["lens", "Marty McFly from", "--model", str(folder), "--prompt", str(pt),
                                      "--layer", "2", "--rollout", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "the authors' format" in result.stdout and "patched at layer 2" in result.stdout
    assert "gptj_soft_prefix.pt" in out.read_text()
    result = CliRunner().invoke(app, ["lens", "x", "--model", str(folder), "--prompt", str(pt)])
    assert result.exit_code == 1 and "records no layer" in result.output


def test_prompt_files_are_checked(tiny, tmp_path):
    lm, _ = tiny("llama")
    p = torch.randn(3, lm.d_model)
    f = save_prompt(tmp_path / "layer-1.safetensors", p, model=lm.name, layer=1, config={"lr": 1.0}, losses=[1.0],
                    dtype=torch.float16)
    tensor, meta = load_prompt(f, lm)
    assert tensor.dtype == torch.float32 and meta["dtype"] == "float16" and meta["layer"] == 1
    torch.testing.assert_close(tensor, p.half().float())
    with pytest.raises(fl.FutureLensError, match=r"trained for layer 1, not 2"):
        load_prompt(f, lm, layer=2)
    assert load_prompt(f, lm, layer=2, force=True)[1]["layer"] == 2
    torch.save({"a": p, "b": p}, tmp_path / "two.pt")
    with pytest.raises(fl.FutureLensError, match=r"holds 2 tensors"):
        load_prompts(tmp_path / "two.pt", layer=1)
    torch.save(torch.randn(3, lm.d_model + 1), tmp_path / "wide.pt")
    with pytest.raises(fl.FutureLensError, match=r"wide|width"):
        load_prompts(tmp_path / "wide.pt", lm, layer=1)
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(fl.FutureLensError, match=r"\.safetensors or \.pt"):
        load_prompts(tmp_path / "p.txt")
    # a config with a key in it never reaches the file
    g = save_prompt(tmp_path / "layer-2.safetensors", p, model=lm.name, layer=2,
                    config={"wandb_api_key": "abcd1234secret", "note": "token=abcd1234secret"}, losses=[])
    assert b"abcd1234secret" not in g.read_bytes()


def test_hub_ids_are_told_from_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert artifacts.hub_id("me/lens") == ("me/lens", None)
    assert artifacts.hub_id("hf:me/lens@v1") == ("me/lens", "v1")
    assert artifacts.hub_id("me/lens.pt") is None and artifacts.hub_id("a/b/c") is None
    (tmp_path / "me" / "lens").mkdir(parents=True)
    assert artifacts.hub_id("me/lens") is None  # an existing folder wins
    assert artifacts.hub_id("hf:me/lens") == ("me/lens", None)


def hook_cells(model, blocks, text, layers, rollout, top_k, soft=None, prompt_ids=None, at=None):
    """What a lens grid's cells must hold, with plain hooks: ``(phrase ids [L, T, rollout], top ids [L, T, top_k],
    top probs [L, T, top_k])``. Row layer ``L``'s state at each token is patched at ``L`` (or ``at``) over the last
    position of ``soft[L]`` (``soft[at]``; its embeddings replacing ``P`` pad tokens) or of the text prompt
    ``prompt_ids``, and rolled out greedily; its logit lens is the HF model's own final norm and head."""
    states = hook_states(model, blocks, torch.tensor([text]))[:, 0]  # [n_layers + 1, T, d]
    T = len(text)
    phrases = []
    for layer in layers:
        write = layer if at is None else at
        if soft is None:
            ids, sp = torch.tensor([prompt_ids] * T), None
        else:
            ids, sp = torch.zeros(T, len(soft[write]), dtype=torch.long), soft[write]
        phrases.append(hook_rollout(model, blocks, ids, states[layer], [write] * T, ids.shape[1] - 1, sp, rollout)[0])
    with torch.no_grad():
        top = model.lm_head(model.model.norm(states[layers])).softmax(-1).topk(top_k)
    return torch.stack(phrases), top.indices, top.values


def _cells_are(grid, lm, want):
    """``grid``'s phrases and logit-lens tokens are the ids ``want`` (`hook_cells`) decoded, its probabilities theirs."""
    phrase, top, top_p = want
    dec = lambda t: [[[lm.tokenizer.decode([i]) for i in cell] for cell in row] for row in t.tolist()]  # noqa: E731
    assert grid.phrase_tokens == dec(phrase) and grid.top_tokens == dec(top)
    np.testing.assert_allclose(grid.top_probs, top_p.numpy(), rtol=1e-4, atol=1e-6)


def test_lens_one_call_uses_shipped_prompts_and_says_where_they_came_from(tiny, tmp_path, monkeypatch):
    """`fl.lens` picks the prompts that ship for the model (else the fixed prompt) and says so; its cells are the hook
    reference's with the prompt it names (before, the shipped-prompt grid was checked by its layers and source only,
    and ``fl.lens`` against ``futurelens.lens.lens``, the same function).

    Seen failing with ``soft[rows[0]]`` for every row's soft prompt planted in `server.jobs.lens_phrases` (each
    layer's phrase rolled out from the first layer's prompt), and with the fixed prompt's patch at
    ``ids.shape[1] - 2`` there."""
    lm, model = tiny("llama")
    # a model with no shipped prompts: the fixed prompt, and the header says why
    grid = fl.lens(lm, TEXT, rollout=2, top_k=2)
    assert grid.method.startswith("fixed prompt") and "no learned prompts ship" in grid.source
    from futurelens.methods import PAPER_PROMPT

    every = list(range(lm.n_layers + 1))
    assert grid.layers == every
    _cells_are(grid, lm, hook_cells(model, BLOCKS["llama"], TEXT, every, 2, 2,
                                    prompt_ids=lm.tokenizer(PAPER_PROMPT)["input_ids"]))
    assert "no learned prompts ship" in grid.to_html() and "fl-cell" in grid._repr_html_()
    # a package folder for this model's name: used when no prompt is given
    shipped = tmp_path / "prompts"
    folder = shipped / "tiny-llama"
    monkeypatch.setattr(lm, "name", "tiny-llama")
    g = torch.Generator().manual_seed(3)
    soft = {layer: torch.randn(2, lm.d_model, generator=g).half().float() for layer in (1, 3)}  # as float16 keeps them
    for layer in (1, 3):
        save_prompt(folder / f"layer-{layer}.safetensors", soft[layer], model=lm.name, layer=layer,
                    config={}, losses=[], dtype=torch.float16)
    (folder / "prompts.json").write_text(json.dumps({"summary": "trained in a test"}))
    monkeypatch.setattr(artifacts.prompts, "PACKAGE_PROMPTS", shipped)
    grid = fl.lens(lm, TEXT, rollout=2, top_k=2)
    assert grid.layers == [1, 3] and "shipped with futurelens" in grid.source and "trained in a test" in grid.source
    assert "shipped with futurelens" in grid.to_html()
    _cells_are(grid, lm, hook_cells(model, BLOCKS["llama"], TEXT, [1, 3], 2, 2, soft=soft))
    assert fl.lens(lm, TEXT, prompts="fixed", rollout=1, top_k=1).method.startswith("fixed prompt")
    # a folder, and one of its prompts for every row (layer=)
    grid = fl.lens(lm, TEXT, prompts=str(folder), layer=3, rollout=2, top_k=2)
    assert grid.layers == every and "patched at layer 3" in grid.source
    _cells_are(grid, lm, hook_cells(model, BLOCKS["llama"], TEXT, every, 2, 2, soft=soft, at=3))
    with pytest.raises(fl.FutureLensError, match=r"No soft prompt for layer 2"):
        fl.lens(lm, TEXT, prompts=str(folder), layer=2, rollout=1, top_k=1)


def test_lens_grid_source_round_trips(tiny):
    lm, _ = tiny("llama")
    grid = fl.lens(lm, TEXT, prompts="fixed", rollout=1, top_k=1)
    again = fl.LensGrid.from_dict(json.loads(json.dumps(grid.to_dict())))
    assert again.source == grid.source == "fixed text prompt"


# --------------------------------------------------------------------------- the shipped prompts


def test_shipped_prompts_are_small_fp16_and_documented():
    folder = artifacts.shipped_prompts_dir("smollm2-135m")
    assert folder is not None
    files = sorted(folder.glob("layer-*.safetensors"))
    assert [int(f.stem.split("-")[1]) for f in sorted(files, key=lambda f: int(f.stem.split("-")[1]))] == list(range(31))
    assert sum(f.stat().st_size for f in files) < 600_000
    info = json.loads((folder / "prompts.json").read_text())
    assert info["command"] and info["data"] and set(map(int, info["precision_at_1"]["learned"])) == set(range(31))
    assert (folder / "README.md").is_file()
    _, meta = artifacts.read_prompt(files[0])
    assert meta["dtype"] == "float16" and meta["model"] == "smollm2-135m"


@pytest.mark.slow
def test_shipped_prompts_beat_the_fixed_prompt_on_held_out_prefixes(default_lm):
    """Held-out: prefixes cut from pydoc documents of the test split (the split the shipped prompts never saw)."""
    from futurelens.data.corpus import documents
    from futurelens.data.prefixes import is_test
    from futurelens.methods import PAPER_PROMPT
    from futurelens.methods.prompts import prompt_logits

    lm = default_lm
    info = json.loads((artifacts.shipped_prompts_dir(lm.name) / "prompts.json").read_text())
    seed, fraction = info["data"]["seed"], info["data"]["test_fraction"]
    g = torch.Generator().manual_seed(1)
    rows = []
    for doc in documents("pydoc"):
        if not is_test(doc.id, seed, fraction):
            continue
        ids = lm.tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        if len(ids) < 80:
            continue
        for _ in range(4):  # a few prefixes per document, as the dataset cuts them: a random offset and length
            length = int(torch.randint(8, 65, (1,), generator=g))
            start = int(torch.randint(0, len(ids) - length, (1,), generator=g))
            rows.append(ids[start : start + length])
    rows = rows[:60]
    assert len(rows) == 60
    cont = fl.greedy(lm, rows, 2)  # the model's own next two tokens: N=0 and the N=1 target
    layers = [8, 14, 22]
    states = fl.cache(lm, rows, layers=layers)
    shipped = artifacts.shipped_prompts(lm)
    fixed_ids = lm.tokenizer(PAPER_PROMPT, add_special_tokens=False)["input_ids"]
    for i, layer in enumerate(layers):
        learned = prompt_logits(lm, states[i], layer, cont[:, :1], soft_prompt=shipped[layer])[:, 1].argmax(-1)
        fixed = prompt_logits(lm, states[i], layer, cont[:, :1], prompt_ids=fixed_ids)[:, 1].argmax(-1)
        p_learned = (learned == cont[:, 1]).float().mean().item()
        p_fixed = (fixed == cont[:, 1]).float().mean().item()
        assert p_learned > p_fixed, (layer, p_learned, p_fixed)


def test_the_authors_mode_remotely_is_bounded_requests_with_the_same_cells(tiny, tmp_path):
    lm, _ = tiny("gptj")
    prompt = torch.randn(10, lm.d_model, generator=torch.Generator().manual_seed(1))
    here = fl.lens(lm, TEXT, prompts=prompt, layer=2, rollout=2, top_k=2)
    far, _ = tiny("gptj", remote="local")  # NDIF's serialisation path, in-process
    far.max_request_mb = 0.01  # a few rows per request: the rollout splits
    there = fl.lens(far, TEXT, prompts=prompt, layer=2, rollout=2, top_k=2)
    _same_cells(here, there)
