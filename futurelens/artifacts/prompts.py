"""Soft prompts on disk: futurelens' safetensors (``soft_prompt [P, embed_dim]`` + metadata), a bare tensor (the
authors' ``gptj_soft_prefix.pt``), the prompts shipped in the package, and where training writes them."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..atomic import atomic_path
from ..errors import FutureLensError
from ..secrets import safe_config
from .checkpoint import checkpoint_field, load_checkpoint, save_checkpoint
from .source import MANIFEST, PROMPT_SUFFIXES, PromptSet, Source, hub_id, pull, source_layers

if TYPE_CHECKING:
    import torch

    from ..models import LensModel

PROMPT_KEY = "soft_prompt"
"""The tensor name of a futurelens soft prompt file (``[P, embed_dim]``)."""
PACKAGE_PROMPTS = Path(__file__).parent.parent / "prompts"
"""Learned prompts shipped in the package: one folder per model name (``smollm2-135m/layer-<L>.safetensors``)."""


def select_target(prompts: Any, target: int | None) -> Any:
    """From ``{layer or (layer, target): prompt}``, the ``{layer: prompt}`` that write at ``target`` (None: each at
    its own layer), keeping a `PromptSet`'s source; refused with what exists when none do."""
    keys = list(prompts)
    if target is None:
        picked = {k: v for k, v in prompts.items() if not isinstance(k, tuple)}
    else:
        picked = {(k if not isinstance(k, tuple) else k[0]): v for k, v in prompts.items()
                  if (k == target if not isinstance(k, tuple) else k[1] == target)}
    if not picked and keys:
        pairs = sorted({k if isinstance(k, tuple) else (k, k) for k in keys})
        raise FutureLensError(
            f"No soft prompt writes at layer {'its own' if target is None else target}: the prompts given are for "
            f"(layer, target layer) {pairs}. Train them with `futurelens train --target-layers`, or pick a target they have."
        )
    if isinstance(prompts, PromptSet):
        return PromptSet(picked, prompts.source, prompts.meta)
    return picked


def prompt_key(layer: int, target_layer: int | None = None) -> int | tuple[int, int]:
    """The `PromptSet` key of a prompt for states read at ``layer`` and written at ``target_layer``."""
    return layer if target_layer is None or target_layer == layer else (layer, target_layer)


def prompt_path(out: str | os.PathLike, layer: int, target_layer: int | None = None) -> Path:
    """Where `futurelens train` writes the finished prompt of ``layer`` (``layer-<L>-to-<L'>`` for another target)."""
    key = prompt_key(layer, target_layer)
    return Path(out) / (f"layer-{layer}.safetensors" if isinstance(key, int) else f"layer-{layer}-to-{key[1]}.safetensors")


def prompt_checkpoint_path(out: str | os.PathLike, layer: int, target_layer: int | None = None) -> Path:
    """Where training keeps the resumable checkpoint of that prompt (``layer-<L>.ckpt.pt`` beside `prompt_path`)."""
    final = prompt_path(out, layer, target_layer)
    return final.with_name(final.name.replace(".safetensors", ".ckpt.pt"))


def kept_prompts(out: str | os.PathLike) -> list[str]:
    """The names of the finished prompts (``layer-*.safetensors``) and checkpoints (``layer-*.ckpt.pt``) in a
    training folder: what a killed `futurelens train` kept."""
    out = Path(out)
    return sorted(p.name for p in out.glob("layer-*")) if out.is_dir() else []


def load_prompt_checkpoint(path: str | os.PathLike, settings: dict) -> dict | None:
    """Training's checkpoint of a prompt (``prompt``, ``carried`` optimizer state, position ``state``) if there is
    one for these settings; one for other settings is refused."""
    return load_checkpoint(path, settings, "of a prompt", "use another --out, or delete it")


def save_prompt_checkpoint(path: str | os.PathLike, settings: dict, prompt: "torch.Tensor", carried: dict,
                           state: dict) -> None:
    """Write training's checkpoint of a prompt atomically: its settings, the prompt ``[P, embed_dim]``, the
    optimizer state carried between requests, and the position ``{"epoch", "batch", "losses"}``."""
    save_checkpoint(path, {"settings": settings, "prompt": prompt, "carried": carried, "state": state})


