"""Soft-prompt training: the learned-prompt causal intervention, one prompt per layer.

A soft prompt of P vectors (init N(0, init_std)) is trained so that, with a
layer-L state patched over the output of block L at its last vector and the model's
own first ``N`` continuation tokens teacher-forced after it, the model's next-token
distribution matches the original model's at the token N ahead (KL), or hits that
token (CE). The model's weights stay frozen; only the prompt gets gradients.

The prompt is read as the model reads text (``lead='auto'``): after the tokens its tokenizer puts before any text
(BOS for Gemma and Llama-3; nothing for GPT-J, so the paper's prompt is unchanged), as frozen rows, the embedding's
output for those tokens. The saved prompt holds them first (``[k + P, e]``, metadata ``lead_ids``), so whatever
patches it (evaluation, the lens, a trace) feeds BOS too with no option of its own.

With ``target_layers`` (Patchscopes' target layer L') the state read at L is written at L' instead, one prompt
per pair (``layer-<L>-to-<L'>.*``); the paper's L' = L stays the default.

With ``source_cache`` the states are another model A's (`futurelens.mapping.MappedCache`: mapped into this
model B by affine least squares, the maps saved in ``<out>/maps/``); the prompts are trained in B and record
``source_model`` and ``target_layer``.

Checkpoints are atomic and resumable: ``layer-<L>.ckpt.pt`` holds the prompt, the
optimizer and the position in the data while training; ``layer-<L>.safetensors``
(tensor ``soft_prompt [P, d]``, metadata ``model``, ``layer``, ``config``, ``losses``)
is the finished prompt that the evaluation and the lens load.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FutureLensError

if TYPE_CHECKING:
    import torch
    from .data.states import StateCache
    from .models import LensModel


@dataclass
class TrainConfig:
    """Settings of `futurelens train`: one soft prompt per layer, trained on cached states."""

    cache: str = "runs/cache"
    """State cache folder written by `futurelens cache`."""
    out: str = "runs/prompts"
    """Folder for the prompts (layer-<L>.safetensors) and resumable checkpoints."""
    model: str = ""
    """Hub id or folder; empty = the model recorded in the cache."""
    layers: list[int] = field(default_factory=list)
    """Layers to train a prompt for; empty = every cached layer."""
    target_layers: list[int] = field(default_factory=list)
    """Layers the state is written at (Patchscopes' target layer L'): one prompt per (layer, target) pair, saved as
    layer-<L>-to-<L'>.safetensors; empty = each state at its own layer (the paper)."""
    source_cache: str = ""
    """State cache of another model A (same `futurelens data` folder): its states are mapped into this model (B) by
    affine least squares and written at --target-layers; prompts are trained in B."""
    target_n: int = 1
    """Which token ahead the prompt is trained to decode (the paper trains for N=1)."""
    prompt_len: int = 10
    """Soft prompt length P: vectors as wide as the model's embedding output (`embed_dim`; the residual width d_model
    except where a model projects its embeddings in, as OPT-350m does)."""
    lead: str = "auto"
    """What the model reads before the soft prompt: 'auto' = the tokens its tokenizer puts before any text (BOS for
    Gemma and Llama-3, nothing for GPT-J and SmolLM2), as frozen rows saved at the prompt's start; 'none' = the soft
    prompt alone from position 0."""
    init_std: float = 0.02
    """Standard deviation of the prompt's normal initialisation."""
    loss: str = "kl"
    """'kl' to the original model's distribution at the token N ahead, or 'ce' on that token."""
    optimizer: str = "adamw"
    """'adamw', 'adam' or 'sgd'."""
    lr: float = 5e-4
    """Learning rate."""
    weight_decay: float = 1e-5
    """Weight decay (AdamW / SGD)."""
    epochs: int = 1
    """Passes over the train split."""
    batch_size: int = 8
    """Prefixes per forward pass."""
    grad_accum: int = 1
    """Batches per optimizer step (effective batch = batch_size * grad_accum)."""
    seed: int = 0
    """Seed for the initialisation and the shuffling."""
    checkpoint_every: int = 50
    """Save a resumable checkpoint every this many batches."""
    states: str = "auto"
    """Where each batch's source states come from remotely: 'ship' (sent from the cache), 'recompute' (only prefix
    ids are sent; the server recomputes the states in the same request) or 'auto' (ship locally; remotely the
    faster by futurelens.train_states.choose_states). Results are the same either way."""
    wandb: bool = False
    """Log training curves to Weights & Biases (works offline with WANDB_MODE=offline)."""
    wandb_project: str = "futurelens"
    """W&B project."""


