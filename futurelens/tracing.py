"""`cache` and `patch`: the only trace bodies in futurelens (the only module that opens a trace).

Every method, the trainer and the lens describe *what* to read or write and call
these; only this module opens an nnsight trace. The bodies use nothing but torch
and values captured before the trace, so the same code runs locally, with
``remote="local"`` and on NDIF.

Layers follow `futurelens.arch.Arch`: 0 is the embedding output, ``L`` the output
of block ``L-1`` (the residual stream after ``L`` blocks, before the final norm).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

from .errors import FutureLensError

if TYPE_CHECKING:
    import torch

    from .models import LensModel

def _remote_errors(fn: Callable) -> Callable:
    """Remote failures of a trace primitive become a `FutureLensError` that says what to do."""
    import functools

    @functools.wraps(fn)
    def wrapper(lm: "LensModel", *args: Any, **kwargs: Any) -> Any:
        if not lm.remote:
            return fn(lm, *args, **kwargs)
        from .remote import ndif_errors

        with ndif_errors(lm.name):
            return fn(lm, *args, **kwargs)

    return wrapper


TokenIds = Union["torch.Tensor", Sequence[int], Sequence[Sequence[int]], str, Sequence[str]]


# --------------------------------------------------------------------------- inputs


def _as_rows(lm: "LensModel", prefixes: TokenIds) -> list[list[int]]:
    """Normalise text / ids / a tensor into a list of token-id rows, refusing empty ones."""
    import torch

    if isinstance(prefixes, str):
        prefixes = [prefixes]
    if isinstance(prefixes, torch.Tensor):
        if prefixes.dim() == 1:
            prefixes = prefixes[None]
        rows = prefixes.tolist()
    else:
        prefixes = list(prefixes)
        if prefixes and isinstance(prefixes[0], int):
            prefixes = [prefixes]
        rows = [
            lm.tokenizer(p, add_special_tokens=True)["input_ids"] if isinstance(p, str) else list(map(int, p))
            for p in prefixes
        ]
    if not rows:
        raise FutureLensError("No prefixes given: pass at least one text or list of token ids.")
    empty = [i for i, r in enumerate(rows) if len(r) == 0]
    if empty:
        raise FutureLensError(
            f"Prefix {empty[0]} is empty (no tokens): every prefix needs at least one token to have a hidden state."
        )
    return rows


def pad_right(rows: list[list[int]], pad_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Right-pad token rows. Returns ``ids [B, T]``, ``lengths [B]``.

    Right padding leaves every real position's computation identical to an
    unpadded run in any causal model (attention or recurrence), and needs no
    position-id bookkeeping, so batched states equal one-at-a-time states.
    """
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows])


def length_mask(lengths: "torch.Tensor", width: int) -> "torch.Tensor":
    """``[B, width]`` attention mask, 1 on each row's first ``lengths[b]`` positions."""
    import torch

    return (torch.arange(width)[None] < lengths[:, None]).long()


def _layers(lm: "LensModel", layers: int | Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(lm.n_layers + 1))
    if isinstance(layers, int):
        layers = [layers]
    resolved = [lm.check_layer(layer) for layer in layers]
    if not resolved:
        raise FutureLensError("layers is empty: pass None for all layers, an int, or a list of ints.")
    return resolved


# --------------------------------------------------------------------------- cache


def cache(
    lm: "LensModel",
    prefixes: TokenIds,
    layers: int | Sequence[int] | None = None,
) -> "torch.Tensor":
    """Hidden states at the last token of each prefix, for the requested layers, in one forward pass.

    Args:
        lm: the model.
        prefixes: texts, token-id lists (ragged is fine), or an ``[B, T]`` id tensor.
        layers: one layer, several, or ``None`` for all ``0..n_layers``.

    Returns:
        ``[len(layers), B, d_model]`` in the order ``layers`` were given.
    """
    return cache_ahead(lm, prefixes, None, layers)[0]


