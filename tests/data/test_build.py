"""The dataset builder at scale: streaming with a bounded buffer, labelling in resumable shards, the counts.

Tiny random models and a small JSONL corpus; a buffer far smaller than the corpus puts the
builder in its streaming mode (documents enter and leave the shuffle buffer, passes re-read
the source), the mode a large corpus runs in.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import futurelens as fl
import futurelens.tracing
from futurelens.data import labels
from futurelens.data import prefixes as P
from futurelens.data.corpus import Document, documents
from futurelens.artifacts.dataset import BUILD_FILE, META_FILE, load_prefixes, partial_dir
from futurelens.data.prefixes import DataConfig, build_prefixes


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """24 pydoc topics (1,500 characters each, ~400 tokens) as JSONL: ~9k tokens in all."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with path.open("w") as fh:
        for doc in list(documents("pydoc"))[:24]:
            fh.write(json.dumps({"id": doc.id, "text": doc.text[:1500]}) + "\n")
    return str(path)


def _cfg(out, source, **kw):
    base = dict(source=source, out=str(out), n_prefixes=24, min_len=4, max_len=12, n_max=2, filter_correct=False,
                batch_size=8, test_fraction=0.3, buffer_tokens=600, shard_size=8)
    base.update(kw)
    return DataConfig(**base)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_but_out(a: Path, b: Path) -> bool:
    """Two datasets with the same bytes, but for the output folder recorded in futurelens.json."""
    fa, fb = _files(a), _files(b)
    ma, mb = json.loads(fa.pop(META_FILE)), json.loads(fb.pop(META_FILE))
    ma["config"].pop("out"), mb["config"].pop("out")
    return fa == fb and ma == mb


# --------------------------------------------------------------------------- streaming


def test_streaming_is_seeded_split_by_document_and_recomputable(tiny, tmp_path, corpus, tokenizer):
    lm, _ = tiny("llama")
    kw = dict(n_prefixes=40, buffer_tokens=1200)
    a, meta = load_prefixes(build_prefixes(lm, _cfg(tmp_path / "a", corpus, **kw), progress=False))
    b, _ = load_prefixes(build_prefixes(lm, _cfg(tmp_path / "b", corpus, **kw), progress=False))
    c, _ = load_prefixes(build_prefixes(lm, _cfg(tmp_path / "c", corpus, seed=1, **kw), progress=False))
    assert a.to_dict() == b.to_dict() and a["prefix_ids"] != c["prefix_ids"]
    assert not partial_dir(tmp_path / "a").exists()  # the labelled shards go once the dataset is written
    # Streaming mode: the buffer (1,200 tokens, ~3 documents) is a fraction of the corpus, so documents from
    # beyond the first buffer-full appear, and long documents are read in pieces (of 75 tokens) with document offsets.
    order = [d.id for d in documents(corpus)]
    assert max(order.index(d) for d in a["doc_id"]) >= 5
    train, test = ({d for d, s in zip(a["doc_id"], a["split"]) if s == x} for x in ("train", "test"))
    assert train and test and not train & test
    assert all(P.is_test(d, 0, 0.3) == (s == "test") for d, s in zip(a["doc_id"], a["split"]))
    texts = {d.id: tokenizer(d.text, add_special_tokens=False)["input_ids"] for d in documents(corpus)}
    assert any(o >= 1200 // 16 * 2 for o in a["offset"])  # from beyond a document's first two pieces
    for row in a:
        tokens, n, o = texts[row["doc_id"]], len(row["prefix_ids"]), row["offset"]
        assert 4 <= n <= 12 and tokens[o : o + n] == row["prefix_ids"] and tokens[o + n : o + n + 3] == row["next_ids"]
    assert meta["config"]["buffer_tokens"] == 1200


def test_memory_is_bounded_by_the_buffer_not_the_corpus(tiny, tmp_path, monkeypatch, tokenizer):
    """An endless corpus: the old builder tokenized the whole corpus first and never finished; this one
    reads only what the buffer holds plus one document per candidate."""
    lm, _ = tiny("llama")
    pydoc = [d.text[:800] for d in documents("pydoc") if len(d.text) >= 800][:30]
    smallest = min(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in pydoc)
    read = []

    def endless(source, text_field="text", split="train"):
        for i in itertools.count():
            read.append(i)
            yield Document(f"endless:{i}", pydoc[i % len(pydoc)])

    monkeypatch.setattr(P, "documents", endless)
    ds, meta = load_prefixes(build_prefixes(lm, _cfg(tmp_path / "d", "pydoc", n_prefixes=30, buffer_tokens=2000), progress=False))
    assert len(ds) == 30
    # The buffer holds at most 2000 tokens of documents; after that, each candidate costs at most one more read.
    assert len(read) <= meta["n_candidates"] + 2000 // smallest + 1, (len(read), meta["n_candidates"])


def test_hub_datasets_are_streamed(tiny, tmp_path, corpus, monkeypatch):
    """'hf:' goes through `datasets.load_dataset(..., streaming=True)` (a local folder stands in for the hub)."""
    import datasets

    lm, _ = tiny("llama")
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "train.jsonl").write_text(Path(corpus).read_text())
    calls = []
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # Two documents (600 tokens) stream through a 300-token buffer: 40 prefixes take more than one pass.
    hub, _ = load_prefixes(build_prefixes(lm, _cfg(tmp_path / "h", f"hf:{folder}", max_documents=2, n_prefixes=40, buffer_tokens=300), progress=False))
    local, _ = load_prefixes(build_prefixes(lm, _cfg(tmp_path / "l", corpus, max_documents=2, n_prefixes=40, buffer_tokens=300), progress=False))
    assert len(calls) >= 2 and all(kw.get("streaming") is True for kw in calls)  # one stream per pass
    assert all(d.startswith(f"{folder}:pydoc:") for d in hub["doc_id"])
    assert hub["prefix_ids"] == local["prefix_ids"] and hub["offset"] == local["offset"]  # same order, same draws


