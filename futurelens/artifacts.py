"""Artifacts: every file futurelens writes for someone else to read, and every reader of one, in one place.

THE RULE for this module (and for any format futurelens adds):

1. **One home.** A format has one writer and one reader, here: soft prompts (futurelens' own, a bare tensor
   as the authors' ``gptj_soft_prefix.pt``, the prompts shipped in the package), fitted probes, the data
   fingerprint they are checked against, model cards and the Hub. A stage (train, eval, the lens, push)
   calls these; it never opens or lays out such a file itself. (The dataset and the state cache keep their
   formats in `futurelens.data`; what identifies them to an artifact is `data_fingerprint`, here.)
2. **Every artifact says what it belongs to** — model, layer, data fingerprint, settings, format — and its
   reader refuses a wrong one with a message that names the file, what it belongs to, and what to do.
3. **Atomic writes** (`futurelens.atomic`): a reader never meets half a file.
4. **Anywhere a path goes, a hub id goes**: ``owner/name``, ``owner/name@revision`` or ``hf:owner/name``.
   What was loaded records where from (`Source`: kind, location, the hub revision it resolved to).
5. **No secrets**: every config written into an artifact or a card goes through
   `futurelens.remote.safe_config`, and a card's text through `futurelens.remote.redact` (plus the
   Hugging Face token's value), so HF_TOKEN, NDIF_API_KEY and WANDB_API_KEY never reach a file or the Hub.
6. **Client side only**: nothing here ships to NDIF (that is `futurelens.server`, with its own rule);
   importing this module is cheap (torch, safetensors and huggingface_hub load on first use).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .atomic import atomic_path
from .errors import FutureLensError

if TYPE_CHECKING:
    import torch

    from .data.states import StateCache
    from .models import LensModel

PROMPT_KEY = "soft_prompt"
"""The tensor name of a futurelens soft prompt file (``[P, d_model]``)."""
PROMPT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
"""Files a prompt may come in: futurelens' safetensors, or any single tensor (``torch.save`` or safetensors)."""
PACKAGE_PROMPTS = Path(__file__).parent / "prompts"
"""Learned prompts shipped in the package: one folder per model name (``smollm2-135m/layer-<L>.safetensors``)."""
PROBE_FORMAT = "futurelens-probe/1"
PROBE_KINDS = ("vocab", "linear", "mlp")
"""``vocab``: the direct vocabulary probe (`VocabProbe`); ``linear``: the linear model approximation (`LinearApprox`);
``mlp``: the residual-MLP probe read by the model's own head (`MLPProbe`)."""
MANIFEST = "futurelens.json"
"""What a pushed repository holds (model, layers, data, files), at its root."""
CARD = "README.md"

_HUB_ID = re.compile(r"^(?:hf:)?([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@([\w./-]+))?$")


# --------------------------------------------------------------------------- where an artifact came from


@dataclass(frozen=True)
class Source:
    """Where loaded artifacts came from: shown in the lens page's header and recorded beside results."""

    kind: str
    """``package`` (shipped with futurelens), ``folder``, ``file``, ``tensor`` (a bare tensor file, the
    authors' format), ``hub``, ``memory`` (tensors given in Python) or ``fixed`` (the fixed text prompt)."""
    location: str = ""
    """The folder, file or hub repo id."""
    revision: str | None = None
    """For the hub: the commit the files were read at."""
    layers: tuple[int, ...] = ()
    note: str = ""

    def describe(self) -> str:
        layers = _layer_span(self.layers)
        at = f" ({layers})" if layers else ""
        note = f"; {self.note}" if self.note else ""
        if self.kind == "package":
            return f"learned prompts shipped with futurelens{at}: {self.location}{note}"
        if self.kind == "hub":
            return f"learned prompts from the Hugging Face hub{at}: {self.location} @ {self.revision or 'unknown revision'}{note}"
        if self.kind == "folder":
            return f"learned prompts from the folder {self.location}{at}{note}"
        if self.kind == "file":
            return f"learned prompt file {self.location}{at}{note}"
        if self.kind == "tensor":
            return f"bare tensor file {self.location} (the authors' format){at}{note}"
        if self.kind == "fixed":
            return f"fixed text prompt{note}"
        return f"soft prompts given in memory{at}{note}"

    def to_dict(self) -> dict:
        return {**asdict(self), "layers": list(self.layers), "description": self.describe()}


