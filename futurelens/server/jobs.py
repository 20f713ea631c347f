"""Jobs: the multi-step work one request runs where the model is. Ships to NDIF (see the rule in `futurelens.server`).

Each job is what `futurelens.dispatch.run_job` sends as one request: it loops over traces
and reduces there, so only ids, per-row numbers or a trained tensor come back.
Method descriptions are plain tuples (``("fixed", name, prompt_ids)``,
``("learned", name, soft_prompt [P, d])``, ``("decode", name, key)`` for a probe the client applied) and
batches plain dicts of CPU tensors (``states [b, d]``, ``target [b, N+1]``, ``final [b, N+1, d]``, and
``hidden {key: [b, N+1, d]}``, the rows a client-side probe mapped).
"""

from __future__ import annotations

import torch

from .access import top_of
from .traces import decode, device_of, greedy_rows, patched_logits, read_states, rollout, row_states, weightless


# --------------------------------------------------------------------------- inputs


def pad_rows(rows, pad_id):
    """Right-pad token rows: ``(ids [B, T], lengths [B])``. Right padding leaves every real position as unpadded."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows])


# --------------------------------------------------------------------------- primitives as jobs


def cache_job(model, spec, rows, conts, wanted):
    """`futurelens.cache_ahead` where the model is: ``(states [L, B, d], final [B, n + 1, d] | None)``."""
    full = rows if conts is None else [r + c for r, c in zip(rows, conts)]
    ids, lengths = pad_rows(full, spec["pad_id"])
    ahead = 0 if conts is None else len(conts[0])
    return read_states(model, spec, ids, lengths, ahead, wanted, conts is not None)


def row_states_job(model, spec, ids, wanted, start, stop):
    """`futurelens.token_states`: ``[len(wanted), stop - start, d]``, positions ``start:stop`` of the row's states.

    A window is a copy, not a view: a saved view would carry the whole row's storage back.
    """
    states = row_states(model, spec, ids, wanted)
    if start == 0 and stop >= states.shape[1]:
        return states.cpu()
    return states[:, start:stop].cpu().clone()


def decode_job(model, spec, hidden):
    return decode(model, spec, hidden).cpu()


def decode_top_job(model, spec, hidden, top_k):
    """The logit lens reduced where the model is: top-k probabilities and ids of the head on ``hidden [B, d]``."""
    with torch.no_grad():
        top_p, top_i = top_of(decode(model, spec, hidden), top_k)
    return top_p.cpu(), top_i.cpu()


def greedy_job(model, spec, groups, n):
    """Greedy continuations of equal-length row groups: ``[[B_g, n] per group]`` on the CPU."""
    with torch.no_grad():
        return [greedy_rows_of(model, spec, rows, n) for rows in groups]


def greedy_rows_of(model, spec, rows, n):
    from_rows = torch.tensor(rows, dtype=torch.long)
    return greedy_rows(model, spec, from_rows, n)


def patch_job(model, spec, ids, layer, state, soft_prompt, position, reads, n_rollout):
    """`futurelens.patch`: logits at ``reads`` and, with ``n_rollout``, the greedy phrase (one request)."""
    logits = patched_logits(model, spec, ids, layer, state, soft_prompt, position, reads)
    rolled = None
    if n_rollout:
        rolled = rollout(model, spec, ids, layer, state, soft_prompt, position, n_rollout, ids.shape[0], None)
    return logits.cpu(), rolled


def rollout_job(model, spec, ids, layer, state, soft_prompt, position, n, chunk_size, progress):
    with torch.no_grad():
        return rollout(model, spec, ids, layer, state, soft_prompt, position, n, chunk_size, progress)


# --------------------------------------------------------------------------- the state cache


def cache_shard(model, spec, prefixes, conts, layers, batch_size, dtype, progress):
    """``states [len(layers), n, d]`` and ``final [n, n_max + 1, d]`` for one shard's rows, in row order.

    Batches are length-sorted within the shard only, so a shard never depends on what was
    computed before it.
    """
    n = len(prefixes)
    order = sorted(range(n), key=lambda i: len(prefixes[i]))
    states, final = None, None
    with torch.no_grad():
        for a in range(0, n, batch_size):
            batch = order[a : a + batch_size]
            s, f = cache_job(model, spec, [prefixes[i] for i in batch], [conts[i] for i in batch], layers)
            if states is None:
                states = torch.empty(len(layers), n, s.shape[-1], dtype=dtype)
                final = torch.empty(n, f.shape[1], f.shape[-1], dtype=dtype)
            states[:, batch] = s.to("cpu", dtype)
            final[batch] = f.to("cpu", dtype)
            if progress is not None:
                progress(len(batch))
    return states, final


# --------------------------------------------------------------------------- methods that need the model


def prompt_logits(model, spec, states, layer, teacher, prompt_ids, soft_prompt):
    """Patch ``states [b, d]`` at ``layer`` into a prompt followed by ``teacher [b, n]`` tokens.

    Give ``prompt_ids`` (a fixed prompt, P tokens) or ``soft_prompt [P, d]``; the state goes to
    the prompt's last position. Returns ``logits [b, n + 1, vocab]``: entry N predicts N ahead.
    """
    teacher = teacher.long().cpu()
    b = states.shape[0]
    if prompt_ids is not None:
        n_prompt = len(prompt_ids)
        ids = torch.cat([torch.tensor(prompt_ids, dtype=torch.long).expand(b, -1), teacher], 1)
        soft = None
    else:
        n_prompt = soft_prompt.shape[-2]
        ids = torch.cat([torch.full((b, n_prompt), spec["pad_id"], dtype=torch.long), teacher], 1)
        soft = soft_prompt.expand(b, -1, -1) if soft_prompt.dim() == 2 else soft_prompt
    reads = list(range(n_prompt - 1, n_prompt + teacher.shape[1]))
    return patched_logits(model, spec, ids, layer, states, soft, n_prompt - 1, reads)


def method_logits(model, spec, method, batch, layer):
    """``[b, N + 1, vocab]`` logits of a model-side method on one batch of states read at ``layer``.

    ``method`` is ``(kind, name, payload[, write layer])``: a prompt method patches the state at
    its write layer (Patchscopes' target layer), ``layer`` itself when that is None or absent; a
    ``"decode"`` method decodes the rows the client mapped, ``batch["hidden"][payload]``.
    """
    kind, _, payload = method[:3]
    write = method[3] if len(method) > 3 and method[3] is not None else layer
    if kind == "decode":
        # A probe applied on the client (the linear map, the MLP probe: it holds them, and a map is far bigger than
        # the rows it maps): only its rows ``batch["hidden"][payload] [b, N + 1, d]`` travel, to the model's head.
        return decode(model, spec, batch["hidden"][payload])
    teacher = batch["target"][:, :-1]
    if kind == "fixed":
        return prompt_logits(model, spec, batch["states"], write, teacher, payload, None)
    return prompt_logits(model, spec, batch["states"], write, teacher, None, payload)


def mlp_states(params, states):
    """The MLP probe's residual block per N: ``states [b, d]`` -> ``[b, N + 1, d]`` (decode them with the model's head).

    ``params = (w1 [N+1, h, d], b1 [N+1, h], w2 [N+1, d, h], b2 [N+1, d])``; row N is
    ``x + w2[N] silu(w1[N] x + b1[N]) + b2[N]``. Differentiable in ``params`` (the probe trains through it).
    """
    w1, b1, w2, b2 = params
    x = states.float().to(w1.device)
    inner = torch.nn.functional.silu(torch.einsum("bd,nhd->bnh", x, w1) + b1)
    return x[:, None] + torch.einsum("bnh,ndh->bnd", inner, w2) + b2


def nll_of(logprobs, ids):
    """``[b]`` −log p(ids) under ``logprobs [b, V]``; NaN where an id is missing (< 0)."""
    nll = -logprobs.gather(1, ids.clamp_min(0)[:, None].to(logprobs.device))[:, 0].cpu()
    return torch.where(ids >= 0, nll, torch.full_like(nll, float("nan")))


def score_job(model, spec, methods, batches, layer, k, client_top1):
    """Score one layer where the model is; only ``[b, k]`` ids and ``[b]`` numbers come back.

    For each model-side method: ``(i, name, n, top_ids, surprisal, target nll, text nll)`` per
    batch and N, surprisal being −log p_model of its top-1 under the model's own distribution N
    ahead (its head on the cached last-layer state), text nll −log p_method of the corpus's real
    token N ahead (None unless the batch has ``text [b, N + 1]``). For predictions made
    client-side (``client_top1[i][name] = [top-1 ids per N]``): ``(i, name, n, None, surprisal, None, None)``.
    """
    rows = []
    with torch.no_grad():
        for i, batch in enumerate(batches):
            model_lp = decode(model, spec, batch["final"]).float().log_softmax(-1)  # [b, N + 1, V]
            for method in methods:
                logprobs = method_logits(model, spec, method, batch, layer).float().log_softmax(-1)
                for n in range(logprobs.shape[1]):
                    top = logprobs[:, n].topk(k, dim=-1).indices
                    text = batch.get("text")
                    rows.append((i, method[1], n, top.cpu(), nll_of(model_lp[:, n], top[:, 0]),
                                 nll_of(logprobs[:, n], batch["target"][:, n]),
                                 None if text is None else nll_of(logprobs[:, n], text[:, n])))
            for name, tops in client_top1[i].items():
                for n, top in enumerate(tops):
                    rows.append((i, name, n, None, nll_of(model_lp[:, n], top), None, None))
    return rows


# --------------------------------------------------------------------------- soft-prompt training


def make_optimizer(params, settings):
    if settings["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=settings["lr"], weight_decay=settings["weight_decay"])
    if settings["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=settings["lr"])
    return torch.optim.SGD(params, lr=settings["lr"], weight_decay=settings["weight_decay"])


def prompt_loss(model, spec, prompt, batch, layer, n, loss):
    """The patched run's prediction of the token ``n`` ahead: KL(model || patched) or cross-entropy."""
    logits = prompt_logits(model, spec, batch["states"], layer, batch["target"][:, :n], None, prompt)[:, n].float()
    logprobs = logits.log_softmax(-1)
    target = batch["target"][:, n].to(logprobs.device)
    if loss == "ce":
        return torch.nn.functional.nll_loss(logprobs, target)
    with torch.no_grad():
        reference = decode(model, spec, batch["final"][:, n]).float().log_softmax(-1)
    return torch.nn.functional.kl_div(logprobs, reference.to(logprobs.device), log_target=True, reduction="batchmean")


