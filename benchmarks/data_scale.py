"""Peak memory of the dataset builder vs the corpus size: it should stay flat (documents stream through a bounded buffer).

`build_prefixes` runs with its default streaming settings (a 1M-token shuffle buffer, shards of
4,096 candidates) on two JSONL corpora, 1x and 10x, each in a fresh subprocess so that each peak
is its own. The corpora are copies of Python's documentation (`pydoc`, offline) under distinct
document ids: 16 copies (1,264 documents, ~1.8M tokens: larger than the buffer, so the builder
streams and makes more than one pass) and 160 copies (12,640 documents, ~18M tokens). Both
builds cut the same number of prefixes, so the labelling work is the same and only the corpus
differs. The model is a tiny random Llama (d 64, 2 blocks) on the default tokenizer: labelling
is not what is measured, and the correctness filter is off (a random model is never right).

The child loads the tokenizer and the model, then resets the kernel's high-water mark
(``echo 5 > /proc/self/clear_refs``) and reports the build's own peak (``VmHWM``), its RSS
before, the wall time and how many documents it read. Goal: the build's peak RSS grows < 10%
from the 1x to the 10x corpus.

For contrast, a second child per corpus measures what the previous builder did first: tokenize
the whole corpus into memory (one list of ids per document) before sampling. Its peak grows
with the corpus; the streaming builder's does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import result, status_mb

NAME = "data_scale"
ROOT = Path(__file__).resolve().parents[1]
N_MAX = 3


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:  # VmHWM back to the current RSS
        fh.write("5")


def _corpus(folder: Path, copies: int) -> tuple[Path, int]:
    """``copies`` copies of every pydoc topic as JSONL, each under its own id; returns the path and its bytes."""
    from futurelens.data.corpus import documents

    topics = list(documents("pydoc"))
    path = folder / f"corpus-{copies}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for c in range(copies):
            for doc in topics:
                fh.write(json.dumps({"id": f"copy{c}:{doc.id}", "text": doc.text}) + "\n")
    return path, path.stat().st_size


def _tokenizer():
    import transformers

    from futurelens.embedded import ensure_default_model

    return transformers.AutoTokenizer.from_pretrained(ensure_default_model())


def _child_build(corpus: str, out: str, settings: dict) -> None:
    """Build one dataset from ``corpus`` with the streaming builder; print its figures as one JSON line."""
    import torch
    import transformers

    import futurelens as fl
    from futurelens.artifacts.dataset import META_FILE
    from futurelens.data import prefixes

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=len(tokenizer))
    lm = fl.load_model(transformers.AutoModelForCausalLM.from_config(config).eval(), tokenizer=tokenizer)
    read = [0]
    real = prefixes.documents

    def counted(*a, **kw):  # how many documents the build reads, over all its passes
        for doc in real(*a, **kw):
            read[0] += 1
            yield doc

    prefixes.documents = counted
    _reset_peak()
    before = status_mb("VmRSS")
    start = time.perf_counter()
    cfg = prefixes.DataConfig(model="tiny-llama", source=corpus, out=out, **settings)
    path = prefixes.build_prefixes(lm, cfg, progress=False)
    seconds = time.perf_counter() - start
    meta = json.loads((path / META_FILE).read_text())
    print(json.dumps({
        "rss_before_build_mb": round(before, 1),
        "build_peak_mb": round(status_mb("VmHWM"), 1),
        "build_s": round(seconds, 1),
        "documents_read": read[0],
        "n_kept": meta["n_kept"],
        "n_candidates": meta["n_candidates"],
    }))


def _child_whole(corpus: str) -> None:
    """What the previous builder did before sampling: tokenize the whole corpus into memory. Prints its figures."""
    from futurelens.data.corpus import documents

    tokenizer = _tokenizer()
    _reset_peak()
    before = status_mb("VmRSS")
    docs = [(d.id, tokenizer(d.text, add_special_tokens=False)["input_ids"]) for d in documents(corpus)]
    print(json.dumps({
        "rss_before_mb": round(before, 1),
        "peak_mb": round(status_mb("VmHWM"), 1),
        "documents": len(docs),
        "tokens": sum(len(t) for _, t in docs),
    }))


def _run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.data_scale", *args], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool) -> dict[str, Any]:
    """Build datasets from a 1x and a 10x corpus in fresh subprocesses and compare their peaks; see the module docstring."""
    copies = (2, 20) if quick else (16, 160)
    # Quick mode shrinks the buffer with the corpus so that the builder still streams (the 1x corpus exceeds it).
    settings = dict(n_prefixes=400 if quick else 2000, min_len=8, max_len=32, n_max=N_MAX, filter_correct=False,
                    batch_size=32, **({"buffer_tokens": 100_000} if quick else {}))
    build, whole, corpus_bytes = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="fl-bench-data-") as tmp:
        for c in copies:
            path, corpus_bytes[c] = _corpus(Path(tmp), c)
            build[c] = _run_child("--build", str(path), str(Path(tmp) / f"data-{c}"), json.dumps(settings))
            whole[c] = _run_child("--whole", str(path))
            path.unlink()
    small, large = copies
    growth = build[large]["build_peak_mb"] / build[small]["build_peak_mb"] - 1
    whole_growth = whole[large]["peak_mb"] / whole[small]["peak_mb"] - 1
    summary = (f"build peak {build[small]['build_peak_mb']:.0f} MB on the 1x corpus ({corpus_bytes[small] / 2**20:.0f} MB, "
               f"{whole[small]['tokens'] / 1e6:.1f}M tokens), {build[large]['build_peak_mb']:.0f} MB on 10x "
               f"({corpus_bytes[large] / 2**20:.0f} MB) ({growth:+.1%}); tokenizing the whole corpus first, as the "
               f"previous builder did, peaks at {whole[small]['peak_mb']:.0f} and {whole[large]['peak_mb']:.0f} MB "
               f"({whole_growth:+.0%})")
    details = {
        "settings": {**settings, "buffer_tokens": settings.get("buffer_tokens", 1_000_000), "shard_size": 4096,
                     "copies_of_pydoc": list(copies), "model": "random Llama, d 64, 2 blocks, default tokenizer"},
        "corpus_bytes": {f"{c}_copies": corpus_bytes[c] for c in copies},
        "streaming_build": {f"{c}_copies": build[c] for c in copies},
        "whole_corpus_tokenized": {f"{c}_copies": whole[c] for c in copies},
        "peak_growth": round(growth, 4),
        "peak_growth_mb": round(build[large]["build_peak_mb"] - build[small]["build_peak_mb"], 1),
        "whole_corpus_peak_growth": round(whole_growth, 4),
        "note": "peaks are VmHWM after resetting it once the model (or tokenizer) was loaded; documents_read counts "
                "every pass over the source",
    }
    return result(NAME, "dataset builder peak RSS grows < 10% from a 1x to a 10x corpus", growth < 0.10, summary,
                  details, value=growth)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--build":
        _child_build(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--whole":
        _child_whole(sys.argv[2])
    else:
        from .common import cli

        cli(run)
