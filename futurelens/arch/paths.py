"""Where an architecture keeps its pieces, read from the module tree and the config: `Arch` and `detect`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Union

from ..errors import FutureLensError

BlockOutput = Literal["tensor", "tuple"]

# Names a final norm goes by, most specific first. Checked only among the
# siblings of the block list, so a per-block norm is never mistaken for it.
_FINAL_NORM_NAMES = ("norm_f", "ln_f", "final_layer_norm", "final_layernorm", "norm", "final_norm")

# A projection between the final norm and the unembedding, a sibling of the block list
# (OPT with word_embed_proj_dim != hidden_size: ``model.decoder.project_out``).
_PROJECT_OUT_NAMES = ("project_out",)

# What a causal LM's forward multiplies its unembedding's output by, read from each model's
# ``ForCausalLM.forward`` in transformers 5.22: model_type -> (config field, "mul" | "div").
# Keyed by model type because one field name means opposite things: Granite divides by
# ``logits_scaling``, HyperCLOVA X multiplies by it.
_LOGIT_SCALE_FIELDS = {
    "cohere": ("logit_scale", "mul"),
    "cohere2": ("logit_scale", "mul"),
    "cohere2_moe": ("logit_scale", "mul"),
    "cohere_compass_text": ("logit_scale", "mul"),
    "granite": ("logits_scaling", "div"),
    "granite_swa": ("logits_scaling", "div"),
    "granitemoe": ("logits_scaling", "div"),
    "granitemoe_swa": ("logits_scaling", "div"),
    "granitemoehybrid": ("logits_scaling", "div"),
    "granitemoeshared": ("logits_scaling", "div"),
    "falcon_h1": ("lm_head_multiplier", "mul"),
    "hyperclovax": ("logits_scaling", "mul"),
    # MiniCPM3 and Inkling divide the hidden state before a bias-free lm_head: the same as dividing the logits.
    "minicpm3": ("logits_scaling", "div"),
    "inkling_text": ("logits_mup_width_multiplier", "div"),
}

# Config fields that are a final logit soft cap ``c`` (logits = c * tanh(logits / c)) wherever they
# appear: Gemma2/3/3n/4, VaultGemma, nanochat, Beam (``final_logit_softcapping``), RecurrentGemma
# (``logits_soft_cap``), xLSTM (``output_logit_soft_cap``). None means no cap.
_SOFTCAP_FIELDS = ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap")

# Architectures futurelens refuses, by model_type, and why (found by the conformance suite, tests/arch).
_REFUSED = {
    "rwkv": (
        "transformers 5.22's RWKV `generate` continues a batch of rows differently from each row alone (and from a "
        "re-run of the context), so greedy continuations and rollouts, which futurelens batches, would be wrong; "
        "this is in transformers, not something an arch override can fix"
    ),
}


@dataclass(frozen=True)
class Arch:
    """Dotted module paths (as in ``model.named_modules()``) of the parts, and the head's transform.

    Layer convention used everywhere in futurelens: layer ``0`` is the residual stream
    that enters block 0 (block 0's input hidden state: after position embeddings, an
    embedding norm or scale, OPT's ``project_in`` — what ``output_hidden_states[0]``
    holds); layer ``L`` (1 ≤ L ≤ ``n_layers``) is the output of block ``L-1``, i.e. the
    residual stream after ``L`` blocks, *before* the final norm. A soft prompt is written
    where the model embeds tokens: over the output of ``embed``.

    The head, from a layer-``L`` state to logits, is ``final_norm`` → ``project_out`` →
    ``unembed`` → ``* logit_scale`` → ``logit_softcap``, each step only where the model has it.
    """

    blocks: str
    """Path of the ``ModuleList`` holding the decoder blocks (e.g. ``model.layers``)."""
    embed: str
    """Path of the token embedding (e.g. ``model.embed_tokens``); the soft prompt replaces its output."""
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
    block_input: Union[int, str] = 0
    """Where block 0 receives the residual stream (layer 0): a positional index, or a keyword name."""

    def replace(self, **changes: Any) -> "Arch":
        return dataclasses.replace(self, **changes)


def _named(module: Any) -> dict[str, Any]:
    return dict(module.named_modules())


def _path_of(modules: dict[str, Any], target: Any) -> str | None:
    return next((name for name, m in modules.items() if m is target), None)


def _find_blocks(model: Any, modules: dict[str, Any], embed: str | None) -> str | None:
    import torch

    n_layers = _n_layers_from_config(getattr(model, "config", None))
    lists = [(n, m) for n, m in modules.items() if isinstance(m, torch.nn.ModuleList) and len(m)]
    # The decoder stack sits next to the token embedding (model.embed_tokens / model.layers, transformer.wte /
    # transformer.h ...); a per-block list (norms, experts) never does.
    if embed is not None:
        parent = embed.rpartition(".")[0]
        siblings = [(n, m) for n, m in lists if n.rpartition(".")[0] == parent]
        if siblings:
            lists = siblings
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


def _parent(model: Any, blocks: str) -> tuple[Any, str]:
    parent = blocks.rpartition(".")[0]
    return (model.get_submodule(parent) if parent else model), (f"{parent}." if parent else "")


def _find_final_norm(model: Any, modules: dict[str, Any], blocks: str) -> tuple[str | None, bool]:
    """``(path of the final norm, whether the model says it has none)``.

    A model without one says so by holding ``None`` under a final-norm name next to its
    blocks (OPT with ``do_layer_norm_before=False``, the opt-350m layout: ``final_layer_norm = None``).
    """
    parent, prefix = _parent(model, blocks)
    for name in _FINAL_NORM_NAMES:
        if prefix + name in modules:
            return prefix + name, False
    # Fall back on any norm-like sibling of the block list.
    for name, module in modules.items():
        if name.rpartition(".")[0] == prefix.rstrip(".") and "norm" in type(module).__name__.lower():
            return name, False
    return None, any(getattr(parent, name, 0) is None for name in _FINAL_NORM_NAMES)


def _find_project_out(model: Any, modules: dict[str, Any], blocks: str, unembed: str | None) -> str | None:
    """A projection between the final norm and the unembedding: ``project_out`` next to the blocks (OPT-350m),
    or a top-level ``lm_head`` that is not the unembedding itself (ModernBERT-decoder's prediction head before
    its ``decoder``). `check_head` verifies the guess against the model's own logits."""
    _, prefix = _parent(model, blocks)
    found = next((prefix + n for n in _PROJECT_OUT_NAMES if prefix + n in modules), None)
    if found is None and unembed is not None and unembed != "lm_head" and "lm_head" in modules:
        if not unembed.startswith("lm_head."):
            found = "lm_head"
    return found


