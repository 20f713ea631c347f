"""Lens speed: the batched `lens_grid` against one HF ``generate`` per cell, in one run on one machine.

The per-cell baseline is written here in plain PyTorch + transformers, in the style of the
authors' public demo: for each (layer, token) cell, ``generate(inputs_embeds=soft_prompt,
max_new_tokens=4)`` with the cell's state written over block ``layer-1``'s output at the
soft prompt's last position by a forward hook. `lens_grid` does the same patch for all
cells of all layers together, ``chunk_size`` rows per forward, running each layer's prompt
once. Both get the same random ``[10, 576]`` soft prompt per layer (as `futurelens train`
leaves them) and the same states, so their greedy phrases should agree. The batched grid
with one prompt shared by all layers is timed too (the per-cell loop costs the same either way).

The goal is stated for a 10-token text over all 31 layers, so ``--quick`` does not shrink
the grid; it times one round instead of two (a round is about two minutes on a 2-core CPU,
nearly all of it the per-cell loop). The ratio is the median over rounds.

    python benchmarks/lens_speed.py            # 10 tokens x 31 layers, rollout 4
    python benchmarks/lens_speed.py --threads 1   # steadier on a CPU that other jobs share

`run(quick)` returns `common.result`'s dict (for ``benchmarks/run.py``). Both sides run on the
GPU when there is one (`common.device`), else on the CPU.
"""

from __future__ import annotations

import argparse
import json
from statistics import median

import torch

try:  # `python benchmarks/lens_speed.py` puts benchmarks/ on the path; `benchmarks.run` imports the package
    from . import common
except ImportError:
    import common

TEXT = "The Eiffel Tower is in Paris, and the"  # 10 tokens for SmolLM2
N_SOFT = 10
ROLLOUT = 4
TOP_K = 5


# --------------------------------------------------------------------------- the per-cell baseline


def _hidden_states(model, ids: torch.Tensor) -> torch.Tensor:
    """``[n_layers + 1, T, d]``: embedding output, then each block's output (before the final norm)."""
    seen = []
    hooks = [model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: seen.append(out[0]))]
    for block in model.model.layers:
        hooks.append(block.register_forward_hook(lambda _m, _i, out: seen.append((out[0] if isinstance(out, tuple) else out)[0])))
    try:
        model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(seen)


def per_cell_lens(model, tokenizer, text: str, prompts: dict[int, torch.Tensor], rollout: int, top_k: int) -> dict:
    """The lens one cell at a time, ``prompts[layer]`` a ``[P, d]`` soft prompt: ``{"phrase_ids": [L, T, R], "top_ids": [L, T, k]}``."""
    device = next(model.parameters()).device
    ids = tokenizer(text, return_tensors="pt")["input_ids"].to(device)
    states = _hidden_states(model, ids)  # [n + 1, T, d]
    return common.per_cell_phrases(model, model.model.layers, model.model.norm, model.get_output_embeddings(), states, prompts,
                                   rollout, top_k, tokenizer.pad_token_id)


# --------------------------------------------------------------------------- the run


GOAL = 20.0  # batched lens_grid at least this many times faster than one generate per cell
AGREE = 0.95  # share of cells whose phrases must match (a near-tie may flip one greedy pick)