def train_steps(model, spec, prompt, optimizer_state, grad, pending, batches, settings, layer):
    """Run ``batches`` (``(epoch, i, last of its epoch, batch)``) of soft-prompt training from a carried state; return the new state.

    ``prompt [P, d]`` (float32, CPU), the optimizer's ``state_dict`` (None to start), the
    gradient accumulated so far and the pending losses of an unfinished step travel in and
    out, so a run split into many requests takes exactly the steps one request would.
    Returns ``(prompt, optimizer_state, grad, pending, [(epoch, i, step loss)])``.
    ``settings["lead"]`` (``[k, e]`` or None) are frozen rows read before the prompt (the embedded BOS): the
    patched run sees ``lead + prompt``, and only ``prompt`` is trained.
    """
    if weightless(model):
        # NDIF's sandbox runs the block in a process of its own and passes activations over a socket: no gradient
        # comes back to the prompt, so training there would silently not train.
        raise RuntimeError(
            "[futurelens] Soft-prompt training needs gradients through the model, which NDIF's sandbox (the way NDIF "
            "runs requests from keys it does not trust) cannot provide. Ask NDIF for a trusted key, or train locally "
            "(remote=False) and evaluate remotely."
        )
    device = device_of(model)
    param = prompt.detach().clone().to(device).requires_grad_(True)
    optimizer = make_optimizer([param], settings)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    if grad is not None:
        param.grad = grad.to(device)
    pending = list(pending)
    losses = []
    lead = settings.get("lead")
    lead = None if lead is None else lead.to(device, param.dtype)
    for epoch, i, last, batch in batches:
        full = param if lead is None else torch.cat([lead, param])
        loss = prompt_loss(model, spec, full, batch, layer, settings["target_n"], settings["loss"])
        (loss / settings["grad_accum"]).backward()
        pending.append(float(loss.item()))
        if len(pending) >= settings["grad_accum"] or last:
            optimizer.step()
            optimizer.zero_grad()
            losses.append((epoch, i, sum(pending) / len(pending)))
            pending = []
    return param.detach().cpu(), optimizer.state_dict(), None if param.grad is None else param.grad.cpu(), pending, losses