def _text_config(model: Any) -> Any:
    config = getattr(model, "config", None)
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def logit_transform(config: Any) -> dict[str, float | None]:
    """``{"logit_scale": s, "logit_softcap": c}`` that a model's forward applies after its unembedding, from its config.

    Read from each model's ``ForCausalLM.forward`` in transformers 5.22 (see ``_LOGIT_SCALE_FIELDS``,
    ``_SOFTCAP_FIELDS``); None where the model applies none. A scale of exactly 1 is None.
    """
    scale = None
    field = _LOGIT_SCALE_FIELDS.get(getattr(config, "model_type", None))
    if field is not None:
        value = getattr(config, field[0], None)
        if value is not None:
            value = float(value) if field[1] == "mul" else 1.0 / float(value)
            scale = None if value == 1.0 else value
    cap = None
    for name in _SOFTCAP_FIELDS:
        value = getattr(config, name, None)
        if value is not None:
            cap = float(value)
            break
    return {"logit_scale": scale, "logit_softcap": cap}


def detect(model: Any, override: Arch | dict | None = None, *, verified: bool = False) -> Arch:
    """Find the parts of ``model`` (a ``transformers`` causal LM, possibly on the meta device).

    Paths come from the module tree (``get_input_embeddings``, ``get_output_embeddings``, the
    block list and its siblings), the logit scale and soft cap from the config (`logit_transform`).
    ``override`` is either a complete `Arch` (used as is, after validation) or a dict of fields
    that replace what detection found. The questions that need a forward pass (tuple or tensor,
    how block 0 takes its input) are answered by `probe`; here they keep their defaults unless
    overridden. With ``verified`` (the caller checks the head against the model's own logits, as
    `load_model` does on real weights), a model with no final norm to be found is taken to have none
    (GPT-1's post-LN stack): the check confirms it or refuses the model.

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
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    found["embed"] = override.get("embed") or (_path_of(modules, get_in()) if get_in else None)
    found["blocks"] = override.get("blocks") or _find_blocks(model, modules, found["embed"])
    found["unembed"] = override.get("unembed") or (_path_of(modules, get_out()) if get_out else None)
    no_final_norm = False
    if "final_norm" in override:
        found["final_norm"] = override["final_norm"]
    elif found["blocks"]:
        found["final_norm"], no_final_norm = _find_final_norm(model, modules, found["blocks"])
    else:
        found["final_norm"] = None
    if "project_out" in override:
        found["project_out"] = override["project_out"]
    else:
        found["project_out"] = (
            _find_project_out(model, modules, found["blocks"], found["unembed"]) if found["blocks"] else None
        )
    transform = logit_transform(_text_config(model))
    for key in ("logit_scale", "logit_softcap"):
        found[key] = override[key] if key in override else transform[key]
    found["block_output"] = override.get("block_output", "tensor")
    found["block_input"] = override.get("block_input", 0)
    # transformers marks models whose past is a recurrent state (Mamba, Jamba, ...) as stateful.
    found["kv_cache"] = override.get("kv_cache", not getattr(model, "_is_stateful", False))

    # A final norm of None is fine when the user said so, or the model says it has none.
    missing = [k for k in ("blocks", "embed", "final_norm", "unembed") if not found[k] and k not in override]
    if "final_norm" in missing and (no_final_norm or verified):
        missing.remove("final_norm")
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
    """Check every path in ``arch`` names a module and every flag is valid; raise a FutureLensError naming the bad one."""
    import torch

    for field in ("blocks", "embed", "final_norm", "unembed", "project_out"):
        path = getattr(arch, field)
        if path is None and field in ("final_norm", "project_out"):
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
    if isinstance(arch.block_input, bool) or not isinstance(arch.block_input, (int, str)):
        raise FutureLensError(f"arch.block_input must be a positional index or a keyword name, not {arch.block_input!r}.")
    for field in ("logit_scale", "logit_softcap"):
        value = getattr(arch, field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value == 0):
            raise FutureLensError(f"arch.{field} must be a nonzero number or None, not {value!r}.")
