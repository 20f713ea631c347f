"""Evaluation of all five methods across all layers: states cached once vs recomputed per layer and method.

- cached (futurelens): one ``cache_ahead`` over all layers for the test prefixes (per
  length-sorted batch, as `futurelens cache` does), then every method's ``predict`` at
  every layer on those states.
- recomputed (the public reference code's pattern): before each method's predictions at
  a layer, the states are computed again by a full plain-HF forward with
  ``output_hidden_states=True`` on the same batches (a plain copy of the same weights).

The methods are already fitted and cheap to fit, and fitting is outside both timings:
the n-gram counted on the train prefixes, `LinearApprox` (ridge) fitted per layer,
`VocabProbe` trained 1 epoch at one layer and its map reused at every layer (its predict
cost does not depend on its weights, and one [d, 4 x vocab] probe per layer would take
~0.5 GB each), `FixedPrompt`, and `LearnedPrompt` with a random soft prompt per layer.
The train states come from a real `StateCache` (`build_cache` over a prefix table written
with `save_prefixes`, real pydoc token ids, their real next tokens as targets).

Goal: cached >= 5x faster. In quick mode a few evenly spread layers are timed and the
per-layer part of both sides is scaled to all layers (the one-off ``cache_ahead`` and the
n-gram are not scaled); the details say which.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from .common import (
    default_lm,
    device,
    interleaved,
    lap_timer,
    length_sorted_batches,
    paired_ratio,
    plain_default,
    prefix_table,
    pydoc_prefixes,
    result,
    stats,
)

NAME = "eval_speed"
N_MAX = 3
K = 10


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"n_train": 16, "n_test": 8, "timed_layers": 3, "batch_size": 32, "rounds": 2}
    return {"n_train": 32, "n_test": 16, "timed_layers": None, "batch_size": 32, "rounds": 1}


def _state_cache(lm, pairs: list[tuple[list[int], list[int]]], n_train: int, folder: Path):
    """A `StateCache` over the train rows (what the probes are fitted on); test rows stay in the table only."""
    from futurelens.data.states import CacheConfig, StateCache, build_cache

    data = prefix_table(lm, pairs, n_train, folder / "data", N_MAX)
    cfg = CacheConfig(data=str(data), out=str(folder / "cache"), splits=["train"], shard_size=256)
    return StateCache(build_cache(lm, cfg, progress=False))


def _methods(lm, cache, layers: list[int], train_pairs) -> tuple[Any, list[Any]]:
    """``(n-gram, [vocab, linear, fixed, learned])``, fitted for ``layers``."""
    from futurelens.methods.linear import LinearApprox, VocabProbe
    from futurelens.methods.ngram import NGram
    from futurelens.methods.prompts import FixedPrompt, LearnedPrompt

    ngram = NGram().fit([p + c for p, c in train_pairs], n_max=N_MAX, vocab_size=lm.vocab_size)
    middle = layers[len(layers) // 2]
    vocab = VocabProbe(lm.vocab_size, epochs=1).fit(cache, middle)
    vocab.probes = {layer: vocab.probes[middle] for layer in layers}
    vocab.tokens = {layer: vocab.tokens[middle] for layer in layers if middle in vocab.tokens}  # a compact probe's ids
    vocab.rows = {layer: vocab.rows[middle] for layer in layers if middle in vocab.rows}  # its per-N row counts
    linear = LinearApprox(lm)
    for layer in layers:
        linear.fit(cache, layer)
    g = torch.Generator().manual_seed(0)
    learned = LearnedPrompt(lm, {layer: torch.randn(10, lm.d_model, generator=g) * 0.02 for layer in layers})
    return ngram, [vocab, linear, FixedPrompt(lm), learned]


def run(quick: bool) -> dict[str, Any]:
    """Time evaluation with cached vs recomputed states, interleaved; see the module docstring."""
    import futurelens as fl
    from futurelens.data.states import StateBatch
    from futurelens.server.jobs import pad_rows
    from futurelens.server.traces import length_mask

    hf, dev = plain_default(), device()

    s = _settings(quick)
    lm = default_lm()
    pairs = pydoc_prefixes(lm.tokenizer, s["n_train"] + s["n_test"], 8, 96, ahead=N_MAX + 1, seed=2)
    train_pairs, test_pairs = pairs[: s["n_train"]], pairs[s["n_train"] :]
    all_layers = list(range(lm.n_layers + 1))
    if s["timed_layers"]:
        step = (len(all_layers) - 1) / (s["timed_layers"] - 1)
        layers = sorted({round(i * step) for i in range(s["timed_layers"])})  # evenly spread, ends included
    else:
        layers = all_layers
    scale = len(all_layers) / len(layers)

    with tempfile.TemporaryDirectory(prefix="fl-bench-eval-") as tmp:
        cache = _state_cache(lm, pairs, s["n_train"], Path(tmp))
        ngram, methods = _methods(lm, cache, layers, train_pairs)

    batches = []
    for chunk in length_sorted_batches(test_pairs, s["batch_size"], key=lambda pc: len(pc[0])):
        batches.append(([p for p, _ in chunk], torch.tensor([c for _, c in chunk])))

    def batch_of(states: torch.Tensor, target: torch.Tensor, prefixes: list[list[int]]) -> StateBatch:
        return StateBatch(states=states, target=target, last_token=torch.tensor([p[-1] for p in prefixes]),
                          row=torch.arange(len(prefixes)))

    def ngram_all() -> None:
        for prefixes, _ in batches:
            last = torch.tensor([p[-1] for p in prefixes])
            for n in range(N_MAX + 1):
                ngram.predict(last, n, K)

    parts: dict[str, float] = {}

    def cached() -> None:
        with torch.no_grad():
            t = lap_timer()
            states = [fl.cache_ahead(lm, prefixes, target[:, :N_MAX], None)[0].cpu() for prefixes, target in batches]
            parts["cache_once"] = t()
            ngram_all()
            parts["cached_ngram"] = t()
            for layer in layers:
                for (prefixes, target), st in zip(batches, states):
                    batch = batch_of(st[layer], target, prefixes)
                    for method in methods:
                        method.predict(batch, layer, K)
            parts["cached_per_layer"] = t()

    def recomputed() -> None:
        with torch.no_grad():
            t = lap_timer()
            ngram_all()
            parts["recomputed_ngram"] = t()
            for layer in layers:
                for method in methods:
                    for prefixes, target in batches:
                        # The reference code's pattern: a full forward with every hidden state, per layer sweep.
                        ids, lengths = pad_rows(prefixes, lm.pad_id)
                        out = hf(input_ids=ids.to(dev), attention_mask=length_mask(lengths, ids.shape[1]).to(dev),
                                 output_hidden_states=True)
                        states = out.hidden_states[layer][torch.arange(len(prefixes)), lengths - 1].cpu()
                        method.predict(batch_of(states, target, prefixes), layer, K)
            parts["recomputed_per_layer"] = t()

    # Untimed warm-up: the first trace, the first patched forward and the first probe matmul pay one-off costs.
    with torch.no_grad():
        prefixes, target = batches[0]
        warm_states = fl.cache_ahead(lm, prefixes, target[:, :N_MAX], None)[0].cpu()
        for method in methods:
            method.predict(batch_of(warm_states[layers[0]], target, prefixes), layers[0], K)

    # Each side records its pieces; the totals below scale only the per-layer piece.
    totals: dict[str, list[float]] = {"cached": [], "recomputed": []}
    pieces: list[dict[str, float]] = []

    def record_cached() -> None:
        cached()
        totals["cached"].append(parts["cache_once"] + parts["cached_ngram"] + scale * parts["cached_per_layer"])
        pieces.append(dict(parts))

    def record_recomputed() -> None:
        recomputed()
        totals["recomputed"].append(parts["recomputed_ngram"] + scale * parts["recomputed_per_layer"])
        pieces[-1].update(parts)

    measured = interleaved({"cached": record_cached, "recomputed": record_recomputed}, repeats=s["rounds"], warmup=0)
    ratio = paired_ratio(totals["recomputed"], totals["cached"])
    summary = (f"all 5 methods x {len(all_layers)} layers on {s['n_test']} test prefixes: cached "
               f"{stats(totals['cached'])['median_s']:.1f} s vs recomputed {stats(totals['recomputed'])['median_s']:.1f} s "
               f"= {ratio:.1f}x")
    details = {
        "settings": s,
        "methods": ["n-gram"] + [m.name for m in methods],
        "timed_layers": layers,
        "note": (f"quick mode: {len(layers)} of {len(all_layers)} layers timed; per-layer time scaled by {scale:.2f}"
                 if scale != 1 else "every layer timed"),
        "total_s": {side: stats(t) for side, t in totals.items()},
        "measured_s": {side: stats(t) for side, t in measured.items()},
        "pieces_s": [{k: round(v, 4) for k, v in p.items()} for p in pieces],
    }
    return result(NAME, "evaluation with states cached once >= 5x faster than recomputing per layer and method",
                  ratio >= 5, summary, details, ratio=ratio)


if __name__ == "__main__":
    from .common import cli

    cli(run)
