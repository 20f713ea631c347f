"""The files that moved into `futurelens.artifacts` (results, sources, run, lens page, checkpoints): each has one
writer and one reader, and a reader refuses what is not its own."""

from __future__ import annotations

import json

import pytest
import torch

import futurelens as fl
from futurelens.artifacts import cache, checkpoint, lens, probes, prompts, results, run


def test_sources_are_written_with_secrets_masked_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz0123")
    sources = {"prompts": {"kind": "hub", "location": "me/p", "token": "hf_abcdefghijklmnopqrstuvwxyz0123"}}
    path = results.save_sources(tmp_path, sources)
    assert path == tmp_path / results.SOURCES
    assert "hf_abcdefghijklmnopqrstuvwxyz0123" not in path.read_text()  # the raw file, not only the reader's view
    assert results.read_sources(tmp_path)["prompts"]["location"] == "me/p"
    assert results.read_sources(tmp_path / "none") == {}


def test_times_and_the_lens_page_round_trip_atomically(tmp_path):
    run.save_times(tmp_path, {"load": 1.5, "data": 2.0})
    assert run.read_times(tmp_path) == {"load": 1.5, "data": 2.0}
    page = lens.save_page("<p>Marty \u05e9</p>", tmp_path / "sub" / lens.PAGE)
    assert page.read_bytes() == "<p>Marty \u05e9</p>".encode("utf-8")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [lens.PAGE]  # no temporary left behind


def test_a_checkpoint_for_other_settings_is_refused_naming_the_file(tmp_path):
    path = prompts.prompt_checkpoint_path(tmp_path, 3)
    assert prompts.load_prompt_checkpoint(path, {"lr": 1}) is None
    prompts.save_prompt_checkpoint(path, {"lr": 1}, torch.ones(2, 4), {"optimizer": None}, {"epoch": 1, "batch": 7})
    saved = prompts.load_prompt_checkpoint(path, {"lr": 1})
    assert torch.equal(saved["prompt"], torch.ones(2, 4)) and saved["state"]["batch"] == 7
    assert prompts.checkpoint_position(path) == {"epoch": 1, "batch": 7}
    with pytest.raises(fl.FutureLensError, match=rf"{path.name} is a checkpoint of a prompt with other settings"):
        prompts.load_prompt_checkpoint(path, {"lr": 2})
    path.write_bytes(b"not a checkpoint")
    assert prompts.checkpoint_position(path) is None  # a note only: never raises
    checkpoint.save_checkpoint(tmp_path / "f.ckpt.pt", {"settings": {"a": 1}})
    assert probes.load_fit_checkpoint(tmp_path / "f.ckpt.pt", {"a": 1}) == {"settings": {"a": 1}}
    with pytest.raises(fl.FutureLensError, match="of a fit with other settings"):
        probes.load_fit_checkpoint(tmp_path / "f.ckpt.pt", {"a": 2})


def test_what_a_killed_stage_kept_is_listed_by_its_format(tmp_path):
    (tmp_path / "train").mkdir()
    for name in ("layer-1.safetensors", "layer-2.ckpt.pt", "notes.txt"):
        (tmp_path / "train" / name).write_text("x")
    assert prompts.kept_prompts(tmp_path / "train") == ["layer-1.safetensors", "layer-2.ckpt.pt"]
    (tmp_path / "fits").mkdir()
    for name in ("vocab-layer-1.safetensors", "linear-layer-2.ckpt.pt", "layer-3.safetensors"):
        (tmp_path / "fits" / name).write_text("x")
    done, ckpts = probes.kept_fits(tmp_path / "fits")
    assert [p.name for p in done] == ["vocab-layer-1.safetensors"] and [p.name for p in ckpts] == ["linear-layer-2.ckpt.pt"]
    (tmp_path / "cache" / "train").mkdir(parents=True)
    (tmp_path / "cache" / "train" / "shard-00000.safetensors").write_text("x")
    (tmp_path / "cache" / "train" / ".shard-00001.safetensors-abc.tmp").write_text("x")
    assert [p.name for p in cache.kept_shards(tmp_path / "cache")] == ["shard-00000.safetensors"]
    assert [p.name for p in cache.stale_temporaries(tmp_path / "cache", ["train"])] == [".shard-00001.safetensors-abc.tmp"]
    assert cache.read_index(tmp_path / "cache") is None
    (tmp_path / "cache" / cache.INDEX).write_text(json.dumps({"complete": False}))
    assert cache.read_index(tmp_path / "cache") == {"complete": False}
    assert cache.shard_file("test", 12) == "test/shard-00012.safetensors"
