"""Where an architecture keeps its pieces — the only module that knows architectures.

Every decoder-only causal LM has the same four parts Future Lens needs: a token
embedding, a stack of blocks, a final norm and an unembedding. They live under
different names (``transformer.h`` in GPT-J, ``model.layers`` in Llama,
``backbone.layers`` in Mamba ...), and some blocks return a tuple whose first
element is the hidden state while others return the tensor itself. `detect`
finds all of this from the module tree; `Arch` is the answer, and a user who
knows better passes their own (``load_model(..., arch=Arch(...))`` or a dict of
the fields to override).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .errors import FutureLensError

BlockOutput = Literal["tensor", "tuple"]

# Names a final norm goes by, most specific first. Checked only among the
# siblings of the block list, so a per-block norm is never mistaken for it.
_FINAL_NORM_NAMES = ("norm_f", "ln_f", "final_layer_norm", "final_layernorm", "norm", "final_norm")


@dataclass(frozen=True)
class Arch:
    """Dotted module paths (as in ``model.named_modules()``) of the four parts.

    Layer convention used everywhere in futurelens: layer ``0`` is the output of
    ``embed``; layer ``L`` (1 ≤ L ≤ ``n_layers``) is the output of block ``L-1``,
    i.e. the residual stream after ``L`` blocks, *before* the final norm.
    """

    blocks: str
    """Path of the ``ModuleList`` holding the decoder blocks (e.g. ``model.layers``)."""
    embed: str
    """Path of the token embedding (e.g. ``model.embed_tokens``)."""
    final_norm: str | None
    """Path of the norm applied after the last block (``None`` if the model has none)."""
    unembed: str
    """Path of the unembedding / LM head (e.g. ``lm_head``)."""
    block_output: BlockOutput = "tensor"
    """Whether a block returns its hidden state as a tensor or as element 0 of a tuple."""
    kv_cache: bool = True
    """Whether the model's past is a key/value cache that a shared context prefix can be computed
    into once and copied to every row (False for recurrent models such as Mamba, which carry a state)."""
    project_out: str | None = None
    """Path of a projection between the final norm and the unembedding (OPT-350m's ``model.decoder.project_out``)."""
    logit_scale: float | None = None
    """Factor the model multiplies its unembedding's output by (Cohere ``logit_scale``, Granite
    ``1/logits_scaling``, FalconH1 ``lm_head_multiplier``); None for none."""
    logit_softcap: float | None = None
    """Final logit soft cap ``c`` (``logits = c * tanh(logits / c)``, Gemma2's ``final_logit_softcapping``); None for none."""

    def replace(self, **changes: Any) -> "Arch":
        return dataclasses.replace(self, **changes)


def _named(module: Any) -> dict[str, Any]:
    return dict(module.named_modules())


def _path_of(modules: dict[str, Any], target: Any) -> str | None:
    return next((name for name, m in modules.items() if m is target), None)


def _find_blocks(model: Any, modules: dict[str, Any]) -> str | None:
    import torch

    n_layers = _n_layers_from_config(getattr(model, "config", None))
    lists = [(n, m) for n, m in modules.items() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if n_layers is not None:
        exact = [(n, m) for n, m in lists if len(m) == n_layers]
        if exact:
            lists = exact
    if not lists:
        return None
    # The decoder stack is the shallowest long list (blocks hold lists of their own: experts, heads).
    return min(lists, key=lambda nm: (nm[0].count("."), -len(nm[1])))[0]


def _n_layers_from_config(config: Any) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _find_final_norm(modules: dict[str, Any], blocks: str) -> str | None:
    parent = blocks.rpartition(".")[0]
    prefix = f"{parent}." if parent else ""
    for name in _FINAL_NORM_NAMES:
        if prefix + name in modules:
            return prefix + name
    # Fall back on any norm-like sibling of the block list.
    for name, module in modules.items():
        if name.rpartition(".")[0] == parent and "norm" in type(module).__name__.lower():
            return name
    return None


def detect(model: Any, override: Arch | dict | None = None) -> Arch:
    """Find the four parts of ``model`` (a ``transformers`` causal LM, possibly on the meta device).

    ``override`` is either a complete `Arch` (used as is, after validation) or a
    dict of fields that replace what detection found. The tuple-or-tensor
    question needs a forward pass, so it is answered by `probe_block_output`;
    here it defaults to ``"tensor"`` unless overridden.

    Raises:
        FutureLensError: naming the part that could not be found and the override that supplies it.
    """
    modules = _named(model)
    if isinstance(override, Arch):
        validate(override, modules)
        return override
    override = dict(override or {})
    unknown = set(override) - {f.name for f in dataclasses.fields(Arch)}
    if unknown:
        raise FutureLensError(
            f"Unknown arch field(s) {sorted(unknown)}; valid fields are "
            f"{[f.name for f in dataclasses.fields(Arch)]}."
        )

    found: dict[str, Any] = {}
    found["blocks"] = override.get("blocks") or _find_blocks(model, modules)
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    found["embed"] = override.get("embed") or (_path_of(modules, get_in()) if get_in else None)
    found["unembed"] = override.get("unembed") or (_path_of(modules, get_out()) if get_out else None)
    if "final_norm" in override:
        found["final_norm"] = override["final_norm"]
    else:
        found["final_norm"] = _find_final_norm(modules, found["blocks"]) if found["blocks"] else None
    found["block_output"] = override.get("block_output", "tensor")
    # transformers marks models whose past is a recurrent state (Mamba, Jamba, ...) as stateful.
    found["kv_cache"] = override.get("kv_cache", not getattr(model, "_is_stateful", False))

    # A final norm of None is fine only when the user said so explicitly.
    missing = [k for k in ("blocks", "embed", "final_norm", "unembed") if not found[k] and k not in override]
    if missing:
        raise FutureLensError(
            f"Could not find the {', '.join(missing)} of {type(model).__name__}: "
            "futurelens does not recognise this architecture. Pass the module paths yourself, "
            "e.g. load_model(..., arch={"
            + ", ".join(f"'{k}': '<dotted.path>'" for k in missing)
            + "}) (use None for a model without a final norm). "
            "print(model) shows the module tree."
        )
    arch = Arch(**found)
    validate(arch, modules)
    return arch


def validate(arch: Arch, modules: dict[str, Any]) -> None:
    """Check every path in ``arch`` names a module; raise a FutureLensError naming the bad one."""
    import torch

    for field in ("blocks", "embed", "final_norm", "unembed"):
        path = getattr(arch, field)
        if path is None and field == "final_norm":
            continue
        if path not in modules:
            near = [n for n in modules if n and n.rsplit(".", 1)[-1] == str(path).rsplit(".", 1)[-1]]
            raise FutureLensError(
                f"arch.{field}={path!r} is not a module of this model"
                + (f" (did you mean {near[0]!r}?)" if near else "")
                + "; print(model) shows the module tree."
            )
    if not isinstance(modules[arch.blocks], torch.nn.ModuleList):
        raise FutureLensError(f"arch.blocks={arch.blocks!r} must be a torch.nn.ModuleList of decoder blocks.")
    if not isinstance(arch.kv_cache, bool):
        raise FutureLensError(f"arch.kv_cache must be True or False, not {arch.kv_cache!r}.")
    if arch.block_output not in ("tensor", "tuple"):
        raise FutureLensError(f"arch.block_output must be 'tensor' or 'tuple', not {arch.block_output!r}.")


def probe_block_output(model: Any, arch: Arch) -> BlockOutput:
    """Run one token through ``model`` with a forward hook on block 0 and report its output type.

    Works on real weights and on the meta device alike (a meta forward computes shapes only).
    """
    import torch

    seen: list[Any] = []
    block = _named(model)[arch.blocks][0]
    handle = block.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
    finally:
        handle.remove()
    return "tuple" if isinstance(seen[0], tuple) else "tensor"