def test_max_documents_caps_each_pass(tiny, tmp_path, corpus):
    lm, _ = tiny("llama")
    cfg = _cfg(tmp_path / "m", corpus, max_documents=2, n_prefixes=40, buffer_tokens=300)
    ds, _ = load_prefixes(build_prefixes(lm, cfg, progress=False))
    first = [d.id for d in itertools.islice(documents(corpus), 2)]
    assert set(ds["doc_id"]) == set(first) and len(ds) == 40  # many passes over two documents, no repeats
    assert len(set(zip(ds["doc_id"], ds["offset"], map(len, ds["prefix_ids"])))) == 40


def test_memory_does_not_grow_with_the_number_of_prefixes(tiny, tmp_path, corpus, monkeypatch):
    """The build keeps counts, not rows: the dataset is streamed from the labelled shards into one Arrow file.

    Two heaps, both measured at 200 and 800 prefixes (shards of 100). Python's (tracemalloc): the old
    builder held every kept row as Python lists until the end, ~2 KB a row here (+1.2 MB from 200 to
    800); what remains per prefix is the `seen` key of each candidate (~60 bytes). Bound: 0.5 KB per
    extra prefix. Arrow's (a proxy of its memory pool, which tracemalloc does not see): assembling
    one table from every shard peaks with the dataset (~0.5 KB a row here, three copies while
    concatenating and casting); streaming holds one shard. Bound: the peak grows < 100 KB. (`datasets`
    saves in batches of up to 1,000 rows, more than these datasets: batches of 100 here, as at scale.)
    """
    import gc
    import tracemalloc

    import datasets
    import pyarrow as pa

    monkeypatch.setattr(datasets.config, "DEFAULT_MAX_BATCH_SIZE", 100)

    lm, _ = tiny("llama")

    def peak(n: int) -> tuple[int, int]:
        cfg = _cfg(tmp_path / f"p{n}", corpus, n_prefixes=n, min_len=24, max_len=40, batch_size=32, buffer_tokens=2000,
                   shard_size=100)
        gc.collect()
        default = pa.default_memory_pool()
        arrow = pa.proxy_memory_pool(default)
        pa.set_memory_pool(arrow)
        tracemalloc.start()
        try:
            out = build_prefixes(lm, cfg, progress=False)
            return tracemalloc.get_traced_memory()[1], arrow.max_memory()
        finally:
            tracemalloc.stop()
            pa.set_memory_pool(default)
            assert len(load_prefixes(out)[0]) == n

    peak(20)  # the first build imports and caches what every build uses
    (small, arrow_small), (large, arrow_large) = peak(200), peak(800)
    assert large - small < 300 * 1024, f"Python's peak grew by {(large - small) / 1024:.0f} KB for 600 more prefixes"
    assert arrow_large - arrow_small < 100 * 1024, (
        f"Arrow's peak grew from {arrow_small / 1024:.0f} to {arrow_large / 1024:.0f} KB for 600 more prefixes")


# --------------------------------------------------------------------------- the counts


