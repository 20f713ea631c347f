"""The two causal interventions: patch the state into a prompt and read what the model says next.

- `FixedPrompt`: a hand-written prompt (the paper's default ``Hello! Could you please
  tell me more about "``); the state overwrites layer L's output at its last token.
- `LearnedPrompt`: a trained soft prompt per layer (`futurelens.train`); the state
  overwrites layer L's output at the soft prompt's last vector.

Both can write a layer-L state at another layer L' (Patchscopes' target layer; the paper's L' = L
is the default): `FixedPrompt(target_layer=L')`, or a soft prompt trained for ``(L, L')``.
Both can take the state of another model A (``mapping``: ``[d_A + 1, d_B]``, `futurelens.mapping`): it is
mapped into this model's space before it is patched.

For N >= 1 the model's own earlier continuation tokens are teacher-forced after the
prompt, so one forward reads every N at once: position ``P - 1 + N`` predicts the
token N ahead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..dispatch import run_job
from ..server import jobs
from . import PAPER_PROMPTS
from .base import Prediction, from_logits, plain_batch

if TYPE_CHECKING:
    from ..data.states import StateBatch
    from ..models import LensModel



def prompt_logits(
    lm: LensModel,
    states: torch.Tensor,
    layer: int,
    teacher: torch.Tensor,
    *,
    prompt_ids: list[int] | None = None,
    soft_prompt: torch.Tensor | None = None,
) -> torch.Tensor:
    """Patch ``states [b, d]`` at ``layer`` into a prompt followed by ``teacher [b, n]`` tokens.

    Give ``prompt_ids`` (a fixed prompt, P tokens) or ``soft_prompt [P, d]``. The state
    goes to the prompt's last position. Returns ``logits [b, n + 1, vocab]``: entry N is
    the prediction of the token N ahead.
    """
    return run_job(lm, jobs.prompt_logits, states, lm.check_layer(layer), teacher, prompt_ids, soft_prompt)


@dataclass
class FixedPrompt:
    lm: LensModel
    prompt: str = PAPER_PROMPTS[0]
    name: str = "fixed prompt"
    target_layer: int | None = None
    """Layer the state is written at (Patchscopes' target layer); None = the layer it was read at (the paper)."""
    mapping: torch.Tensor | None = None
    """``[d_A + 1, d]``: the states are another model A's, mapped into this model first (`futurelens.mapping`)."""

    def __post_init__(self) -> None:
        from ..tokens import encode

        # As the model reads any text: its tokenizer's BOS first, if it adds one (futurelens.tokens).
        self.prompt_ids = encode(self.lm.tokenizer, self.prompt)

    def describe(self, layer: int, target: int | None = None) -> tuple:
        """This method as the server side takes it (`futurelens.server.jobs.method_logits`), writing at ``target``."""
        target = self.target_layer if target is None else target
        return ("fixed", self.name, self.prompt_ids, None if target is None else self.lm.check_layer(target, "target layer"))

    def predict(self, batch: StateBatch, layer: int, k: int, target: int | None = None) -> list[Prediction]:
        with torch.no_grad():
            logits = run_job(self.lm, jobs.method_logits, self.describe(layer, target), _mapped(batch, self.mapping), layer)
        return [from_logits(logits[:, n], k) for n in range(logits.shape[1])]


def _mapped(batch: StateBatch, mapping: torch.Tensor | None) -> dict:
    """The batch as the server side takes it, its states mapped from model A into this model when ``mapping``."""
    plain = plain_batch(batch)
    if mapping is not None:
        from ..mapping import apply_map

        plain["states"] = apply_map(mapping, plain["states"])
    return plain


@dataclass
class LearnedPrompt:
    lm: LensModel
    prompts: dict = field(default_factory=dict)
    """``{layer: soft prompt [P, d]}`` as trained by `futurelens.train`; a prompt that receives a layer-L state at
    another layer L' is keyed ``(L, L')`` (`futurelens.artifacts.prompt_key`)."""
    name: str = "learned prompt"
    mapping: torch.Tensor | None = None
    """``[d_A + 1, d]``: the states are another model A's, mapped into this model first (`futurelens.mapping`)."""

    def predict(self, batch: StateBatch, layer: int, k: int, target: int | None = None) -> list[Prediction]:
        with torch.no_grad():
            logits = run_job(self.lm, jobs.method_logits, self.describe(layer, target), _mapped(batch, self.mapping), layer)
        return [from_logits(logits[:, n], k) for n in range(logits.shape[1])]

    def has(self, layer: int, target: int | None = None) -> bool:
        from ..artifacts import prompt_key

        return prompt_key(layer, target) in self.prompts

    def describe(self, layer: int, target: int | None = None) -> tuple:
        """This method as the server side takes it (`futurelens.server.jobs.method_logits`): the prompt for states
        read at ``layer`` and written at ``target`` (default ``layer``)."""
        from ..artifacts import prompt_key
        from ..errors import FutureLensError

        key = prompt_key(layer, target)
        if key not in self.prompts:
            raise FutureLensError(f"No soft prompt for layer {key}; trained: {sorted(self.prompts, key=str)}.")
        return ("learned", self.name, self.prompts[key].float(), None if isinstance(key, int) else key[1])