def run(quick: bool = False) -> dict:
    """Time both on the embedded default model, interleaved in one process; the ratio and the phrase agreement."""
    from futurelens.lens import lens_grid

    torch.manual_seed(0)
    lm = common.default_lm()
    model = common.plain_default()  # the baseline's own plain HF copy: no nnsight wrapper in its way
    tokenizer = lm.tokenizer
    layers = list(range(lm.n_layers + 1))  # the goal's grid: --quick keeps it whole
    n_tokens = len(tokenizer(TEXT)["input_ids"])
    # Random soft prompts, one per layer, at the scale of the model's embeddings.
    scale = lm.module(lm.arch.embed).weight.std().item()
    prompts = {layer: torch.randn(N_SOFT, lm.d_model) * scale for layer in layers}
    got: dict = {}

    def batched() -> None:
        got["grid"] = lens_grid(lm, TEXT, prompts, rollout=ROLLOUT, top_k=TOP_K)

    def shared() -> None:
        lens_grid(lm, TEXT, prompts[layers[-1]], layers=layers, rollout=ROLLOUT, top_k=TOP_K)

    def per_cell() -> None:
        got["ref"] = per_cell_lens(model, tokenizer, TEXT, prompts, ROLLOUT, TOP_K)

    with torch.no_grad():
        # Warm every path (lazy imports, first-trace costs) on one cell, rollout 1: a full
        # warm-up round of the per-cell side alone would take minutes on a CPU.
        last = {layers[-1]: prompts[layers[-1]]}
        lens_grid(lm, "The", last, rollout=1, top_k=TOP_K)
        per_cell_lens(model, tokenizer, "The", last, 1, TOP_K)
        times = common.interleaved({"batched": batched, "shared": shared, "per_cell": per_cell}, repeats=1 if quick else 2, warmup=0)
    speedup = common.paired_ratio(times["per_cell"], times["batched"])
    speedup_shared = common.paired_ratio(times["per_cell"], times["shared"])

    grid, ref = got["grid"], got["ref"]
    dec = lambda ids: [tokenizer.decode([i]) for i in ids]  # noqa: E731
    cells = [(i, t) for i in range(len(layers)) for t in range(n_tokens)]
    same_phrase = sum(grid.phrase_tokens[i][t] == dec(ref["phrase_ids"][i, t].tolist()) for i, t in cells)
    same_top1 = sum(grid.top_tokens[i][t][0] == dec(ref["top_ids"][i, t, :1].tolist())[0] for i, t in cells)
    details = {
        "machine": common.machine(),
        "quick": quick,
        "model": lm.name,
        "text_tokens": n_tokens,
        "layers": len(layers),
        "cells": len(cells),
        "rollout": ROLLOUT,
        "soft_prompts": f"one [{N_SOFT}, {lm.d_model}] per layer",
        "batched": common.stats(times["batched"]),
        "batched_shared_prompt": common.stats(times["shared"]),
        "per_cell": common.stats(times["per_cell"]),
        "speedup": round(speedup, 2),
        "speedup_shared_prompt": round(speedup_shared, 2),
        "phrases_equal": f"{same_phrase}/{len(cells)}",
        "top1_equal": f"{same_top1}/{len(cells)}",
        "example": {
            "layer": layers[-1],
            "token": grid.tokens[-1],
            "batched": grid.phrase_tokens[-1][-1],
            "per_cell": dec(ref["phrase_ids"][-1, -1].tolist()),
        },
    }
    where = details["machine"]["device"]
    summary = (
        f"{len(cells)} cells ({n_tokens} tokens x {len(layers)} layers, rollout {ROLLOUT}) on {where}: "
        f"lens_grid {median(times['batched']):.2f} s vs one generate per cell {median(times['per_cell']):.2f} s "
        f"(medians of {len(times['batched'])} rounds) = {speedup:.1f}x "
        f"(one prompt shared by all layers: {median(times['shared']):.2f} s = {speedup_shared:.1f}x); "
        f"phrases equal in {same_phrase}/{len(cells)} cells"
    )
    return common.result(
        "lens_speed",
        goal=f"batched lens_grid >= {GOAL:g}x faster than one HF generate per cell, same phrases",
        passed=speedup >= GOAL and same_phrase >= AGREE * len(cells),
        summary=summary,
        details=details,
        ratio=speedup,
    )


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted for run.py; this benchmark is always the full grid")
    parser.add_argument("--json", help="also write the result to this file")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads for both sides (1 is steadier on a CPU other jobs share)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.quick)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, ensure_ascii=False)
    return result


if __name__ == "__main__":
    main()
