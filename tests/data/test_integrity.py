"""Shard integrity in the state cache: sizes and checksums in the index, verification on resume, clear read errors."""

from __future__ import annotations

import hashlib
import json
import logging
import shlex

import pytest

import futurelens as fl
from conftest import synthetic_prefixes
from futurelens.data import states as S
from futurelens.data.states import INDEX, CacheConfig, StateCache, build_cache, repair_command


@pytest.fixture
def built(tiny, tokenizer, tmp_path, monkeypatch):
    """A cache of 20 synthetic prefixes in shards of 4 (4 train + 2 test), and a counter of shards computed."""
    lm, _ = tiny("llama")
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, lm.name, n=20)
    cfg = CacheConfig(data=str(data), out=str(tmp_path / "cache"), shard_size=4, batch_size=3)
    out = build_cache(lm, cfg, progress=False)
    computed = []
    real = S._shard
    monkeypatch.setattr(S, "_shard", lambda lm, rows, ids, *a: computed.append(ids) or real(lm, rows, ids, *a))
    return lm, cfg, out, computed


def _bytes(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_index_records_each_shards_size_and_checksum(built):
    _, _, out, _ = built
    index = json.loads((out / INDEX).read_text())
    assert index["format"] == 2 and index["complete"]
    for split in ("train", "test"):
        for shard in index["splits"][split]:
            path = out / shard["file"]
            assert shard["bytes"] == path.stat().st_size and shard["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_rerun_rebuilds_only_the_damaged_shard(built, damage, caplog):
    lm, cfg, out, computed = built
    before = _bytes(out)
    shard = out / "train" / "shard-00001.safetensors"
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, one byte of a tensor changed: only the checksum can tell
        shard.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    else:
        shard.unlink()
    with caplog.at_level(logging.WARNING, logger="futurelens.data.states"):
        build_cache(lm, cfg, progress=False)
    assert len(computed) == 1 and len(computed[0]) == 4, "only the damaged shard is computed again"
    assert _bytes(out) == before  # bit-identical, index included
    assert "train/shard-00001.safetensors is damaged" in caplog.text and "rebuilding it" in caplog.text
    computed.clear()
    build_cache(lm, cfg, progress=False)  # a whole cache re-runs without computing anything
    assert computed == []


def test_a_shard_whose_checksum_was_not_recorded_is_checked_then_kept(built):
    """A kill between a shard's rename and the index update, or a cache from format 1: checked, not recomputed."""
    lm, cfg, out, computed = built
    before = _bytes(out)
    index = json.loads((out / INDEX).read_text())
    for split in index["splits"].values():
        for shard in split:
            del shard["bytes"], shard["sha256"]
    index["format"] = 1
    (out / INDEX).write_text(json.dumps(index, indent=2))
    StateCache(out).load(1, "train")  # a format-1 index is still readable
    build_cache(lm, cfg, progress=False)
    assert computed == [] and _bytes(out) == before  # records restored, nothing recomputed
    # Without a record, a shard with the wrong rows or tensors fails the structural check and is rebuilt.
    index = json.loads((out / INDEX).read_text())
    del index["splits"]["test"][0]["sha256"]
    index["complete"] = False
    (out / INDEX).write_text(json.dumps(index, indent=2))
    (out / "test" / "shard-00000.safetensors").write_bytes((out / "train" / "shard-00000.safetensors").read_bytes())
    build_cache(lm, cfg, progress=False)
    assert len(computed) == 1 and _bytes(out) == before


def test_reading_a_damaged_shard_names_it_and_the_repair(built):
    lm, cfg, out, _ = built
    shard = out / "train" / "shard-00002.safetensors"
    data = shard.read_bytes()
    command = f"futurelens cache --data {cfg.data} --out {out} --shard-size 4 --batch-size 3"
    shard.write_bytes(data[:1000])
    with pytest.raises(fl.FutureLensError) as err:
        StateCache(out)
    message = str(err.value)
    assert str(shard) in message and "1000 bytes" in message and command in message
    # Same size, garbage header: found when the shard is read, still as a FutureLensError naming it.
    shard.write_bytes(b"\xff" * len(data))
    cache = StateCache(out)
    assert len(list(cache.batches(1, "test"))) == 1  # other shards read fine
    with pytest.raises(fl.FutureLensError, match=r"shard-00002\.safetensors is damaged \(SafetensorError.*Repair it"):
        cache.load(1, "train")
    # The printed command repairs it: parsed by the CLI's own parser, it rebuilds that shard alone.
    assert _parse(command) == cfg
    build_cache(lm, _parse(command), progress=False)
    assert len(StateCache(out).load(1, "train").row) == 15


def _parse(command: str) -> CacheConfig:
    """The CacheConfig that `futurelens cache ...` would run with (parsed by the CLI, nothing run)."""
    import dataclasses

    import typer

    from futurelens.cli import app

    args = shlex.split(command)
    assert args[:2] == ["futurelens", "cache"]
    cache = typer.main.get_command(app).commands["cache"]
    params = cache.make_context("cache", args[2:]).params
    return CacheConfig(**{f.name: params[f.name] for f in dataclasses.fields(CacheConfig)})


def test_repair_command_carries_non_default_settings(tiny, tokenizer, tmp_path):
    lm, _ = tiny("llama")
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, lm.name)
    cfg = CacheConfig(data=str(data), out=str(tmp_path / "c"), layers=[3, 1], dtype="float16", splits=["test"])
    out = build_cache(lm, cfg, progress=False)
    command = repair_command(out, json.loads((out / INDEX).read_text()))
    assert command == (f"futurelens cache --data {data} --out {out} --layers 1 --layers 3 --dtype float16 "
                       "--splits test")
    assert _parse(command) == CacheConfig(**{**vars(cfg), "layers": [1, 3]})
    assert "--layers" not in repair_command(out, {**json.loads((out / INDEX).read_text()),
                                                  "settings": {**StateCache(out).settings, "layers": [0, 1, 2, 3]}})