def checkpoint_position(path: str | os.PathLike) -> dict | None:
    """Where a prompt checkpoint stopped, ``{"epoch", "batch", ...}``, or None if it cannot be read (for a note)."""
    return checkpoint_field(path, "state")


def save_prompt(
    path: str | os.PathLike,
    prompt: "torch.Tensor",
    *,
    model: str,
    layer: int,
    config: dict,
    losses: list[float],
    dtype: Any = None,
    extra: dict | None = None,
) -> Path:
    """Write a finished soft prompt ``[P, d]`` with what it belongs to (atomic; float32 unless ``dtype``).

    Metadata: ``model``, ``layer``, ``config`` (JSON, secrets masked), ``losses`` (JSON), plus ``extra``
    (string values, e.g. the data fingerprint, or ``target_layer``: the layer the state is written at
    when it is not ``layer``).
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"model": model, "layer": str(layer), "config": json.dumps(safe_config(config)), "losses": json.dumps(losses)}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    tensor = prompt.detach().to(dtype or torch.float32).contiguous()
    with atomic_path(path) as tmp:
        save_file({PROMPT_KEY: tensor}, tmp, metadata=meta)
    return path


def _bare_tensor(obj: Any, path: Path) -> "torch.Tensor":
    import torch

    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if PROMPT_KEY in tensors:
            return tensors[PROMPT_KEY]
        if len(tensors) != 1:
            raise FutureLensError(
                f"{path} holds {len(tensors)} tensors ({sorted(tensors)[:6]}): a prompt file holds one tensor "
                f"[P, d_model] (or a {PROMPT_KEY!r} entry)."
            )
        return next(iter(tensors.values()))
    if isinstance(obj, torch.Tensor):
        return obj
    raise FutureLensError(f"{path} holds a {type(obj).__name__}, not a tensor: a prompt file holds one [P, d_model] tensor.")


def read_prompt(path: str | os.PathLike) -> tuple["torch.Tensor", dict]:
    """``(prompt [P, d] float32, metadata)`` of one file, any supported format, without checks against a model.

    ``metadata["format"]`` is ``"futurelens"`` (a file `save_prompt` wrote: ``model``, ``layer`` (int),
    ``config`` and ``losses`` parsed) or ``"tensor"`` (a single tensor, e.g. the authors' ``torch.save``d
    ``gptj_soft_prefix.pt``: no model, no layer).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FutureLensError(f"No soft prompt at {path}: train one with `futurelens train`.")
    suffix = path.suffix.lower()
    meta: dict[str, Any]
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as h:
                meta = dict(h.metadata() or {})
                keys = list(h.keys())
                if PROMPT_KEY in keys:
                    tensor, meta["format"] = h.get_tensor(PROMPT_KEY), "futurelens"
                elif len(keys) == 1:
                    tensor, meta = h.get_tensor(keys[0]), {"format": "tensor", "tensor": keys[0]}
                else:
                    raise FutureLensError(
                        f"{path} has no {PROMPT_KEY!r} tensor (it has {sorted(keys)}): not a futurelens soft prompt, "
                        "nor a single-tensor file."
                    )
        except FutureLensError:
            raise
        except Exception as e:  # a truncated or foreign file: say which one
            raise FutureLensError(f"Cannot read {path} as a safetensors soft prompt: {e}") from e
    elif suffix in (".pt", ".pth", ".bin"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickles beyond tensors are refused: weights_only
            raise FutureLensError(f"Cannot read {path} as a torch.save'd tensor (weights only): {e}") from e
        tensor, meta = _bare_tensor(obj, path), {"format": "tensor"}
    else:
        raise FutureLensError(f"{path}: a soft prompt is a {' or '.join(PROMPT_SUFFIXES)} file, not {suffix or 'no suffix'}.")

    tensor = tensor.detach()
    if tensor.dim() == 3 and tensor.shape[0] == 1:  # [1, P, d], as a prompt saved with its batch dimension
        tensor = tensor[0]
    if tensor.dim() != 2:
        raise FutureLensError(f"{path}: soft_prompt must be [P, d_model], got shape {tuple(tensor.shape)}.")
    if not tensor.is_floating_point():
        raise FutureLensError(f"{path}: a soft prompt holds floats, got {tensor.dtype}.")
    meta["dtype"] = str(tensor.dtype).replace("torch.", "")
    tensor = tensor.float().contiguous()
    if meta["format"] == "futurelens":
        try:
            meta["layer"] = int(meta["layer"])
            meta["target_layer"] = int(meta.get("target_layer", meta["layer"]))
        except (KeyError, ValueError) as e:
            raise FutureLensError(f"{path} lacks an integer 'layer' in its metadata (found {meta.get('layer')!r}).") from e
        try:
            meta["config"] = json.loads(meta.get("config", "{}"))
            meta["losses"] = json.loads(meta.get("losses", "[]"))
        except ValueError as e:
            raise FutureLensError(f"{path} has a 'config' or 'losses' metadata entry that is not JSON: {e}") from e
    return tensor, meta


def load_prompt(path: str | os.PathLike, lm: "LensModel | None" = None, *, layer: int | None = None,
                force: bool = False) -> tuple["torch.Tensor", dict]:
    """``(soft_prompt [P, d], metadata)`` of one file; with ``lm``, refuse a prompt for another model.

    A bare tensor (the authors' format) needs ``layer``: the layer whose output it was trained to receive
    the state at (for ``gptj_soft_prefix.pt``, 14: the output of GPT-J block 13). A futurelens file records
    its layer; a ``layer`` that disagrees is refused unless ``force``.
    """
    tensor, meta = read_prompt(path)
    path = Path(path)
    if meta["format"] == "tensor":
        if layer is None:
            raise FutureLensError(
                f"{path} is a bare tensor {tuple(tensor.shape)} that records no layer: say which layer's output it "
                "receives the state at (--layer L, or layer=L); for the authors' gptj_soft_prefix.pt that is 14 "
                "(the output of GPT-J block 13)."
            )
        meta.update(layer=int(layer), target_layer=int(layer), model=None, config={}, losses=[])
    elif layer is not None and int(layer) != meta["layer"] and not force:
        raise FutureLensError(
            f"{path} was trained for layer {meta['layer']}, not {layer}: drop --layer, or pass --force to use it there."
        )
    elif layer is not None:
        if meta["target_layer"] == meta["layer"]:
            meta["target_layer"] = int(layer)
        meta["layer"] = int(layer)
    if lm is not None:
        wrong_model = meta.get("model") not in (None, lm.name)
        if prompt_width(tensor) != lm.embed_dim or (wrong_model and not force):
            raise FutureLensError(
                f"{path} was trained on {meta.get('model')!r} (width {tensor.shape[-1]}), not {lm.name!r} "
                f"(width {lm.embed_dim}): train a prompt for this model."
            )
    return tensor, meta


def prompt_width(prompt: "torch.Tensor") -> int:
    return int(prompt.shape[-1])


def _prompt_files(folder: Path) -> list[Path]:
    """The prompt files of a folder: ``*.safetensors`` in it, or in its ``prompts/`` (a pushed repo's layout)."""
    found = sorted(folder.glob("*.safetensors"))
    if not found and (folder / "prompts").is_dir():
        found = sorted((folder / "prompts").glob("*.safetensors"))
    return found


def load_prompts(
    paths_or_dir: "str | os.PathLike | Sequence[str | os.PathLike]",
    model: "LensModel | str | None" = None,
    *,
    force: bool = False,
    layer: int | None = None,
    revision: str | None = None,
) -> PromptSet:
    """Read learned soft prompts into ``{layer: [P, d_model] tensor}`` (a `PromptSet`: ``.source`` says where from).

    Args:
        paths_or_dir: a prompt file, a folder (every ``*.safetensors`` in it, or in its ``prompts/``), several
            files, or a hub id ``owner/name[@revision]`` (a repo `futurelens push` wrote; its revision is recorded).
            A file is futurelens' safetensors (``"soft_prompt"`` tensor, metadata ``model``, ``layer``, ``config``)
            or any single tensor in a ``.pt`` / ``.safetensors`` file, such as the authors' ``gptj_soft_prefix.pt``,
            which needs ``layer``.
        model: a `LensModel` or model name; each file's ``"model"`` must match it unless ``force``.
        force: accept prompts trained on another model (same width still required downstream).
        layer: the layer of a single bare-tensor file (or to move a single prompt to, with ``force``).
        revision: a hub revision (branch, tag or commit) when ``paths_or_dir`` is a hub id.
    """
    given = [paths_or_dir] if isinstance(paths_or_dir, (str, os.PathLike)) else list(paths_or_dir)
    files: list[Path] = []
    source = None
    for p in given:
        hub = hub_id(p)
        if hub is not None:
            repo, rev = hub
            folder, resolved = pull(repo, revision or rev, allow_patterns=["*.safetensors", "prompts/*", MANIFEST])
            found = _prompt_files(folder)
            if not found:
                raise FutureLensError(f"The hub repo {repo} has no soft prompts (no *.safetensors at its root or in prompts/).")
            files += found
            source = Source("hub", repo, resolved)
            continue
        p = Path(p)
        if p.is_dir():
            found = _prompt_files(p)
            if not found:
                raise FutureLensError(f"No *.safetensors soft prompts in {p}: point --prompts at a checkpoint file or its folder.")
            files += found
            kind = "package" if _inside(p, PACKAGE_PROMPTS) else "folder"
            source = Source(kind, str(p) if kind == "folder" else f"futurelens/prompts/{p.resolve().name}")
        elif p.is_file():
            files.append(p)
            source = Source("file", str(p))
        else:
            raise FutureLensError(f"Soft prompt path {p} does not exist.")
    if not files:
        raise FutureLensError("No soft prompt files given.")
    if layer is not None and len(files) != 1:
        raise FutureLensError(f"layer= names the layer of one prompt file, but {len(files)} were given.")
    lm = None if isinstance(model, str) or model is None else model
    name = model if isinstance(model, str) or model is None else model.name

    prompts: dict[int, Any] = {}
    metas: dict[int, dict] = {}
    where: dict[int, Path] = {}
    for f in files:
        tensor, meta = load_prompt(f, layer=layer, force=force)
        at = meta["layer"]
        trained_on = meta.get("model")
        if name is not None and not force and trained_on is not None and trained_on != name:
            raise FutureLensError(
                f"{f} was trained on {trained_on!r}, not {name!r}: a soft prompt only means something to its own model. "
                "Pass force=True (--force) to use it anyway."
            )
        target = meta.get("target_layer", at)
        if lm is not None:
            if meta.get("source_model") in (None, trained_on):  # a cross-model prompt's layer is the source model's
                at = lm.check_layer(at, f"{f}'s layer")
            target = lm.check_layer(target, f"{f}'s target layer")
            if prompt_width(tensor) != lm.embed_dim:
                raise FutureLensError(
                    f"{f} is {prompt_width(tensor)} wide, but {lm.name} embeds in {lm.embed_dim}: it belongs to another model."
                )
            if not force and meta["format"] == "futurelens":  # trained on states of text tokenised another way?
                from ..tokens import check

                check(meta.get("special_tokens"), lm.tokenizer, f"The soft prompt {f}",
                      "Train it again on a cache of this model's tokenisation, or pass force=True (--force).")
        key = prompt_key(at, target)
        if key in prompts:
            raise FutureLensError(f"Two soft prompts for layer {key}: {where[key]} and {f}. Keep one per layer.")
        prompts[key], metas[key], where[key] = tensor, meta, f
    if len(given) > 1:
        source = Source("file", ", ".join(str(g) for g in given))
    if source.kind == "file" and len(files) == 1 and metas[next(iter(metas))]["format"] == "tensor":
        source = Source("tensor", source.location)
    source = Source(source.kind, source.location, source.revision, source_layers(prompts))
    return PromptSet(prompts, source, metas)


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def shipped_prompts_dir(model_name: str) -> Path | None:
    """The package's learned prompts for ``model_name`` (e.g. ``smollm2-135m``; a hub id ``owner/name`` would be
    ``owner--name``), or None if none ship."""
    safe = str(model_name).replace("/", "--")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", safe):  # a folder path or anything odd: nothing ships for it
        return None
    folder = PACKAGE_PROMPTS / safe
    return folder if folder.is_dir() and any(folder.glob("layer-*.safetensors")) else None


def shipped_prompts(lm: "LensModel") -> PromptSet | None:
    """The learned prompts futurelens ships for ``lm`` (checked against it), or None."""
    folder = shipped_prompts_dir(lm.name)
    if folder is None:
        return None
    prompts = load_prompts(folder, lm)
    note = ""
    info = folder / "prompts.json"
    if info.is_file():
        recorded = json.loads(info.read_text())
        note = recorded.get("summary", "")
    prompts.source = Source("package", f"futurelens/prompts/{folder.name}", None, tuple(sorted(prompts)), note)
    return prompts


