"""The n-gram baseline: the token most often seen N + 1 positions after the prefix's last token.

N = 0 is the ordinary bigram (the next token); N >= 1 is a skip-gram over the
training text, the baseline the paper draws as a dashed line. Counts are kept
sparse (per source token, its top ``keep`` successors), because a dense V × V
table is 10–20 G entries at a 50k–150k vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import FutureLensError

CHUNK = 1 << 20
"""Pair keys buffered per N before they are merged into the counts (``NGram.fit``'s default ``chunk``): 8 MB of
int64 per N, so fitting's memory is this plus the distinct pairs, whatever the number of rows."""


def _reduce(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``counts`` per distinct key. Returns sorted unique keys and their totals."""
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    return keys[starts], np.add.reduceat(counts, starts) if len(keys) else counts


class _PairCounter:
    """Counts of ``x * V + y`` keys, merged in chunks so memory stays near ``chunk`` keys plus the distinct pairs."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.keys = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def add(self, keys: np.ndarray) -> None:
        self._buffer.append(keys)
        self._buffered += len(keys)
        if self._buffered >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        new = np.concatenate(self._buffer)
        self._buffer, self._buffered = [], 0
        self.keys, self.counts = _reduce(
            np.concatenate([self.keys, new]), np.concatenate([self.counts, np.ones(len(new), np.int64)])
        )


class NGram:
    """Skip-gram counts for N = 0..n_max: ``fit`` on token rows, ``predict`` the top-k tokens N ahead.

    Per N the table is stored CSR-style over source tokens: the successors of token
    x are ``ids[offsets[x]:offsets[x + 1]]`` (at most ``keep``), most frequent first,
    ties by smaller id; ``totals[x]`` counts every occurrence, so probabilities are
    true conditional frequencies even for the truncated list.
    """

    def __init__(self, keep: int = 50) -> None:
        if keep < 1:
            raise FutureLensError(f"keep must be >= 1 (successors stored per token), got {keep}.")
        self.keep = keep
        self.n_max: int | None = None
        self.vocab_size: int | None = None
        self.offsets: list[torch.Tensor] = []  # per N: [V + 1] long
        self.ids: list[torch.Tensor] = []  # per N: [nnz] int32
        self.counts: list[torch.Tensor] = []  # per N: [nnz] long
        self.totals: list[torch.Tensor] = []  # per N: [V] long, pairs with x as source
        self.unigram: torch.Tensor | None = None  # [n_max + 1, V] long, how often y is a target at offset N

    # ------------------------------------------------------------------ fit

    def fit(self, rows: Iterable[Sequence[int]], n_max: int, vocab_size: int, chunk: int | None = None) -> NGram:
        """Count, for N = 0..n_max, how often token y sits N + 1 positions after token x, in every row.

        ``rows``: token-id sequences (lists, arrays or 1-D tensors): documents, or
        prefixes + continuations; pairs never cross a row boundary. Any iterable works
        and is read once, row by row, so a generator streaming from disk keeps memory
        independent of the number of rows. ``chunk``: keys buffered per N before merging
        (memory vs. speed; default `CHUNK`); the counts are exact whatever its value.
        Returns self.
        """
        chunk = CHUNK if chunk is None else chunk
        if chunk < 1:
            raise FutureLensError(f"chunk must be >= 1 (pair keys buffered before a merge), got {chunk}.")
        if n_max < 0 or vocab_size < 1:
            raise FutureLensError(f"Need n_max >= 0 and vocab_size >= 1, got n_max={n_max}, vocab_size={vocab_size}.")
        V = vocab_size
        counters = [_PairCounter(chunk) for _ in range(n_max + 1)]
        for i, row in enumerate(rows):
            a = np.asarray(row.tolist() if isinstance(row, torch.Tensor) else row, dtype=np.int64).ravel()
            if len(a) and (a.min() < 0 or a.max() >= V):
                raise FutureLensError(
                    f"Row {i} has a token id outside [0, {V}): pass vocab_size = the tokenizer's full vocabulary "
                    "(len(tokenizer)), and ids without padding."
                )
            for n, counter in enumerate(counters):
                if len(a) > n + 1:
                    counter.add(a[: -(n + 1)] * V + a[n + 1 :])
        self.n_max, self.vocab_size = n_max, V
        self.offsets, self.ids, self.counts, self.totals = [], [], [], []
        unigram = []
        for counter in counters:
            counter.flush()
            x, y, c = counter.keys // V, counter.keys % V, counter.counts
            unigram.append(np.bincount(y, weights=c, minlength=V).astype(np.int64))
            self.totals.append(torch.from_numpy(np.bincount(x, weights=c, minlength=V).astype(np.int64)))
            # keys are sorted by x already; reorder within each x by count desc, then id asc
            order = np.lexsort((y, -c, x))
            x, y, c = x[order], y[order], c[order]
            top = np.arange(len(x)) - np.searchsorted(x, x, side="left") < self.keep
            x, y, c = x[top], y[top], c[top]
            self.offsets.append(torch.from_numpy(np.r_[0, np.cumsum(np.bincount(x, minlength=V))].astype(np.int64)))
            self.ids.append(torch.from_numpy(y.astype(np.int32)))
            self.counts.append(torch.from_numpy(c.astype(np.int64)))
        self.unigram = torch.from_numpy(np.stack(unigram))
        return self

    # ------------------------------------------------------------------ predict

    def _check_fitted(self, n: int) -> None:
        if self.n_max is None:
            raise FutureLensError("This NGram is not fitted: call fit(rows, n_max, vocab_size) or NGram.load(path).")
        if not 0 <= n <= self.n_max:
            raise FutureLensError(
                f"N = {n} was not counted: this NGram was fitted for N = 0..{self.n_max}; refit with n_max >= {n}."
            )

    def predict(self, last_tokens: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k guesses for the token N + 1 positions after each ``last_tokens [B]`` (long).

        Returns ``ids [B, k]`` long and ``probs [B, k]`` float: count / total for that
        source token, most frequent first, ties by smaller id. An unseen source token
        falls back to the unigram distribution of targets at offset N; a seen one with
        fewer than k successors is padded with the most frequent unigram targets it
        lacks, at probability 0 (never observed after it).
        """
        self._check_fitted(n)
        V = self.vocab_size
        if not 1 <= k <= min(self.keep, V):
            raise FutureLensError(
                f"k must be in 1..{min(self.keep, V)} (keep={self.keep} successors stored, vocabulary {V}), got {k}: "
                "refit with a larger keep for more."
            )
        x = torch.as_tensor(last_tokens).long().cpu()
        if x.dim() != 1:
            raise FutureLensError(f"Pass last_tokens as [B] token ids, got shape {tuple(x.shape)}.")
        if len(x) and (x.min() < 0 or x.max() >= V):
            raise FutureLensError(f"A last token is outside [0, {V}), the vocabulary this NGram was fitted on.")
        offsets, ids, counts = self.offsets[n], self.ids[n], self.counts[n]
        start, stop = offsets[x], offsets[x + 1]
        have = (stop - start).clamp_max(k)  # [B] successors available (0 = unseen token)
        j = torch.arange(k)
        listed = j[None] < have[:, None]  # [B, k]
        # A sentinel entry makes the gather safe past a row's list (and on an empty table).
        ids = torch.cat([ids.long(), torch.tensor([-1])])
        counts = torch.cat([counts, torch.tensor([0])])
        idx = torch.where(listed, start[:, None] + j[None], len(ids) - 1)
        own_ids = ids[idx]
        own_probs = counts[idx].double() / self.totals[n][x].clamp_min(1).double()[:, None]

        # Fallback candidates: the most frequent targets at offset N. 2k of them always leave k
        # that a row's own (at most k) successors do not already hold.
        uni = self.unigram[n]
        order = np.lexsort((np.arange(V), -uni.numpy()))[: min(2 * k, V)]
        cand = torch.from_numpy(order).long()
        cand_probs = uni[cand].double() / max(int(uni.sum()), 1)
        dup = (cand[None, :, None] == own_ids[:, None, :]).any(-1)  # [B, 2k]
        pad_probs = torch.where(have[:, None] == 0, cand_probs[None], 0.0).expand(len(x), -1)
        all_ids = torch.cat([own_ids, cand[None].expand(len(x), -1)], 1)
        all_probs = torch.cat([own_probs, pad_probs], 1)
        usable = torch.cat([listed, ~dup], 1)
        # A stable sort on "unusable" keeps own successors first, then candidates in unigram order.
        pick = torch.sort((~usable).int(), dim=1, stable=True).indices[:, :k]
        return all_ids.gather(1, pick), all_probs.gather(1, pick).float()

    # ------------------------------------------------------------------ save / load (format: futurelens.artifacts.ngram)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table to ``path`` (`futurelens.artifacts.ngram`), atomically. Returns the path."""
        from ..artifacts.ngram import save_ngram

        self._check_fitted(0)
        tensors = {"unigram": self.unigram}
        for n in range(self.n_max + 1):
            for name in ("offsets", "ids", "counts", "totals"):
                tensors[f"n{n}.{name}"] = getattr(self, name)[n]
        return save_ngram(path, tensors, {"n_max": self.n_max, "vocab_size": self.vocab_size, "keep": self.keep})

    @classmethod
    def load(cls, path: str | os.PathLike) -> NGram:
        """Read a table `save` wrote."""
        from ..artifacts.ngram import read_ngram

        tensors, meta = read_ngram(path)
        model = cls(keep=meta["keep"])
        model.n_max, model.vocab_size = meta["n_max"], meta["vocab_size"]
        for name in ("offsets", "ids", "counts", "totals"):
            setattr(model, name, [tensors[f"n{n}.{name}"] for n in range(model.n_max + 1)])
        model.unigram = tensors["unigram"]
        return model
