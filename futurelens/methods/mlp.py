"""A small nonlinear probe per N, built like a speculative-decoding (Medusa) head.

For a state ``h [b, d]`` and each N: ``x_N = h + W2_N silu(W1_N h + b1_N) + b2_N``, decoded by the
model's OWN final norm and unembedding (`futurelens.decode`). ``W2`` starts at zero, so an unfitted
probe is exactly the logit lens of ``h`` and training only has to learn the correction. Trained with
KL(model || probe) to the model's distribution N ahead (its head on the cached last-layer state), and
saved, reloaded and resumed like the linear methods (`futurelens.methods.linear.fitted`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from .base import Prediction, from_logits
from ..artifacts.probes import load_fit_checkpoint, save_fit_checkpoint

if TYPE_CHECKING:
    from ..data.states import StateBatch, StateCache
    from ..models import LensModel

NAMES = ("w1", "b1", "w2", "b2")


@dataclass
class MLPProbe:
    """One residual SiLU block per N on the frozen state at a layer, then the model's own head."""

    lm: LensModel
    hidden: int = 0
    """Width of the block's hidden layer (0 = d_model)."""
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    seed: int = 0
    name: str = "mlp probe"
    params: dict[int, tuple] = field(default_factory=dict)
    """``{layer: (w1 [N+1, h, d], b1 [N+1, h], w2 [N+1, d, h], b2 [N+1, d])}`` (`futurelens.server.jobs.mlp_states`)."""
    kind: ClassVar[str] = "mlp"

    def settings(self) -> dict:
        """What a saved fit must match to be reused."""
        return {"hidden": self.hidden, "epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "weight_decay": self.weight_decay, "seed": self.seed}

    def tensors(self, layer: int) -> dict[str, torch.Tensor]:
        return dict(zip(NAMES, self.params[layer]))

    def restore(self, layer: int, tensors: dict[str, torch.Tensor]) -> MLPProbe:
        self.params[layer] = tuple(tensors[k].float() for k in NAMES)
        return self

    def init(self, heads: int, d: int) -> tuple[torch.Tensor, ...]:
        """Fresh ``(w1, b1, w2, b2)`` for ``heads`` = N + 1 heads on ``d``-dim states: W1, b1 as `torch.nn.Linear`
        draws them (seeded), W2 and b2 zero so the probe starts as the logit lens."""
        g = torch.Generator().manual_seed(self.seed)
        h = self.hidden or d
        bound = d**-0.5
        w1 = (torch.rand(heads, h, d, generator=g) * 2 - 1) * bound
        b1 = (torch.rand(heads, h, generator=g) * 2 - 1) * bound
        return w1, b1, torch.zeros(heads, d, h), torch.zeros(heads, d)

    def fit(self, cache: StateCache, layer: int, checkpoint: str | os.PathLike | None = None) -> MLPProbe:
        """AdamW on KL(model || probe) averaged over rows and N for ``epochs``; with ``checkpoint``, each finished
        epoch is saved there atomically and a killed fit resumes after its last finished epoch, ending identical."""
        from ..server.jobs import mlp_states
        from ..tracing import decode

        ckpt = Path(checkpoint) if checkpoint is not None else None
        params = [p.requires_grad_(True) for p in self.init(cache.n_max + 1, cache.d_model)]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        start = 0
        saved = load_fit_checkpoint(ckpt, self.settings())
        if saved is not None:
            with torch.no_grad():
                for p, s in zip(params, saved["params"]):
                    p.copy_(s)
            opt.load_state_dict(saved["optimizer"])
            start = saved["epoch"]
        for epoch in range(start, self.epochs):
            # Seeded per epoch, so a resumed fit sees the same batches an uninterrupted one would.
            for batch in cache.batches(layer, "train", batch_size=self.batch_size, shuffle=True, seed=self.seed + epoch,
                                       final=True):
                with torch.no_grad():
                    target = decode(self.lm, batch.final.float()).float().log_softmax(-1)  # [b, N+1, V]
                guess = decode(self.lm, mlp_states(params, batch.states)).float().log_softmax(-1)
                # Flattening N into the rows makes batchmean the mean over rows and N of KL per state.
                loss = torch.nn.functional.kl_div(guess.flatten(0, 1), target.flatten(0, 1), log_target=True,
                                                  reduction="batchmean")
                # autograd.grad, not backward: the frozen model's own parameters must not collect .grad.
                for p, g in zip(params, torch.autograd.grad(loss, params)):
                    p.grad = g
                opt.step()
            save_fit_checkpoint(ckpt, {"settings": self.settings(), "epoch": epoch + 1,
                                    "params": [p.detach().clone() for p in params], "optimizer": opt.state_dict()})
        self.params[layer] = tuple(p.detach() for p in params)
        return self

    def describe(self, layer: int, target: int | None = None) -> tuple:
        """This method as the server side takes it (`futurelens.server.jobs.method_logits`); it writes nowhere, so
        ``target`` is unused."""
        return ("mlp", self.name, self.params[layer], None)

    def predict(self, batch: StateBatch, layer: int, k: int) -> list[Prediction]:
        from ..server.jobs import mlp_states
        from ..tracing import decode

        with torch.no_grad():
            logits = decode(self.lm, mlp_states(self.params[layer], batch.states))  # [b, N+1, V]
        return [from_logits(logits[:, n], k) for n in range(logits.shape[1])]