@_remote_errors
def cache_ahead(
    lm: "LensModel",
    prefixes: TokenIds,
    continuations: "torch.Tensor | Sequence[Sequence[int]] | None",
    layers: int | Sequence[int] | None = None,
) -> tuple["torch.Tensor", "torch.Tensor | None"]:
    """`cache`, plus the last layer's states over a teacher-forced continuation, in the same forward pass.

    Each prefix is followed by its ``n`` continuation tokens. Causality keeps the
    prefix states identical to `cache`; the last layer (pre final norm) is also read
    at the prefix's last token and at each continuation token: ``final[:, j]`` is the
    state from which the model predicts the token ``j`` positions after the next one
    (what the linear approximation regresses to, and whose distribution the soft
    prompt is trained to match).

    Returns:
        ``states [len(layers), B, d_model]`` and ``final [B, n + 1, d_model]``
        (``None`` without continuations).
    """
    import torch

    rows = _as_rows(lm, prefixes)
    wanted = _layers(lm, layers)
    ahead = 0
    if continuations is not None:
        cont = continuations.tolist() if isinstance(continuations, torch.Tensor) else [list(c) for c in continuations]
        if len(cont) != len(rows) or len({len(c) for c in cont}) != 1:
            raise FutureLensError(
                f"continuations must give the same number of tokens for each of the {len(rows)} prefixes "
                f"(an [B, n] array), got {len(cont)} rows of lengths {sorted({len(c) for c in cont})}."
            )
        ahead = len(cont[0])
        full = [r + c for r, c in zip(rows, cont)]
    else:
        full = rows
    read = sorted(set(wanted) | ({lm.n_layers} if continuations is not None else set()))
    ids, lengths = pad_right(full, lm.pad_id)
    ids, mask = ids.to(lm.device), length_mask(lengths, ids.shape[1]).to(lm.device)
    batch = torch.arange(len(rows), device=lm.device)
    last = (lengths - 1 - ahead).to(lm.device)
    span = last[:, None] + torch.arange(ahead + 1, device=lm.device)

    embed = lm.envoy(lm.arch.embed)
    blocks = lm.envoy(lm.arch.blocks)
    is_tuple = lm.arch.block_output == "tuple"
    final = None  # only saved values come back out of a trace body
    with lm.nn.trace(input_ids=ids, attention_mask=mask, remote=lm.remote) as tracer:
        states = []
        # nnsight serves module outputs in execution order, so read layers ascending, each once.
        for layer in read:
            out = embed.output if layer == 0 else blocks[layer - 1].output
            hidden = out[0] if (is_tuple and layer > 0) else out
            if layer in wanted:
                states.append(hidden[batch, last])
            if continuations is not None and layer == lm.n_layers:
                final = hidden[batch[:, None], span].save()
        stacked = torch.stack(states).save()
        # Nothing downstream of the deepest requested layer is needed.
        tracer.stop()
    order = sorted(set(wanted))
    index = torch.tensor([order.index(layer) for layer in wanted], device=stacked.device)
    return stacked.index_select(0, index), final


@_remote_errors
def token_states(
    lm: "LensModel",
    ids: TokenIds,
    layers: int | Sequence[int] | None = None,
) -> "torch.Tensor":
    """Hidden states at every position of one unpadded row, for the requested layers, in one forward pass.

    Args:
        lm: the model.
        ids: one row: ``[T]`` / ``[1, T]`` token ids, or a text (tokenized as `cache` does).
        layers: one layer, several, or ``None`` for all ``0..n_layers``.

    Returns:
        ``[len(layers), T, d_model]`` in the order ``layers`` were given.
    """
    import torch

    rows = _as_rows(lm, ids)
    if len(rows) != 1:
        raise FutureLensError(f"token_states reads one row of tokens, got {len(rows)}: call it once per row, or use cache().")
    wanted = _layers(lm, layers)
    read = sorted(set(wanted))
    ids = torch.tensor(rows, dtype=torch.long, device=lm.device)

    embed = lm.envoy(lm.arch.embed)
    blocks = lm.envoy(lm.arch.blocks)
    is_tuple = lm.arch.block_output == "tuple"
    with lm.nn.trace(input_ids=ids, remote=lm.remote) as tracer:
        states = []
        # Execution order again: each layer read once, ascending.
        for layer in read:
            out = embed.output if layer == 0 else blocks[layer - 1].output
            hidden = out[0] if (is_tuple and layer > 0) else out
            states.append(hidden[0])
        stacked = torch.stack(states).save()
        tracer.stop()
    index = torch.tensor([read.index(layer) for layer in wanted], device=stacked.device)
    return stacked.index_select(0, index)


# --------------------------------------------------------------------------- patch