def test_counts_separate_dropped_from_unused(tiny, tmp_path, corpus, monkeypatch):
    """A fake model that is right exactly on even-length prefixes: every count can be checked by hand."""
    lm, _ = tiny("llama")
    cfg = _cfg(tmp_path / "f", corpus, n_prefixes=20, filter_correct=True, shard_size=16)
    stream = list(itertools.islice(P._candidates(cfg, lm.tokenizer), 400))
    nxt = {tuple(c[2]): c[3] for c in stream}

    def fake_greedy(lm, prefixes, n, batch_size=64, progress=None):
        rows = [nxt[tuple(p)][:n] if len(p) % 2 == 0 else [t + 1 for t in nxt[tuple(p)][:n]] for p in prefixes]
        if progress is not None:
            progress(len(rows))
        return torch.tensor(rows)

    monkeypatch.setattr(futurelens.tracing, "greedy", fake_greedy)
    ds, meta = load_prefixes(build_prefixes(lm, cfg, progress=False))
    labelled = stream[: meta["n_candidates"]]
    passed = [c for c in labelled if len(c[2]) % 2 == 0]
    assert meta["n_kept"] == len(ds) == 20 and all(len(p) % 2 == 0 for p in ds["prefix_ids"])
    assert meta["n_dropped"] == len(labelled) - len(passed) > 0
    assert meta["n_unused"] == len(passed) - 20 >= 0
    assert meta["n_candidates"] == meta["n_kept"] + meta["n_dropped"] + meta["n_unused"]
    assert ds["prefix_ids"] == [c[2] for c in passed[:20]]  # the first passing candidates, in stream order


# --------------------------------------------------------------------------- resumption


class _Bars:
    """Records every tqdm bar the builder opens: its total, start and end."""

    def __init__(self, monkeypatch):
        import tqdm.auto

        self.bars = []
        record = self.bars

        class Bar(tqdm.auto.tqdm):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                record.append({"total": self.total, "initial": self.n, "postfix": []})

            def set_postfix_str(self, s="", refresh=True):
                record[-1]["postfix"].append(s)
                super().set_postfix_str(s, refresh)

            def close(self):
                record[-1]["final"] = self.n
                super().close()

        monkeypatch.setattr(tqdm.auto, "tqdm", Bar)


def test_ctrl_c_keeps_the_shards_and_the_resume_is_bit_identical(tiny, tmp_path, corpus, monkeypatch):
    lm, _ = tiny("llama")
    whole = build_prefixes(lm, _cfg(tmp_path / "whole", corpus, n_prefixes=40), progress=False)

    rows = []  # candidates labelled (greedy runs once per group of equal length)
    real = futurelens.tracing.greedy

    def interrupted_greedy(*a, **kw):
        if sum(rows) >= 19:  # some groups into the third shard of 8
            raise KeyboardInterrupt
        rows.append(len(a[1]))
        return real(*a, **kw)

    monkeypatch.setattr(futurelens.tracing, "greedy", interrupted_greedy)
    bars = _Bars(monkeypatch)
    out = tmp_path / "resumed"
    with pytest.raises(P.Interrupted, match=r"Kept 2 labelled shard\(s\) \(16 candidates\) in .*resumed.partial; run the same command again"):
        build_prefixes(lm, _cfg(out, corpus, n_prefixes=40), progress=True)
    assert not out.exists() and len(list(partial_dir(out).glob("shard-*.parquet"))) == 2
    assert "Kept 2 labelled shard(s)" in P.resume_note(out)
    labelled = sum(rows)

    rows.clear()
    monkeypatch.setattr(futurelens.tracing, "greedy", lambda *a, **kw: rows.append(len(a[1])) or real(*a, **kw))
    with pytest.raises(fl.FutureLensError, match="other settings .*n_prefixes.* differ"):
        build_prefixes(lm, _cfg(out, corpus, n_prefixes=41), progress=False)
    build_prefixes(lm, _cfg(out, corpus, n_prefixes=40), progress=True)
    assert sum(rows) == 24, "only the three missing shards are labelled again"
    assert _same_but_out(out, whole)
    first, second = bars.bars
    assert first["total"] == second["total"] == 40  # a stable total across the resume
    # Within a shard the kept count moves as each group of equal length is labelled (no filter: all are kept).
    assert first["initial"] == 0 and first["final"] == labelled > 16
    assert first["postfix"][-1] == f"{labelled} candidates"
    assert second["initial"] == 16 and second["final"] == 40
    assert second["postfix"][-1] == "40 candidates"
    assert not partial_dir(out).exists()


