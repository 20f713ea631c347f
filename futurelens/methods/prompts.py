"""The two causal interventions: patch the state into a prompt and read what the model says next.

- `FixedPrompt`: a hand-written prompt (the paper's default ``Hello! Could you please
  tell me more about "``); the state overwrites layer L's output at its last token.
- `LearnedPrompt`: a trained soft prompt per layer (`futurelens.train`); the state
  overwrites layer L's output at the soft prompt's last vector.

For N >= 1 the model's own earlier continuation tokens are teacher-forced after the
prompt, so one forward reads every N at once: position ``P - 1 + N`` predicts the
token N ahead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from . import PAPER_PROMPTS
from .base import Prediction, from_logits

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
    from ..tracing import patch

    teacher = teacher.long().cpu()
    if prompt_ids is not None:
        n_prompt = len(prompt_ids)
        target = torch.cat([torch.tensor(prompt_ids).expand(len(states), -1), teacher], 1)
    else:
        n_prompt = soft_prompt.shape[-2]
        target = teacher if teacher.shape[1] else None
    reads = list(range(n_prompt - 1, n_prompt + teacher.shape[1]))
    return patch(lm, states, layer, target=target, soft_prompt=soft_prompt, position=n_prompt - 1, read=reads).logits


@dataclass
class FixedPrompt:
    lm: LensModel
    prompt: str = PAPER_PROMPTS[0]
    name: str = "fixed prompt"

    def __post_init__(self) -> None:
        self.prompt_ids = self.lm.tokenizer(self.prompt, add_special_tokens=False)["input_ids"]

    def predict(self, batch: StateBatch, layer: int, k: int) -> list[Prediction]:
        with torch.no_grad():
            logits = prompt_logits(self.lm, batch.states, layer, batch.target[:, :-1], prompt_ids=self.prompt_ids)
        return [from_logits(logits[:, n], k) for n in range(logits.shape[1])]


@dataclass
class LearnedPrompt:
    lm: LensModel
    prompts: dict[int, torch.Tensor] = field(default_factory=dict)
    """``{layer: soft prompt [P, d]}``, as trained by `futurelens.train`."""
    name: str = "learned prompt"

    def predict(self, batch: StateBatch, layer: int, k: int) -> list[Prediction]:
        from ..errors import FutureLensError

        if layer not in self.prompts:
            raise FutureLensError(f"No soft prompt for layer {layer}; trained layers: {sorted(self.prompts)}.")
        with torch.no_grad():
            logits = prompt_logits(self.lm, batch.states, layer, batch.target[:, :-1], soft_prompt=self.prompts[layer])
        return [from_logits(logits[:, n], k) for n in range(logits.shape[1])]
