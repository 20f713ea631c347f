"""Settings of `futurelens lens` (`LensConfig`, whose field docs are the CLI's help), their check, and `run`: the
lens as those settings say, for the CLI and a notebook alike (the same checks, the same `FutureLensError`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..artifacts.lens import PAGE
from ..errors import FutureLensError
from ..methods import PAPER_PROMPT

if TYPE_CHECKING:
    from ..models import LensModel
    from .grid import LensGrid


@dataclass
class LensConfig:
    """Settings of `futurelens lens`."""

    text: str = "Marty McFly from"
    """Text whose tokens are read, layer by layer (the first argument)."""
    model: str = "smollm2-135m"
    """Hub id, local folder, or the embedded default 'smollm2-135m'."""
    prompts: str = ""
    """Learned soft prompts, each used at its own layer: a .safetensors checkpoint, a folder of them, or a hub id
    (owner/name[@revision]) pushed by `futurelens push`; empty = the prompts shipped for the model (the embedded
    default has one per layer), else the fixed prompt."""
    prompt: str = ""
    """One learned prompt that receives every row's state at its layer, as the authors' demo does: a file (a
    futurelens .safetensors, or a bare tensor .pt/.safetensors such as the authors' gptj_soft_prefix.pt, which
    needs --layer) or a hub id."""
    layer: Optional[int] = None
    """The layer of --prompt (for gptj_soft_prefix.pt: 14, the output of GPT-J block 13): every row's state is
    patched there. With --prompts, picks that layer's prompt for every row."""
    shared: bool = False
    """Use the one learned prompt given at every row's own layer (to patch every state into the prompt's own
    layer, as the authors' demo does, use --prompt with --layer)."""
    fixed: bool = False
    """Use the fixed text prompt even where learned prompts ship with futurelens for the model."""
    revision: str = ""
    """Hub revision (branch, tag or commit) of --prompts / --prompt when it is a hub id."""
    probes: str = ""
    """Fitted vocabulary probes / linear approximations (the folder `futurelens eval` saved them in, e.g.
    runs/eval/probes, or a hub id): their top-1 guesses N = 0..n_max ahead show on hover, for the layers they have."""
    layers: list[int] = field(default_factory=list)
    """Layers to show (0 = block 0's input, L = the residual stream after L blocks, up to the model's n_layers); empty =
    all, or all that have a learned prompt."""
    target_layer: Optional[int] = None
    """Write each row's state at this layer instead of its own (Patchscopes' target layer): with --prompts, the ones
    trained for (row layer, this layer) by `futurelens train --target-layers`; else the fixed prompt."""
    rollout: int = 4
    """Tokens rolled out from each cell's state."""
    top_k: int = 5
    """Logit-lens tokens kept per cell (shown on hover)."""
    fixed_prompt: str = PAPER_PROMPT
    """Text prompt whose last token receives the state when no learned prompts are given."""
    chunk_size: int = 512
    """Cells patched per batched forward (lower it if memory runs short)."""
    force: bool = False
    """Use learned prompts even if they were trained on another model."""
    out: str = PAGE
    """HTML file the grid is written to."""
    width: int = 12
    """Characters per cell in the printed text grid (the HTML shows every token)."""


def check_config(cfg: LensConfig) -> None:
    """Refuse bad settings before the model loads, with what to do; prompt files given are read (and checked) now."""
    from ..artifacts import hub_id, load_prompts

    if cfg.rollout < 0 or cfg.top_k < 1 or cfg.chunk_size < 1:
        raise FutureLensError("--rollout must be >= 0, --top-k and --chunk-size >= 1.")
    if cfg.prompt and cfg.prompts:
        raise FutureLensError("Give --prompt (one prompt, every row's state patched at its layer) or --prompts (one per "
                              "layer), not both.")
    if cfg.prompt and cfg.shared:
        raise FutureLensError("--shared goes with --prompts; --prompt already uses its one prompt for every row.")
    given = cfg.prompt or cfg.prompts
    if given and hub_id(given) is None:
        # the files exist and are soft prompts (a bare tensor has its --layer), before the model loads
        loaded = load_prompts(given, layer=cfg.layer if Path(given).is_file() else None, force=cfg.force)
        if cfg.prompt and cfg.layer is None:
            one_prompt(loaded, cfg.prompt)


def one_prompt(loaded: Any, given: str) -> int:
    """The layer of the one prompt ``--prompt`` holds (every row's state goes there), or a `FutureLensError` when it
    holds several and ``--layer`` does not say which."""
    if len(loaded) != 1:
        raise FutureLensError(f"--prompt {given} holds prompts for layers {sorted(loaded)}: say which with --layer.")
    return next(iter(loaded))


def run(cfg: LensConfig, lm: "LensModel | None" = None, progress: bool = True) -> "LensGrid":
    """The lens of ``cfg.text`` as ``cfg`` says, written to ``cfg.out``; returns the `LensGrid`.

    ``--prompt`` (one prompt: every row's state patched at the layer it records, or at ``--layer``),
    ``--prompts`` (one per layer), ``--fixed`` or another ``--fixed-prompt`` (the fixed prompt), else the prompts
    shipped for the model, if any. Loads ``cfg.model`` unless ``lm`` is given.
    """
    from ..artifacts import PromptSet, load_prompts
    from .compute import lens
    from .prompts import FIXED

    check_config(cfg)
    if lm is None:
        from ..models import load_model

        lm = load_model(cfg.model)
    given = cfg.prompt or cfg.prompts
    if given:
        prompts: Any = given
    else:
        prompts = FIXED if cfg.fixed or cfg.fixed_prompt != PAPER_PROMPT else None  # None: the shipped ones, if any
    layer = cfg.layer
    if cfg.prompt and layer is None:  # one prompt: every row goes to the layer it records
        loaded = load_prompts(given, lm, force=cfg.force, revision=cfg.revision or None)
        layer = one_prompt(loaded, cfg.prompt)
        prompts = PromptSet(loaded, loaded.source, loaded.meta)
    grid = lens(lm, cfg.text, prompts, layer=layer, layers=cfg.layers or None, shared=cfg.shared, rollout=cfg.rollout,
                top_k=cfg.top_k, fixed_prompt=cfg.fixed_prompt, chunk_size=cfg.chunk_size, progress=progress,
                force=cfg.force, revision=cfg.revision or None, probes=cfg.probes or None, target_layer=cfg.target_layer)
    grid.save_html(cfg.out)
    return grid
