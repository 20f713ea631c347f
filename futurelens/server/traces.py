"""Trace bodies: read states, write patches, decode with the model's own head, roll out. Ships to NDIF (see the rule in
`futurelens.server`).

Layers: 0 is the residual stream entering block 0 (block 0's input hidden state), ``L`` the output
of block ``L-1`` (before the final norm); a soft prompt is written over the embedding output.
``spec`` keys used here: ``embed``, ``blocks``, ``final_norm``, ``project_out``, ``unembed``
(module paths), ``is_tuple``, ``block_input`` (block 0's hidden-state argument: a positional
index or a keyword), ``n_layers``, ``pad_id``, ``kv_cache``, ``logit_scale``,
``logit_softcap``, ``direct`` (call head modules directly: a local run) and ``remote``
(what a trace opened here passes as ``remote=``: False inside a session).
"""

from __future__ import annotations

import torch


# --------------------------------------------------------------------------- model pieces


def envoy_at(model, path):
    """The envoy at a dotted module path (``"model.layers"``)."""
    obj = model
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def weightless(model):
    """Whether this process holds the model without weights: NDIF's sandbox runner (untrusted keys), where the
    block runs in a process of its own and the real model is driven over a socket."""
    device = model.device
    # An accelerate-dispatched model with offloaded modules also has meta parameters, and a device map.
    return (device is None or device.type == "meta") and not getattr(model._module, "hf_device_map", None)


def device_of(model):
    """Where inputs must go: the model's device; the CPU in NDIF's sandbox runner (its model is on meta) and when
    the first module is offloaded (accelerate's hooks move inputs to where each module runs)."""
    device = model.device
    return torch.device("cpu") if device is None or device.type == "meta" else device


def stop(tracer, model):
    """End a trace once what it reads is read. Not in NDIF's sandbox runner: there a session cannot run
    another trace after a stopped one, so the forward runs to its end."""
    if not weightless(model):
        tracer.stop()


def dtype_of(model, spec):
    return envoy_at(model, spec["embed"])._module.weight.dtype


def hidden_dtype(model, spec):
    """The dtype of the model's own last-layer states: its weights' (read here, where the model is), or the one
    ``spec["hidden_dtype"]`` names where they differ (Mamba in bfloat16 keeps its residual stream in float32)."""
    if spec["hidden_dtype"] is None:
        return dtype_of(model, spec)
    return getattr(torch, spec["hidden_dtype"])


def param_dtype(envoy):
    """The dtype of a module's weights (what it must be fed)."""
    return next(envoy._module.parameters()).dtype


def hidden_of(out, is_tuple):
    return out[0] if is_tuple else out


def block_input_of(inputs, where):
    """Block 0's hidden-state argument in its ``(args, kwargs)``: ``where`` is a positional index or a keyword."""
    args, kwargs = inputs
    return args[where] if isinstance(where, int) else kwargs[where]


def with_block_input(inputs, where, value):
    """``(args, kwargs)`` with the hidden-state argument ``where`` replaced by ``value``."""
    args, kwargs = inputs
    if isinstance(where, int):
        return tuple(args[:where]) + (value,) + tuple(args[where + 1:]), kwargs
    kwargs = dict(kwargs)
    kwargs[where] = value
    return tuple(args), kwargs


def layer_hidden(blocks, layer, spec):
    """Inside a trace: the hidden state at ``layer`` (0: what enters block 0; L: block L-1's output)."""
    if layer == 0:
        return block_input_of(blocks[0].inputs, spec["block_input"])
    return hidden_of(blocks[layer - 1].output, spec["is_tuple"])


def apply_logit_transform(logits, spec):
    """What a model does to its unembedding's output (a scale, a soft cap), in the model's own order."""
    if spec["logit_scale"] is not None:
        logits = logits * spec["logit_scale"]
    if spec["logit_softcap"] is not None:
        cap = spec["logit_softcap"]
        logits = torch.tanh(logits / cap) * cap
    return logits


