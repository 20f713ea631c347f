"""The Hugging Face hub, offline: `futurelens push` against a fake `HfApi`, and every loader pulling from a local
folder laid out exactly as a hub snapshot (``models--owner--name/snapshots/<commit>/``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import futurelens as fl
from futurelens import artifacts
from futurelens.artifacts import PushConfig, data_fingerprint, load_prompts, push
from futurelens.evaluate import EvalConfig, evaluate
from futurelens.methods.linear import LinearApprox, VocabProbe
from futurelens.train import TrainConfig, train_prompt

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SECRETS = {"HF_TOKEN": "hf_SECRETtoken1234567890", "NDIF_API_KEY": "ndif-SECRET-key-987654",
           "WANDB_API_KEY": "wandb-SECRET-key-555555"}
TEXT = [5, 6, 7, 8]


class FakeApi:
    """Records what `push` asks of the hub; keeps a copy of the uploaded folder."""

    def __init__(self, into: Path, **kwargs):
        self.into, self.kwargs, self.calls = into, kwargs, []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        shutil.copytree(kwargs["folder_path"], self.into)
        return SimpleNamespace(oid=COMMIT, commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/{COMMIT}")


@pytest.fixture
def run(tiny_cache, tmp_path, monkeypatch):
    """A run folder as `futurelens demo` lays it out: data/, cache/, prompts/, eval/ (with fitted probes)."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    lm, model, cache = tiny_cache("llama", n=40)
    root = tmp_path / "run"
    (root / "data").mkdir(parents=True)
    shutil.copy(Path(cache.index["data"]) / "futurelens.json", root / "data" / "futurelens.json")
    (root / "cache").symlink_to(cache.path)
    for layer in (2, 3):
        train_prompt(lm, cache, layer, TrainConfig(cache=str(cache.path), out=str(root / "prompts"), prompt_len=3,
                                                   epochs=1), progress=False)
    cfg = EvalConfig(cache=str(cache.path), prompts=str(root / "prompts"), out=str(root / "eval"), layers=[2, 3], k=5,
                     vocab_epochs=1, batch_size=4, methods=["vocab", "linear", "learned"])
    df = evaluate(cfg, lm=lm, progress=False)
    return SimpleNamespace(lm=lm, model=model, cache=cache, root=root, eval=cfg, df=df)


def _snapshot(tmp_path: Path, uploaded: Path, repo: str = "me/lens") -> Path:
    owner, name = repo.split("/")
    snap = tmp_path / "hub" / f"models--{owner}--{name}" / "snapshots" / COMMIT
    shutil.copytree(uploaded, snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(COMMIT)
    return snap


def test_push_uploads_prompts_probes_results_and_a_card_without_keys(run, tmp_path):
    api = FakeApi(tmp_path / "uploaded")
    result = fl.push(run.root, "me/lens", private=True, api=api)
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1] == "me/lens" and api.calls[0][2]["private"] is True and api.calls[0][2]["exist_ok"] is True
    assert api.calls[1][1]["repo_id"] == "me/lens" and api.calls[1][1]["repo_type"] == "model"
    assert result.revision == COMMIT
    files = sorted(str(p.relative_to(api.into)) for p in api.into.rglob("*") if p.is_file())
    assert files == result.files == sorted([
        "README.md", "futurelens.json", "data/futurelens.json", "prompts/layer-2.safetensors", "prompts/layer-3.safetensors",
        "probes/linear-layer-2.safetensors", "probes/linear-layer-3.safetensors", "probes/vocab-layer-2.safetensors",
        "probes/vocab-layer-3.safetensors", "results/results.csv", "results/precision.png", "results/surprisal.png",
    ])
    # no key anywhere, in any file
    for f in api.into.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not any(s.encode() in data for s in SECRETS.values()), f

    card = (api.into / "README.md").read_text()
    fingerprint = data_fingerprint(run.cache)
    assert card.startswith("---\nlibrary_name: futurelens\n")
    assert f"# Future Lens artifacts for `{run.lm.name}`" in card
    assert "**Soft prompts**: layers 2, 3" in card and "linear model approximations**: layers 2, 3" in card
    assert f"| data fingerprint | `{fingerprint}` |" in card and "| prefixes kept (train / test) | `40" in card
    assert "| lr | `0.0005` |" in card and "| loss | `kl` |" in card and "| prompt_len | `3` |" in card
    assert "precision@1 of the token N ahead" in card and "precision@5 of the token N ahead" in card
    assert "learned prompt" in card and "linear (vocab)" in card
    assert "![precision@1 per layer for each N](results/precision.png)" in card
    assert 'fl.load_prompts("me/lens", lm)' in card and "--prompts me/lens" in card and "me/lens@<revision>" in card
    info = json.loads((api.into / "futurelens.json").read_text())
    assert info["model"] == run.lm.name and info["prompt_layers"] == [2, 3] and info["data"]["fingerprint"] == fingerprint
    assert {p["kind"] for p in info["probes"]} == {"vocab", "linear"}


def test_the_cli_pushes_with_the_hub_client(run, tmp_path, monkeypatch):
    import huggingface_hub
    from typer.testing import CliRunner

    from futurelens.cli import app

    made = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda **kw: made.append(FakeApi(tmp_path / "up", **kw)) or made[-1])
    result = CliRunner().invoke(app, ["push", str(run.root), "me/lens"])
    assert result.exit_code == 0, result.output
    assert f"revision {COMMIT}" in result.stdout and f"--prompts me/lens@{COMMIT}" in result.stdout
    assert made[0].kwargs.get("token") is None  # the client finds HF_TOKEN itself; futurelens never handles it
    assert not any(s in result.output for s in SECRETS.values())
    bad = CliRunner().invoke(app, ["push", str(tmp_path / "nothing"), "me/lens"])
    assert bad.exit_code == 1 and "No run folder" in bad.output


