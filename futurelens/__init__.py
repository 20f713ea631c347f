"""futurelens: what a single hidden state knows about the tokens after the next one.

    >>> import futurelens as fl
    >>> lm = fl.load_model()                      # embedded SmolLM2-135M, offline
    >>> states = fl.cache(lm, ["The Eiffel Tower is in"], layers=[2, 14])
    >>> tuple(states.shape)                       # [layers, prefixes, d_model]
    (2, 1, 576)
    >>> out = fl.patch(lm, states[1], layer=14, target='Hello! Could you please tell me more about "', rollout=4)
    >>> tuple(out.rollout_ids.shape)              # the phrase the state rolls out: lm.tokenizer.decode(...)
    (1, 4)

``tests/test_readme.py`` runs this example. Importing is cheap: torch, transformers and nnsight load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Arch": "futurelens.arch",
    "FutureLensError": "futurelens.errors",
    "LensModel": "futurelens.models",
    "load_model": "futurelens.models",
    "DEFAULT_MODEL": "futurelens.embedded",
    "cache": "futurelens.tracing",
    "cache_ahead": "futurelens.tracing",
    "decode": "futurelens.tracing",
    "token_states": "futurelens.tracing",
    "patch": "futurelens.tracing",
    "rollout": "futurelens.tracing",
    "greedy": "futurelens.tracing",
    "PatchOutput": "futurelens.tracing",
    "lens": "futurelens.lens.compute",
    "lens_grid": "futurelens.lens.compute",
    "LensGrid": "futurelens.lens.grid",
    "load_prompts": "futurelens.artifacts",
    "load_prompt": "futurelens.artifacts",
    "save_prompt": "futurelens.artifacts",
    "shipped_prompts": "futurelens.artifacts",
    "push": "futurelens.artifacts",
    "plan": "futurelens.planner",
    "PlanConfig": "futurelens.planner",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'futurelens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
