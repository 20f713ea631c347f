"""A model's shape without its weights: what `futurelens.planner` costs a run from.

`resolve` finds a ``config.json`` (a shipped config in ``futurelens/configs/``, the embedded default's
folder, a local folder, or the Hugging Face cache / hub) and builds the model on the meta device, so every
parameter is counted exactly as transformers builds it and `futurelens.arch.detect` names the same parts
the stages use (embedding, blocks, head) — no per-architecture arithmetic here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FutureLensError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Shape:
    """Sizes of one model, counted on its meta-device build."""

    name: str
    """What it was asked for (hub id, folder, embedded name)."""
    source: str
    """Where its config came from: 'shipped', 'embedded', 'folder' or 'hub'."""
    model_type: str
    n_layers: int
    """Blocks; layers 0..n_layers are cacheable (0 = the embeddings' output)."""
    d_model: int
    """Residual width (what a cached state holds)."""
    embed_dim: int
    """Width of the token embedding's output (a soft prompt's vectors)."""
    vocab: int
    """Rows of the unembedding."""
    params: int
    """All parameters."""
    embed_params: int
    """The token embedding's parameters (a lookup: no FLOPs per token)."""
    head_params: int
    """The unembedding's parameters (0 more when tied to the embedding, but its matmul still runs)."""
    attention: bool
    """Whether blocks attend over the context (a cost quadratic in length); False for recurrent models."""
    attn_width: int
    """Query width of one block's attention (heads x head dim): the quadratic term's width."""
    weight_dtype: str
    """The checkpoint's own dtype."""

    matmul_params: int = 0
    """Weights of the model's ``nn.Linear`` modules, the head included (tied or not): what a token multiplies
    through, 2 FLOPs each. Norms, biases, convolutions and a recurrent scan are not counted (small beside them)."""

    @property
    def tied(self) -> bool:
        return self.head_params == 0


def shipped() -> dict[str, Path]:
    """``{hub id: config file}`` of the configs shipped with futurelens."""
    return {p.stem.replace("--", "/"): p for p in sorted(CONFIGS.glob("*.json"))}


def _config_dict(model: str) -> tuple[dict, str]:
    """``(config.json as a dict, where from)`` for a hub id, folder or embedded name; offline where it can be."""
    from ..embedded import EMBEDDED, default_model_dir, ensure_default_model

    files = shipped()
    lowered = {k.lower(): v for k, v in files.items()}
    if model.lower() in lowered:
        return json.loads(lowered[model.lower()].read_text()), "shipped"
    if model in EMBEDDED:
        folder = default_model_dir(model)
        if not (folder / "config.json").exists():
            folder = ensure_default_model(model)
        return json.loads((folder / "config.json").read_text()), "embedded"
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".json":
        return json.loads(path.read_text()), "folder"
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FutureLensError(f"{path} has no config.json: pass a model folder, a config.json, or a hub id.")
        return json.loads((path / "config.json").read_text()), "folder"
    try:
        from huggingface_hub import hf_hub_download

        try:
            local = hf_hub_download(model, "config.json", local_files_only=True)
        except Exception:  # noqa: BLE001 - not in the cache: ask the hub
            local = hf_hub_download(model, "config.json")
    except Exception as err:  # noqa: BLE001 - any failure is the same advice
        raise FutureLensError(
            f"No config for {model!r}: it is not one of the shipped configs ({', '.join(files)}), the embedded "
            f"models, a local folder, or reachable on the Hugging Face hub ({type(err).__name__}). Pass a folder "
            "or a config.json path."
        ) from err
    return json.loads(Path(local).read_text()), "hub"


def resolve(model: str) -> Shape:
    """The `Shape` of ``model`` (hub id, folder, config.json path or embedded name), from a meta-device build."""
    import warnings

    import torch
    import transformers

    from ..arch import detect

    config_dict, source = _config_dict(model)
    config_dict = {k: v for k, v in config_dict.items() if k not in ("_name_or_path", "_model_name_or_path")}
    kind = config_dict.get("model_type")
    if not kind:
        raise FutureLensError(f"The config of {model!r} names no model_type: it is not a transformers config.json.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = transformers.AutoConfig.for_model(**config_dict)
        with torch.device("meta"):
            module = transformers.AutoModelForCausalLM.from_config(config)
    arch = detect(module)
    embed = module.get_submodule(arch.embed)
    head = module.get_submodule(arch.unembed)
    final = module.get_submodule(arch.final_norm) if arch.final_norm else None
    tied = head.weight is embed.weight
    d_model = final.weight.shape[0] if final is not None and getattr(final, "weight", None) is not None \
        else head.weight.shape[1]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None) or 0
    head_dim = getattr(text, "head_dim", None) or (d_model // heads if heads else 0)
    dtype = str(config_dict.get("torch_dtype") or config_dict.get("dtype") or "float32")
    return Shape(
        name=model, source=source, model_type=kind,
        n_layers=len(module.get_submodule(arch.blocks)), d_model=int(d_model), embed_dim=int(embed.weight.shape[1]),
        vocab=int(head.weight.shape[0]), params=sum(p.numel() for p in module.parameters()),
        embed_params=embed.weight.numel(), head_params=0 if tied else head.weight.numel(),
        attention=arch.kv_cache, attn_width=int(heads * head_dim), weight_dtype=dtype,
        matmul_params=sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear)),
    )


def layers(shape: Shape, wanted: list[int] | None) -> list[int]:
    """Layer indices as the stages read them: empty = all ``0..n_layers``; negative counts from the end."""
    if not wanted:
        return list(range(shape.n_layers + 1))
    out = []
    for layer in wanted:
        i = layer + shape.n_layers + 1 if layer < 0 else layer
        if not 0 <= i <= shape.n_layers:
            raise FutureLensError(f"layer {layer} is outside 0..{shape.n_layers} for {shape.name}.")
        out.append(i)
    return out
