"""The bounded vocabulary probe against the fit it replaced: precision on the embedded default, peak memory at
Llama-3.1-70B's width and vocabulary, side by side in one run.

*Before* is the previous `VocabProbe.fit`, kept here verbatim in substance: one row set shared by every N (the
union of the train targets), `linear.cross_entropy_grad_` writing a whole gradient, torch's fused AdamW.
*After* is `VocabProbe.fit` (`futurelens.methods.vocab`): rows per N, AdamW chunk by chunk with no gradient
buffer, a ``memory_mb`` budget.

1. **Precision, embedded default** (SmolLM2-135M, d 576, V 49,152): pydoc prefixes of 8..96 tokens with their
   real next 4 tokens as targets, 1,167 train / 247 test (the paper_test split sizes), layers 2, 14, 26 cached;
   both fits with the same settings (3 epochs, lr 1e-3, batch 64) and seed, precision@1 on test per layer and N
   with its bootstrap 95% interval. Goal: every |after - before| within the interval's half-width.
2. **Peak memory, d = 8192, V = 128,256, 4 heads**: random float32 states of 2,048 train rows, each child process
   one fit (1 epoch, batch 64), its peak RSS over its RSS before the fit (``VmHWM`` after ``clear_refs``) against
   the formula (`vocab_probe_fit_bytes` for after, the joint probe's 16 bytes a parameter for before). Targets
   uniform over the vocabulary (every row a new id: the worst case per row), and, for the budget, Zipf targets
   with a 64 MB budget that binds. Goal: after's peak within ±25% of its formula, below before's, and under the
   budget's formula when it binds; `vocab_probe_peak_bytes` for the full 100k-prefix case is reported beside.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .common import result, status_mb

NAME = "vocab_probe"
ROOT = Path(__file__).resolve().parents[1]
D70, V70, HEADS = 8192, 128_256, 4


# --------------------------------------------------------------------------- the fit it replaced


def before_fit(cache, layer: int, vocab: int, epochs=3, lr=1e-3, batch_size=64, weight_decay=1e-5, seed=0) -> dict:
    """The previous `VocabProbe.fit`: one compact row set for every N, a whole gradient, torch's fused AdamW.
    Returns its tensors in the shared-row layout `vocab_logits` reads."""
    from futurelens.methods.linear import cross_entropy_grad_

    torch.manual_seed(seed)
    heads = cache.n_max + 1
    tokens = torch.unique(torch.cat([b.target for b in cache.batches(None, "train", batch_size=4096)]))
    width, shared = len(tokens) + 1, vocab - len(tokens)
    index = torch.full((vocab,), len(tokens), dtype=torch.long)
    index[tokens] = torch.arange(len(tokens))
    probe = torch.nn.Linear(cache.d_model, heads * width)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    probe.weight.grad, probe.bias.grad = torch.zeros_like(probe.weight), torch.zeros_like(probe.bias)
    scratch = torch.empty(batch_size, heads * width)
    for epoch in range(epochs):
        for batch in cache.batches(layer, "train", batch_size=batch_size, shuffle=True, seed=seed + epoch):
            cross_entropy_grad_(probe, batch.states.float(), index[batch.target], scratch, shared=shared)
            opt.step()
    return {"weight": probe.weight.detach(), "bias": probe.bias.detach(), "tokens": tokens}


def before_fit_bytes(d: int, rows: int, heads: int, batch: int) -> int:
    """Its peak: weights, gradient and two moments over ``heads x rows`` (16 bytes a parameter) and the logits."""
    return 16 * heads * rows * (d + 1) + 4 * batch * heads * rows


# --------------------------------------------------------------------------- an in-memory cache


class ArrayCache:
    """The part of `StateCache` a probe fit reads (``n_max``, ``d_model``, ``batches``), over tensors in memory,
    shuffled like the real one (seeded shard order, then rows within a shard)."""

    def __init__(self, states: torch.Tensor, target: torch.Tensor, shard: int = 512):
        self.states, self.target, self.shard = states, target, shard
        self.n_max, self.d_model = target.shape[1] - 1, states.shape[1]

    def batches(self, layer, split="train", batch_size=64, shuffle=False, seed=0, final=False):
        from futurelens.data.states import StateBatch

        n = len(self.target)
        g = torch.Generator().manual_seed(seed)
        starts = list(range(0, n, self.shard))
        order = torch.randperm(len(starts), generator=g).tolist() if shuffle else range(len(starts))
        rows = torch.cat([torch.arange(starts[k], min(starts[k] + self.shard, n))[
            torch.randperm(min(self.shard, n - starts[k]), generator=g) if shuffle else slice(None)] for k in order])
        for a in range(0, n, batch_size):
            r = rows[a : a + batch_size]
            yield StateBatch(states=self.states[r] if layer is not None else torch.empty(len(r), 0),
                             target=self.target[r], last_token=self.target[r, 0], row=r)


# --------------------------------------------------------------------------- 1. precision on the embedded default


def _precision(lm, quick: bool) -> dict:
    from futurelens.data.states import CacheConfig, StateCache, build_cache
    from futurelens.methods.linear import VocabProbe
    from futurelens.methods.vocab import vocab_logits
    from futurelens.metrics import Tally

    from .common import prefix_table, pydoc_prefixes

    n_train, n_test = (300, 100) if quick else (1167, 247)
    layers = [14] if quick else [2, 14, 26]
    out: dict[str, Any] = {"n_train": n_train, "n_test": n_test, "layers": {}}
    with tempfile.TemporaryDirectory(prefix="fl-bench-vocab-") as tmp:
        pairs = pydoc_prefixes(lm.tokenizer, n_train + n_test, 8, 96, ahead=4, seed=11)
        data = prefix_table(lm, pairs, n_train, Path(tmp) / "data", 3)
        cache = StateCache(build_cache(lm, CacheConfig(data=str(data), out=str(Path(tmp) / "cache"), layers=layers),
                                       progress=False))
        for layer in layers:
            test = cache.load(layer, "test")
            after = VocabProbe(lm.vocab_size).fit(cache, layer)
            sides = {"before": before_fit(cache, layer, lm.vocab_size), "after": after.tensors(layer)}
            row = {}
            for side, tensors in sides.items():
                logits = vocab_logits(tensors, test.states, lm.vocab_size)  # [b, 4, V]
                row[side] = []
                for n in range(4):
                    tally = Tally().add(logits[:, n].topk(1).indices, test.target[:, n])
                    row[side].append({"p1": tally.result()["precision@1"],
                                      "ci": list(tally.intervals()["precision@1"])})
            row["rows"] = {"before": HEADS * (len(sides["before"]["tokens"]) + 1), "after": int(after.rows[layer].sum())}
            out["layers"][str(layer)] = row
    return out


# --------------------------------------------------------------------------- 2. peak memory at 70B shape


def _child(kind: str, targets: str, n: int, memory_mb: float) -> None:
    """One fit at d = 8192, V = 128,256 in this process; prints its peak over its starting RSS, as JSON."""
    from futurelens.methods.linear import VocabProbe
    from futurelens.methods.vocab import vocab_probe_fit_bytes

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    states = torch.randn(n, D70, generator=g)
    if targets == "uniform":  # every row a new id (nearly): as many rows per N as train rows
        target = torch.randint(V70, (n, HEADS), generator=g)
    else:
        weights = 1 / torch.arange(1, V70 + 1).double()
        target = torch.multinomial(weights, n * HEADS, replacement=True, generator=g).view(n, HEADS)
    cache = ArrayCache(states, target)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    start = status_mb("VmRSS")
    import time

    t0 = time.perf_counter()
    if kind == "before":
        tensors = before_fit(cache, 0, V70, epochs=1)
        rows = len(tensors["tokens"]) + 1
        formula = before_fit_bytes(D70, rows, HEADS, 64)
        rows = [rows] * HEADS
    else:
        probe = VocabProbe(V70, epochs=1, memory_mb=memory_mb).fit(cache, 0)
        rows = probe.rows[0].tolist()
        formula = vocab_probe_fit_bytes(D70, rows, 64) + 8 * HEADS * V70
    seconds = time.perf_counter() - t0
    print(json.dumps({"kind": kind, "targets": targets, "memory_mb": memory_mb, "rows": rows,
                      "peak_mb": round(status_mb("VmHWM") - start, 1), "formula_mb": round(formula / 2**20, 1),
                      "seconds": round(seconds, 1)}))


def _memory(quick: bool) -> list[dict]:
    n = 512 if quick else 2048
    runs = [("before", "uniform", n, 0), ("after", "uniform", n, 4096), ("after", "zipf", n, 64)]
    out = []
    for kind, targets, rows, budget in runs:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.vocab_probe", "--child", kind, targets, str(rows),
                               str(budget)], cwd=ROOT, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind}/{targets} child failed: {proc.stderr[-2000:]}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def run(quick: bool) -> dict[str, Any]:
    """Precision side by side on the default model; peak memory side by side at 70B shape (module docstring)."""
    from futurelens.methods.vocab import full_probe_fit_bytes, vocab_probe_peak_bytes

    from .common import default_lm

    memory = _memory(quick)
    precision = _precision(default_lm(), quick)
    within = all(abs(r["after"][n]["p1"] - r["before"][n]["p1"]) <= (r["before"][n]["ci"][1] - r["before"][n]["ci"][0]) / 2
                 for r in precision["layers"].values() for n in range(4))
    max_diff = max(abs(r["after"][n]["p1"] - r["before"][n]["p1"]) for r in precision["layers"].values() for n in range(4))
    before, after, budget = memory
    fits = 0.75 <= after["peak_mb"] / after["formula_mb"] <= 1.25 and 0.75 <= budget["peak_mb"] / budget["formula_mb"] <= 1.25
    bounded = budget["peak_mb"] <= 1.25 * budget["formula_mb"] and after["peak_mb"] < before["peak_mb"]
    worst = {"after_100k_prefixes_gb": round(vocab_probe_peak_bytes(D70, V70, HEADS, 64, n_train=100_000) / 2**30, 2),
             "after_any_gb": round(vocab_probe_peak_bytes(D70, V70, HEADS, 64) / 2**30, 2),
             "before_full_vocab_gb": round(full_probe_fit_bytes(D70, V70, HEADS, 64) / 2**30, 1)}
    summary = (f"precision@1 max |after - before| {max_diff:.4f} over {len(precision['layers'])} layers x 4 N "
               f"({'within' if within else 'NOT within'} the 95% intervals); at d 8192, V 128,256: peak "
               f"{before['peak_mb']:.0f} MB before vs {after['peak_mb']:.0f} MB after (formula {after['formula_mb']:.0f}),"
               f" {budget['peak_mb']:.0f} MB with a 64 MB budget that binds (formula {budget['formula_mb']:.0f}); "
               f"worst case at 100k prefixes {worst['after_100k_prefixes_gb']} GB vs "
               f"{worst['before_full_vocab_gb']} GB for the full joint probe")
    return result(NAME, "precision@1 unchanged within its 95% interval; 70B-shape peak within ±25% of the formula, "
                  "bounded by the budget, below the old fit's", within and fits and bounded, summary,
                  {"precision": precision, "memory": memory, "worst_case": worst}, value=max_diff)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    else:
        from .common import cli

        cli(run)