def head_after_norm(model, spec, x):
    """Final-normed states -> logits: ``project_out``, the unembedding, then the logit transform.

    The normed state goes in in the weights' dtype, as the models that keep a float32 residual cast it (Mamba).
    """
    if spec["project_out"] is not None:
        project = envoy_at(model, spec["project_out"])
        x = project(x.to(param_dtype(project)))
    unembed = envoy_at(model, spec["unembed"])
    return apply_logit_transform(unembed(x.to(param_dtype(unembed))), spec)


def head_in_trace(model, spec, hidden):
    """Inside a trace: the model's whole head on ``hidden [..., d]`` by envoy calls (they spend no occurrence)."""
    x = envoy_at(model, spec["final_norm"])(hidden) if spec["final_norm"] is not None else hidden
    return head_after_norm(model, spec, x)


def head_modules(model, spec, hidden):
    """The model's whole head on ``hidden [..., d]`` by direct module calls (local runs: gradients flow)."""
    modules = model._module
    x = hidden
    if spec["final_norm"] is not None:
        x = modules.get_submodule(spec["final_norm"])(x)
    if spec["project_out"] is not None:
        project = modules.get_submodule(spec["project_out"])
        x = project(x.to(next(project.parameters()).dtype))
    unembed = modules.get_submodule(spec["unembed"])
    return apply_logit_transform(unembed(x.to(next(unembed.parameters()).dtype)), spec)


def decode(model, spec, hidden):
    """``hidden [..., d]`` (last-layer-style states) -> the model's own ``logits [..., vocab]``.

    States go in in the dtype of the model's own last-layer states, as a forward would give them to its head.
    """
    hidden = hidden.to(device_of(model), hidden_dtype(model, spec))
    if spec["direct"]:
        return head_modules(model, spec, hidden)
    # Remotely the head runs inside a one-token trace, the way NDIF runs module calls.
    with model.trace(input_ids=torch.full((1, 1), spec["pad_id"], dtype=torch.long, device=device_of(model)),
                     remote=spec["remote"]) as tracer:
        logits = head_in_trace(model, spec, hidden).save()
        stop(tracer, model)
    return logits


# --------------------------------------------------------------------------- reading states


def read_states(model, spec, ids, lengths, ahead, wanted, with_final):
    """One forward over right-padded ``ids [B, T]``: ``(states [len(wanted), B, d], final [B, ahead + 1, d] | None)``.

    ``states`` are read at each row's last prefix token (``lengths - 1 - ahead``); with
    ``with_final``, ``final`` holds the last layer over that token and the ``ahead``
    continuation tokens after it.
    """
    device = device_of(model)
    ids = ids.to(device)
    lengths = lengths.to(device)
    mask = (torch.arange(ids.shape[1], device=device)[None] < lengths[:, None]).long()
    batch = torch.arange(ids.shape[0], device=device)
    last = lengths - 1 - ahead
    span = last[:, None] + torch.arange(ahead + 1, device=device)
    n_layers = spec["n_layers"]
    read = sorted(set(wanted) | ({n_layers} if with_final else set()))
    blocks = envoy_at(model, spec["blocks"])
    final = None
    with model.trace(input_ids=ids, attention_mask=mask, remote=spec["remote"]) as tracer:
        states = []
        # nnsight serves module outputs in execution order, so read layers ascending, each once.
        for layer in read:
            hidden = layer_hidden(blocks, layer, spec)
            if layer in wanted:
                states.append(hidden[batch, last])
            if with_final and layer == n_layers:
                final = hidden[batch[:, None], span].save()
        stacked = torch.stack(states).save()
        stop(tracer, model)
    order = sorted(set(wanted))
    index = torch.tensor([order.index(layer) for layer in wanted], device=stacked.device)
    return stacked.index_select(0, index).cpu(), None if final is None else final.cpu()


def row_states(model, spec, ids, wanted):
    """Hidden states at every position of one unpadded row ``ids [1, T]``: ``[len(wanted), T, d]``."""
    ids = ids.to(device_of(model))
    read = sorted(set(wanted))
    blocks = envoy_at(model, spec["blocks"])
    with model.trace(input_ids=ids, remote=spec["remote"]) as tracer:
        states = [layer_hidden(blocks, layer, spec)[0] for layer in read]
        stacked = torch.stack(states).save()
        stop(tracer, model)
    index = torch.tensor([read.index(layer) for layer in wanted], device=stacked.device)
    return stacked.index_select(0, index)


