"""Lens speed: the batched `lens_grid` against one HF ``generate`` per cell, in one run on one machine.

The per-cell baseline is written here in plain PyTorch + transformers, in the style of the
authors' public demo: for each (layer, token) cell, ``generate(inputs_embeds=soft_prompt,
max_new_tokens=4)`` with the cell's state written over block ``layer-1``'s output at the
soft prompt's last position by a forward hook. `lens_grid` does the same patch for all
cells of all layers together, ``chunk_size`` rows per forward. Both get the same random
``[10, 576]`` soft prompt and the same states, so their greedy phrases should agree.

    python benchmarks/lens_speed.py            # 10 tokens x 31 layers, rollout 4
    python benchmarks/lens_speed.py --quick    # 10 tokens x 6 layers
    python benchmarks/lens_speed.py --threads 1   # steadier on a CPU that other jobs share

`run(quick)` returns `common.result`'s dict (for ``benchmarks/run.py``). Both sides run on the
GPU when there is one (`common.device`), else on the CPU.
"""

from __future__ import annotations

import argparse
import json

import torch

try:  # `python benchmarks/lens_speed.py` puts benchmarks/ on the path; `benchmarks.run` imports the package
    from . import common
except ImportError:
    import common

TEXT = "The Eiffel Tower is in Paris, and the"  # 10 tokens for SmolLM2
N_SOFT = 10
ROLLOUT = 4
TOP_K = 5
QUICK_LAYERS = [0, 6, 12, 18, 24, 30]


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


def per_cell_lens(model, tokenizer, text: str, layers: list[int], soft_prompt: torch.Tensor, rollout: int, top_k: int) -> dict:
    """The lens one cell at a time: ``{"phrase_ids": [L, T, R], "top_ids": [L, T, k]}``."""
    device = next(model.parameters()).device
    ids = tokenizer(text, return_tensors="pt")["input_ids"].to(device)
    states = _hidden_states(model, ids)  # [n + 1, T, d]
    soft_prompt = soft_prompt.to(device)
    norm, head = model.model.norm, model.get_output_embeddings()
    P = soft_prompt.shape[0]
    phrase = torch.zeros(len(layers), ids.shape[1], rollout, dtype=torch.long)
    top = torch.zeros(len(layers), ids.shape[1], top_k, dtype=torch.long)
    for i, layer in enumerate(layers):
        for t in range(ids.shape[1]):
            state = states[layer, t]
            top[i, t] = head(norm(state)).topk(top_k).indices.cpu()
            embeds = soft_prompt[None].clone()
            hook = None
            if layer == 0:
                # generate() feeds inputs_embeds straight to the blocks: the embedding output is the prompt itself.
                embeds[0, P - 1] = state
            else:

                def patch(_m, _i, out, state=state):
                    hidden = out[0] if isinstance(out, tuple) else out
                    if hidden.shape[1] != P:  # a decoding step: the patched position lives in the KV cache
                        return out
                    hidden = hidden.clone()
                    hidden[:, P - 1] = state
                    return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden

                hook = model.model.layers[layer - 1].register_forward_hook(patch)
            try:
                out = model.generate(
                    inputs_embeds=embeds,
                    attention_mask=torch.ones(1, P, dtype=torch.long, device=device),
                    max_new_tokens=rollout,
                    do_sample=False,
                    eos_token_id=None,  # greedy to the end, like lens_grid's rollout
                    pad_token_id=tokenizer.pad_token_id,
                )
            finally:
                if hook is not None:
                    hook.remove()
            phrase[i, t] = out[0, -rollout:].cpu()
    return {"phrase_ids": phrase, "top_ids": top}


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
    layers = QUICK_LAYERS if quick else list(range(lm.n_layers + 1))
    n_tokens = len(tokenizer(TEXT)["input_ids"])
    # A random soft prompt at the scale of the model's embeddings.
    scale = lm.module(lm.arch.embed).weight.std().item()
    soft = torch.randn(N_SOFT, lm.d_model) * scale
    got: dict = {}

    def batched() -> None:
        got["grid"] = lens_grid(lm, TEXT, soft, layers=layers, rollout=ROLLOUT, top_k=TOP_K)

    def per_cell() -> None:
        got["ref"] = per_cell_lens(model, tokenizer, TEXT, layers, soft, ROLLOUT, TOP_K)

    with torch.no_grad():
        # Warm both paths (lazy imports, first-trace costs) on one cell, rollout 1: a full
        # warm-up round of the per-cell side alone would take minutes on a CPU.
        lens_grid(lm, "The", soft, layers=[layers[-1]], rollout=1, top_k=TOP_K)
        per_cell_lens(model, tokenizer, "The", [layers[-1]], soft, 1, TOP_K)
        times = common.interleaved({"batched": batched, "per_cell": per_cell}, repeats=1, warmup=0)
    speedup = common.paired_ratio(times["per_cell"], times["batched"])

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
        "soft_prompt": [N_SOFT, lm.d_model],
        "batched": common.stats(times["batched"]),
        "per_cell": common.stats(times["per_cell"]),
        "speedup": round(speedup, 2),
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
        f"lens_grid {times['batched'][0]:.2f} s vs one generate per cell {times['per_cell'][0]:.2f} s = {speedup:.1f}x; "
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
    parser.add_argument("--quick", action="store_true", help=f"only layers {QUICK_LAYERS}")
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