def test_every_loader_pulls_a_hub_snapshot_and_records_its_revision(run, tmp_path, monkeypatch):
    import huggingface_hub

    api = FakeApi(tmp_path / "uploaded")
    push(PushConfig(run_dir=str(run.root), repo_id="me/lens"), api=api)  # a PushConfig, as the CLI passes it
    snap = _snapshot(tmp_path, api.into)
    asked = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        asked.append((repo_id, revision, allow_patterns))
        if repo_id != "me/lens":
            raise huggingface_hub.errors.RepositoryNotFoundError(f"404 {repo_id}")
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    lm = run.lm

    # load_prompts
    original = load_prompts(run.root / "prompts", lm)
    pulled = load_prompts("me/lens", lm)
    assert sorted(pulled) == [2, 3] and all(torch.equal(pulled[k], original[k]) for k in original)
    assert pulled.source.kind == "hub" and pulled.source.revision == COMMIT
    assert asked[-1][0] == "me/lens" and asked[-1][1] is None
    load_prompts("me/lens@v1", lm)
    assert asked[-1][1] == "v1"

    # the lens: the header names the repo and the commit
    grid = fl.lens(lm, TEXT, prompts="me/lens", rollout=2, top_k=2)
    assert grid.layers == [2, 3] and f"me/lens @ {COMMIT}" in grid.source and COMMIT in grid.to_html()
    local = fl.lens(lm, TEXT, prompts=str(run.root / "prompts"), rollout=2, top_k=2)
    assert grid.phrase_tokens == local.phrase_tokens

    # eval: prompts and probes from the hub, no fitting, the same numbers, the revision recorded
    def refuse(*a, **k):
        raise AssertionError("fitted again")

    monkeypatch.setattr(VocabProbe, "fit", refuse)
    monkeypatch.setattr(LinearApprox, "fit", refuse)
    cfg = EvalConfig(**{**vars(run.eval), "prompts": "me/lens", "probes": "me/lens", "out": str(tmp_path / "eval2")})
    df = evaluate(cfg, lm=lm, progress=False)
    assert df.equals(run.df)
    sources = json.loads((tmp_path / "eval2" / "sources.json").read_text())
    assert sources["prompts"]["revision"] == COMMIT and sources["probes"]["revision"] == COMMIT

    # the CLI
    from typer.testing import CliRunner

    from futurelens.cli import app

    folder = tmp_path / "model"
    run.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    result = CliRunner().invoke(app, ["lens", "def f(x):", "--model", str(folder), "--prompts", "me/lens", "--force",
                                      "--rollout", "1", "--out", str(tmp_path / "lens.html")])
    assert result.exit_code == 0, result.output
    assert f"me/lens @ {COMMIT}" in result.stdout and COMMIT in (tmp_path / "lens.html").read_text()
    # a repo that is not there: one message, naming it
    with pytest.raises(fl.FutureLensError, match=r"Could not fetch me/other from the Hugging Face hub"):
        load_prompts("me/other", lm)


def test_the_lens_shows_fitted_probes_guesses(run, tmp_path):
    from futurelens.artifacts import ProbeInfo, load_probe, probe_path

    lm = run.lm
    folder = run.root / "eval" / "probes"
    grid = fl.lens(lm, TEXT, prompts=str(run.root / "prompts"), probes=str(folder), rollout=1, top_k=1)
    assert set(grid.probes) == {"linear (vocab)", "linear (hidden)"} and grid.probes["linear (vocab)"]["layers"] == [2, 3]
    assert "fitted probes from" in grid.source and data_fingerprint(run.cache) in grid.source
    states = fl.token_states(lm, TEXT, [2, 3])  # [2, T, d]
    fp = data_fingerprint(run.cache)
    for i, layer in enumerate((2, 3)):
        vocab = VocabProbe(lm.vocab_size, epochs=1)
        vocab.restore(layer, load_probe(probe_path(folder, "vocab", layer), ProbeInfo("vocab", lm.name, layer, fp,
                                                                                      vocab.settings())))
        batch = SimpleNamespace(states=states[i])
        want = [p.top_ids[:, 0] for p in vocab.predict(batch, layer, 1)]  # per N: [T]
        got = grid.probes["linear (vocab)"]["tokens"][i]  # [T][N+1]
        assert got == [[lm.tokenizer.decode([int(want[n][t])]) for n in range(len(want))] for t in range(len(TEXT))]
    page = grid.to_html()
    assert "linear (vocab)" in page and "N=1" in page
    again = fl.LensGrid.from_dict(json.loads(json.dumps(grid.to_dict())))
    assert again.probes["linear (hidden)"]["tokens"] == grid.probes["linear (hidden)"]["tokens"]
    with pytest.raises(fl.FutureLensError, match=r"No fitted probes for layers \[1\]"):
        fl.lens(lm, TEXT, prompts="fixed", layers=[1], probes=str(folder), rollout=1, top_k=1)


def test_push_carries_a_cross_model_runs_maps_and_the_target_layer_grid(run, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(run.root, root)
    maps = root / "prompts" / "maps"
    maps.mkdir()
    (maps / "layer-1-to-2.safetensors").write_bytes(b"map")
    (root / "eval" / "target_layers.png").write_bytes(b"png")
    api = FakeApi(tmp_path / "uploaded")
    result = fl.push(root, "me/lens", api=api)
    assert "prompts/maps/layer-1-to-2.safetensors" in result.files and "results/target_layers.png" in result.files
    assert (api.into / "prompts" / "maps" / "layer-1-to-2.safetensors").read_bytes() == b"map"