def _layer_span(layers: Sequence[int]) -> str:
    layers = sorted(layers)
    if not layers:
        return ""
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}..{layers[-1]}"
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(map(str, layers))


def source_layers(keys: Any) -> tuple[int, ...]:
    """The layers states are read at, from `PromptSet` keys (``L`` or ``(L, L')``)."""
    return tuple(sorted({k if isinstance(k, int) else k[0] for k in keys}))


class PromptSet(dict):
    """``{layer: soft prompt [P, d_model]}`` as `load_prompts` returns it, plus where it came from.

    A plain dict everywhere a dict goes; ``.source`` is a `Source`, ``.meta[layer]`` each file's metadata.
    A prompt trained to receive a layer-L state at another layer L' (Patchscopes' target layer,
    ``futurelens train --target-layers``) is keyed ``(L, L')``; `select_target` picks those of one L'.
    """

    source: Source
    meta: dict

    def __init__(self, prompts: dict | None = None, source: Source | None = None, meta: dict | None = None):
        super().__init__(prompts or {})
        self.source = source if source is not None else Source("memory", layers=source_layers(self))
        self.meta = meta or {}


# --------------------------------------------------------------------------- the hub


def hub_id(location: str | os.PathLike) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` if ``location`` names a hub repo rather than an existing local path, else None.

    ``hf:owner/name[@rev]`` always means the hub; ``owner/name[@rev]`` does when no such path exists here
    and it does not end like a file (``.pt``, ``.safetensors`` ...).
    """
    text = str(location)
    match = _HUB_ID.match(text)
    if match is None:
        return None
    if not text.startswith("hf:") and (Path(text).exists() or text.lower().endswith(PROMPT_SUFFIXES + (".json", ".csv"))):
        return None
    return match.group(1), match.group(2)


def _token_values() -> list[str]:
    values = [os.environ.get(v) for v in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "NDIF_API_KEY", "WANDB_API_KEY")]
    return sorted({v.strip() for v in values if v and len(v.strip()) >= 4}, key=len, reverse=True)


def scrub(text: str) -> str:
    """``text`` safe to publish: `futurelens.remote.redact`, and the Hugging Face token's value replaced too."""
    from .remote import redact

    text = redact(text)
    for secret in _token_values():
        text = text.replace(secret, "***")
    return text


def clean_config(config: dict) -> dict:
    """A config safe to write into an artifact: `futurelens.remote.safe_config`, then every string scrubbed."""
    from .remote import safe_config

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(walk(v) for v in value)
        return scrub(value) if isinstance(value, str) else value

    return walk(safe_config(dict(config)))


def pull(repo_id: str, revision: str | None = None, allow_patterns: Sequence[str] | None = None) -> tuple[Path, str | None]:
    """Download (or reuse from the hub cache) a snapshot of ``repo_id``: ``(local folder, commit it resolved to)``.

    The commit is the snapshot folder's name (the hub cache lays snapshots out as
    ``models--owner--name/snapshots/<commit>/``); with no such name, the revision asked for.
    """
    import huggingface_hub

    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=list(allow_patterns) if allow_patterns else None,
            library_name="futurelens",
        )
    except Exception as err:  # noqa: BLE001 - offline, no such repo or revision, network: one message
        where = f"{repo_id}@{revision}" if revision else repo_id
        raise FutureLensError(
            f"Could not fetch {where} from the Hugging Face hub ({type(err).__name__}: {scrub(str(err))[:400]}). "
            f"If you meant a local path, {where} does not exist here; for a private repo set HF_TOKEN."
        ) from err
    folder = Path(folder)
    resolved = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else revision
    return folder, resolved


# --------------------------------------------------------------------------- soft prompts


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
    meta = {"model": model, "layer": str(layer), "config": json.dumps(clean_config(config)), "losses": json.dumps(losses)}
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
                from .tokens import check

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


# --------------------------------------------------------------------------- fitted probes


def data_fingerprint(cache: "StateCache") -> str:
    """What a fitted method belongs to: the cache's model, tokenizer, dataset, dtype, and its train rows' targets.

    A sha256 (16 hex digits) of the cache settings that decide the train states (model, tokenizer hash,
    the dataset's build settings and size, dtype, n_max) and of every train row's ids, targets and last token,
    read from the shards (cheap: no states are read). The same dataset cached again, with any set of layers,
    gives the same fingerprint; another dataset, model or dtype does not.
    """
    s = cache.settings
    digest = hashlib.sha256()
    identity = {k: s.get(k) for k in ("model", "tokenizer_hash", "dataset", "dtype", "n_max")}
    if s.get("source_model"):  # a `futurelens.mapping.MappedCache`: B's rows, A's states
        identity["source_model"] = s["source_model"]
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
    for batch in cache.batches(None, "train", batch_size=1 << 30):
        for t in (batch.row, batch.target, batch.last_token):
            digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def probe_path(folder: str | os.PathLike, kind: str, layer: int) -> Path:
    """``<folder>/<kind>-layer-<layer>.safetensors`` (kind ``vocab``, ``linear`` or ``mlp``)."""
    if kind not in PROBE_KINDS:
        raise FutureLensError(f"Unknown probe kind {kind!r}: choose from {', '.join(PROBE_KINDS)}.")
    return Path(folder) / f"{kind}-layer-{layer}.safetensors"


def probe_checkpoint_path(folder: str | os.PathLike, kind: str, layer: int) -> Path:
    """The resumable checkpoint of a fit in progress, beside where the finished probe goes."""
    return Path(folder) / f"{kind}-layer-{layer}.ckpt.pt"


@dataclass
class ProbeInfo:
    """What a fitted probe belongs to; its reader checks every field."""

    kind: str
    model: str
    layer: int
    data: str
    """`data_fingerprint` of the cache it was fitted on."""
    settings: dict = field(default_factory=dict)
    """The fit's settings (epochs, lr, ridge alpha ...)."""

    def metadata(self) -> dict[str, str]:
        from . import __version__

        return {"format": PROBE_FORMAT, "kind": self.kind, "model": self.model, "layer": str(self.layer),
                "data": self.data, "settings": json.dumps(clean_config(self.settings), sort_keys=True),
                "futurelens": __version__}


def save_probe(path: str | os.PathLike, tensors: dict[str, "torch.Tensor"], info: ProbeInfo) -> Path:
    """Write a fitted probe's tensors with its `ProbeInfo` as safetensors metadata (atomic)."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp, metadata=info.metadata())
    return path


def read_probe(path: str | os.PathLike) -> tuple[dict[str, "torch.Tensor"], dict]:
    """``(tensors, metadata)`` of a probe file, unchecked (``layer`` int, ``settings`` parsed)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as h:
            meta = dict(h.metadata() or {})
            tensors = {k: h.get_tensor(k) for k in h.keys()}
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: name it
        raise FutureLensError(f"Cannot read the fitted probe {path}: {e}. Delete it to refit.") from e
    if meta.get("format") != PROBE_FORMAT:
        raise FutureLensError(f"{path} is not a futurelens probe (format {meta.get('format')!r}, expected {PROBE_FORMAT!r}).")
    meta["layer"] = int(meta["layer"])
    meta["settings"] = json.loads(meta.get("settings", "{}"))
    return tensors, meta


def load_probe(path: str | os.PathLike, expected: ProbeInfo) -> dict[str, "torch.Tensor"]:
    """A fitted probe's tensors, refused with a clear message unless it belongs to ``expected``'s model, layer,
    data and settings."""
    path = Path(path)
    tensors, meta = read_probe(path)
    what = "--probes folder (or --out)"
    if meta["kind"] != expected.kind:
        raise FutureLensError(f"{path} is a {meta['kind']!r} probe, not {expected.kind!r}.")
    if meta["model"] != expected.model:
        raise FutureLensError(
            f"{path} was fitted on {meta['model']!r}, not {expected.model!r}: a probe only means something to its own "
            f"model. Use another {what}, or delete the file to refit."
        )
    if meta["layer"] != expected.layer:
        raise FutureLensError(f"{path} was fitted at layer {meta['layer']}, not {expected.layer}: use another {what}.")
    if meta["data"] != expected.data:
        raise FutureLensError(
            f"{path} was fitted on other data (fingerprint {meta['data']}; this cache's is {expected.data}): "
            f"use another {what}, or delete the file to refit on this cache."
        )
    wanted = clean_config(expected.settings)
    if meta["settings"] != json.loads(json.dumps(wanted, sort_keys=True)):
        changed = sorted(k for k in set(meta["settings"]) | set(wanted) if meta["settings"].get(k) != wanted.get(k))
        raise FutureLensError(
            f"{path} was fitted with other settings ({', '.join(changed)} differ): use another {what}, or delete it to refit."
        )
    return tensors


def probes_folder(location: str | os.PathLike, revision: str | None = None) -> tuple[Path, Source]:
    """A folder of fitted probes: a local path, or a hub id (its ``probes/``), with its `Source`."""
    hub = hub_id(location)
    if hub is None:
        return Path(location), Source("folder", str(location))
    repo, rev = hub
    folder, resolved = pull(repo, revision or rev, allow_patterns=["probes/*", MANIFEST])
    return (folder / "probes" if (folder / "probes").is_dir() else folder), Source("hub", repo, resolved)


# --------------------------------------------------------------------------- state maps (model A -> model B)

MAP_FORMAT = "futurelens-map/1"
MAP_KEY = "map"
"""The tensor name of a state map file (``[d_A + 1, d_B]``, `futurelens.mapping`)."""


def map_path(folder: str | os.PathLike, layer_a: int, layer_b: int) -> Path:
    """``<folder>/maps/layer-<layer_a>-to-<layer_b>.safetensors``: in a subfolder, so a prompts folder's
    ``*.safetensors`` stay prompts."""
    return Path(folder) / "maps" / f"layer-{layer_a}-to-{layer_b}.safetensors"


@dataclass
class MapInfo:
    """What a state map belongs to; `load_map` checks every field."""

    source_model: str
    target_model: str
    layer_a: int
    layer_b: int
    source_data: str
    """`data_fingerprint` of A's cache."""
    data: str
    """`data_fingerprint` of B's cache."""
    settings: dict = field(default_factory=dict)

    def metadata(self) -> dict[str, str]:
        from . import __version__

        return {"format": MAP_FORMAT, "source_model": self.source_model, "target_model": self.target_model,
                "layer_a": str(self.layer_a), "layer_b": str(self.layer_b), "source_data": self.source_data,
                "data": self.data, "settings": json.dumps(clean_config(self.settings), sort_keys=True),
                "futurelens": __version__}


def save_map(path: str | os.PathLike, w: "torch.Tensor", info: MapInfo) -> Path:
    """Write a state map ``[d_A + 1, d_B]`` with its `MapInfo` as safetensors metadata (atomic)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({MAP_KEY: w.detach().float().contiguous()}, tmp, metadata=info.metadata())
    return path


def load_map(path: str | os.PathLike, expected: MapInfo) -> "torch.Tensor":
    """A state map, refused with what to do unless it belongs to ``expected``'s models, layers, data and settings."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as h:
            meta = dict(h.metadata() or {})
            w = h.get_tensor(MAP_KEY)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: name it
        raise FutureLensError(f"Cannot read the state map {path}: {e}. Delete it to refit.") from e
    if meta.get("format") != MAP_FORMAT:
        raise FutureLensError(f"{path} is not a futurelens state map (format {meta.get('format')!r}, expected {MAP_FORMAT!r}).")
    want = expected.metadata()
    wrong = [k for k in ("source_model", "target_model", "layer_a", "layer_b", "source_data", "data", "settings")
             if meta.get(k) != want[k]]
    if wrong:
        found = ", ".join(f"{k} {meta.get(k)!r} (expected {want[k]!r})" for k in wrong)
        raise FutureLensError(
            f"{path} maps other states ({found}): it belongs to other models, layers or data. Use another --out, "
            "or delete it to refit."
        )
    return w.float()


# --------------------------------------------------------------------------- a run, as pushed to the hub


@dataclass
class PushConfig:
    """Settings of `futurelens push`: upload a run's prompts, fitted probes and results, with a model card."""

    run_dir: str = "runs/demo"
    """A run folder (`futurelens demo --out`, or one with prompts/, eval/, data/, cache/), or a folder of prompts."""
    repo_id: str = ""
    """Hub repository to create or update: owner/name."""
    private: bool = False
    """Create the repository as private (an existing one keeps its visibility)."""
    revision: str = ""
    """Branch to commit to (empty = the default branch)."""
    message: str = "Upload Future Lens artifacts (futurelens push)"
    """Commit message."""


def _first(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.exists()), None)


def collect_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What a run folder holds for the hub: ``{"prompts": [files], "probes": [files], "results": file, ...}``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FutureLensError(f"No run folder at {run}: pass the folder `futurelens demo --out` (or train/eval) wrote.")
    prompts_dir = _first(run / "prompts", run)
    prompts = sorted(p for p in prompts_dir.glob("layer-*.safetensors")) if prompts_dir else []
    probes_dir = _first(run / "eval" / "probes", run / "probes")
    probes = sorted(probes_dir.glob("*-layer-*.safetensors")) if probes_dir else []
    eval_dir = _first(run / "eval", run)
    found = {
        "run": run,
        "prompts": prompts,
        "probes": probes,
        "results": _first(eval_dir / "results.csv") if eval_dir else None,
        "maps": sorted((prompts_dir / "maps").glob("layer-*-to-*.safetensors")) if prompts_dir else [],
        "figures": [f for f in (eval_dir / "precision.png", eval_dir / "surprisal.png", eval_dir / "target_layers.png")
                    if eval_dir and f.exists()],
        "data": _first(run / "data" / "futurelens.json"),
        "cache": _first(run / "cache" / "cache.json"),
        "lens": _first(run / "lens.html"),
    }
    if not prompts and not probes and found["results"] is None:
        raise FutureLensError(
            f"{run} holds nothing to push: no soft prompts (prompts/layer-*.safetensors), fitted probes "
            "(eval/probes/) or results (eval/results.csv)."
        )
    return found


def _fingerprint(found: dict) -> str | None:
    if found["cache"] is None:
        return None
    from .data.states import StateCache

    try:
        return data_fingerprint(StateCache(found["cache"].parent))
    except FutureLensError:
        return None


def manifest(found: dict, repo_id: str) -> dict[str, Any]:
    """The pushed repository's ``futurelens.json``: model, layers, data and its fingerprint, settings, files."""
    from . import __version__

    prompts = {}
    model = None
    settings: dict = {}
    prompt_data = None
    for f in found["prompts"]:
        _, meta = read_prompt(f)
        if meta["format"] != "futurelens":
            continue
        prompts[str(prompt_key(meta["layer"], meta["target_layer"])).replace(" ", "")] = f"prompts/{f.name}"
        model = model or meta.get("model")
        settings = settings or meta.get("config", {})
        prompt_data = prompt_data or meta.get("data")
    probes = []
    for f in found["probes"]:
        _, meta = read_probe(f)
        probes.append({"file": f"probes/{f.name}", "kind": meta["kind"], "layer": meta["layer"], "data": meta["data"],
                       "settings": meta["settings"]})
        model = model or meta["model"]
    data = json.loads(found["data"].read_text()) if found["data"] else {}
    if not model:
        model = data.get("model")
    fingerprint = _fingerprint(found) or prompt_data or next((p["data"] for p in probes), None)
    return clean_config({
        "format": "futurelens-run/1",
        "futurelens": __version__,
        "repo_id": repo_id,
        "model": model,
        "prompt_layers": sorted({int(k.strip("(").split(",")[0]) for k in prompts}),
        "prompts": dict(sorted(prompts.items(), key=lambda kv: (int(kv[0].strip("(").split(",")[0]), kv[0]))),
        "probes": probes,
        "train_settings": {k: v for k, v in settings.items() if k not in ("cache", "out")},
        "data": {
            "fingerprint": fingerprint,
            "source": data.get("config", {}).get("source"),
            "n_kept": data.get("n_kept"), "n_train": data.get("n_train"), "n_test": data.get("n_test"),
            "n_candidates": data.get("n_candidates"), "n_dropped": data.get("n_dropped"),
            "tokenizer_hash": data.get("tokenizer_hash"),
            "config": data.get("config", {}),
        },
        "results": "results/results.csv" if found["results"] else None,
        "figures": [f"results/{f.name}" for f in found["figures"]],
    })


def model_card(info: dict[str, Any], results: Any = None) -> str:
    """The README.md of a pushed run: what it is, how to load it, model, layers, data, settings, results."""
    from .figure import precision_table

    repo, model = info["repo_id"], info["model"] or "unknown"
    layers = info["prompt_layers"]
    lines = [
        "---",
        "library_name: futurelens",
        "tags:\n- futurelens\n- interpretability\n- future-lens\n- soft-prompt",
    ]
    if model and hub_id(f"hf:{model}") is not None and "/" in model:
        lines.append(f"base_model: {model}")
    lines += [
        "---",
        "",
        f"# Future Lens artifacts for `{model}`",
        "",
        "Trained with [futurelens](https://arxiv.org/abs/2311.04897) (Pal et al., *Future Lens*, CoNLL 2023): what a single "
        "hidden state already knows about the tokens after the next one.",
        "",
        f"- **Model**: `{model}`",
        f"- **Soft prompts**: {_layer_span(layers) or 'none'}" + (f" (`prompts/layer-<L>.safetensors`)" if layers else ""),
    ]
    kinds: dict[str, list[int]] = {}
    for p in info["probes"]:
        kinds.setdefault(p["kind"], []).append(p["layer"])
    names = {"vocab": "vocabulary probes", "linear": "linear model approximations", "mlp": "MLP probes"}
    for kind, at in sorted(kinds.items()):
        lines.append(f"- **Fitted {names.get(kind, kind)}**: {_layer_span(at)} (`probes/{kind}-layer-<L>.safetensors`)")
    lines.append(f"- **futurelens**: {info['futurelens']}")
    lines += ["", "## How to load it", "", "```python", "import futurelens as fl", "",
              f'lm = fl.load_model("{model}")',
              f'prompts = fl.load_prompts("{repo}", lm)      # {{layer: [P, d_model]}}; pin a commit with "{repo}@<revision>"',
              f'grid = fl.lens(lm, "Marty McFly from", prompts="{repo}")   # displays inline in a notebook',
              "```", "", "```bash",
              f'futurelens lens "Marty McFly from" --model {model} --prompts {repo} --out lens.html']
    if info["probes"]:
        lines.append(f"futurelens eval --cache runs/cache --prompts {repo} --probes {repo} --out runs/eval")
    lines += ["```", "", "Every loader records the revision it read (the lens page shows it in its header).", ""]

    data = info["data"]
    lines += ["## Data", ""]
    cfg = data.get("config") or {}
    rows = [
        ("source", data.get("source")),
        ("prefixes kept (train / test)", f"{data.get('n_kept')}" + (f" ({data['n_train']} / {data['n_test']})"
         if data.get("n_train") is not None else "") if data.get("n_kept") is not None else None),
        ("candidates labelled / dropped by the correctness filter",
         f"{data.get('n_candidates')} / {data.get('n_dropped')}" if data.get("n_candidates") is not None else None),
        ("prefix length", f"{cfg.get('min_len')}..{cfg.get('max_len')} tokens" if cfg.get("max_len") else None),
        ("split", f"by document, test fraction {cfg.get('test_fraction')}, seed {cfg.get('seed')}" if "seed" in cfg else None),
        ("tokenizer hash", data.get("tokenizer_hash")),
        ("data fingerprint", data.get("fingerprint")),
    ]
    lines += ["| | |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in rows if v not in (None, "None")]
    lines.append("")
    if info["train_settings"]:
        lines += ["## Training settings (soft prompts)", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | `{v}` |" for k, v in info["train_settings"].items() if v not in ("", None)]
        lines.append("")
    if results is not None:
        lines += ["## Results (held-out test split)", "", "```"]
        ks = sorted({int(k) for k in results[results["metric"] == "precision"]["k"].dropna()})
        for k in sorted({ks[0], ks[-1]}) if ks else []:
            try:
                lines += [precision_table(results, k=k), ""]
            except FutureLensError:
                pass
        lines += ["```", "", "`results/results.csv` is the whole table (method, layer, n, metric, k, value)."]
        if "results/precision.png" in info["figures"]:
            lines += ["", "![precision@1 per layer for each N](results/precision.png)"]
        lines.append("")
    lines += ["## Files", "", f"`{MANIFEST}` lists every file with what it belongs to (model, layer, data fingerprint, "
              "settings); each safetensors file carries the same in its metadata, and futurelens refuses a file "
              "that belongs to another model, layer or dataset."]
    return scrub("\n".join(lines) + "\n")


def stage_run(found: dict, repo_id: str, into: Path) -> dict[str, Any]:
    """Lay a run out in ``into`` as it will be on the hub; returns the manifest."""
    from .figure import load_table

    info = manifest(found, repo_id)
    for f in found["prompts"]:
        _copy(f, into / "prompts" / f.name)
    for f in found.get("maps", []):  # a cross-model run's state maps, where `evaluate` looks for them
        _copy(f, into / "prompts" / "maps" / f.name)
    for f in found["probes"]:
        _copy(f, into / "probes" / f.name)
    results = None
    if found["results"] is not None:
        _copy(found["results"], into / "results" / "results.csv")
        results = load_table(found["results"])
    for f in found["figures"]:
        _copy(f, into / "results" / f.name)
    if found["data"] is not None:
        (into / "data").mkdir(parents=True, exist_ok=True)
        (into / "data" / "futurelens.json").write_text(scrub(json.dumps(clean_config(json.loads(found["data"].read_text())), indent=2)))
    (into / MANIFEST).write_text(scrub(json.dumps(info, indent=2)))
    (into / CARD).write_text(model_card(info, results))
    return info


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


@dataclass
class PushResult:
    repo_id: str
    revision: str | None
    url: str
    files: list[str]
    card: str


def push(
    run_dir: "str | os.PathLike | PushConfig",
    repo_id: str | None = None,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    api: Any = None,
    token: str | None = None,
) -> PushResult:
    """Upload a run's prompts, fitted probes and results with a generated model card, in one commit.

    ``fl.push("runs/demo", "me/future-lens-smollm2")``; `futurelens push RUN_DIR REPO_ID` is the same (a
    `PushConfig` works as the first argument too). ``api`` is a ``huggingface_hub.HfApi`` (default: a new one,
    which reads HF_TOKEN or the saved login; ``token`` overrides). The token is never written anywhere.
    Returns the repo, the commit it made (``revision``: load it pinned with ``"<repo_id>@<revision>"``), the
    files and the card.
    """
    if isinstance(run_dir, PushConfig):
        cfg = run_dir
    else:
        cfg = PushConfig(run_dir=str(run_dir), repo_id=repo_id or "", private=private, revision=revision or "",
                         **({"message": message} if message else {}))
    if hub_id(f"hf:{cfg.repo_id}") is None or "@" in cfg.repo_id:
        raise FutureLensError(f"{cfg.repo_id!r} is not a hub repo id: give owner/name.")
    found = collect_run(cfg.run_dir)
    if api is None:
        import huggingface_hub

        api = huggingface_hub.HfApi(token=token, library_name="futurelens")
    with tempfile.TemporaryDirectory(prefix="futurelens-push-") as tmp:
        staging = Path(tmp)
        stage_run(found, cfg.repo_id, staging)
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        card = (staging / CARD).read_text()
        try:
            url = api.create_repo(cfg.repo_id, private=cfg.private or None, exist_ok=True, repo_type="model")
            commit = api.upload_folder(repo_id=cfg.repo_id, folder_path=str(staging), repo_type="model",
                                       commit_message=cfg.message, revision=cfg.revision or None)
        except Exception as err:  # noqa: BLE001 - auth, network, permissions: one message, no token
            raise FutureLensError(
                f"Could not push to {cfg.repo_id} ({type(err).__name__}: {scrub(str(err))[:400]}). Log in with "
                "`hf auth login` or set HF_TOKEN (a write token)."
            ) from err
    revision = getattr(commit, "oid", None)
    return PushResult(cfg.repo_id, revision, str(getattr(commit, "commit_url", None) or url), files, card)
