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


def fit_bytes(d: int, heads: int, hidden: int = 0) -> int:
    """Bytes `MLPProbe.fit` holds beyond the model and one batch's logits: every N's block (float32), and for the N
    being fitted its gradient, AdamW's two moments and the step's scratch (one more of its largest tensor)."""
    h = hidden or d
    per_head = 2 * h * d + h + d
    return 4 * (heads * per_head + 3 * per_head + h * d)


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
        epoch of each N is saved there atomically and a killed fit resumes after it, ending identical.

        One N at a time (`fit_bytes`): N's block depends on no other N's and its loss term is its share of the mean,
        and AdamW is elementwise, so fitting each N's block over every epoch in turn, on the same seeded batches,
        takes the same steps as fitting them jointly (to float rounding) while holding one N's gradient and moments
        (at d = 8192: 0.5 and 1.1 GB, not 2.1 and 4.3 GB for four N jointly).
        """
        from ..server.jobs import mlp_states
        from ..tracing import decode

        ckpt = Path(checkpoint) if checkpoint is not None else None
        heads = cache.n_max + 1
        params = self.init(heads, cache.d_model)  # every N's block; each N's views train in place
        first, start, opt_state = 0, 0, None
        saved = load_fit_checkpoint(ckpt, self.settings())
        if saved is not None and "head" in saved:  # (a checkpoint of the joint fit, from before, is started over)
            params = tuple(saved["params"])
            first, start, opt_state = saved["head"], saved["epoch"], saved["optimizer"]
            if start >= self.epochs:
                first, start, opt_state = first + 1, 0, None
        for n in range(first, heads):
            own = [p[n : n + 1].detach().requires_grad_(True) for p in params]  # views: updates land in ``params``
            opt = torch.optim.AdamW(own, lr=self.lr, weight_decay=self.weight_decay)
            if opt_state is not None:
                opt.load_state_dict(opt_state)
            for epoch in range(start, self.epochs):
                # Seeded per epoch, so every N (and a resumed fit) sees the batches an uninterrupted joint fit would.
                for batch in cache.batches(layer, "train", batch_size=self.batch_size, shuffle=True,
                                           seed=self.seed + epoch, final=True):
                    with torch.no_grad():
                        target = decode(self.lm, batch.final[:, n].float()).float().log_softmax(-1)  # [b, V]
                    guess = decode(self.lm, mlp_states(own, batch.states)[:, 0]).float().log_softmax(-1)
                    # N's share of the mean over rows and N of KL per state (the joint fit's batchmean).
                    loss = torch.nn.functional.kl_div(guess, target, log_target=True, reduction="sum") / (
                        len(batch.row) * heads)
                    # autograd.grad, not backward: the frozen model's own parameters must not collect .grad.
                    for p, g in zip(own, torch.autograd.grad(loss, own)):
                        p.grad = g
                    opt.step()
                    for p in own:
                        p.grad = None
                    del target, guess, loss
                save_fit_checkpoint(ckpt, {"settings": self.settings(), "head": n, "epoch": epoch + 1,
                                           "params": list(params), "optimizer": opt.state_dict()})
            start, opt_state = 0, None
            del opt, own
        self.params[layer] = tuple(p.detach() for p in params)
        return self

    def mapped(self, states: torch.Tensor, layer: int) -> torch.Tensor:
        """``states [b, d]`` -> ``[b, N + 1, d]``: each N's block applied to the state (`jobs.mlp_states`), float32."""
        from ..server.jobs import mlp_states

        return mlp_states(self.params[layer], states)

    def describe(self, layer: int, target: int | None = None) -> tuple:
        """This method as the server side takes it (`futurelens.server.jobs.method_logits`): the block is applied
        here (`mapped`), where it is held, and only its rows travel, for the model's head to decode. It writes
        nowhere, so ``target`` is unused."""
        return ("decode", self.name, None, None)

    def predict(self, batch: StateBatch, layer: int, k: int) -> list[Prediction]:
        from ..tracing import decode

        with torch.no_grad():
            logits = decode(self.lm, self.mapped(batch.states, layer))  # [b, N+1, V]
        return [from_logits(logits[:, n], k) for n in range(logits.shape[1])]
