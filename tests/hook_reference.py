"""A plain-PyTorch-hook implementation of reading and patching, independent of futurelens and nnsight.

Tests compare futurelens' nnsight traces against this; benchmarks time it. It shares no code
with futurelens: the block list's path is given by the caller (written out by hand in the tests),
the embedding is ``model.get_input_embeddings()`` and logits are the model's own forward.

Layers: 0 is the hidden state block 0 receives (a forward pre-hook on block 0: its first
positional argument, or its ``hidden_states`` keyword), ``L`` the output of block ``L-1``.
A soft prompt replaces the embedding module's first ``P`` output vectors.
"""

from __future__ import annotations

import torch


def _hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _set_hidden(out, position, value):
    hidden = _hidden(out).clone()
    hidden[:, position] = value.to(hidden.dtype)
    if isinstance(out, (tuple, list)):  # GPT-1's blocks return a list
        return type(out)([hidden, *out[1:]])
    return hidden


def _block_arg(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_block_arg(args, kwargs, value):
    if args:
        return (value,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


def hook_patch_logits(model, blocks_path, ids, state, layer, position, soft_prompt=None, **forward):
    """Logits ``[B, T, V]`` of ``model`` on ``ids`` with the patch done by hooks.

    ``soft_prompt`` ``[P, d]`` or ``[B, P, d]`` replaces the first P embedding outputs; ``state``
    ``[B, d]`` replaces block 0's input (layer 0) or the output of block ``layer-1`` at ``position``.
    """
    blocks = model.get_submodule(blocks_path)
    handles = []

    def on_embed(_m, _i, out):
        sp = soft_prompt.to(out.dtype)
        sp = sp.expand(out.shape[0], -1, -1) if sp.dim() == 2 else sp
        return torch.cat([sp, out[:, sp.shape[1]:]], 1)

    def on_input(_m, args, kwargs):
        hidden = _block_arg(args, kwargs).clone()
        hidden[:, position] = state.to(hidden.dtype)
        return _with_block_arg(args, kwargs, hidden)

    if soft_prompt is not None:
        handles.append(model.get_input_embeddings().register_forward_hook(on_embed))
    if state is not None and layer == 0:
        handles.append(blocks[0].register_forward_pre_hook(on_input, with_kwargs=True))
    elif state is not None:
        handles.append(blocks[layer - 1].register_forward_hook(lambda _m, _i, out: _set_hidden(out, position, state)))
    try:
        return model(input_ids=ids, **forward).logits
    finally:
        for h in handles:
            h.remove()


def hook_states(model, blocks_path, ids, soft_prompt=None, **forward):
    """``[n_layers + 1, B, T, d]`` states of a batch (block 0's input, then each block's output)."""
    blocks = model.get_submodule(blocks_path)
    seen = {}
    def on_input(_m, args, kwargs):
        seen.setdefault(0, _block_arg(args, kwargs))

    def on_output(i):
        def hook(_m, _i, out):
            seen.setdefault(i + 1, _hidden(out))

        return hook

    handles = [blocks[0].register_forward_pre_hook(on_input, with_kwargs=True)]
    handles += [block.register_forward_hook(on_output(i)) for i, block in enumerate(blocks)]
    if soft_prompt is not None:
        def on_embed(_m, _i, out):
            return torch.cat([soft_prompt.to(out.dtype).expand(out.shape[0], -1, -1), out[:, soft_prompt.shape[-2]:]], 1)

        handles.append(model.get_input_embeddings().register_forward_hook(on_embed))
    try:
        with torch.no_grad():
            model(input_ids=ids, **forward)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([seen[i] for i in range(len(blocks) + 1)])


def hook_last_states(model, blocks_path, ids):
    """``[n_layers + 1, T, d]`` states of a single unpadded row (block 0's input, then each block's output)."""
    return hook_states(model, blocks_path, ids)[:, 0]


def hook_rollout(model, blocks_path, ids, states, layers, position, soft_prompt, n):
    """Greedy phrase of each row, re-running the whole growing context through hooks: ``(ids [B, n], probs [B, n])``.

    Row ``b`` is patched with ``states[b]`` at ``layers[b]`` and ``position``; ``soft_prompt`` is
    None, ``[P, d]`` or ``[B, P, d]``.
    """
    out_ids, out_p = [], []
    for b, layer in enumerate(layers):
        row = ids[b : b + 1]
        sp = None if soft_prompt is None else (soft_prompt if soft_prompt.dim() == 2 else soft_prompt[b])
        toks, ps = [], []
        with torch.no_grad():
            for _ in range(n):
                logits = hook_patch_logits(model, blocks_path, row, states[b : b + 1], layer, position, sp)[:, -1]
                p, tok = logits.float().softmax(-1).max(-1)
                toks.append(tok[0])
                ps.append(p[0])
                row = torch.cat([row, tok[:, None]], 1)
        out_ids.append(torch.stack(toks))
        out_p.append(torch.stack(ps))
    return torch.stack(out_ids), torch.stack(out_p)


def hook_run(model, blocks_path, ids, patches=(), soft_prompt=None, **forward):
    """One forward with any number of patches: ``(states [n_layers + 1, B, T, d], logits [B, T, V])``.

    ``patches`` is a list of ``(layer, position, value)``: ``value [B, d]`` written at ``position`` of layer
    ``layer`` (0: block 0's input; L: block L-1's output), in the list's order where two hit one layer. ``states``
    are what each layer holds after its patches (what the next block receives).
    """
    blocks = model.get_submodule(blocks_path)
    seen = {}
    by_layer = {}
    for layer, position, value in patches:
        by_layer.setdefault(layer, []).append((position, value))

    def on_input(_m, args, kwargs):
        hidden = _block_arg(args, kwargs)
        if 0 in by_layer:
            hidden = hidden.clone()
            for position, value in by_layer[0]:
                hidden[:, position] = value.to(hidden.dtype)
        seen.setdefault(0, hidden)
        return _with_block_arg(args, kwargs, hidden)

    def on_output(i):
        def hook(_m, _i, out):
            for position, value in by_layer.get(i + 1, []):
                out = _set_hidden(out, position, value)
            seen.setdefault(i + 1, _hidden(out))
            return out

        return hook

    handles = [blocks[0].register_forward_pre_hook(on_input, with_kwargs=True)]
    handles += [block.register_forward_hook(on_output(i)) for i, block in enumerate(blocks)]
    if soft_prompt is not None:
        def on_embed(_m, _i, out):
            sp = soft_prompt.to(out.dtype)
            sp = sp.expand(out.shape[0], -1, -1) if sp.dim() == 2 else sp
            return torch.cat([sp, out[:, sp.shape[1]:]], 1)

        handles.append(model.get_input_embeddings().register_forward_hook(on_embed))
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, **forward).logits
    finally:
        for h in handles:
            h.remove()
    return torch.stack([seen[i] for i in range(len(blocks) + 1)]), logits
