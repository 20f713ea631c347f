"""The direct vocabulary probe's arithmetic: its rows, its bounded fit step, its logits, and its memory.

`futurelens.methods.linear.VocabProbe` fits ``h -> W h + b`` over the vocabulary for each N. A full probe is
``heads x V x (d + 1)`` floats, and AdamW keeps three more of each: at Llama-3.1-70B's d = 8192, V = 128,256 and
four heads that is ~67 GB. Three things bound it, none of which changes what is fitted while the budget holds:

- **Rows per N, not per vocabulary** (exact): weights start at zero, so every id that is no train target at that
  N keeps the same row as every other such id at every step; one row stands for all of them (counted as often in
  the softmax). Each N has its own rows (`head_rows`), which is never more than the joint set's.
- **No gradient buffer** (exact): AdamW is elementwise, so each chunk of rows takes its gradient and its update
  at once (`head_step_`), in buffers allocated once; the fit holds weights and two moments, 12 bytes a parameter.
- **A memory budget** (``memory_mb``): when the distinct targets of an N would need more rows than the budget
  holds, the rarest of them share the "other" row, which then moves as the mean of the rows it stands for. It never binds on the
  embedded default (hundreds of targets); at 70B width and 100k prefixes it keeps the fit to about the budget.

The pure functions at the bottom (`vocab_probe_rows`, `vocab_probe_fit_bytes`, `vocab_probe_peak_bytes`) are
the fit's memory, for `futurelens plan` and the log line before a fit; benchmarks/vocab_probe.py measures them.
"""

from __future__ import annotations

import math

import torch

BETAS = (0.9, 0.999)
EPS = 1e-8
CHUNK = 2048
"""Rows per gradient-and-update chunk: two ``[CHUNK, d]`` float32 buffers (134 MB at d = 8192)."""
BYTES_PER_PARAM = 12
"""float32 weight and AdamW's two moments; the gradient never exists whole."""