# --------------------------------------------------------------------------- patching


def patch_groups(layer, state):
    """``(layer, rows, state[rows])`` per distinct layer, ascending; ``rows`` is None for "every row".

    ``layer`` is an int or a list of per-row ints. Ascending because nnsight serves
    module outputs in execution order: a block's output is written before any later block's.
    """
    if isinstance(layer, int):
        return [(layer, None, state)]
    groups = []
    for value in sorted(set(layer)):
        rows = torch.tensor([b for b, x in enumerate(layer) if x == value], device=state.device)
        groups.append((value, rows, state.index_select(0, rows)))
    return groups


def write_patch(embed, blocks, groups, position, soft_prompt, spec):
    """Inside a trace: the soft prompt over the embedding output, then each group's states at its layer.

    In execution order, as nnsight serves them: the embedding's output, block 0's input (layer 0),
    then each block's output (layer L > 0).
    """
    is_tuple = spec["is_tuple"]
    if soft_prompt is not None:
        # Vectors are written in the dtype of what they replace (a float32 prompt into a bfloat16 model; gradients
        # flow through the cast).
        n_soft = soft_prompt.shape[1]
        emb = embed.output
        embed.output = torch.cat([soft_prompt.to(emb.dtype), emb[:, n_soft:]], dim=1)
    at_input = [g for g in groups if g[0] == 0]
    if at_input:
        inputs = blocks[0].inputs
        hidden = block_input_of(inputs, spec["block_input"]).clone()
        for _, rows, value in at_input:
            if rows is None:
                hidden[:, position] = value.to(hidden.dtype)
            else:
                hidden[rows, position] = value.to(hidden.dtype)
        blocks[0].inputs = with_block_input(inputs, spec["block_input"], hidden)
    for layer, rows, value in (g for g in groups if g[0] > 0):
        block = blocks[layer - 1]
        out = block.output
        hidden = hidden_of(out, is_tuple).clone()
        if rows is None:
            hidden[:, position] = value.to(hidden.dtype)
        else:
            hidden[rows, position] = value.to(hidden.dtype)
        block.output = (hidden,) + tuple(out[1:]) if is_tuple else hidden


def to_model(model, spec, ids, state, soft_prompt):
    """Move a patch's inputs to the model's device: ``(ids, state, soft_prompt)``.

    Their dtype stays: `write_patch` casts each vector to the dtype of what it replaces (a state into a
    float32 residual stays float32, a float32 prompt into a bfloat16 embedding becomes bfloat16).
    """
    device = device_of(model)
    ids = ids.to(device)
    state = state.to(device)
    if soft_prompt is not None:
        soft_prompt = soft_prompt.to(device)
    return ids, state, soft_prompt


def patched_logits(model, spec, ids, layer, state, soft_prompt, position, reads):
    """One patched forward; ``[B, len(reads), vocab]`` logits at ``reads`` (the model's own head)."""
    ids, state, soft_prompt = to_model(model, spec, ids, state, soft_prompt)
    embed, blocks = envoy_at(model, spec["embed"]), envoy_at(model, spec["blocks"])
    read_index = torch.tensor(reads, device=ids.device)
    groups = patch_groups(layer, state)
    with model.trace(input_ids=ids, remote=spec["remote"]) as tracer:
        write_patch(embed, blocks, groups, position, soft_prompt, spec)
        final = hidden_of(blocks[spec["n_layers"] - 1].output, spec["is_tuple"])
        # The final norm is called here on the last block's output, not read from the forward: a model may
        # run that module more than once (nanochat norms before its blocks too). Then the rest of the head
        # on the read positions only, and stop: the model's own head would materialise [B, T, vocab]
        # logits, most of them never read.
        if spec["final_norm"] is not None:
            final = envoy_at(model, spec["final_norm"])(final)
        logits = head_after_norm(model, spec, final[:, read_index]).save()
        stop(tracer, model)
    return logits


