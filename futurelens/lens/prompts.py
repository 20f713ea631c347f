"""The lens' one prompt resolver: whatever ``prompts=`` a user gives (None, ``"fixed"``, a file, folder or hub id, a
tensor, a ``{layer: tensor}`` dict) becomes the soft prompts of each grid row, or the fixed text prompt."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

from ..errors import FutureLensError

if TYPE_CHECKING:
    import torch

    from ..models import LensModel

Prompts = Union["torch.Tensor", Mapping[int, "torch.Tensor"], str, os.PathLike, None]
FIXED = "fixed"
"""``lens(..., prompts="fixed")``: the fixed text prompt even where learned prompts ship."""


def read(lm: "LensModel", prompts: Any, *, force: bool = False, layer: int | None = None,
         revision: str | None = None) -> Any:
    """``prompts`` as given, or, for a file, folder or hub id, the `PromptSet` read from it (checked against ``lm``)."""
    if isinstance(prompts, (str, os.PathLike)) and str(prompts) != FIXED:
        from ..artifacts import load_prompts

        return load_prompts(prompts, lm, force=force, layer=layer, revision=revision)
    return prompts


def for_lens(lm: "LensModel", prompts: Prompts, *, layer: int | None, shared: bool, force: bool,
             revision: str | None) -> tuple[Any, str | None]:
    """`futurelens.lens`' ``prompts=``, ``layer=`` and ``shared=`` as the grid takes them: ``(prompts, page source)``.

    None: the prompts shipped for the model, else the fixed prompt (saying why); ``"fixed"``: the fixed prompt;
    a path or hub id: read; a tensor with ``layer``: that layer's prompt. ``shared``: the one prompt at every row's
    layer. A single prompt with another ``layer`` moves there only with ``force``.
    """
    import torch

    from ..artifacts import PromptSet, Source, shipped_prompts

    source = None
    if prompts is None:
        prompts = shipped_prompts(lm)
        if prompts is None:
            source = Source("fixed", note=f"no learned prompts ship with futurelens for {lm.name}: pass prompts= "
                            "(a folder, file or hub id) or train some").describe()
    elif isinstance(prompts, str) and prompts == FIXED:
        prompts, source = None, Source("fixed").describe()
    elif isinstance(prompts, (str, os.PathLike)):
        prompts = read(lm, prompts, force=force, layer=layer if Path(prompts).is_file() else None, revision=revision)
    elif isinstance(prompts, torch.Tensor) and layer is not None:
        prompts = PromptSet({lm.check_layer(layer): prompts}, Source("memory", layers=(lm.check_layer(layer),)))
    if shared:
        if not isinstance(prompts, Mapping) or len(prompts) != 1:
            raise FutureLensError(f"shared needs exactly one learned prompt, got {len(prompts) if isinstance(prompts, Mapping) else 0}.")
        found = getattr(prompts, "source", None)
        source = source or (found.describe() if found is not None else None)
        prompts = next(iter(prompts.values()))
    if layer is not None and isinstance(prompts, Mapping) and len(prompts) == 1 and layer not in prompts:
        if not force:
            raise FutureLensError(f"The prompt given is for layer {next(iter(prompts))}, not {layer}: drop layer=, or pass force=True.")
        found = getattr(prompts, "source", None)
        moved = PromptSet({layer: next(iter(prompts.values()))}, found)
        prompts = moved
    if layer is not None and source is None:
        found = getattr(prompts, "source", None)
        base = found.describe() if found is not None else "soft prompt given in memory"
        source = f"{base}; every row's state patched at layer {lm.check_layer(layer)}"
    return prompts, source


def per_layer(
    lm: "LensModel", prompts: Prompts, layers: int | Sequence[int] | None
) -> "tuple[list[int], dict[int, torch.Tensor] | None, str]":
    """``(grid layers, {layer: [P, d] soft prompt} or None for the fixed prompt, method label)``."""
    import torch

    from ..tracing import _layers

    prompts = read(lm, prompts)
    if prompts is None:
        rows, soft, method = _layers(lm, layers), None, ""
    elif isinstance(prompts, torch.Tensor):
        rows = _layers(lm, layers)
        shared = check_prompt(lm, prompts, "prompts")
        soft, method = {layer: shared for layer in rows}, f"learned soft prompt shared by all layers (P={shared.shape[0]})"
    elif isinstance(prompts, Mapping):
        if not prompts:
            raise FutureLensError("prompts is an empty dict: give {layer: [P, d_model] tensor}, or None for the fixed prompt.")
        soft = {}
        for key, value in prompts.items():
            layer = lm.check_layer(int(key), "prompt layer")
            soft[layer] = check_prompt(lm, value, f"prompts[{key}]")
        if layers is None:
            rows = sorted(soft)
        else:
            rows = _layers(lm, layers)
            missing = [layer for layer in rows if layer not in soft]
            if missing:
                raise FutureLensError(
                    f"No soft prompt for layer(s) {missing}: prompts are given for layers {sorted(soft)}. "
                    "Ask only for those layers (or leave layers unset), or add a prompt for each."
                )
        soft = {layer: soft[layer] for layer in rows}
        lengths = sorted({p.shape[0] for p in soft.values()})
        method = f"learned soft prompt per layer (P={'/'.join(map(str, lengths))})"
    else:
        raise FutureLensError(
            f"prompts must be a [P, d_model] tensor, a {{layer: tensor}} dict, a checkpoint path, or None; got {type(prompts).__name__}."
        )
    if len(set(rows)) != len(rows):
        raise FutureLensError(f"layers has repeats {rows}: each grid row needs its own layer.")
    return rows, soft, method


def check_prompt(lm: "LensModel", prompt: Any, what: str) -> "torch.Tensor":
    import torch

    if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.shape[0] < 1 or prompt.shape[1] != lm.embed_dim:
        shape = tuple(prompt.shape) if isinstance(prompt, torch.Tensor) else type(prompt).__name__
        raise FutureLensError(f"{what} must be a [P, {lm.embed_dim}] soft prompt for {lm.name}, got {shape}.")
    return prompt.detach()
