"""A plain-PyTorch-hook implementation of the patch, independent of futurelens and nnsight.

Tests compare futurelens' nnsight traces against this; benchmarks time it.
"""

from __future__ import annotations

import torch


def _set_hidden(out, position, value):
    hidden = out[0] if isinstance(out, tuple) else out
    hidden = hidden.clone()
    hidden[:, position] = value
    return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden


def hook_patch_logits(model, blocks_path, ids, state, layer, position, soft_prompt=None):
    """Logits ``[B, T, V]`` of ``model`` on ``ids`` with the patch done by forward hooks.

    ``soft_prompt`` ``[P, d]`` replaces the first P embedding outputs; ``state`` ``[B, d]``
    replaces the output of block ``layer-1`` (or the embedding output for layer 0) at ``position``.
    """
    blocks = model.get_submodule(blocks_path)
    handles = []

    def on_embed(_m, _i, out):
        if soft_prompt is not None:
            out = torch.cat([soft_prompt.expand(out.shape[0], -1, -1).to(out.dtype), out[:, soft_prompt.shape[-2]:]], 1)
        if layer == 0:
            out = _set_hidden(out, position, state)
        return out

    handles.append(model.get_input_embeddings().register_forward_hook(on_embed))
    if layer > 0:
        handles.append(blocks[layer - 1].register_forward_hook(lambda _m, _i, out: _set_hidden(out, position, state)))
    try:
        return model(input_ids=ids).logits
    finally:
        for h in handles:
            h.remove()


def hook_last_states(model, blocks_path, ids):
    """``[n_layers + 1, T, d]`` states of a single unpadded row (embedding output, then each block)."""
    blocks = model.get_submodule(blocks_path)
    seen = []
    handles = [model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: seen.append(out))]
    for block in blocks:
        handles.append(block.register_forward_hook(lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out)))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([s[0] for s in seen])
