"""The lens view: a layers × tokens grid of what each hidden state predicts.

Each cell holds the logit-lens top-k tokens of the state at (layer, token) and the short
phrase an intervention rolls out from it; `LensGrid` renders it as a standalone HTML page,
inline in Jupyter, as a ``wandb.Html``, or as fixed-width text.

    >>> grid = LensGrid(tokens, layers, top_tokens, top_probs, phrase_tokens, phrase_probs)
    >>> grid.save_html("runs/lens.html"); print(grid.to_text())

Importing is cheap (numpy only); wandb loads on `LensGrid.to_wandb`.
"""

from __future__ import annotations

from .grid import LensGrid

__all__ = ["LensGrid"]