# --------------------------------------------------------------------------- the lens


def lens_job(model, spec, ids, n_pre, rows, soft, target, top_k, n_rollout, chunk_size, progress, writes=None):
    """Logit lens and phrases for every (layer, token) cell: ``[L*T, top_k]`` and ``[L*T, n_rollout]`` ids/probs.

    ``ids`` are the text's token ids (``[T']``, a tensor or a list); ``soft`` is ``{layer: [P, d]}`` or None
    (then ``target`` is the fixed prompt's ids, ``[P]``). ``writes``
    (``{row layer: layer}``) patches each row's state at another layer than its own (Patchscopes' target layer).
    """
    with torch.no_grad():
        states = row_states(model, spec, torch.as_tensor(ids, dtype=torch.long).view(1, -1), rows)[:, n_pre:]  # [L, T, d]
        L, T, d = states.shape
        flat = states.reshape(L * T, d)
        probs, tops = [], []
        for start in range(0, flat.shape[0], chunk_size):
            top_p, top_i = top_of(decode(model, spec, flat[start : start + chunk_size]), top_k)
            probs.append(top_p.cpu())
            tops.append(top_i.cpu())
        phrase_ids = torch.zeros(L * T, n_rollout, dtype=torch.long)
        phrase_probs = torch.zeros(L * T, n_rollout)
        if n_rollout:
            lens_phrases(model, spec, flat, rows, T, soft, target, n_rollout, chunk_size, progress, phrase_ids, phrase_probs,
                         writes)
    return torch.cat(probs), torch.cat(tops), phrase_ids, phrase_probs


