"""What every method answers: for a batch of cached states at a layer, top-k guesses for each N.

A method is anything with a ``name`` and ``predict(batch, layer, k)`` returning one
`Prediction` per N = 0..n_max. How it was fitted is its own business (n-gram counts,
a probe, a least-squares map, a soft prompt), so the evaluation loop stays one loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from ..data.states import StateBatch


@dataclass
class Prediction:
    """A method's answer for one N on a batch of ``b`` states."""

    top_ids: torch.Tensor
    """``[b, k]`` token ids, best first."""
    logprobs: torch.Tensor | None = None
    """``[b, vocab]`` the method's log-distribution, when it has one (for ``target_nll``)."""


class Method(Protocol):
    name: str

    def predict(self, batch: StateBatch, layer: int, k: int) -> list[Prediction]:
        """One `Prediction` per N = 0..n_max for the states in ``batch`` (taken at ``layer``)."""
        ...


def plain_batch(batch: StateBatch) -> dict:
    """A `StateBatch` as the plain dict of tensors the server side takes (no dataclass crosses the wire)."""
    return {"states": batch.states, "target": batch.target, "final": batch.final}


def from_logits(logits: torch.Tensor, k: int) -> Prediction:
    """``logits [b, vocab]`` -> the top ``k`` ids and the log-distribution."""
    logprobs = logits.float().log_softmax(-1)
    return Prediction(logprobs.topk(k, dim=-1).indices, logprobs)
