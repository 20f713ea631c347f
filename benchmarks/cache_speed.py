"""Cache throughput: `futurelens.cache_ahead` over all layers vs a plain HF forward and vs a per-layer loop.

Three questions, all on the same right-padded, length-sorted batches of pydoc prefixes
(each followed by the 3 continuation tokens `futurelens cache` reads the last layer over):

1. What does reading every layer through nnsight cost over a plain forward?
   ``cache_ahead(lm, prefixes, continuations, layers=None)`` (what `futurelens cache` runs
   per batch) against ``model(input_ids, attention_mask)`` on an untouched HF copy of the
   same weights, and against the same forward with ``output_hidden_states=True`` plus the
   gather of the last-token states. Goal: cache throughput >= 0.9 x the plain forward's,
   on the default model and on small GPT-J and Mamba models. `cache_ahead` stops after
   the last block, so it skips the vocabulary projection that the plain forward pays
   for (most of the small models' arithmetic); the HF body alone (``model.base_model``:
   the blocks and the final norm, no head) is timed too, so the report also shows
   nnsight's own overhead against a like-for-like forward (``ratio_vs_hf_body``).
2. What does batching all layers into one pass buy over the public reference code's
   pattern: for each sample, for each layer, a separate batch-1 forward with a hook that
   grabs that layer's last-token state? Goal: >= 10x. In quick mode only a few layers
   are looped and the time is scaled to all layers: every such forward runs the whole
   model whatever layer is hooked, so the per-layer cost does not depend on the layer.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .common import default_lm, interleaved, length_sorted_batches, paired_ratio, plain_default, pydoc_prefixes, result, stats
from .models import tiny

NAME = "cache_speed"
AHEAD = 3  # continuation tokens per prefix: `futurelens data`'s default n_max


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"n_prefixes": 16, "min_len": 8, "max_len": 32, "batch_size": 8, "repeats": 3, "ref_layers": 2, "ref_rounds": 2}
    return {"n_prefixes": 64, "min_len": 8, "max_len": 96, "batch_size": 32, "repeats": 5, "ref_layers": None, "ref_rounds": 1}


def _sides(lm, plain, batches: list[list[tuple[list[int], list[int]]]]) -> dict[str, Callable[[], Any]]:
    """The three whole-dataset passes to compare, each a closure over the same batches."""
    import futurelens as fl
    from futurelens.server.jobs import pad_rows
    from futurelens.server.traces import length_mask

    padded = []
    for batch in batches:
        ids, lengths = pad_rows([p + c for p, c in batch], lm.pad_id)
        padded.append((ids.to(lm.device), length_mask(lengths, ids.shape[1]).to(lm.device), (lengths - 1).to(lm.device)))

    def futurelens_cache() -> None:
        with torch.no_grad():
            for batch in batches:
                fl.cache_ahead(lm, [p for p, _ in batch], [c for _, c in batch], None)

    def hf_forward() -> None:
        with torch.no_grad():
            for ids, mask, _ in padded:
                plain(input_ids=ids, attention_mask=mask)

    def hf_body() -> None:
        with torch.no_grad():
            for ids, mask, _ in padded:
                plain.base_model(input_ids=ids, attention_mask=mask)

    def hf_hidden_states() -> None:
        with torch.no_grad():
            for ids, mask, last in padded:
                hidden = plain(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
                rows = torch.arange(len(last), device=last.device)
                torch.stack([h[rows, last] for h in hidden])  # the same last-token states cache_ahead returns

    return {"futurelens": futurelens_cache, "hf_forward": hf_forward, "hf_hidden_states": hf_hidden_states, "hf_body": hf_body}


def _reference_loop(lm, plain, samples: list[tuple[list[int], list[int]]], layers: list[int]) -> Callable[[], Any]:
    """The public reference code's pattern: per sample, per layer, one batch-1 forward with a hook."""
    embed = plain.get_input_embeddings()
    blocks = plain.get_submodule(lm.arch.blocks)
    device = lm.device

    def run() -> None:
        grabbed = []
        with torch.no_grad():
            for prefix, cont in samples:
                ids = torch.tensor([prefix + cont], device=device)
                at = len(prefix) - 1
                for layer in layers:
                    module = embed if layer == 0 else blocks[layer - 1]

                    def hook(_m, _i, out, at=at):
                        grabbed.append((out[0] if isinstance(out, tuple) else out)[0, at].clone())

                    handle = module.register_forward_hook(hook)
                    try:
                        plain(input_ids=ids)
                    finally:
                        handle.remove()

    return run