@dataclass
class PatchOutput:
    """What a patched run returns. ``R`` = number of read positions, ``k`` = top-k or rollout length."""

    logits: "torch.Tensor | None"
    """``[B, R, vocab]`` logits at the read positions (``None`` when ``top_k`` was asked for)."""
    top_ids: "torch.Tensor | None" = None
    """``[B, R, top_k]`` most probable next tokens at each read position."""
    top_probs: "torch.Tensor | None" = None
    """``[B, R, top_k]`` their probabilities."""
    rollout_ids: "torch.Tensor | None" = None
    """``[B, k]`` greedy tokens generated after the context, the patch held in place."""
    rollout_probs: "torch.Tensor | None" = None
    """``[B, k]`` the probability of each greedy token when it was chosen."""


def _as_batch_ids(lm: "LensModel", target: TokenIds | None, batch: int) -> "torch.Tensor":
    import torch

    if target is None:
        return torch.empty(batch, 0, dtype=torch.long)
    if isinstance(target, torch.Tensor) and target.dim() == 2:
        ids = target.long().cpu()
    else:
        rows = _as_rows(lm, target)
        if len({len(r) for r in rows}) != 1:
            raise FutureLensError(
                "patch() needs target contexts of equal length (one rectangular batch); "
                "group contexts by length or patch them one length at a time."
            )
        ids = torch.tensor(rows, dtype=torch.long)
    if ids.shape[0] == 1 and batch > 1:
        ids = ids.expand(batch, -1)
    if ids.shape[0] != batch:
        raise FutureLensError(f"target has {ids.shape[0]} rows but state has {batch}: give one row, or one per state.")
    return ids


def _position(value: int, length: int, what: str) -> int:
    resolved = value + length if value < 0 else value
    if not 0 <= resolved < length:
        raise FutureLensError(
            f"{what}={value} is out of range for a context of {length} tokens: use 0..{length - 1} or -1..-{length}."
        )
    return resolved


@_remote_errors
def patch(
    lm: "LensModel",
    state: "torch.Tensor",
    layer: "int | Sequence[int] | torch.Tensor",
    *,
    target: TokenIds | None = None,
    soft_prompt: "torch.Tensor | None" = None,
    position: int | None = None,
    read: int | Sequence[int] = -1,
    top_k: int | None = None,
    rollout: int = 0,
) -> PatchOutput:
    """Run a target context with ``state`` written over the output of ``layer`` at ``position``.

    The context is ``[soft_prompt (P vectors)] + target (T tokens)``. A soft prompt is
    written over the embedding output inside the trace (placeholder ids go in), so
    it works remotely and gradients flow to it; the model's weights stay frozen.

    Args:
        lm: the model.
        state: ``[B, d_model]`` (or ``[d_model]``) vectors to patch in, one per row.
        layer: the layer whose output is overwritten (0 = embedding output), or ``[B]``
            layers, one per row: row ``b`` is patched at ``layer[b]``, all rows in one forward.
        target: token ids / text after the soft prompt: ``[T]``, ``[1, T]`` (shared) or ``[B, T]``.
        soft_prompt: ``[P, d_model]`` or ``[B, P, d_model]`` embeddings for the first P positions.
        position: where to patch; default the soft prompt's last vector, else the last token.
        read: position(s) whose next-token logits to return (default the last).
        top_k: return the ``top_k`` ids and probabilities instead of full logits.
        rollout: also generate this many greedy tokens after the context, the patch held in place.

    Returns:
        `PatchOutput`.
    """
    import torch

    ids, layer, state, soft_prompt, position = _context(lm, state, layer, target, soft_prompt, position)
    length = ids.shape[1]
    reads = [_position(r, length, "read") for r in ([read] if isinstance(read, int) else read)]
    if top_k is not None and not 1 <= top_k <= lm.vocab_size:
        raise FutureLensError(f"top_k must be in 1..{lm.vocab_size}, got {top_k}.")
    if rollout < 0:
        raise FutureLensError(f"rollout must be >= 0, got {rollout}.")

    from .remote import run_job

    # Remotely the patched forward and the rollout are one request.
    logits, rolled = run_job(lm, _patch_job, ids, layer, state, soft_prompt, position, reads, rollout)
    out = PatchOutput(logits=logits)
    if top_k is not None:
        probs = torch.softmax(logits.float(), dim=-1)
        out.top_probs, out.top_ids = probs.topk(top_k, dim=-1)
        out.logits = None
    if rollout:
        out.rollout_ids, out.rollout_probs = rolled
    return out


