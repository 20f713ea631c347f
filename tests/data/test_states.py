"""The sharded state cache: contents against the trace primitives, the loader, resumption after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import futurelens as fl
from conftest import synthetic_prefixes
from futurelens.data.states import INDEX, CacheConfig, StateCache, build_cache


@pytest.fixture
def llama(tiny):
    lm, _ = tiny("llama")
    return lm


def test_shards_hold_exactly_what_cache_ahead_computes(llama, tokenizer, tmp_path):
    data, cols = synthetic_prefixes(tmp_path / "data", tokenizer, llama.name)
    out = build_cache(llama, CacheConfig(data=str(data), out=str(tmp_path / "c"), shard_size=4, batch_size=3), progress=False)
    cache = StateCache(out)
    assert cache.layers == list(range(llama.n_layers + 1)) and cache.size("train") == 15 and cache.size("test") == 5
    train = [i for i, s in enumerate(cols["split"]) if s == "train"]
    full = cache.load(2, "train", final=True)
    assert full.row.tolist() == train  # order preserved across shards and length-sorted batches
    for j, i in enumerate(train[:6]):
        states, final = fl.cache_ahead(llama, [cols["prefix_ids"][i]], [cols["target_ids"][i][:2]])
        torch.testing.assert_close(full.states[j], states[2, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(full.final[j], final[0], rtol=1e-5, atol=1e-5)
        assert full.target[j].tolist() == cols["target_ids"][i]
        assert full.last_token[j] == cols["prefix_ids"][i][-1]
    files = sorted((out / "train").glob("*.safetensors"))
    assert len(files) == 4 and set(load_file(files[0])) >= {"layer.0", "layer.3", "final", "target", "row"}


def test_half_precision_storage_and_layer_subset(llama, tokenizer, tmp_path):
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, llama.name)
    cfg = CacheConfig(data=str(data), out=str(tmp_path / "c"), layers=[3, 1], dtype="float16", splits=["test"])
    cache = StateCache(build_cache(llama, cfg, progress=False))
    assert cache.layers == [1, 3]
    batch = cache.load(3, "test")
    assert batch.states.dtype == torch.float16 and batch.states.shape == (5, llama.d_model)
    with pytest.raises(fl.FutureLensError, match="not cached"):
        cache.load(2, "test")
    with pytest.raises(fl.FutureLensError, match="no 'train' split"):
        cache.load(1, "train")


def test_loader_streams_every_row_once_shuffled_or_not(llama, tokenizer, tmp_path):
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, llama.name, n=40)
    cache = StateCache(build_cache(llama, CacheConfig(data=str(data), out=str(tmp_path / "c"), shard_size=7), progress=False))
    whole = cache.load(1, "train")
    by_row = {int(r): s for r, s in zip(whole.row, whole.states)}
    for shuffle, seed in [(False, 0), (True, 0), (True, 1)]:
        batches = list(cache.batches(1, "train", batch_size=4, shuffle=shuffle, seed=seed))
        rows = torch.cat([b.row for b in batches]).tolist()
        assert sorted(rows) == sorted(by_row) and len(rows) == len(set(rows))
        assert [len(b.row) for b in batches[:-1]] == [4] * (len(batches) - 1)
        for b in batches:
            for r, s in zip(b.row.tolist(), b.states):
                assert torch.equal(s, by_row[r])
        if shuffle:
            assert rows != whole.row.tolist()
    assert [b.row.tolist() for b in cache.batches(1, shuffle=True, seed=3)] == [
        b.row.tolist() for b in cache.batches(1, shuffle=True, seed=3)
    ]


def test_other_settings_refuse_to_resume_and_incomplete_cache_refuses_to_load(llama, tokenizer, tmp_path):
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, llama.name)
    out = tmp_path / "c"
    build_cache(llama, CacheConfig(data=str(data), out=str(out), layers=[1]), progress=False)
    with pytest.raises(fl.FutureLensError, match="other settings.*layers"):
        build_cache(llama, CacheConfig(data=str(data), out=str(out), layers=[2]), progress=False)
    index = (out / INDEX).read_text().replace('"complete": true', '"complete": false')
    (out / INDEX).write_text(index)
    with pytest.raises(fl.FutureLensError, match="incomplete.*re-run"):
        StateCache(out)


def _cache_cmd(model_dir, data, out):
    code = "from futurelens.cli import main; main()"
    return [sys.executable, "-c", code, "cache", "--data", str(data), "--out", str(out), "--model", str(model_dir),
            "--shard-size", "4", "--batch-size", "2"]


def test_killed_build_resumes_to_a_bit_identical_cache(tiny, tokenizer, tmp_path):
    lm, model = tiny("llama")
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, str(model_dir), n=240)
    env = {**os.environ, "TQDM_DISABLE": "1"}

    subprocess.run(_cache_cmd(model_dir, data, tmp_path / "whole"), check=True, env=env, capture_output=True)

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(_cache_cmd(model_dir, data, resumed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # a loaded machine can take minutes to start the subprocess
    while not list((resumed / "train").glob("shard-*.safetensors")) and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((resumed / "train").glob("shard-*.safetensors")))
    assert 0 < done < 45, "the kill should land mid-build"
    with pytest.raises(fl.FutureLensError, match="incomplete"):
        StateCache(resumed)
    subprocess.run(_cache_cmd(model_dir, data, resumed), check=True, env=env, capture_output=True)

    whole_files = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*.safetensors"))
    resumed_files = sorted(p.relative_to(resumed) for p in resumed.rglob("*.safetensors"))
    assert whole_files == resumed_files and len(whole_files) == 60
    for rel in whole_files:
        assert (tmp_path / "whole" / rel).read_bytes() == (resumed / rel).read_bytes(), rel
    assert not [p for p in resumed.rglob("*.tmp")], "no half-written shard survives a resume"
    assert (resumed / INDEX).read_text() == (tmp_path / "whole" / INDEX).read_text()
    assert len(StateCache(resumed)) == 240


def test_a_resume_removes_the_half_written_files_a_kill_leaves(llama, tokenizer, tmp_path):
    """A kill mid-write leaves an atomic write's temporary file, of a shard or of the index: the next build removes
    both kinds (the kill test above meets them only when its kill lands mid-write)."""
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, llama.name, n=12)
    out = tmp_path / "cache"
    cfg = CacheConfig(data=str(data), out=str(out), layers=[1], shard_size=4)
    build_cache(llama, cfg, progress=False)
    before = (out / INDEX).read_text()
    stale = [out / f".{INDEX}-abc123.tmp", out / "train" / ".shard-00000.safetensors-abc123.tmp"]
    for path in stale:
        path.write_text("half")
    build_cache(llama, cfg, progress=False)
    assert not [p for p in out.rglob("*.tmp")] and (out / INDEX).read_text() == before


def test_cache_cli_has_help_text():
    from typer.testing import CliRunner

    from futurelens.cli import app

    out = CliRunner().invoke(app, ["cache", "--help"], env={"COLUMNS": "200"}).output
    assert "Storage dtype" in out and "resumption" in out and "--shard-size" in out


@pytest.mark.parametrize("kind", ["gptj", "mamba"])
def test_remote_cache_is_one_request_per_shard_and_matches_local(tiny, tokenizer, tmp_path, monkeypatch, kind):
    lm, _ = tiny(kind)
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, lm.name, n=20)
    local = StateCache(build_cache(lm, CacheConfig(data=str(data), out=str(tmp_path / "a"), shard_size=8), progress=False))
    sessions = []
    real_session = type(lm.nn).session
    monkeypatch.setattr(type(lm.nn), "session", lambda self, *a, **kw: sessions.append(1) or real_session(self, *a, **kw))
    lm.remote = "local"
    remote = StateCache(build_cache(lm, CacheConfig(data=str(data), out=str(tmp_path / "b"), shard_size=8), progress=False))
    assert len(sessions) == 3  # 15 train rows in 2 shards, 5 test rows in 1
    a, b = local.load(2, "train", final=True), remote.load(2, "train", final=True)
    torch.testing.assert_close(b.states, a.states, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.final, a.final, rtol=1e-5, atol=1e-6)


def test_the_disk_cost_is_said_before_writing_and_equals_what_is_written(llama, tokenizer, tmp_path, caplog):
    import logging

    from futurelens.data.states import cache_disk_bytes

    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, llama.name)  # 15 train + 5 test, n_max 2
    out = tmp_path / "c"
    with caplog.at_level(logging.WARNING, logger="futurelens.data.states"):
        cfg = CacheConfig(data=str(data), out=str(out), layers=[1, 3], dtype="float16", shard_size=4)
        build_cache(llama, cfg, progress=False)
    said = [r.getMessage() for r in caplog.records if "to write to" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("Caching 20 prefixes x 2 layer(s) [1, 3]")
    files = [p for p in out.rglob("*.safetensors")]
    on_disk = sum(p.stat().st_size for p in files)
    header = sum(8 + int.from_bytes(p.read_bytes()[:8], "little") for p in files)  # safetensors: u64 length + JSON
    want = cache_disk_bytes(20, 2, 2, llama.d_model, 2, shards=len(files))
    assert on_disk - header == want - 4096 * len(files)  # the tensors' bytes, exactly
    assert header <= 4096 * len(files) and f"{want / 1e6:.1f} MB to write" in said[0]
    # a hand count at 70B shape, all layers, fp16, 100k prefixes: the 133 GB
    assert round(cache_disk_bytes(100_000, 81, 3, 8192, 2) / 1e9) == 139  # 85 x 8192 x 2 B x 100k (+ ids)


def test_a_disk_too_small_is_refused_before_any_shard_is_written(llama, tokenizer, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, llama.name)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    out = tmp_path / "c"
    with pytest.raises(fl.FutureLensError, match=r"needs [\d.]+ MB but .* has 0\.0 MB free: free space.*fewer --layers"):
        build_cache(llama, CacheConfig(data=str(data), out=str(out)), progress=False)
    assert not list(out.rglob("*.safetensors"))
