"""Soft-prompt training: the learned-prompt causal intervention, one prompt per layer.

A soft prompt of P vectors (init N(0, init_std), no BOS) is trained so that, with a
layer-L state patched over the output of block L at its last vector and the model's
own first ``N`` continuation tokens teacher-forced after it, the model's next-token
distribution matches the original model's at the token N ahead (KL), or hits that
token (CE). The model's weights stay frozen; only the prompt gets gradients.

Checkpoints are atomic and resumable: ``layer-<L>.ckpt.pt`` holds the prompt, the
optimizer and the position in the data while training; ``layer-<L>.safetensors``
(tensor ``soft_prompt [P, d]``, metadata ``model``, ``layer``, ``config``, ``losses``)
is the finished prompt that the evaluation and the lens load.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .atomic import atomic_path
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
    target_n: int = 1
    """Which token ahead the prompt is trained to decode (the paper trains for N=1)."""
    prompt_len: int = 10
    """Soft prompt length P (vectors of size d_model)."""
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
    wandb: bool = False
    """Log training curves to Weights & Biases (works offline with WANDB_MODE=offline)."""
    wandb_project: str = "futurelens"
    """W&B project."""


def _atomic(write, path: Path) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def prompt_path(out: str | os.PathLike, layer: int) -> Path:
    return Path(out) / f"layer-{layer}.safetensors"


def save_prompt(path: str | os.PathLike, prompt: torch.Tensor, *, model: str, layer: int, config: dict, losses: list[float]) -> Path:
    """Write a finished soft prompt ``[P, d]`` with what it belongs to (atomic)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": model, "layer": str(layer), "config": json.dumps(config), "losses": json.dumps(losses)}
    _atomic(lambda tmp: save_file({"soft_prompt": prompt.detach().float().contiguous()}, tmp, metadata=meta), path)
    return path