def budget_rows(d: int, heads: int, memory_mb: float) -> int:
    """The most rows one N may have so that ``heads`` of them, with AdamW's moments, fit ``memory_mb``."""
    return max(2, int(memory_mb * 2**20) // (BYTES_PER_PARAM * heads * (d + 1)))


def head_rows(targets: torch.Tensor, cap: int) -> list[torch.Tensor]:
    """Per N, the sorted ids that get a row of their own: ``targets [n, heads]`` -> ``[[S_N] ids] * heads``.

    Every distinct target when ``S_N + 1 <= cap`` (the exact compact probe); otherwise the ``cap - 1`` most
    frequent (ties broken by the smaller id), the rest sharing the "other" row.
    """
    out = []
    for column in targets.T:
        ids, counts = torch.unique(column, return_counts=True)
        if len(ids) + 1 > cap:
            # sort by count, descending; torch.unique's ids are ascending and a stable sort keeps them so on ties
            keep = torch.sort(counts, descending=True, stable=True).indices[: cap - 1]
            ids = torch.sort(ids[keep]).values
        out.append(ids)
    return out


def row_index(tokens: list[torch.Tensor], vocab: int) -> torch.Tensor:
    """``[heads, vocab]``: each id's row within its N's block (the block's last row for every id without one)."""
    index = torch.empty(len(tokens), vocab, dtype=torch.long)
    for n, ids in enumerate(tokens):
        index[n] = len(ids)
        index[n, ids] = torch.arange(len(ids))
    return index


def adamw_(param: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int, lr: float,
           weight_decay: float, tmp: torch.Tensor) -> None:
    """One `torch.optim.AdamW` step (default betas and eps, no amsgrad) on ``param`` in place; ``tmp`` is scratch of
    ``param``'s shape. The same formula in the same order as PyTorch's single-tensor AdamW."""
    b1, b2 = BETAS
    param.mul_(1 - lr * weight_decay)
    m.lerp_(grad, 1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    torch.sqrt(v, out=tmp).div_(math.sqrt(1 - b2**step)).add_(EPS)
    param.addcdiv_(m, tmp, value=-lr / (1 - b1**step))


@torch.no_grad()
def head_step_(weight: torch.Tensor, bias: torch.Tensor, state: dict[str, torch.Tensor], x: torch.Tensor,
               target: torch.Tensor, shared: int, scale: int, step: int, lr: float, weight_decay: float,
               scratch: torch.Tensor, buffers: tuple[torch.Tensor, torch.Tensor]) -> None:
    """One cross-entropy AdamW step of one N's rows, in place, chunk by chunk of rows.

    ``weight [R, d]``, ``bias [R]`` (a view of the probe's N block; its last row stands for ``shared`` ids),
    ``state`` their moments (``m``, ``v``, ``mb``, ``vb``: views of the same shapes), ``x [b, d]``,
    ``target [b]`` row indices, ``scale`` the loss's divisor over ``b`` (``b * heads``: the mean over every N's
    rows, as one joint probe would take it). ``scratch [>= b, >= R]`` and ``buffers`` (two ``[>= chunk, d]``)
    are overwritten; nothing of size ``R x d`` is allocated.
    """
    b, rows = len(x), len(weight)
    p = torch.addmm(bias, x, weight.T, out=scratch[:b, :rows])  # [b, R] logits -> gradient in the logits
    p -= p.amax(-1, keepdim=True)
    p.exp_()
    p /= p[:, :-1].sum(-1, keepdim=True) + shared * p[:, -1:]
    # A target with a row of its own pulls it by 1; one without (past the budget) pulls the other row by 1 / shared:
    # the gradient of the mean of the rows that row stands for. Within the budget no target lands there.
    p[torch.arange(b), target] -= torch.where(target == rows - 1, 1 / max(shared, 1), 1.0)
    p /= scale
    grad, tmp = buffers
    chunk = len(grad)
    for a in range(0, rows, chunk):
        c = min(chunk, rows - a)
        g = torch.mm(p[:, a : a + c].T, x, out=grad[:c])
        adamw_(weight[a : a + c], g, state["m"][a : a + c], state["v"][a : a + c], step, lr, weight_decay, tmp[:c])
    gb = p.sum(0)
    adamw_(bias, gb, state["mb"], state["vb"], step, lr, weight_decay, torch.empty_like(gb))


def vocab_logits(tensors: dict[str, torch.Tensor], x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[b, heads, vocab]`` logits of a saved vocabulary probe (`VocabProbe.tensors`) on states ``x [b, d]``.

    Three layouts: per-N rows (``rows [heads]`` row counts and ``tokens``, each N's ids one after another, each
    N's last row standing for every other id); one row set shared by every N (``tokens`` alone, an older fit);
    a full probe (no ``tokens``). Every other id gets its block's last logit, as the full probe does.
    """
    weight, bias = tensors["weight"].float(), tensors["bias"].float()
    z = x.float() @ weight.T + bias
    tokens = tensors.get("tokens")
    if tokens is None:
        return z.view(len(x), -1, vocab_size)
    tokens = tokens.long()
    if "rows" not in tensors:
        z = z.view(len(x), -1, len(tokens) + 1)
        out = z[:, :, -1:].expand(-1, -1, vocab_size).clone()
        out[:, :, tokens] = z[:, :, :-1]
        return out
    rows = tensors["rows"].long().tolist()
    out = torch.empty(len(x), len(rows), vocab_size)
    start = ids_start = 0
    for n, r in enumerate(rows):
        block, ids = z[:, start : start + r], tokens[ids_start : ids_start + r - 1]
        out[:, n] = block[:, -1:]
        out[:, n, ids] = block[:, :-1]
        start, ids_start = start + r, ids_start + r - 1
    return out


# --------------------------------------------------------------------------- memory (pure; `futurelens plan` reads these)


def vocab_probe_rows(d: int, vocab: int, heads: int, distinct: int | list[int], memory_mb: float) -> list[int]:
    """Rows per N of a fit: each N's distinct train targets plus the "other" row, capped by the budget.

    ``distinct``: distinct targets per N (one int for every N); unknown in advance, it is at most
    ``min(vocab, n_train)``, which gives the bound.
    """
    cap = budget_rows(d, heads, memory_mb)
    counts = [distinct] * heads if isinstance(distinct, int) else list(distinct)
    return [min(min(s, vocab) + 1, cap) for s in counts]


def vocab_probe_fit_bytes(d: int, rows: list[int], batch: int, chunk: int = CHUNK) -> int:
    """Peak bytes `VocabProbe.fit` allocates for a probe of ``rows`` per N, on ``batch`` states of width ``d``.

    weight, bias and AdamW's two moments (`BYTES_PER_PARAM` per parameter); one chunk's gradient and AdamW
    scratch ``2 x [chunk, d]``; the logits ``[batch, max rows]``; the batch in float32; the per-N row index
    ``[heads, vocab]`` is counted by the caller's ``vocab`` (see `vocab_probe_peak_bytes`). Cache reads (one
    shard at a time, `futurelens.data.states`) are not included.
    """
    params = sum(rows) * (d + 1)
    biggest = max(rows)
    return (BYTES_PER_PARAM * params + 2 * 4 * min(chunk, biggest) * d + 4 * batch * biggest + 4 * batch * d)


def vocab_probe_peak_bytes(d: int, vocab: int, heads: int, batch: int, n_train: int | None = None,
                           memory_mb: float = 4096, chunk: int = CHUNK) -> int:
    """Worst-case peak bytes of fitting one layer's vocabulary probe: every N with as many distinct targets as
    there can be (``min(vocab, n_train)``; ``vocab`` when ``n_train`` is None), capped by ``memory_mb``.

    E.g. d = 8192, V = 128,256, 4 heads, batch 64: ~4.3 GB with the default 4096 MB budget, where the joint
    full-vocabulary fit with a gradient (16 bytes a parameter) needs ~67 GB.
    """
    distinct = vocab if n_train is None else min(vocab, n_train)
    rows = vocab_probe_rows(d, vocab, heads, distinct, memory_mb)
    return vocab_probe_fit_bytes(d, rows, batch, chunk) + 8 * heads * vocab


def full_probe_fit_bytes(d: int, vocab: int, heads: int, batch: int) -> int:
    """What the unbounded joint probe over the whole vocabulary needed (weights, gradient, two AdamW moments,
    logits): the figure the bound replaces, for comparison."""
    return 16 * heads * vocab * (d + 1) + 4 * batch * heads * vocab