def greedy_kwargs(spec, ids, n):
    """``generate`` arguments for ``n`` greedy tokens after unpadded ``ids [B, T]``."""
    return dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        do_sample=False,
        # Greedy means argmax at every step: no stopping (or suppression) at end-of-text.
        eos_token_id=None,
        pad_token_id=spec["pad_id"],
        remote=spec["remote"],
    )


def greedy_rows(model, spec, ids, n):
    """The model's greedy continuation of unpadded ``ids [B, T]`` (one length): ``[B, n]`` on the CPU."""
    ids = ids.to(device_of(model))
    with model.generate(**greedy_kwargs(spec, ids, n)) as tracer:
        result = tracer.result.save()
    return result[:, ids.shape[1]:].cpu()


def chosen_probs(step_logits, tokens):
    """``p(chosen)`` per step: the greedy token has the largest logit, so p = 1 / sum(exp(logits - chosen))."""
    probs = []
    for i, step in enumerate(step_logits):
        chosen = step.gather(1, tokens[:, i, None].to(step.device)).float()
        probs.append(1.0 / (step.float() - chosen).exp_().sum(-1))
    return torch.stack(probs, 1)


def patched_rollout(model, spec, ids, groups, position, soft_prompt, n, past):
    """Greedy continuation of a patched context with the model's KV cache: ``(tokens [B, n], probs [B, n])``.

    The patch is written in the first (prefill) step only; later steps feed one token each and
    attend to the cached, patched past, as a full re-run of the growing context with the patch
    held in place would. With ``past`` (a cache of the context's first ``p`` positions) the
    prefill runs only ``ids[:, p:]``, and ``position`` / ``soft_prompt`` are relative to ``p``.
    """
    embed, blocks = envoy_at(model, spec["embed"]), envoy_at(model, spec["blocks"])
    extra = {} if past is None else {"past_key_values": past}
    with model.generate(**greedy_kwargs(spec, ids, n), output_logits=True, return_dict_in_generate=True, **extra) as tracer:
        write_patch(embed, blocks, groups, position, soft_prompt, spec)
        result = tracer.result.save()
    tokens = result.sequences[:, ids.shape[1]:]
    # generate's logits are the model's own (its forward applies any scale or soft cap).
    return tokens, chosen_probs(result.logits, tokens)


def prefix_cache(model, spec, ids, soft_prompt):
    """The key/value cache the model's own forward returns after ``ids [G, p]`` (a soft prompt over the first positions).

    The model builds its cache itself (its class for its config: sliding-window layers and all), so nothing
    here constructs or copies one: NDIF's import whitelist allows neither ``transformers`` nor ``copy`` at
    execution time. The forward runs to its end (the head on ``G x p`` positions only) for the cache to be
    in its output.
    """
    embed, blocks = envoy_at(model, spec["embed"]), envoy_at(model, spec["blocks"])
    with model.trace(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, remote=spec["remote"]):
        write_patch(embed, blocks, [], 0, soft_prompt, spec)
        past = model.output.past_key_values.save()
    return past


def shared_prefix(ids, soft_prompt, position, chunk_size, kv_cache):
    """``(first [G] rows holding the G distinct contexts before ``position``, [B] row -> context)``, or None.

    None when nothing is shared, there is no prefix, the model has no key/value cache, or
    the distinct prefixes would not fit one chunk.
    """
    if position == 0 or not kv_cache:
        return None
    batch = ids.shape[0]
    key = ids[:, :position]
    if soft_prompt is not None:
        soft = soft_prompt[:, :position].reshape(batch, -1)
        # Compare the vectors bit for bit: rows share a prefix only if it is exactly the same.
        bits = soft.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[soft.element_size()])
        which = torch.unique(bits, dim=0, return_inverse=True)[1]
        key = torch.cat([key, which[:, None].to(key.dtype)], dim=1)
    index = torch.unique(key, dim=0, return_inverse=True)[1]
    n_prefixes = int(index.max()) + 1
    if n_prefixes == batch or n_prefixes > chunk_size:
        return None
    first = torch.full((n_prefixes,), batch, device=ids.device).scatter_reduce(
        0, index, torch.arange(batch, device=ids.device), "amin"
    )
    return first, index


