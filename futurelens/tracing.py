"""The trace primitives, client side: `cache`, `cache_ahead`, `token_states`, `patch`, `rollout`, `decode`, `greedy`.

Each checks and resolves its arguments here (texts to ids, layers, shapes, positions),
then runs its body from `futurelens.server` through `futurelens.dispatch.run_job`: a
plain call locally, one NDIF request remotely. Inputs go as CPU tensors and plain
lists; the server side finds the device. Results come back on the CPU.

Layers follow `futurelens.arch.Arch`: 0 is the residual stream entering block 0 (block 0's
input hidden state, what ``output_hidden_states[0]`` holds), ``L`` the output of block ``L-1``
(the residual stream after ``L`` blocks, before the final norm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import torch

from .errors import FutureLensError
from .dispatch import ids_bytes, run_job, spans, tensor_bytes
from .server import jobs
from .server.access import top_of

if TYPE_CHECKING:
    from .models import LensModel


TokenIds = Union["torch.Tensor", Sequence[int], Sequence[Sequence[int]], str, Sequence[str]]


# --------------------------------------------------------------------------- inputs


def _as_rows(lm: "LensModel", prefixes: TokenIds) -> list[list[int]]:
    """Normalise text / ids / a tensor into a list of token-id rows, refusing empty ones."""
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


def _states_dtype(lm: "LensModel") -> Any:
    """The dtype of the model's hidden states (a float32 residual in a bfloat16 Mamba), as the server returns them."""
    return getattr(torch, lm._hidden_dtype) if lm._hidden_dtype else lm.dtype


