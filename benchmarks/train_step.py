"""Soft-prompt training step: `futurelens.train.prompt_loss` vs a hand-written plain-PyTorch-hook step.

One step = loss + backward + AdamW step, batch 8, soft prompt 10 x d_model, layer 14,
KL to the model's own distribution at the token N = 1 ahead (the paper's setup).

- futurelens: ``prompt_loss(lm, prompt, batch, 14, 1, "kl")`` — the nnsight trace of
  `futurelens.patch` writes the soft prompt over the embedding output and the state
  over block 14's output, and unembeds only the read positions.
- hand-written: on an untouched HF copy of the same weights, two forward hooks (the
  embedding output's first 10 positions := the soft prompt; block 14's output at
  position 9 := the state), a plain ``model(input_ids)`` forward, KL at the read
  position, backward, step.

Both losses are checked equal before timing. Goal: futurelens' step time <= 1.15x the
hand-written one. The batch is built the way `futurelens cache` would build it (states
and last-layer states from `cache_ahead` on real pydoc prefixes, the real next tokens as
the continuation), but lives in memory: reading shards is not part of a step.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .common import default_lm, hook_kl_loss, interleaved, paired_ratio, plain_default, pydoc_prefixes, result, stats

NAME = "train_step"
LAYER = 14
N = 1  # the token N ahead the prompt is trained for
BATCH = 8
PROMPT_LEN = 10


def _batch(lm) -> Any:
    """A `StateBatch` as the cache would serve it: layer-14 states, last-layer states, targets (CPU)."""
    import futurelens as fl
    from futurelens.data.states import StateBatch

    pairs = pydoc_prefixes(lm.tokenizer, BATCH, 8, 96, ahead=4, seed=1)
    with torch.no_grad():
        states, final = fl.cache_ahead(lm, [p for p, _ in pairs], [c[:3] for _, c in pairs], [LAYER])
    return StateBatch(
        states=states[0].cpu(),
        target=torch.tensor([c for _, c in pairs]),
        last_token=torch.tensor([p[-1] for p, _ in pairs]),
        row=torch.arange(BATCH),
        final=final.cpu(),
    )


def _hook_loss(plain, pad_id: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """The hand-written loss: forward hooks on a plain HF Llama (SmolLM2), no nnsight."""
    # Layer L = the output of block L-1.
    return hook_kl_loss(plain, plain.get_input_embeddings(), plain.model.layers[LAYER - 1], plain.model.norm,
                        plain.lm_head, pad_id, N, PROMPT_LEN)


def _step(loss_fn: Callable[[torch.Tensor, Any], torch.Tensor], prompt: torch.Tensor, batch: Any) -> Callable[[], float]:
    """A closure doing one full optimisation step (AdamW with `TrainConfig`'s defaults)."""
    from futurelens.train import TrainConfig

    cfg = TrainConfig()
    opt = torch.optim.AdamW([prompt], lr=cfg.lr, weight_decay=cfg.weight_decay)

    def step() -> float:
        loss = loss_fn(prompt, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.item()

    return step


def run(quick: bool) -> dict[str, Any]:
    """Time one training step both ways, interleaved; see the module docstring."""
    from futurelens.train import prompt_loss

    lm = default_lm()
    batch = _batch(lm)
    hook_loss = _hook_loss(plain_default(), lm.pad_id)

    def fl_loss(prompt: torch.Tensor, b: Any) -> torch.Tensor:
        return prompt_loss(lm, prompt, b, LAYER, N, "kl")

    g = torch.Generator().manual_seed(0)
    init = torch.randn(PROMPT_LEN, lm.d_model, generator=g).mul_(0.02).to(lm.device)

    # Same loss from the same prompt, or the comparison is meaningless.
    a, b = fl_loss(init, batch).item(), hook_loss(init, batch).item()
    if abs(a - b) > 1e-4 * max(1.0, abs(b)):
        raise AssertionError(f"futurelens and hand-written losses differ: {a} vs {b}")

    sides = {
        "futurelens": _step(fl_loss, init.clone().requires_grad_(True), batch),
        "hand_written": _step(hook_loss, init.clone().requires_grad_(True), batch),
    }
    # The first steps are slow (allocator, autograd graph caches, AdamW state creation).
    warmup, repeats = (2, 5) if quick else (3, 20)
    times = interleaved(sides, repeats=repeats, warmup=warmup)
    ratio = paired_ratio(times["futurelens"], times["hand_written"])
    fl_sps = BATCH / stats(times["futurelens"])["median_s"]
    hw_sps = BATCH / stats(times["hand_written"])["median_s"]
    summary = (f"step {stats(times['futurelens'])['median_s'] * 1e3:.0f} ms = {ratio:.2f}x the hand-written hook step; "
               f"{fl_sps:.1f} vs {hw_sps:.1f} samples/s")
    details = {
        "setup": f"batch {BATCH}, soft prompt {PROMPT_LEN}x{lm.d_model}, layer {LAYER}, N={N}, KL, AdamW, "
                 f"{warmup} warm-up steps each, {repeats} timed steps each (interleaved)",
        "loss_check": {"futurelens": a, "hand_written": b},
        "note": "the hand-written forward computes logits at all 11 positions (what model(input_ids) does); "
                "futurelens unembeds only the read positions, so its head and the head's backward are cheaper",
        "samples_per_s": {"futurelens": round(fl_sps, 2), "hand_written": round(hw_sps, 2)},
        "times": {side: stats(t) for side, t in times.items()},
    }
    return result(NAME, "futurelens step time <= 1.15x a hand-written hook step", ratio <= 1.15, summary, details, ratio=ratio)


if __name__ == "__main__":
    from .common import cli

    cli(run)