def test_corrupt_or_foreign_shards_are_not_trusted(tiny, tmp_path, corpus, monkeypatch):
    lm, _ = tiny("llama")
    cfg = _cfg(tmp_path / "x", corpus, n_prefixes=16)
    whole = _files(build_prefixes(lm, cfg, progress=False))
    work = partial_dir(cfg.out)
    rows = []
    real = futurelens.tracing.greedy

    def stop_after_two(*a, **kw):
        if sum(rows) >= 16:
            raise KeyboardInterrupt
        rows.append(len(a[1]))
        return real(*a, **kw)

    monkeypatch.setattr(futurelens.tracing, "greedy", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_prefixes(lm, _cfg(tmp_path / "x2", corpus, n_prefixes=40), progress=False)
    # A damaged shard is labelled again; one with other candidates (another corpus) is refused.
    shards = sorted(partial_dir(tmp_path / "x2").glob("shard-*.parquet"))
    work.mkdir()
    (work / BUILD_FILE).write_text(json.dumps(labels.settings(lm, cfg)))
    (work / shards[0].name).write_bytes(shards[0].read_bytes()[:100])
    monkeypatch.setattr(futurelens.tracing, "greedy", real)
    assert _files(build_prefixes(lm, cfg, progress=False)) == whole
    work.mkdir()
    (work / BUILD_FILE).write_text(json.dumps(labels.settings(lm, cfg)))
    (work / shards[0].name).write_bytes(shards[1].read_bytes())
    with pytest.raises(fl.FutureLensError, match="other candidates than this build draws: the corpus has changed"):
        build_prefixes(lm, cfg, progress=False)


def _data_cmd(model_dir, corpus, out):
    code = "from futurelens.cli import main; main()"
    return [sys.executable, "-c", code, "data", "--model", str(model_dir), "--source", corpus, "--out", out,
            "--n-prefixes", "96", "--min-len", "4", "--max-len", "12", "--n-max", "2", "--no-filter-correct",
            "--batch-size", "4", "--shard-size", "8", "--buffer-tokens", "600", "--test-fraction", "0.3"]


def test_killed_build_resumes_to_a_bit_identical_dataset(tiny, tokenizer, tmp_path, corpus, monkeypatch):
    """SIGKILL at a random moment after the first shard, then a re-run: the same bytes as an uninterrupted build."""
    _, model = tiny("llama")
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (tmp_path / "whole").mkdir()
    (tmp_path / "killed").mkdir()
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(_data_cmd(model_dir, corpus, "data"), cwd=tmp_path / "killed", env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tmp_path / "killed" / "data.partial"
    deadline = time.time() + 120
    while not list(work.glob("shard-*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.25))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(work.glob("shard-*.parquet")))
    # Mid-labelling, or (on a fast machine) after the last shard, while the dataset is assembled and saved.
    assert 0 < done <= 12, f"the kill should land mid-build ({done} of 12 shards)"
    assert not (tmp_path / "killed" / "data").exists(), "the build finished before the kill"

    # The uninterrupted build and the resume run in this process, on the same saved weights.
    lm = fl.load_model(str(model_dir))
    args = dict(source=corpus, out="data", n_prefixes=96, batch_size=4, shard_size=8, buffer_tokens=600)
    rows = {"whole": 0, "killed": 0}  # candidates labelled by each run
    real = futurelens.tracing.greedy
    cwd = os.getcwd()
    try:
        for folder in ("whole", "killed"):
            monkeypatch.setattr(futurelens.tracing, "greedy", lambda *a, folder=folder, **kw: rows.__setitem__(
                folder, rows[folder] + len(a[1])) or real(*a, **kw))
            os.chdir(tmp_path / folder)
            cfg = DataConfig(model=str(model_dir), min_len=4, max_len=12, n_max=2, filter_correct=False,
                             test_fraction=0.3, **args)
            build_prefixes(lm, cfg, progress=False)
    finally:
        os.chdir(cwd)
    assert rows == {"whole": 96, "killed": 8 * (12 - done)}, "the re-run labels only the shards the kill lost"
    whole, resumed = _files(tmp_path / "whole" / "data"), _files(tmp_path / "killed" / "data")
    assert whole == resumed and len(load_prefixes(tmp_path / "whole" / "data")[0]) == 96
    assert not work.exists()


def test_remote_labels_a_shard_in_one_request_and_matches_local(tiny, tmp_path, corpus, monkeypatch):
    lm, _ = tiny("gptj")
    local = build_prefixes(lm, _cfg(tmp_path / "local", corpus, n_prefixes=16), progress=False)
    calls = []
    real = futurelens.tracing.greedy
    monkeypatch.setattr(futurelens.tracing, "greedy", lambda *a, **kw: calls.append(len(a[1])) or real(*a, **kw))
    lm.remote = "local"  # NDIF's serialisation path, in this process
    remote = build_prefixes(lm, _cfg(tmp_path / "remote", corpus, n_prefixes=16), progress=True)
    assert calls == [8, 8]  # one request per shard, not one per length group
    assert _same_but_out(remote, local)
