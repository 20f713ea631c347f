"""The lens view: a layers × tokens grid of what each hidden state predicts.

Each cell holds the logit-lens top-k tokens of the state at (layer, token) and the short
phrase an intervention rolls out from it; `LensGrid` renders it as a standalone HTML page,
inline in Jupyter, as a ``wandb.Html``, or as fixed-width text.

    >>> grid = lens(lm, "Marty McFly from")      # the prompts shipped for the model, else the fixed prompt
    >>> grid = lens_grid(lm, "Marty McFly from", load_prompts("runs/prompts"), rollout=4)
    >>> grid.save_html("runs/lens.html"); print(grid.to_text())

The package is callable: ``futurelens.lens(lm, text, prompts=...)`` is `compute.lens` (``fl.lens`` names this
package once anything has imported it, so the package itself answers the call).

`lens_grid` computes every cell in a few batched forwards (`compute`); `LensGrid` is the
plain data and its views (`grid`). Importing is cheap (numpy only): torch loads on the
first computation, wandb on `LensGrid.to_wandb`.
"""

from __future__ import annotations

import inspect as _inspect
import sys as _sys
import types as _types

from ..artifacts import load_prompts
from .compute import lens, lens_grid
from .config import LensConfig
from .grid import LensGrid

__all__ = ["LensConfig", "LensGrid", "lens", "lens_grid", "load_prompts"]


class _Callable(_types.ModuleType):
    """This package, callable as `compute.lens`: ``fl.lens(lm, text)`` works whichever of the two ``fl.lens`` is."""

    def __call__(self, *args, **kwargs) -> LensGrid:
        return lens(*args, **kwargs)


__signature__ = _inspect.signature(lens)
_sys.modules[__name__].__class__ = _Callable