def check_config(cfg: TrainConfig) -> None:
    """Refuse bad settings before anything loads, with what to do."""
    if cfg.loss not in ("kl", "ce"):
        raise FutureLensError(f"loss (--loss) must be 'kl' or 'ce', not {cfg.loss!r}.")
    if cfg.lead not in ("auto", "none"):
        raise FutureLensError(f"lead (--lead) must be 'auto' or 'none', not {cfg.lead!r}.")
    if cfg.optimizer not in _OPTIMIZERS:
        raise FutureLensError(f"optimizer (--optimizer) must be 'adamw', 'adam' or 'sgd', not {cfg.optimizer!r}.")


# The prompt file format lives in `futurelens.artifacts` (with every other on-disk and hub format); these
# names stay importable from here.
from .artifacts import load_prompt, load_prompts, prompt_checkpoint_path, prompt_key, prompt_path, save_prompt  # noqa: E402,F401
from .artifacts.prompts import load_prompt_checkpoint, save_prompt_checkpoint  # noqa: E402


_OPTIMIZERS = ("adamw", "adam", "sgd")


def prompt_loss(lm: LensModel, prompt: torch.Tensor, batch: Any, layer: int, n: int, loss: str) -> torch.Tensor:
    """The training objective on one batch: the patched run's prediction of the token ``n`` ahead.

    KL(original model || patched run) when ``loss='kl'`` (the original distribution is
    the model's head on the cached last-layer state ``batch.final[:, n]``), else
    cross-entropy on ``batch.target[:, n]``. (`futurelens.server.jobs.prompt_loss` where the model is.)
    """
    from .methods.base import plain_batch
    from .dispatch import run_job
    from .server import jobs

    return run_job(lm, jobs.prompt_loss, prompt, plain_batch(batch), layer, n, loss)