def _patch_job(lm: "LensModel", ids: "torch.Tensor", layer: Any, state: "torch.Tensor", soft_prompt: Any, position: int,
               reads: list[int], rollout: int) -> tuple:
    logits = _patched_logits(lm, ids, _patch_groups(layer, state), position, soft_prompt, reads)
    rolled = _rollout(lm, ids, layer, state, soft_prompt, position, rollout, ids.shape[0], None) if rollout else None
    return logits, rolled


@_remote_errors
def rollout(
    lm: "LensModel",
    state: "torch.Tensor",
    layer: "int | Sequence[int] | torch.Tensor",
    *,
    target: TokenIds | None = None,
    soft_prompt: "torch.Tensor | None" = None,
    position: int | None = None,
    n: int = 4,
    chunk_size: int = 512,
    progress: "Callable[[int], Any] | None" = None,
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """The greedy phrase each patched context rolls out: ``patch(..., rollout=n)`` without the logits.

    Arguments are `patch`'s. Rows go through ``chunk_size`` at a time (one ``generate`` each).
    Rows whose context before ``position`` is the same (one soft prompt for many states, a
    fixed text prompt) share it: that prefix runs once and its key/value cache is copied to
    each row, so a row patched at its last position costs ``n`` positions, not ``position + n``
    (models with a recurrent state, ``arch.kv_cache=False``, run every row in full). ``progress`` is called
    with the number of rows finished after each chunk. Remotely the whole call is one request.

    Returns:
        ``(ids [B, n], probs [B, n])``: the greedy tokens and the probability of each when it was chosen.
    """
    if n < 1:
        raise FutureLensError(f"n must be >= 1 tokens to roll out, got {n}.")
    if chunk_size < 1:
        raise FutureLensError(f"chunk_size must be >= 1, got {chunk_size}.")
    ids, layer, state, soft_prompt, position = _context(lm, state, layer, target, soft_prompt, position)
    from .remote import run_job

    return run_job(lm, _rollout, ids, layer, state, soft_prompt, position, n, chunk_size, None if lm.remote else progress)


def _context(
    lm: "LensModel", state: Any, layer: Any, target: TokenIds | None, soft_prompt: "torch.Tensor | None", position: int | None
) -> tuple:
    """`patch`'s arguments checked and resolved: ``(ids [B, P+T], layer, state [B, d], soft_prompt [B, P, d] | None, position)``.

    ``ids`` holds placeholder ids where the soft prompt goes; everything is on ``lm.device``.
    """
    import torch

    if not isinstance(state, torch.Tensor):
        raise FutureLensError("state must be a torch.Tensor of shape [B, d_model] or [d_model].")
    if state.dim() == 1:
        state = state[None]
    if state.dim() != 2 or state.shape[-1] != lm.d_model:
        raise FutureLensError(f"state must be [B, {lm.d_model}] for {lm.name}, got {tuple(state.shape)}.")
    batch = state.shape[0]
    layer = _patch_layers(lm, layer, batch)
    ids = _as_batch_ids(lm, target, batch)

    n_soft = 0
    if soft_prompt is not None:
        if soft_prompt.dim() == 2:
            soft_prompt = soft_prompt[None]
        if soft_prompt.dim() != 3 or soft_prompt.shape[-1] != lm.d_model or soft_prompt.shape[0] not in (1, batch):
            raise FutureLensError(
                f"soft_prompt must be [P, {lm.d_model}] or [{batch}, P, {lm.d_model}], got {tuple(soft_prompt.shape)}."
            )
        n_soft = soft_prompt.shape[1]
        soft_prompt = soft_prompt.to(lm.device, lm.dtype).expand(batch, -1, -1)
        placeholder = torch.full((batch, n_soft), lm.pad_id, dtype=torch.long)
        ids = torch.cat([placeholder, ids], dim=1)
    length = ids.shape[1]
    if length == 0:
        raise FutureLensError("The target context is empty: give target tokens, a soft prompt, or both.")
    position = _position(n_soft - 1 if position is None and n_soft else (-1 if position is None else position), length, "position")
    return ids.to(lm.device), layer, state.to(lm.device, lm.dtype), soft_prompt, position


def _rollout(
    lm: "LensModel",
    ids: "torch.Tensor",
    layer: "int | list[int]",
    state: "torch.Tensor",
    soft_prompt: "torch.Tensor | None",
    position: int,
    n: int,
    chunk_size: int,
    progress: "Callable[[int], Any] | None",
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """`rollout` on resolved arguments (see `_context`), chunk by chunk: ``(ids [B, n], probs [B, n])`` on the CPU.

    Call it through `run_job` when remote: the shared prefix's cache must stay on the server.
    """
    import torch

    batch = ids.shape[0]
    shared = _shared_prefix(lm, ids, soft_prompt, position, chunk_size)
    out_ids = torch.empty(batch, n, dtype=torch.long)
    out_probs = torch.empty(batch, n)
    # Equal chunks: 310 rows at chunk_size 256 run as 155 + 155, not 256 + a slow, small 54.
    n_chunks = -(-batch // chunk_size)
    size = -(-batch // n_chunks)
    for start in range(0, batch, size):
        rows = torch.arange(start, min(start + size, batch), device=ids.device)
        layers = layer if isinstance(layer, int) else [layer[i] for i in rows.tolist()]
        groups = _patch_groups(layers, state[rows])
        soft = None if soft_prompt is None else soft_prompt[rows]
        if shared is None:
            got = _patched_rollout(lm, ids[rows], groups, position, soft, n)
        else:
            # Only positions from `position` on are run: the patch lands on the step's first one.
            cache, index = shared
            past = copy.deepcopy(cache)
            past.reorder_cache(index[rows])
            rest = None if soft is None or position >= soft.shape[1] else soft[:, position:]
            got = _patched_rollout(lm, ids[rows], groups, 0, rest, n, past=past)
        out_ids[rows.cpu()], out_probs[rows.cpu()] = got[0].cpu(), got[1].float().cpu()
        if progress is not None:
            progress(len(rows))
    return out_ids, out_probs


def _shared_prefix(
    lm: "LensModel", ids: "torch.Tensor", soft_prompt: "torch.Tensor | None", position: int, chunk_size: int
) -> "tuple[Any, torch.Tensor] | None":
    """``(key/value cache of the G distinct contexts before position, [B] row -> context)``, or None.

    None when nothing is shared (every row's prefix differs), there is no prefix, the
    model has no key/value cache, or the distinct prefixes would not fit one chunk.
    """
    import torch

    if position == 0 or not lm.arch.kv_cache:
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
    soft = None if soft_prompt is None else soft_prompt[first, :position]
    return _prefix_cache(lm, ids[first, :position], soft), index


def _prefix_cache(lm: "LensModel", ids: "torch.Tensor", soft_prompt: "torch.Tensor | None") -> Any:
    """The model's key/value cache after ``ids [G, p]`` (soft prompt written over the first positions)."""
    import torch
    from transformers import DynamicCache

    embed = lm.envoy(lm.arch.embed)
    blocks = lm.envoy(lm.arch.blocks)
    is_tuple = lm.arch.block_output == "tuple"
    # The model's own cache class for its config (sliding-window layers and all); filled in place.
    past = DynamicCache(config=lm.config)
    with lm.nn.trace(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=past, use_cache=True, remote=lm.remote) as tracer:
        _write_patch(embed, blocks, [], 0, soft_prompt, is_tuple)
        # The cache is complete once the last block has run: skip the final norm and the head.
        blocks[lm.n_layers - 1].output
        tracer.stop()
    return past


def _patch_layers(lm: "LensModel", layer: "int | Sequence[int] | torch.Tensor", batch: int) -> "int | list[int]":
    """One layer for every row (an int), or ``[B]`` per-row layers, each resolved to 0..n_layers."""
    import torch

    if isinstance(layer, torch.Tensor):
        if layer.dim() == 0:
            layer = int(layer)
        elif layer.dim() != 1 or layer.dtype.is_floating_point or layer.dtype == torch.bool:
            raise FutureLensError(f"layer must be an int or a [B] integer tensor of layers, got a {layer.dtype} of shape {tuple(layer.shape)}.")
        else:
            layer = layer.tolist()
    elif hasattr(layer, "tolist"):  # a numpy array or scalar
        layer = layer.tolist()
    if isinstance(layer, int) and not isinstance(layer, bool):
        return lm.check_layer(layer)
    if isinstance(layer, (str, bytes)) or not isinstance(layer, Sequence):
        raise FutureLensError(f"layer must be an int or a sequence of {batch} ints (one per row), got {layer!r}.")
    per_row = [lm.check_layer(x) for x in layer]
    if len(per_row) != batch:
        raise FutureLensError(f"layer gives {len(per_row)} layers but state has {batch} rows: give one layer, or one per row.")
    # All rows at one layer is the plain single-layer patch: keep that path (and its exact arithmetic).
    return per_row[0] if len(set(per_row)) == 1 else per_row


def _patch_groups(layer: "int | list[int]", state: "torch.Tensor") -> list[tuple[int, "torch.Tensor | None", "torch.Tensor"]]:
    """``(layer, rows, state[rows])`` per distinct layer, ascending; ``rows`` is None for "every row".

    Ascending because nnsight serves module outputs in execution order: within one
    trace a block's output can only be written before any later block's.
    """
    import torch

    if isinstance(layer, int):
        return [(layer, None, state)]
    groups = []
    for value in sorted(set(layer)):
        rows = torch.tensor([b for b, x in enumerate(layer) if x == value], device=state.device)
        groups.append((value, rows, state.index_select(0, rows)))
    return groups


def _write_patch(embed: Any, blocks: Any, groups: list, position: int, soft_prompt: "torch.Tensor | None", is_tuple: bool) -> None:
    """Inside a trace: the soft prompt over the embedding output, then each group's states over its layer's output.

    Called from trace bodies, so it uses only torch and the envoys it is given (it
    travels to NDIF as source: futurelens is registered with nnsight for remote runs).
    """
    import torch

    n_soft = 0 if soft_prompt is None else soft_prompt.shape[1]
    at_embed = [g for g in groups if g[0] == 0]
    if n_soft or at_embed:
        emb = embed.output
        if n_soft:
            emb = torch.cat([soft_prompt, emb[:, n_soft:]], dim=1)
        if at_embed:
            emb = emb.clone()
            for _, rows, value in at_embed:
                if rows is None:
                    emb[:, position] = value
                else:
                    emb[rows, position] = value
        embed.output = emb
    for layer, rows, value in (g for g in groups if g[0] > 0):
        block = blocks[layer - 1]
        out = block.output
        hidden = (out[0] if is_tuple else out).clone()
        if rows is None:
            hidden[:, position] = value
        else:
            hidden[rows, position] = value
        block.output = (hidden,) + tuple(out[1:]) if is_tuple else hidden


def _greedy_kwargs(lm: "LensModel", ids: "torch.Tensor", n: int) -> dict:
    """``generate`` arguments for ``n`` greedy tokens after unpadded ``ids [B, T]``."""
    import torch

    return dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        do_sample=False,
        # Greedy means argmax at every step: no stopping (or suppression) at end-of-text.
        eos_token_id=None,
        pad_token_id=lm.pad_id,
        remote=lm.remote,
    )


def _patched_rollout(
    lm: "LensModel",
    ids: "torch.Tensor",
    groups: list,
    position: int,
    soft_prompt: "torch.Tensor | None",
    n: int,
    past: Any = None,
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Greedy continuation of a patched context with the model's KV cache: ``(tokens [B, n], probs [B, n])``.

    The patch is written in the first (prefill) step only; later steps feed one token
    each and attend to the cached, patched past, exactly as a full re-run of the
    growing context with the patch held in place would. With ``past``, a cache of the
    context's first ``p`` positions, the prefill step runs only ``ids[:, p:]``: then
    ``position`` and ``soft_prompt`` are relative to position ``p``.
    """
    import torch

    embed = lm.envoy(lm.arch.embed)
    blocks = lm.envoy(lm.arch.blocks)
    is_tuple = lm.arch.block_output == "tuple"
    extra = {} if past is None else {"past_key_values": past}
    with lm.nn.generate(**_greedy_kwargs(lm, ids, n), output_logits=True, return_dict_in_generate=True, **extra) as tracer:
        _write_patch(embed, blocks, groups, position, soft_prompt, is_tuple)
        result = tracer.result.save()
    tokens = result.sequences[:, ids.shape[1] :]
    # The greedy token has the largest logit, so p(chosen) = 1 / sum(exp(logits - chosen)):
    # one pass over the vocabulary per step, overflow-free, no [B, n, vocab] softmax kept.
    probs = []
    for i, step in enumerate(result.logits):
        chosen = step.gather(1, tokens[:, i, None].to(step.device)).float()
        probs.append(1.0 / (step.float() - chosen).exp_().sum(-1))
    return tokens, torch.stack(probs, 1)


def _patched_logits(
    lm: "LensModel",
    ids: "torch.Tensor",
    groups: list[tuple[int, "torch.Tensor | None", "torch.Tensor"]],
    position: int,
    soft_prompt: "torch.Tensor | None",
    reads: list[int],
) -> "torch.Tensor":
    """One patched forward; ``[B, len(reads), vocab]`` logits at ``reads``.

    ``groups`` (from `_patch_groups`) says which rows get which state at which layer.
    """
    import torch

    embed = lm.envoy(lm.arch.embed)
    blocks = lm.envoy(lm.arch.blocks)
    is_tuple = lm.arch.block_output == "tuple"
    read_index = torch.tensor(reads, device=ids.device)
    norm, unembed, norm_is_block = _head(lm)

    with lm.nn.trace(input_ids=ids, remote=lm.remote) as tracer:
        _write_patch(embed, blocks, groups, position, soft_prompt, is_tuple)
        final = norm.output
        final = final[0] if norm_is_block and is_tuple else final
        # Unembed only the read positions, then stop: the model's own head would
        # materialise [B, T, vocab] logits, most of them never read.
        logits = unembed(final[:, read_index]).save()
        tracer.stop()
    return logits


def _head(lm: "LensModel") -> tuple[Any, Any, bool]:
    """(module whose output feeds the unembedding, the unembedding, whether that module is the last block)."""
    if lm.arch.final_norm is not None:
        return lm.envoy(lm.arch.final_norm), lm.envoy(lm.arch.unembed), False
    return lm.envoy(lm.arch.blocks)[lm.n_layers - 1], lm.envoy(lm.arch.unembed), True


# --------------------------------------------------------------------------- decode


@_remote_errors
def decode(lm: "LensModel", hidden: "torch.Tensor") -> "torch.Tensor":
    """The model's own head on last-layer-style states: final norm, then unembedding.

    ``hidden [..., d_model]`` -> ``logits [..., vocab]``. This is the logit lens on
    any layer's state, the model's next-token distribution on a cached final state,
    and the decoder of the linear approximation. Locally the modules are called
    directly (gradients flow); remotely the head runs inside a trace on the server.
    """
    import torch

    if hidden.shape[-1] != lm.d_model:
        raise FutureLensError(f"decode needs [..., {lm.d_model}] states, got {tuple(hidden.shape)}.")
    norm = lm.module(lm.arch.final_norm) if lm.arch.final_norm is not None else torch.nn.Identity()
    unembed = lm.module(lm.arch.unembed)
    if not lm.remote:
        return unembed(norm(hidden.to(lm.device, lm.dtype)))
    norm_env = lm.envoy(lm.arch.final_norm) if lm.arch.final_norm is not None else None
    unembed_env = lm.envoy(lm.arch.unembed)
    hidden = hidden.to(lm.device, lm.dtype)
    with lm.nn.trace(input_ids=torch.full((1, 1), lm.pad_id, dtype=torch.long), remote=lm.remote) as tracer:
        x = norm_env(hidden) if norm_env is not None else hidden
        logits = unembed_env(x).save()
        tracer.stop()
    return logits


# --------------------------------------------------------------------------- greedy


@_remote_errors
def greedy(
    lm: "LensModel",
    prefixes: TokenIds,
    n: int,
    batch_size: int = 64,
    progress: "Callable[[int], Any] | None" = None,
) -> "torch.Tensor":
    """The model's own greedy continuation of each prefix, ``[B, n]`` token ids, in input order.

    Prefixes are grouped by exact length and decoded with the model's KV cache
    (``generate``), so no row is ever padded: each continuation is exactly what
    the prefix alone would give, for attention and recurrent models alike, and a
    step costs one token rather than a full re-run of the prefix. ``progress`` is
    called with the number of rows finished after each chunk.
    """
    import torch

    if n < 1:
        raise FutureLensError(f"n must be >= 1 tokens to generate, got {n}.")
    rows = _as_rows(lm, prefixes)
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(len(row), []).append(i)
    out = torch.empty(len(rows), n, dtype=torch.long)
    for length, members in groups.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            ids = torch.tensor([rows[i] for i in chunk], dtype=torch.long, device=lm.device)
            with lm.nn.generate(**_greedy_kwargs(lm, ids, n)) as tracer:
                result = tracer.result.save()
            out[chunk] = result[:, length : length + n].cpu()
            if progress is not None:
                progress(len(chunk))
    return out
