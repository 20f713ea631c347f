"""The two linear baselines: a direct vocabulary probe, and a linear approximation of the model.

Both are fitted per layer on cached train states, one map per N:

- `VocabProbe`: ``h -> W h + b`` over the vocabulary, trained with cross-entropy on
  the model's own N-ahead token.
- `LinearApprox`: ``h -> A h + c`` regressed onto the last layer's state from which the
  model predicts the N-ahead token (closed-form ridge least squares), optionally refined
  by SGD on the KL to the model's distribution; decoded by the model's own final norm
  and unembedding (`futurelens.decode`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .base import Prediction, from_logits, plain_batch

if TYPE_CHECKING:
    from ..data.states import StateBatch, StateCache
    from ..models import LensModel


def _with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], -1)


def ridge(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """Least squares with an L2 penalty and an unpenalised bias.

    ``x [n, d]``, ``y [n, e]`` -> ``w [d + 1, e]`` so that ``[x, 1] @ w ≈ y``. Solved in
    float64: states have a few huge coordinates and float32 normal equations lose them.
    """
    xb = _with_bias(x.double())
    gram = xb.T @ xb
    penalty = alpha * gram.diagonal()[:-1].mean() * torch.eye(xb.shape[1], dtype=torch.float64)
    penalty[-1, -1] = 0
    return torch.linalg.solve(gram + penalty, xb.T @ y.double()).float()


@dataclass
class LinearApprox:
    """Linear model approximation: state at layer L -> last-layer state, decoded by the model's head."""

    lm: LensModel
    alpha: float = 1e-3
    """Ridge strength, relative to the mean squared state norm."""
    sgd_epochs: int = 0
    """Epochs of SGD on KL to the model's distribution after the least-squares fit (0 = closed form only)."""
    lr: float = 1e-4
    name: str = "linear (hidden)"
    maps: dict[int, torch.Tensor] = field(default_factory=dict)
    """``{layer: [n_max + 1, d + 1, d]}``."""

    def fit(self, cache: StateCache, layer: int) -> LinearApprox:
        train = cache.load(layer, "train", final=True)
        maps = torch.stack([ridge(train.states.float(), train.final[:, n].float(), self.alpha) for n in range(cache.n_max + 1)])
        if self.sgd_epochs:
            maps = self._refine(maps, cache, layer)
        self.maps[layer] = maps
        return self

    def _refine(self, maps: torch.Tensor, cache: StateCache, layer: int) -> torch.Tensor:
        from ..tracing import decode

        maps = maps.clone().requires_grad_(True)
        opt = torch.optim.AdamW([maps], lr=self.lr, weight_decay=0.0)
        for epoch in range(self.sgd_epochs):
            for batch in cache.batches(layer, "train", batch_size=32, shuffle=True, seed=epoch, final=True):
                x = _with_bias(batch.states.float())
                with torch.no_grad():
                    target = decode(self.lm, batch.final.float()).float().log_softmax(-1)  # [b, N, V]
                guess = decode(self.lm, torch.einsum("bd,nde->bne", x, maps)).float().log_softmax(-1)
                loss = torch.nn.functional.kl_div(guess, target, log_target=True, reduction="batchmean")
                opt.zero_grad()
                loss.backward()
                opt.step()
        return maps.detach()

    def describe(self, layer: int) -> tuple:
        """This method as the server side takes it (`futurelens.server.jobs.method_logits`)."""
        return ("linear", self.name, self.maps[layer])

    def predict(self, batch: StateBatch, layer: int, k: int) -> list[Prediction]:
        from ..remote import run_job
        from ..server import jobs

        with torch.no_grad():
            logits = run_job(self.lm, jobs.method_logits, self.describe(layer), plain_batch(batch), layer)
        return [from_logits(logits[:, n], k) for n in range(logits.shape[1])]


@dataclass
class VocabProbe:
    """Direct vocabulary prediction: a linear map from the state to the vocabulary, per N."""

    vocab_size: int
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 1e-5
    name: str = "linear (vocab)"
    probes: dict[int, torch.nn.Linear] = field(default_factory=dict)
    """``{layer: Linear(d, (n_max + 1) * vocab)}``: all N share one matmul."""

    def fit(self, cache: StateCache, layer: int, seed: int = 0) -> VocabProbe:
        torch.manual_seed(seed)
        heads = cache.n_max + 1
        probe = torch.nn.Linear(cache.d_model, heads * self.vocab_size)
        torch.nn.init.zeros_(probe.weight)
        torch.nn.init.zeros_(probe.bias)
        opt = torch.optim.AdamW(probe.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for epoch in range(self.epochs):
            for batch in cache.batches(layer, "train", batch_size=self.batch_size, shuffle=True, seed=seed + epoch):
                logits = probe(batch.states.float()).view(-1, heads, self.vocab_size)
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.target.flatten())
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.probes[layer] = probe.requires_grad_(False)
        return self

    def predict(self, batch: StateBatch, layer: int, k: int) -> list[Prediction]:
        probe = self.probes[layer]
        logits = probe(batch.states.float()).view(len(batch.states), -1, self.vocab_size)
        return [from_logits(logits[:, n], k) for n in range(logits.shape[1])]
