"""Trace bodies: read states, write patches, decode with the model's own head, roll out. Ships to NDIF (see the rule in
`futurelens.server`).

Layers, the soft prompt and the head are read, written and applied through `futurelens.server.access` (the
accessors a user's own trace calls too): 0 is the residual stream entering block 0, ``L`` the output of block
``L-1`` (before the final norm); a soft prompt is written over the embedding output.
``spec`` keys used here: ``embed``, ``blocks``, ``final_norm``, ``project_out``, ``unembed``
(module paths), ``is_tuple``, ``block_input`` (block 0's hidden-state argument: a positional
index or a keyword), ``n_layers``, ``pad_id``, ``kv_cache``, ``logit_scale``,
``logit_softcap``, ``direct`` (call head modules directly: a local run) and ``remote``
(what a trace opened here passes as ``remote=``: False inside a session).
"""

from __future__ import annotations

import torch

from .access import envoy_at, final_norm, head, head_after_norm, read_layer, write_layer, write_prompt


# --------------------------------------------------------------------------- model pieces


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


def decode(model, spec, hidden):
    """``hidden [..., d]`` (last-layer-style states) -> the model's own ``logits [..., vocab]`` (`access.head`).

    States go in in the dtype of the model's own last-layer states, as a forward would give them to its head.
    """
    hidden = hidden.to(device_of(model), hidden_dtype(model, spec))
    if spec["direct"]:
        return head(model, spec, hidden, direct=True)
    # Remotely the head runs inside a one-token trace, the way NDIF runs module calls.
    with model.trace(input_ids=torch.full((1, 1), spec["pad_id"], dtype=torch.long, device=device_of(model)),
                     remote=spec["remote"]) as tracer:
        logits = head(model, spec, hidden).save()
        stop(tracer, model)
    return logits


# --------------------------------------------------------------------------- reading states


def length_mask(lengths, width):
    """``[B, width]`` attention mask, 1 on each row's first ``lengths[b]`` positions (on ``lengths``' device)."""
    return (torch.arange(width, device=lengths.device)[None] < lengths[:, None]).long()


def read_states(model, spec, ids, lengths, ahead, wanted, with_final):
    """One forward over right-padded ``ids [B, T]``: ``(states [len(wanted), B, d], final [B, ahead + 1, d] | None)``.

    ``states`` are read at each row's last prefix token (``lengths - 1 - ahead``); with
    ``with_final``, ``final`` holds the last layer over that token and the ``ahead``
    continuation tokens after it.
    """
    device = device_of(model)
    ids = ids.to(device)
    lengths = lengths.to(device)
    mask = length_mask(lengths, ids.shape[1])
    batch = torch.arange(ids.shape[0], device=device)
    last = lengths - 1 - ahead
    span = last[:, None] + torch.arange(ahead + 1, device=device)
    n_layers = spec["n_layers"]
    read = sorted(set(wanted) | ({n_layers} if with_final else set()))
    final = None
    # No key/value cache: nothing reads it, and it held every layer's keys and values for the whole batch
    # (more than the forward's own working set on the embedded default).
    with model.trace(input_ids=ids, attention_mask=mask, use_cache=False, remote=spec["remote"]) as tracer:
        states = []
        # nnsight serves module outputs in execution order, so read layers ascending, each once.
        for layer in read:
            hidden = read_layer(model, spec, layer)
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
    with model.trace(input_ids=ids, remote=spec["remote"]) as tracer:
        states = [read_layer(model, spec, layer)[0] for layer in read]
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


def write_patch(model, spec, groups, position, soft_prompt):
    """Inside a trace: the soft prompt over the embedding output, then each group's states at its layer
    (`access.write_prompt`, `access.write_layer`), in the order the forward runs them (groups are ascending)."""
    if soft_prompt is not None:
        write_prompt(model, spec, soft_prompt)
    for layer, rows, value in groups:
        write_layer(model, spec, layer, value, position, rows)


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


def embed_rows(model, spec, ids):
    """``[len(ids), e]`` float32: the embedding's output for token ``ids`` read from position 0 on (what a soft prompt's
    leading rows must be for the model to read those tokens there, as `access.write_prompt` replaces that output)."""
    with model.trace(input_ids=torch.tensor([list(ids)], dtype=torch.long), remote=spec["remote"]) as tracer:
        rows = envoy_at(model, spec["embed"]).output[0].save()
        stop(tracer, model)
    return rows.float().cpu()


def patched_logits(model, spec, ids, layer, state, soft_prompt, position, reads):
    """One patched forward; ``[B, len(reads), vocab]`` logits at ``reads`` (the model's own head)."""
    ids, state, soft_prompt = to_model(model, spec, ids, state, soft_prompt)
    read_index = torch.tensor(reads, device=ids.device)
    groups = patch_groups(layer, state)
    with model.trace(input_ids=ids, remote=spec["remote"]) as tracer:
        write_patch(model, spec, groups, position, soft_prompt)
        # The final norm is called here on the last block's output, not read from the forward: a model may
        # run that module more than once (nanochat norms before its blocks too). Then the rest of the head
        # on the read positions only, and stop: the model's own head would materialise [B, T, vocab]
        # logits, most of them never read.
        final = final_norm(model, spec, read_layer(model, spec, -1))
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
    extra = {} if past is None else {"past_key_values": past}
    with model.generate(**greedy_kwargs(spec, ids, n), output_logits=True, return_dict_in_generate=True, **extra) as tracer:
        write_patch(model, spec, groups, position, soft_prompt)
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
    with model.trace(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, remote=spec["remote"]):
        write_patch(model, spec, [], 0, soft_prompt)
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
