"""The lens view: a layers × tokens grid of what each hidden state predicts.

Each cell holds the logit-lens top-k tokens of the state at (layer, token) and the short
phrase an intervention rolls out from it; `LensGrid` renders it as a standalone HTML page,
inline in Jupyter, as a ``wandb.Html``, or as fixed-width text.

    >>> grid = lens_grid(lm, "Marty McFly from", load_prompts("runs/prompts"), rollout=4)
    >>> grid.save_html("runs/lens.html"); print(grid.to_text())

`lens_grid` computes every cell in a few batched forwards (`compute`); `LensGrid` is the
plain data and its views (`grid`). Importing is cheap (numpy only): torch loads on the
first computation, wandb on `LensGrid.to_wandb`.
"""

from __future__ import annotations

from ..train import load_prompts
from .compute import LensConfig, lens_grid
from .grid import LensGrid

__all__ = ["LensConfig", "LensGrid", "lens_grid", "load_prompts"]