def train_prompt(
    lm: LensModel,
    cache: StateCache,
    layer: int,
    cfg: TrainConfig,
    progress: bool = True,
    log: Any = None,
    target_layer: int | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Train (or resume, or load if finished) the soft prompt for ``layer``. Returns ``(prompt [k + P, e], losses)``: the ``k`` lead rows first.

    The state read at ``layer`` is written at ``target_layer`` (default ``layer``, the paper's setting).

    ``losses`` has one entry per optimizer step; ``log(dict)`` is called with each step's loss.
    The steps run in chunks (`futurelens.server.jobs.train_steps`): ``checkpoint_every``
    batches locally; remotely as many as fit one request of ``lm.max_request_mb``, so a run
    of any size is many bounded requests. The prompt, optimizer state, accumulated gradient
    and position are checkpointed after every chunk: an interrupted run resumes where it
    stopped and ends identical to an uninterrupted one.
    """
    import torch

    from tqdm.auto import tqdm

    from .methods.base import plain_batch
    from .dispatch import payload_bytes, run_job, stream_requests
    from .server import jobs, traces
    from .tokens import recorded

    check_config(cfg)
    if not 0 <= cfg.target_n <= cache.n_max:
        raise FutureLensError(f"target_n must be in 0..{cache.n_max} (the cache's n_max), got {cfg.target_n}.")
    if cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.prompt_len < 1 or cfg.checkpoint_every < 1:
        raise FutureLensError("batch_size, grad_accum, prompt_len and checkpoint_every must be >= 1.")
    if layer not in cache.layers:  # a source layer is the cache's (another model's, for a mapped cache)
        layer = lm.check_layer(layer)
        if layer not in cache.layers:
            raise FutureLensError(f"Layer {layer} is not cached; the cache holds layers {cache.layers}.")
    write = lm.check_layer(layer if target_layer is None else target_layer, "target layer")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    final_path = prompt_path(out, layer, write)
    ckpt_path = prompt_checkpoint_path(out, layer, write)
    # ``states`` is how the batches travel, not what is trained: a prompt trained either way is the same prompt.
    settings = {k: v for k, v in asdict(cfg).items()
                if k not in ("out", "layers", "target_layers", "checkpoint_every", "wandb", "wandb_project", "states")}
    if not settings["source_cache"]:  # prompts trained before cross-model training existed keep matching
        del settings["source_cache"]
    # What precedes the prompt is recorded as the ids it resolved to; none (GPT-J, SmolLM2) records nothing, so a
    # prompt trained before the option existed keeps matching.
    del settings["lead"]
    lead_ids = lead_tokens(cfg.lead, lm)
    if lead_ids:
        settings["lead_ids"] = lead_ids
    if final_path.exists():
        prompt, meta = load_prompt(final_path, lm)
        if meta["config"] == settings:
            return prompt, meta["losses"]
        raise FutureLensError(f"{final_path} was trained with other settings: use another --out, or delete it to retrain.")

    lead = run_job(lm, traces.embed_rows, lead_ids) if lead_ids else None  # [k, e], frozen
    g = torch.Generator().manual_seed(cfg.seed + layer)
    prompt = torch.randn(cfg.prompt_len, lm.embed_dim, generator=g) * cfg.init_std
    carried = {"optimizer": None, "grad": None, "pending": []}
    state = {"epoch": 0, "batch": 0, "losses": []}
    saved = load_prompt_checkpoint(ckpt_path, settings)
    if saved is not None:
        prompt, carried, state = saved["prompt"], saved["carried"], saved["state"]

    def checkpoint() -> None:
        save_prompt_checkpoint(ckpt_path, settings, prompt, carried, state)

    n_batches = -(-cache.size("train") // cfg.batch_size)
    step_settings = {k: settings[k] for k in ("optimizer", "lr", "weight_decay", "target_n", "loss", "grad_accum")}
    step_settings["lead"] = lead
    from .train_states import id_batch, prefix_ids, resolve_states

    recompute = resolve_states(cfg.states, lm, cache, cfg.loss) == "recompute"
    prefixes = prefix_ids(cache, lm.tokenizer) if recompute else None

    def remaining():
        """``(epoch, i, last of its epoch, plain batch)`` from the resume point on; the shuffle is seeded, so the order
        is the same. Recomputed on the server, a batch is its ids (`id_batch`), and no state is read here."""
        for epoch in range(state["epoch"], cfg.epochs):
            batches = cache.batches(None if recompute else layer, "train", cfg.batch_size, shuffle=True,
                                    seed=cfg.seed + epoch, final=cfg.loss == "kl" and not recompute)
            for i, batch in enumerate(batches):
                if epoch == state["epoch"] and i < state["batch"]:
                    continue
                yield epoch, i, i == n_batches - 1, id_batch(batch, prefixes) if recompute else plain_batch(batch)

    def chunks():
        # What travels with every request besides its batches: the prompt, the optimizer's carried state and the step
        # settings (the lead rows), read again for each request (the caller runs a chunk and updates the prompt and
        # carried state before the next one is grouped).
        return stream_requests(lm, remaining(), size=lambda item: payload_bytes(item[3]),
                               fixed=lambda: payload_bytes((prompt, carried, step_settings)), most=cfg.checkpoint_every)

    name = f"L{layer}" if write == layer else f"L{layer}->L{write}"
    bar = tqdm(total=cfg.epochs * n_batches, initial=state["epoch"] * n_batches + state["batch"],
               disable=not progress, desc=f"Training prompt {name}", unit="batch")
    if recompute:
        from .server import recompute as server_recompute

        job, extra_args = server_recompute.train_steps_recompute, (layer, getattr(torch, cache.settings["dtype"]),
                                                                     cfg.loss == "kl")
    else:
        job, extra_args = jobs.train_steps, ()
    for chunk in chunks():
        prompt, carried["optimizer"], carried["grad"], carried["pending"], steps = run_job(
            lm, job, prompt, carried["optimizer"], carried["grad"], carried["pending"], chunk, step_settings, write,
            *extra_args
        )
        state["losses"] += [step_loss for _, _, step_loss in steps]
        epoch, i, last, _ = chunk[-1]
        state.update(epoch=epoch + 1, batch=0) if last else state.update(epoch=epoch, batch=i + 1)
        checkpoint()  # before anything else can be interrupted: a finished request is never lost
        for _, _, step_loss in steps:
            bar.set_postfix(loss=f"{step_loss:.3f}")
            if log is not None:
                log({f"train/loss_{name}": step_loss})
        bar.update(len(chunk))
    bar.close()
    extra = {"data": _fingerprint(cache), **({} if write == layer else {"target_layer": write}),
             "special_tokens": json.dumps(recorded(cache.settings.get("dataset", {}).get("special_tokens")))}  # how its states' text was tokenised (futurelens.tokens)
    if cache.settings.get("source_model"):  # a mapped cache (futurelens.mapping): the states are another model's
        extra.update(source_model=cache.settings["source_model"], target_layer=write)
    if lead is not None:
        prompt = torch.cat([lead, prompt])
        extra["lead_ids"] = json.dumps(lead_ids)
    save_prompt(final_path, prompt, model=lm.name, layer=layer, config=settings, losses=state["losses"], extra=extra)
    ckpt_path.unlink(missing_ok=True)
    return prompt, state["losses"]


def lead_tokens(lead: str, lm: LensModel) -> list[int]:
    """The token ids read before the soft prompt: for 'auto', those the model's tokenizer puts before any text (the
    same as its dataset's, which `train` checks)."""
    from .tokens import prepended

    return prepended(lm.tokenizer) if lead == "auto" else []


def _fingerprint(cache: StateCache) -> str:
    from .artifacts import data_fingerprint

    return data_fingerprint(cache)


def train(cfg: TrainConfig, lm: LensModel | None = None, progress: bool = True) -> dict:
    """Train a prompt for each requested layer (and target layer); ``{layer or (layer, target): prompt}``
    (`futurelens.artifacts.prompt_key`). Loads the model named in the cache if not given."""
    from .data.states import StateCache
    from .tracking import Tracker

    cache = StateCache(cfg.cache)
    if lm is None:
        from .models import load_model

        lm = load_model(cfg.model or cache.settings["model"])
    cache.check_tokens(lm.tokenizer)
    source = StateCache(cfg.source_cache) if cfg.source_cache else None  # model A's states, mapped into B
    views: dict[int, Any] = {}

    def states(target: int) -> Any:
        if source is None:
            return cache
        if target not in views:
            from .mapping import MappedCache

            views[target] = MappedCache(source, cache, lm.check_layer(target, "target layer"), folder=cfg.out)
        return views[target]

    layers = cfg.layers or (source or cache).layers
    prompts = {}
    with Tracker(cfg.wandb, cfg.wandb_project, config=asdict(cfg), job="train") as tracker:
        for layer in layers:
            for target in cfg.target_layers or [layer]:
                prompts[prompt_key(layer, target)], _ = train_prompt(lm, states(target), layer, cfg, progress=progress,
                                                                     log=tracker.log, target_layer=target)
    return prompts