def load_prompt(path: str | os.PathLike, lm: LensModel | None = None) -> tuple[torch.Tensor, dict]:
    """``(soft_prompt [P, d], metadata)`` of one checkpoint; with ``lm``, refuse a prompt trained for another model.

    ``metadata`` has ``model``, ``layer`` (int), ``config`` and ``losses`` (parsed). A
    missing, truncated or foreign file is a clear error naming the file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FutureLensError(f"No soft prompt at {path}: train one with `futurelens train`.")
    try:
        with safe_open(str(path), framework="pt") as h:
            meta = dict(h.metadata() or {})
            if "soft_prompt" not in h.keys():
                raise FutureLensError(f"{path} has no 'soft_prompt' tensor (it has {sorted(h.keys())}): not a futurelens soft prompt.")
            prompt = h.get_tensor("soft_prompt")
    except FutureLensError:
        raise
    except Exception as e:  # a truncated or foreign file: say which one
        raise FutureLensError(f"Cannot read {path} as a safetensors soft prompt: {e}") from e
    try:
        meta["layer"] = int(meta["layer"])
    except (KeyError, ValueError) as e:
        raise FutureLensError(f"{path} lacks an integer 'layer' in its metadata (found {meta.get('layer')!r}).") from e
    try:
        meta["config"] = json.loads(meta.get("config", "{}"))
        meta["losses"] = json.loads(meta.get("losses", "[]"))
    except ValueError as e:
        raise FutureLensError(f"{path} has a 'config' or 'losses' metadata entry that is not JSON: {e}") from e
    if prompt.dim() != 2:
        raise FutureLensError(f"{path}: soft_prompt must be [P, d_model], got shape {tuple(prompt.shape)}.")
    if lm is not None and (meta.get("model") != lm.name or prompt.shape[-1] != lm.d_model):
        raise FutureLensError(
            f"{path} was trained on {meta.get('model')!r} (d_model {prompt.shape[-1]}), not {lm.name!r} "
            f"(d_model {lm.d_model}): train a prompt for this model."
        )
    return prompt, meta


def load_prompts(
    paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike],
    model: LensModel | str | None = None,
    *,
    force: bool = False,
) -> dict[int, torch.Tensor]:
    """Read learned soft-prompt checkpoints into ``{layer: [P, d_model] tensor}``.

    A checkpoint is a safetensors file with the tensor ``"soft_prompt"`` ``[P, d]`` and
    string metadata ``"model"``, ``"layer"`` and ``"config"`` (JSON), as written by
    ``futurelens train``. A folder means every ``*.safetensors`` in it.

    Args:
        paths_or_dir: a file, a folder, or several files.
        model: a `LensModel` or model name; each file's ``"model"`` must match it unless ``force``.
        force: accept prompts trained on another model (same width still required downstream).
    """
    given = [paths_or_dir] if isinstance(paths_or_dir, (str, os.PathLike)) else list(paths_or_dir)
    files: list[Path] = []
    for p in map(Path, given):
        if p.is_dir():
            found = sorted(p.glob("*.safetensors"))
            if not found:
                raise FutureLensError(f"No *.safetensors soft prompts in {p}: point --prompts at a checkpoint file or its folder.")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FutureLensError(f"Soft prompt path {p} does not exist.")
    if not files:
        raise FutureLensError("No soft prompt files given.")
    name = model if isinstance(model, str) or model is None else model.name

    prompts: dict[int, torch.Tensor] = {}
    source: dict[int, Path] = {}
    for f in files:
        tensor, meta = load_prompt(f)
        layer = meta["layer"]
        trained_on = meta.get("model")
        if name is not None and not force and trained_on != name:
            raise FutureLensError(
                f"{f} was trained on {trained_on!r}, not {name!r}: a soft prompt only means something to its own model. "
                "Pass force=True (--force) to use it anyway."
            )
        if layer in prompts:
            raise FutureLensError(f"Two soft prompts for layer {layer}: {source[layer]} and {f}. Keep one per layer.")
        prompts[layer], source[layer] = tensor, f
    return prompts


def _optimizer(params: list[torch.Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    import torch

    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise FutureLensError(f"optimizer must be 'adamw', 'adam' or 'sgd', not {cfg.optimizer!r}.")


def prompt_loss(lm: LensModel, prompt: torch.Tensor, batch: Any, layer: int, n: int, loss: str) -> torch.Tensor:
    """The training objective on one batch: the patched run's prediction of the token ``n`` ahead.

    KL(original model || patched run) when ``loss='kl'`` (the original distribution is
    the model's head on the cached last-layer state ``batch.final[:, n]``), else
    cross-entropy on ``batch.target[:, n]``.
    """
    import torch

    from .methods.prompts import prompt_logits
    from .tracing import decode

    logits = prompt_logits(lm, batch.states, layer, batch.target[:, :n], soft_prompt=prompt)[:, n].float()
    logprobs = logits.log_softmax(-1)
    if loss == "ce":
        return torch.nn.functional.nll_loss(logprobs, batch.target[:, n].to(logprobs.device))
    with torch.no_grad():
        reference = decode(lm, batch.final[:, n]).float().log_softmax(-1)
    return torch.nn.functional.kl_div(logprobs, reference, log_target=True, reduction="batchmean")


def train_prompt(
    lm: LensModel,
    cache: StateCache,
    layer: int,
    cfg: TrainConfig,
    progress: bool = True,
    log: Any = None,
) -> tuple[torch.Tensor, list[float]]:
    """Train (or resume, or load if finished) the soft prompt for ``layer``. Returns ``(prompt [P, d], losses)``.

    ``losses`` has one entry per optimizer step. ``log(dict)`` is called with each step's loss.
    """
    import torch

    from tqdm.auto import tqdm

    if cfg.loss not in ("kl", "ce"):
        raise FutureLensError(f"loss must be 'kl' or 'ce', not {cfg.loss!r}.")
    if not 0 <= cfg.target_n <= cache.n_max:
        raise FutureLensError(f"target_n must be in 0..{cache.n_max} (the cache's n_max), got {cfg.target_n}.")
    if cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.prompt_len < 1:
        raise FutureLensError("batch_size, grad_accum and prompt_len must be >= 1.")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    final_path, ckpt_path = prompt_path(out, layer), out / f"layer-{layer}.ckpt.pt"
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "layers", "checkpoint_every", "wandb", "wandb_project")}
    if final_path.exists():
        prompt, meta = load_prompt(final_path, lm)
        if meta["config"] == settings:
            return prompt, meta["losses"]
        raise FutureLensError(f"{final_path} was trained with other settings: use another --out, or delete it to retrain.")

    g = torch.Generator().manual_seed(cfg.seed + layer)
    prompt = (torch.randn(cfg.prompt_len, lm.d_model, generator=g) * cfg.init_std).requires_grad_(True)
    opt = _optimizer([prompt], cfg)
    state = {"epoch": 0, "batch": 0, "losses": [], "pending": []}
    if ckpt_path.exists():
        saved = torch.load(ckpt_path, weights_only=False)
        if saved["settings"] != settings:
            raise FutureLensError(f"{ckpt_path} is a checkpoint for other settings: use another --out, or delete it.")
        with torch.no_grad():
            prompt.copy_(saved["prompt"])
        prompt.grad = saved["grad"]
        opt.load_state_dict(saved["optimizer"])
        state = saved["state"]

    def checkpoint() -> None:
        # The gradient is kept too: a checkpoint can fall between the batches of one accumulated step.
        blob = {"settings": settings, "prompt": prompt.detach().clone(), "grad": prompt.grad, "optimizer": opt.state_dict(),
                "state": state}
        _atomic(lambda tmp: torch.save(blob, tmp), ckpt_path)

    n_batches = -(-cache.size("train") // cfg.batch_size)

    def epoch_batches(epoch: int):
        return cache.batches(layer, "train", cfg.batch_size, shuffle=True, seed=cfg.seed + epoch, final=cfg.loss == "kl")

    if lm.remote:
        # One remote job for the whole layer: the loop runs on the server, the prompt and the losses come back.
        from .remote import run_job

        epochs = [list(epoch_batches(epoch)) for epoch in range(cfg.epochs)]
        trained, losses = run_job(lm, _train_job, prompt.detach(), epochs, cfg, layer)
        with torch.no_grad():
            prompt.copy_(trained)
        state["losses"] = [float(x) for x in losses]
    else:
        bar = tqdm(total=cfg.epochs * n_batches, initial=state["epoch"] * n_batches + state["batch"],
                   disable=not progress, desc=f"Training prompt L{layer}", unit="batch")
        for epoch in range(state["epoch"], cfg.epochs):
            for i, batch in enumerate(epoch_batches(epoch)):
                if i < state["batch"]:
                    continue  # already seen before the resume; the shuffle is seeded, so the order is the same
                step_loss = _accumulate(lm, prompt, opt, batch, layer, cfg, state, i, n_batches)
                if step_loss is not None:
                    bar.set_postfix(loss=f"{step_loss:.3f}")
                    if log is not None:
                        log({f"train/loss_L{layer}": step_loss})
                bar.update(1)
                if state["batch"] % cfg.checkpoint_every == 0:
                    checkpoint()
            state.update(epoch=epoch + 1, batch=0)
        bar.close()
    save_prompt(final_path, prompt, model=lm.name, layer=layer, config=settings, losses=state["losses"])
    ckpt_path.unlink(missing_ok=True)
    return prompt.detach(), state["losses"]


def _accumulate(lm: LensModel, prompt: torch.Tensor, opt: Any, batch: Any, layer: int, cfg: TrainConfig,
                state: dict, i: int, n_batches: int) -> float | None:
    """Backward on batch ``i``; an optimizer step every ``grad_accum`` batches (and at the epoch's end).

    Returns the step's mean loss when a step was taken, else None.
    """
    loss = prompt_loss(lm, prompt, batch, layer, cfg.target_n, cfg.loss)
    (loss / cfg.grad_accum).backward()
    state["pending"].append(loss.item())
    state["batch"] = i + 1
    if len(state["pending"]) < cfg.grad_accum and state["batch"] < n_batches:
        return None
    opt.step()
    opt.zero_grad()
    step_loss = sum(state["pending"]) / len(state["pending"])
    state["losses"].append(step_loss)
    state["pending"] = []
    return step_loss


def _train_job(lm: LensModel, init: torch.Tensor, epochs: list[list[Any]], cfg: TrainConfig, layer: int):
    """The whole training loop as one function, so a remote session can run it server-side."""
    import torch

    prompt = init.clone().requires_grad_(True)
    opt = _optimizer([prompt], cfg)
    state = {"losses": [], "pending": []}
    for batches in epochs:
        for i, batch in enumerate(batches):
            _accumulate(lm, prompt, opt, batch, layer, cfg, state, i, len(batches))
    return prompt.detach(), torch.tensor(state["losses"])


def train(cfg: TrainConfig, lm: LensModel | None = None, progress: bool = True) -> dict[int, torch.Tensor]:
    """Train a prompt for each requested layer; ``{layer: prompt}``. Loads the model named in the cache if not given."""
    from .data.states import StateCache
    from .tracking import Tracker

    cache = StateCache(cfg.cache)
    if lm is None:
        from .models import load_model

        lm = load_model(cfg.model or cache.settings["model"])
    layers = cfg.layers or cache.layers
    prompts = {}
    with Tracker(cfg.wandb, cfg.wandb_project, config=asdict(cfg), job="train") as tracker:
        for layer in layers:
            prompts[layer], _ = train_prompt(lm, cache, layer, cfg, progress=progress, log=tracker.log)
    return prompts