def _hf_ratio(name: str, lm, plain, batches, n_tokens: int, repeats: int) -> dict[str, Any]:
    """Time the three passes interleaved; ratios are plain-forward time / cache time (= throughput ratio)."""
    times = interleaved(_sides(lm, plain, batches), repeats=repeats, warmup=1)
    fl_t = times["futurelens"]
    return {
        "model": name,
        "tokens": n_tokens,
        "tokens_per_s": {side: round(n_tokens / stats(t)["median_s"], 1) for side, t in times.items()},
        "ratio_vs_hf_forward": round(paired_ratio(times["hf_forward"], fl_t), 4),
        "ratio_vs_hf_hidden_states": round(paired_ratio(times["hf_hidden_states"], fl_t), 4),
        "ratio_vs_hf_body": round(paired_ratio(times["hf_body"], fl_t), 4),
        "times": {side: stats(t) for side, t in times.items()},
    }


def run(quick: bool) -> dict[str, Any]:
    """Measure cache throughput; see the module docstring for the goals."""
    s = _settings(quick)
    lm = default_lm()
    samples = [(p, c[:AHEAD]) for p, c in pydoc_prefixes(lm.tokenizer, s["n_prefixes"], s["min_len"], s["max_len"])]
    batches = length_sorted_batches(samples, s["batch_size"], key=lambda pc: len(pc[0]))
    n_tokens = sum(len(p) + len(c) for p, c in samples)

    per_model = [_hf_ratio("SmolLM2-135M (default)", lm, plain_default(), batches, n_tokens, s["repeats"])]
    for kind in ("gptj", "mamba"):
        tiny_lm, tiny_plain = tiny(kind)
        per_model.append(_hf_ratio(f"{kind} d256x4 (random)", tiny_lm, tiny_plain, batches, n_tokens, s["repeats"]))

    # The reference loop, interleaved with the cache pass it is compared to.
    all_layers = list(range(lm.n_layers + 1))
    if s["ref_layers"]:
        step = len(all_layers) / s["ref_layers"]
        looped = [all_layers[int(i * step)] for i in range(s["ref_layers"])]
    else:
        looped = all_layers
    scale = len(all_layers) / len(looped)
    cache_pass = _sides(lm, plain_default(), batches)["futurelens"]
    times = interleaved({"futurelens": cache_pass, "reference": _reference_loop(lm, plain_default(), samples, looped)},
                        repeats=s["ref_rounds"], warmup=0)
    ref_scaled = [t * scale for t in times["reference"]]
    ref_ratio = paired_ratio(ref_scaled, times["futurelens"])

    hf_ratios = {m["model"]: m["ratio_vs_hf_forward"] for m in per_model}
    passed = all(r >= 0.9 for r in hf_ratios.values()) and ref_ratio >= 10
    default = per_model[0]
    summary = (
        f"default model: cache {default['tokens_per_s']['futurelens']:.0f} tok/s = "
        f"{default['ratio_vs_hf_forward']:.2f}x plain HF forward ({default['ratio_vs_hf_hidden_states']:.2f}x with "
        f"hidden states, {default['ratio_vs_hf_body']:.2f}x the headless body); GPT-J {hf_ratios[per_model[1]['model']]:.2f}x, Mamba {hf_ratios[per_model[2]['model']]:.2f}x; "
        f"{ref_ratio:.0f}x faster than the per-sample, per-layer loop"
    )
    details = {
        "settings": s,
        "prefixes": f"{len(samples)} pydoc prefixes of {s['min_len']}..{s['max_len']} tokens + {AHEAD} continuation "
        f"tokens, right-padded, length-sorted, batch {s['batch_size']}; {n_tokens} real tokens per pass",
        "hf_ratio": per_model,
        "reference_loop": {
            "layers_looped": looped,
            "scaled_to_layers": len(all_layers),
            "note": ("quick mode: only the layers above were looped, the time scaled by "
                     f"{scale:.2f} to all {len(all_layers)} layers") if scale != 1 else "all layers looped",
            "ratio": round(ref_ratio, 2),
            "futurelens": stats(times["futurelens"]),
            "reference_scaled": stats(ref_scaled),
        },
    }
    return result(NAME, "cache throughput >= 0.9x plain HF forward (default, GPT-J, Mamba); >= 10x the per-layer loop",
                  passed, summary, details, ratio=default["ratio_vs_hf_forward"])


if __name__ == "__main__":
    from .common import cli

    cli(run)