def _result_dtype(lm: "LensModel") -> Any:
    """The dtype a result's hidden states are counted in for the request bound: the wider of the states' and the
    model's."""
    return max((_states_dtype(lm), lm.dtype), key=lambda dtype: tensor_bytes(dtype=dtype))


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
    rows = _as_rows(lm, prefixes)
    wanted = _layers(lm, layers)
    cont = None
    if continuations is not None:
        cont = continuations.tolist() if isinstance(continuations, torch.Tensor) else [list(map(int, c)) for c in continuations]
        if len(cont) != len(rows) or len({len(c) for c in cont}) != 1:
            raise FutureLensError(
                f"continuations must give the same number of tokens for each of the {len(rows)} prefixes "
                f"(an [B, n] array), got {len(cont)} rows of lengths {sorted({len(c) for c in cont})}."
            )
    ahead = 0 if cont is None else len(cont[0]) + 1
    per_row = tensor_bytes(len(wanted) + ahead, lm.d_model, dtype=_result_dtype(lm))
    sent = [ids_bytes(len(r) + (0 if cont is None else len(cont[0]))) for r in rows]
    parts = [
        run_job(lm, jobs.cache_job, rows[a:b], None if cont is None else cont[a:b], wanted)
        for a, b in spans(lm, len(rows), payload=sent, result=per_row, lower="cache fewer layers per call")
    ]
    states = torch.cat([p[0] for p in parts], dim=1)
    return states, None if cont is None else torch.cat([p[1] for p in parts], dim=0)


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
    rows = _as_rows(lm, ids)
    if len(rows) != 1:
        raise FutureLensError(f"token_states reads one row of tokens, got {len(rows)}: call it once per row, or use cache().")
    wanted, ids = _layers(lm, layers), torch.tensor(rows, dtype=torch.long)
    length, per_position = ids.shape[1], tensor_bytes(lm.d_model, dtype=_result_dtype(lm))
    # Remotely, a result over the bound is split by positions (each request's forward reads a window of them),
    # then by layers: every request runs the whole row.
    windows = spans(lm, length, payload=0, result=per_position, fixed=ids_bytes(length))
    width = max(b - a for a, b in windows)
    groups = spans(lm, len(wanted), result=width * per_position, fixed=ids_bytes(length))
    if len(windows) == 1 and len(groups) == 1:
        return run_job(lm, jobs.row_states_job, ids, wanted, 0, length)
    out = torch.empty(len(wanted), length, lm.d_model, dtype=_states_dtype(lm))
    for g0, g1 in groups:
        for a, b in windows:
            out[g0:g1, a:b] = run_job(lm, jobs.row_states_job, ids, wanted[g0:g1], a, b)
    return out


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
        layer: the layer whose output is overwritten (0 = the input of block 0), or ``[B]``
            layers, one per row: row ``b`` is patched at ``layer[b]``, all rows in one forward.
        target: token ids / text after the soft prompt: ``[T]``, ``[1, T]`` (shared) or ``[B, T]``.
        soft_prompt: ``[P, embed_dim]`` or ``[B, P, embed_dim]`` embeddings for the first P positions
            (``lm.embed_dim``, the embedding output's width: ``d_model`` except in OPT-350m's layout).
        position: where to patch; default the soft prompt's last vector, else the last token.
        read: position(s) whose next-token logits to return (default the last).
        top_k: return the ``top_k`` ids and probabilities instead of full logits.
        rollout: also generate this many greedy tokens after the context, the patch held in place.

    Returns:
        `PatchOutput`.
    """
    ids, layer, state, soft_prompt, position = _context(lm, state, layer, target, soft_prompt, position)
    length = ids.shape[1]
    reads = [_position(r, length, "read") for r in ([read] if isinstance(read, int) else read)]
    if top_k is not None and not 1 <= top_k <= lm.vocab_size:
        raise FutureLensError(f"top_k must be in 1..{lm.vocab_size}, got {top_k}.")
    if rollout < 0:
        raise FutureLensError(f"rollout must be >= 0, got {rollout}.")

    # Remotely the patched forward and the rollout are one request.
    logits, rolled = run_job(lm, jobs.patch_job, ids, layer, state, soft_prompt, position, reads, rollout)
    out = PatchOutput(logits=logits)
    if top_k is not None:
        out.top_probs, out.top_ids = top_of(logits, top_k)
        out.logits = None
    if rollout:
        out.rollout_ids, out.rollout_probs = rolled
    return out


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
    fixed text prompt) share it: that prefix runs once per chunk and the key/value cache the model
    returns is indexed to each row, so a row patched at its last position costs ``n`` positions, not ``position + n``
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
    return run_job(lm, jobs.rollout_job, ids, layer, state, soft_prompt, position, n, chunk_size, None if lm.remote else progress)


def _context(
    lm: "LensModel", state: Any, layer: Any, target: TokenIds | None, soft_prompt: "torch.Tensor | None", position: int | None
) -> tuple:
    """`patch`'s arguments checked and resolved: ``(ids [B, P+T], layer, state [B, d], soft_prompt [B, P, d] | None, position)``.

    ``ids`` holds placeholder ids where the soft prompt goes; nothing is moved: the server side finds the device.
    """
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
        if soft_prompt.dim() != 3 or soft_prompt.shape[-1] != lm.embed_dim or soft_prompt.shape[0] not in (1, batch):
            raise FutureLensError(
                f"soft_prompt must be [P, {lm.embed_dim}] or [{batch}, P, {lm.embed_dim}] (the embedding's width), "
                f"got {tuple(soft_prompt.shape)}."
            )
        n_soft = soft_prompt.shape[1]
        soft_prompt = soft_prompt.expand(batch, -1, -1)
        placeholder = torch.full((batch, n_soft), lm.pad_id, dtype=torch.long)
        ids = torch.cat([placeholder, ids], dim=1)
    length = ids.shape[1]
    if length == 0:
        raise FutureLensError("The target context is empty: give target tokens, a soft prompt, or both.")
    position = _position(n_soft - 1 if position is None and n_soft else (-1 if position is None else position), length, "position")
    return ids, layer, state, soft_prompt, position


def _patch_layers(lm: "LensModel", layer: "int | Sequence[int] | torch.Tensor", batch: int) -> "int | list[int]":
    """One layer for every row (an int), or ``[B]`` per-row layers, each resolved to 0..n_layers."""
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


# --------------------------------------------------------------------------- decode


def decode(lm: "LensModel", hidden: "torch.Tensor") -> "torch.Tensor":
    """The model's own head on last-layer-style states: final norm, any projection, unembedding, logit scale / soft cap.

    ``hidden [..., d_model]`` -> ``logits [..., vocab]``. This is the logit lens on
    any layer's state, the model's next-token distribution on a cached final state,
    and the decoder of the linear approximation. Locally the modules are called
    directly (gradients flow); remotely the head runs inside a trace on the server.
    """
    if not isinstance(hidden, torch.Tensor) or hidden.shape[-1] != lm.d_model:
        shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise FutureLensError(f"decode needs [..., {lm.d_model}] states, got {shape}.")
    lead, d = hidden.shape[:-1], hidden.shape[-1]
    flat = hidden.reshape(-1, d)
    parts = [
        run_job(lm, jobs.decode_job, flat[a:b])
        for a, b in spans(lm, flat.shape[0], payload=tensor_bytes(d, dtype=hidden.dtype),
                          result=tensor_bytes(lm.vocab_size, dtype=lm.dtype))
    ]
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).reshape(*lead, -1)


# --------------------------------------------------------------------------- greedy


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
    if n < 1:
        raise FutureLensError(f"n must be >= 1 tokens to generate, got {n}.")
    rows = _as_rows(lm, prefixes)
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(len(row), []).append(i)
    out = torch.empty(len(rows), n, dtype=torch.long)
    for length, members in groups.items():
        for start in range(0, len(members), batch_size):
            batch = members[start : start + batch_size]
            for a, b in spans(lm, len(batch), payload=ids_bytes(length), result=ids_bytes(n)):
                chunk = batch[a:b]
                (got,) = run_job(lm, jobs.greedy_job, [[rows[i] for i in chunk]], n)
                out[chunk] = got
                if progress is not None:
                    progress(len(chunk))
    return out
