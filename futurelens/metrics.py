"""Scores of a method's predictions: precision@k, surprisal, and a streaming `Tally` of both.

Every method reports, per test prefix, its top-k token ids for the token N ahead;
the target is the original model's own continuation (the FUTURE_LENS.md setup).
A target id < 0 marks a missing target (e.g. a continuation shorter than N + 1):
such rows are left out of every score, so all numbers describe the same rows.
"""

from __future__ import annotations

import torch

from .errors import FutureLensError


def _valid_rows(top_ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Check shapes; ``[B]`` bool mask of the rows with a target."""
    if top_ids.dim() != 2 or target.dim() != 1 or top_ids.shape[0] != target.shape[0]:
        raise FutureLensError(
            f"Pass top_ids as [B, K] token ids and target as [B] token ids (one per row), "
            f"got top_ids {tuple(top_ids.shape)} and target {tuple(target.shape)}."
        )
    if top_ids.shape[1] == 0:
        raise FutureLensError("top_ids has no predictions (K = 0): pass at least the top-1 token per row.")
    return target >= 0


def hit_depth(top_ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` bool: row b's target is among its first k + 1 predictions (column k).

    ``top_ids [B, K]`` long, ``target [B]`` long. Rows with a missing target are all False.
    """
    valid = _valid_rows(top_ids, target)
    # cumsum rather than a plain comparison so a duplicated id cannot count twice
    hits = (top_ids == target[:, None]).cumsum(1) > 0
    return hits & valid[:, None]


def precision_at_k(top_ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[K]`` float: entry k - 1 is the fraction of rows whose target is in the first k predictions.

    ``top_ids [B, K]`` long, best first; ``target [B]`` long, < 0 for a missing target (row ignored).
    """
    valid = _valid_rows(top_ids, target)
    n = int(valid.sum())
    if n == 0:
        raise FutureLensError(
            f"None of the {len(target)} rows has a target (all ids < 0): pass at least one row with a real target id."
        )
    # Counted as integers and divided once, in float64, so a streamed `Tally` gives the same numbers.
    return (hit_depth(top_ids, target).sum(0).double() / n).float()


def _check_logprobs(ids: torch.Tensor, logprobs: torch.Tensor, name: str, allow_missing: bool) -> None:
    if ids.dim() != 1 or logprobs.dim() != 2 or logprobs.shape[0] != ids.shape[0]:
        raise FutureLensError(
            f"Pass {name} as [B, V] log-probabilities (or logits) and the ids as [B], "
            f"got {name} {tuple(logprobs.shape)} and ids {tuple(ids.shape)}."
        )
    if (ids >= logprobs.shape[1]).any() or (not allow_missing and (ids < 0).any()):
        raise FutureLensError(
            f"A token id is outside [0, {logprobs.shape[1]}), the vocabulary of {name}: pass ids from the same tokenizer."
        )


def surprisal(pred_ids: torch.Tensor, model_logprobs: torch.Tensor) -> torch.Tensor:
    """``[B]`` float: −log p_model(predicted token), in nats.

    ``pred_ids [B]`` long, the method's top-1 token for the position N ahead;
    ``model_logprobs [B, V]``, the ORIGINAL model's distribution at that position
    (the paper's surprisal: how unexpected the method's guess is to the model).
    Logits are accepted too: log_softmax is applied, and it leaves log-probs unchanged.
    """
    _check_logprobs(pred_ids, model_logprobs, "model_logprobs", allow_missing=False)
    logp = torch.log_softmax(model_logprobs.float(), dim=-1)
    return -logp.gather(1, pred_ids[:, None])[:, 0]


def target_nll(method_logprobs: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
    """``[B]`` float: −log p_method(target), in nats; NaN where the target is missing or the method has no distribution.

    ``method_logprobs [B, V]`` (log-probs or logits) or None, ``target [B]`` long.
    The complement of `surprisal`: how much mass the method itself puts on the right token.
    """
    if target.dim() != 1:
        raise FutureLensError(f"Pass target as [B] token ids, got {tuple(target.shape)}.")
    if method_logprobs is None:
        return torch.full(target.shape, float("nan"))
    _check_logprobs(target, method_logprobs, "method_logprobs", allow_missing=True)
    logp = torch.log_softmax(method_logprobs.float(), dim=-1)
    nll = -logp.gather(1, target.clamp_min(0)[:, None])[:, 0]
    return torch.where(target >= 0, nll, torch.full_like(nll, float("nan")))


class Tally:
    """Scores accumulated over batches; `result` equals scoring the concatenated batches at once.

    >>> t = Tally()
    >>> for top_ids, target, model_logprobs in batches:
    ...     t.add(top_ids, target, model_logprobs)
    >>> t.result()   # {'n': ..., 'precision@1': ..., ..., 'surprisal': ...}
    """

    def __init__(self) -> None:
        self.n = 0
        self.k: int | None = None
        self._hits: torch.Tensor | None = None  # [K] long, exact counts
        self._rank: list[torch.Tensor] = []  # per valid row: where its target is in the top K (K = not there)
        self._surprisal: list[torch.Tensor] = []
        self._nll: list[torch.Tensor] = []
        self._with: dict[str, bool] = {}

    def _same_each_time(self, name: str, given: bool) -> None:
        # Mixing batches with and without a distribution would average over a silent subset.
        if self._with.setdefault(name, given) != given:
            raise FutureLensError(f"Pass {name} with every batch or with none; it was given for some batches only.")

    def add(
        self,
        top_ids: torch.Tensor,
        target: torch.Tensor,
        model_logprobs: torch.Tensor | None = None,
        method_logprobs: torch.Tensor | None = None,
    ) -> Tally:
        """Add one batch: ``top_ids [B, K]``, ``target [B]``, optional ``model_logprobs`` / ``method_logprobs [B, V]``."""
        return self.add_reduced(
            top_ids,
            target,
            surprisal(top_ids[:, 0], model_logprobs) if model_logprobs is not None else None,
            target_nll(method_logprobs, target) if method_logprobs is not None else None,
        )

    def add_reduced(
        self,
        top_ids: torch.Tensor,
        target: torch.Tensor,
        surprisals: torch.Tensor | None = None,
        nlls: torch.Tensor | None = None,
    ) -> Tally:
        """`add` with the per-row ``surprisal [B]`` / ``target_nll [B]`` already computed (e.g. on a remote
        server, where the model's full distributions are, so only ``[B]`` numbers travel)."""
        valid = _valid_rows(top_ids, target)
        if self.k is None:
            self.k = top_ids.shape[1]
            self._hits = torch.zeros(self.k, dtype=torch.long)
        elif top_ids.shape[1] != self.k:
            raise FutureLensError(f"Every batch needs the same K: the first had {self.k}, this one {top_ids.shape[1]}.")
        self._same_each_time("model_logprobs", surprisals is not None)
        self._same_each_time("method_logprobs", nlls is not None)
        self.n += int(valid.sum())
        depth = hit_depth(top_ids, target).cpu()
        self._hits += depth.sum(0)
        self._rank.append((self.k - depth.sum(1))[valid.cpu()].to(torch.int16))
        if surprisals is not None:
            self._surprisal.append(surprisals.cpu()[valid.cpu()])
        if nlls is not None:
            self._nll.append(nlls.cpu()[valid.cpu()])
        return self

    def result(self) -> dict[str, float | int]:
        """``{'n', 'precision@1'..'precision@K'[, 'surprisal'][, 'target_nll']}``; means over rows with a target."""
        if not self.n:
            raise FutureLensError("No row with a target was added: call add() with at least one target id >= 0.")
        out: dict[str, float | int] = {"n": self.n}
        for k, hits in enumerate(self._hits.tolist(), 1):
            out[f"precision@{k}"] = hits / self.n
        if self._surprisal:
            out["surprisal"] = torch.cat(self._surprisal).double().mean().item()
        if self._nll:
            out["target_nll"] = torch.cat(self._nll).double().mean().item()
        return out

    def intervals(self, level: float = 0.95, resamples: int = 1000, seed: int = 0) -> dict[str, tuple[float, float]]:
        """A percentile bootstrap interval over rows (test prefixes) of every score of `result`: ``{name: (low, high)}``.

        Rows are drawn with replacement ``resamples`` times (seeded: the same rows give the same interval, and
        tallies of the same rows draw the same resamples); ``level`` is the central mass. NaN surprisals or
        target NLLs (a method without a distribution) give a NaN interval, as their mean is NaN.
        """
        if not self.n:
            raise FutureLensError("No row with a target was added: call add() with at least one target id >= 0.")
        if not 0 < level < 1 or resamples < 1:
            raise FutureLensError(f"Need 0 < level < 1 and resamples >= 1, got {level} and {resamples}.")
        rank = torch.cat(self._rank).long()
        columns = {f"precision@{k}": (rank < k).double() for k in range(1, self.k + 1)}
        if self._surprisal:
            columns["surprisal"] = torch.cat(self._surprisal).double()
        if self._nll:
            columns["target_nll"] = torch.cat(self._nll).double()
        values = torch.stack(list(columns.values()), 1)  # [n, scores]
        g = torch.Generator().manual_seed(seed)
        # Each resample as counts per row ([resamples, n]), so its mean is one matrix product.
        counts = torch.zeros(resamples, self.n, dtype=torch.float64)
        counts.scatter_add_(1, torch.randint(self.n, (resamples, self.n), generator=g),
                            torch.ones(resamples, self.n, dtype=torch.float64))
        means = counts @ values.nan_to_num(nan=0.0) / self.n  # [resamples, scores]
        means[:, values.isnan().any(0)] = float("nan")
        tail = (1 - level) / 2
        low = torch.quantile(means, tail, dim=0)
        high = torch.quantile(means, 1 - tail, dim=0)
        return {name: (float(lo), float(hi)) for name, lo, hi in zip(columns, low.tolist(), high.tolist())}