def lens_phrases(model, spec, flat, rows, T, soft, target, n_rollout, chunk_size, progress, out_ids, out_probs, writes=None):
    """Roll out a phrase for every cell of ``flat [L*T, d]`` (row ``i*T + t``), filling ``out_* [L*T, R]``.

    Cells of all layers share each batch (per-row layers, per-row soft prompts); prompts of
    different lengths cannot share a rectangular batch, so cells are grouped by prompt length.
    """
    groups = {}  # prompt length -> grid rows
    for i, layer in enumerate(rows):
        groups.setdefault(0 if soft is None else soft[layer].shape[0], []).append(i)
    for members in groups.values():
        cells = torch.tensor([i * T + t for i in members for t in range(T)])
        grid_rows = (cells // T).tolist()
        layers = [rows[i] if writes is None else writes[rows[i]] for i in grid_rows]
        if len(set(layers)) == 1:
            layers = layers[0]
        state = flat[cells.to(flat.device)]
        if soft is None:
            ids = torch.as_tensor(target, dtype=torch.long).view(1, -1).expand(len(cells), -1)
            soft_prompt, position = None, ids.shape[1] - 1
        else:
            soft_prompt = torch.stack([soft[rows[i]] for i in grid_rows])  # [B, P, d]
            ids = torch.full((len(cells), soft_prompt.shape[1]), spec["pad_id"], dtype=torch.long)
            position = soft_prompt.shape[1] - 1
        got_ids, got_probs = rollout(model, spec, ids, layers, state, soft_prompt, position, n_rollout, chunk_size, progress)
        out_ids[cells], out_probs[cells] = got_ids, got_probs