def rollout(model, spec, ids, layer, state, soft_prompt, position, n, chunk_size, progress):
    """Greedy phrases of patched contexts, ``chunk_size`` rows at a time: ``(ids [B, n], probs [B, n])`` on the CPU.

    ``ids [B, P+T]`` hold placeholders where ``soft_prompt [B, P, d]`` goes; ``layer`` is an
    int or per-row ints. Rows whose context before ``position`` is the same share it: per chunk, the
    ``G`` distinct prefixes run once and the cache the model returns is indexed to the chunk's rows
    (the cache's own ``reorder_cache``); a fresh one per chunk, since ``generate`` grows it in place.
    """
    if weightless(model):
        return rollout_by_forwards(model, spec, ids, layer, state, soft_prompt, position, n, chunk_size, progress)
    ids, state, soft_prompt = to_model(model, spec, ids, state, soft_prompt)
    batch = ids.shape[0]
    shared = shared_prefix(ids, soft_prompt, position, chunk_size, spec["kv_cache"])
    out_ids = torch.empty(batch, n, dtype=torch.long)
    out_probs = torch.empty(batch, n)
    # Equal chunks: 310 rows at chunk_size 256 run as 155 + 155, not 256 + a slow, small 54.
    n_chunks = -(-batch // chunk_size)
    size = -(-batch // n_chunks)
    for start in range(0, batch, size):
        rows = torch.arange(start, min(start + size, batch), device=ids.device)
        layers = layer if isinstance(layer, int) else [layer[i] for i in rows.tolist()]
        groups = patch_groups(layers, state[rows])
        soft = None if soft_prompt is None else soft_prompt[rows]
        if shared is None:
            got = patched_rollout(model, spec, ids[rows], groups, position, soft, n, None)
        else:
            # Only positions from `position` on are run: the patch lands on the step's first one.
            first, index = shared
            prefix_soft = None if soft_prompt is None else soft_prompt[first, :position]
            past = prefix_cache(model, spec, ids[first, :position], prefix_soft)
            past.reorder_cache(index[rows])
            rest = None if soft is None or position >= soft.shape[1] else soft[:, position:]
            got = patched_rollout(model, spec, ids[rows], groups, 0, rest, n, past)
        out_ids[rows.cpu()], out_probs[rows.cpu()] = got[0].cpu(), got[1].float().cpu()
        if progress is not None:
            progress(len(rows))
    return out_ids, out_probs


def rollout_by_forwards(model, spec, ids, layer, state, soft_prompt, position, n, chunk_size, progress):
    """`rollout` as ``n`` full patched forwards of the growing context, without ``generate``.

    For NDIF's sandbox runner, where a patch written inside ``generate`` does not reach the
    tokens it picks (measured against NDIF's sandbox code): greedy decoding of a re-run of
    the whole context with the patch held in place is the same computation, without the cache.
    """
    batch = ids.shape[0]
    out_ids = torch.empty(batch, n, dtype=torch.long)
    out_probs = torch.empty(batch, n)
    for start in range(0, batch, chunk_size):
        rows = list(range(start, min(start + chunk_size, batch)))
        layers = layer if isinstance(layer, int) else [layer[i] for i in rows]
        context = ids[rows]
        soft = None if soft_prompt is None else soft_prompt[rows]
        for step in range(n):
            logits = patched_logits(model, spec, context, layers, state[rows], soft, position, [context.shape[1] - 1])[:, 0]
            probs = torch.softmax(logits.float(), dim=-1)
            top_p, top_i = probs.max(dim=-1)
            out_ids[rows, step], out_probs[rows, step] = top_i.cpu(), top_p.cpu()
            context = torch.cat([context, top_i.cpu()[:, None]], dim=1)
        if progress is not None:
            progress(len(rows))
    return out_ids, out_probs
