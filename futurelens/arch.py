"""Where an architecture keeps its pieces — the only module that knows architectures.

Every decoder-only causal LM has the same parts Future Lens needs: a token
embedding, a stack of blocks, and a head that turns the residual stream into
logits (a final norm, sometimes a projection, the unembedding, sometimes a
scale or a soft cap on the logits). They live under different names
(``transformer.h`` in GPT-J, ``model.layers`` in Llama, ``backbone.layers`` in
Mamba ...), and some blocks return a tuple whose first element is the hidden
state while others return the tensor itself. `detect` finds the paths from the
module tree and the head's transform from the config; `probe` runs one forward
to answer what only a forward can (tuple or tensor, how block 0 receives the
residual stream, the residual width) and, on real weights, `check_head`
verifies that the head futurelens applies reproduces the model's own logits.
`Arch` is the answer; a user who knows better passes their own
(``load_model(..., arch=Arch(...))`` or a dict of the fields to override).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Union

from .errors import FutureLensError

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


# --------------------------------------------------------------------------- what a forward tells


@dataclass
class Probe:
    """What one short forward of the model shows (`probe`)."""

    block_output: BlockOutput
    """Whether block 0 returned a tuple or a tensor."""
    block_input: Union[int, str] | None
    """Where block 0 received the residual stream (positional index or keyword), None if no argument was it."""
    d_model: int
    """Width of the residual stream: of the blocks' hidden states."""
    embed_dim: int
    """Width of the embedding output (what a soft prompt is made of); differs from d_model in OPT-350m."""
    widths: tuple[int, int, int]
    """Widths of block 0's input, block 0's output and the last block's output."""
    last_hidden: Any
    """The last block's hidden state ``[1, T, d]`` (what the head turns into the logits)."""
    logits: Any
    """The model's own logits ``[1, T, vocab]``."""
    plain_kv_cache: bool = False
    """Whether the model's own past is a plain ``transformers.DynamicCache`` (what a shared prefix is copied as)."""
    block_calls: tuple[int, int] = (1, 1)
    """How many times block 0 and the last block ran in the forward (1 each in a plain stack)."""
    first_arg_shape: tuple | None = None
    """Shape of block 0's first tensor argument (to say why, when it is not a ``[1, T, d]`` hidden state)."""
    n_tokens: int = 2
    """Tokens in the probe's forward."""


def _hidden_arg(args: tuple, kwargs: dict, n_tokens: int) -> Union[int, str] | None:
    """Which argument of a block call is the ``[1, T, d]`` hidden state: an index, a keyword, or None."""
    import torch

    def is_hidden(x: Any) -> bool:
        return isinstance(x, torch.Tensor) and x.dim() == 3 and tuple(x.shape[:2]) == (1, n_tokens) and x.is_floating_point()

    if args and is_hidden(args[0]):
        return 0
    if is_hidden(kwargs.get("hidden_states")):
        return "hidden_states"
    for i, a in enumerate(args):
        if is_hidden(a):
            return i
    return next((k for k, v in kwargs.items() if is_hidden(v)), None)


def probe(model: Any, arch: Arch) -> Probe:
    """Run two tokens through ``model`` with hooks on the embedding and the blocks; report what they saw.

    Works on real weights and on the meta device alike (a meta forward computes shapes only;
    then ``logits`` and ``last_hidden`` hold no values).
    """
    import torch

    modules = _named(model)
    blocks = modules[arch.blocks]
    seen: dict[str, Any] = {}
    n_tokens = 2

    calls = {"block0": 0, "last": 0}

    def on_input(_m: Any, args: tuple, kwargs: dict) -> None:
        seen.setdefault("input", (args, kwargs))

    def first(key: str):
        def hook(_m: Any, _i: Any, out: Any) -> None:
            seen.setdefault(key, out)
            if key in calls:
                calls[key] += 1

        return hook

    handles = [
        modules[arch.embed].register_forward_hook(first("embed")),
        blocks[0].register_forward_pre_hook(on_input, with_kwargs=True),
        blocks[0].register_forward_hook(first("block0")),
        blocks[len(blocks) - 1].register_forward_hook(first("last")),
    ]
    try:
        device = next(model.parameters()).device
        vocab = int(modules[arch.unembed].weight.shape[0]) if hasattr(modules[arch.unembed], "weight") else 2
        ids = (torch.arange(1, n_tokens + 1) % max(vocab, 1))[None].to(device)
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True)
        logits = out.logits
    finally:
        for h in handles:
            h.remove()
    missing = [k for k in ("embed", "input", "block0", "last") if k not in seen]
    if missing:
        raise FutureLensError(
            f"{type(model).__name__}: a forward pass never ran {', '.join(missing)} "
            f"(arch.embed={arch.embed!r}, arch.blocks={arch.blocks!r}): futurelens needs a token embedding "
            "and a block list that every forward runs through. Pass the right paths with load_model(..., arch={...})."
        )
    args, kwargs = seen["input"]
    where = _hidden_arg(args, kwargs, n_tokens)
    first_arg = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)), None)
    out0 = seen["block0"]
    # A list of outputs (GPT-1's blocks) is read and rebuilt like a tuple.
    hidden0 = out0[0] if isinstance(out0, (tuple, list)) else out0
    last = seen["last"][0] if isinstance(seen["last"], (tuple, list)) else seen["last"]
    embed_out = seen["embed"]
    if not (isinstance(hidden0, torch.Tensor) and isinstance(last, torch.Tensor) and isinstance(embed_out, torch.Tensor)):
        raise FutureLensError(
            f"{type(model).__name__}: block 0 or the embedding returns {type(out0).__name__}, not a hidden-state tensor "
            "(or a tuple starting with one): futurelens cannot read or patch its residual stream."
        )
    from transformers import DynamicCache

    in_width = None
    if where is not None:
        x = args[where] if isinstance(where, int) else kwargs[where]
        in_width = int(x.shape[-1])
    return Probe(
        block_output="tuple" if isinstance(out0, (tuple, list)) else "tensor",
        block_input=where,
        d_model=int(hidden0.shape[-1]),
        embed_dim=int(embed_out.shape[-1]),
        widths=(in_width or 0, int(hidden0.shape[-1]), int(last.shape[-1])),
        plain_kv_cache=type(getattr(out, "past_key_values", None)) is DynamicCache,
        block_calls=(calls["block0"], calls["last"]),
        first_arg_shape=None if first_arg is None else tuple(first_arg.shape),
        n_tokens=n_tokens,
        last_hidden=last.detach(),
        logits=logits.detach(),
    )


def check_supported(model: Any) -> None:
    """Refuse an architecture futurelens knows it cannot run exactly (``_REFUSED``), saying why."""
    model_type = getattr(_text_config(model), "model_type", None)
    if model_type in _REFUSED:
        raise FutureLensError(f"{type(model).__name__} (model type {model_type!r}) is not supported: {_REFUSED[model_type]}.")


def check_probe(model: Any, arch: Arch, seen: Probe) -> None:
    """Refuse what futurelens cannot read or patch exactly, naming the missing piece."""
    name = type(model).__name__
    if seen.block_calls != (1, 1):
        raise FutureLensError(
            f"{name}: its blocks run more than once in one forward (block 0 {seen.block_calls[0]} times, the last block "
            f"{seen.block_calls[1]} times; a recurrent-depth model): a layer is not one state of the residual stream, "
            "so futurelens cannot read or patch it as one."
        )
    shape = seen.first_arg_shape
    if seen.block_input is None and shape is not None and len(shape) == 4 and shape[:2] == (1, seen.n_tokens):
        raise FutureLensError(
            f"{name}: block 0 receives several residual streams at once (a [batch, tokens, {shape[2]}, d] hidden state, "
            "as with hyper-connections): futurelens reads and patches a single [batch, tokens, d] residual stream."
        )
    if seen.block_input is None and shape is not None and len(shape) == 3 and shape[0] == 1 and shape[1] != seen.n_tokens:
        raise FutureLensError(
            f"{name}: block 0 receives {shape[1]} positions for {seen.n_tokens} tokens (the model adds positions of its "
            "own, such as a learned prompt): a layer's positions are not the tokens', so futurelens cannot read or patch "
            "them token by token."
        )
    if seen.block_input is None:
        raise FutureLensError(
            f"{name}: block 0 ({arch.blocks}.0) receives no [batch, tokens, d] hidden state among its arguments, "
            "so layer 0 (the residual stream entering block 0) cannot be read or patched. "
            "Pass arch={'block_input': <index or keyword of its hidden-state argument>}."
        )
    if len(set(seen.widths)) != 1:
        raise FutureLensError(
            f"{name}: its blocks do not keep one residual width (block 0 takes {seen.widths[0]}, returns "
            f"{seen.widths[1]}, the last block returns {seen.widths[2]}): futurelens needs one d_model for every layer."
        )


def check_head(name: str, arch: Arch, seen: Probe, head: Any) -> None:
    """Refuse a model whose own logits futurelens' head does not reproduce from the last block's state.

    ``head(hidden)`` is futurelens' head (`futurelens.server.access.head`) on ``seen.last_hidden``;
    ``seen.logits`` the model's own. Tolerance: relative to the logits' size, 1e-4 in float32, 2e-2 in
    16-bit types (their rounding).
    """
    import torch

    path = " -> ".join(p for p in (arch.final_norm, arch.project_out, arch.unembed) if p is not None)
    path += (f", * {arch.logit_scale}" if arch.logit_scale is not None else "") + (
        f", soft cap {arch.logit_softcap}" if arch.logit_softcap is not None else ""
    )
    fix = (
        "Pass the missing piece with load_model(..., arch={'final_norm': ..., 'project_out': ..., 'unembed': ..., "
        "'logit_scale': ..., 'logit_softcap': ...}), or check_head=False to load it anyway."
    )
    try:
        with torch.no_grad():
            ours = head(seen.last_hidden)
    except RuntimeError as err:
        raise FutureLensError(
            f"{name}: the head futurelens found ({path}) cannot take the last block's {seen.d_model}-wide state "
            f"({str(err).splitlines()[0][:160]}): a projection between the blocks and the unembedding is missing. {fix}"
        ) from err
    theirs = seen.logits[:, -1].float()
    mine = ours[:, -1].float().to(theirs.device)
    if mine.shape != theirs.shape:
        raise FutureLensError(
            f"{name}: the head futurelens found ({path}) gives {mine.shape[-1]} logits, the model {theirs.shape[-1]}. {fix}"
        )
    tol = 1e-4 if seen.logits.dtype in (torch.float32, torch.float64) else 2e-2
    err = float((mine - theirs).abs().max())
    size = float(theirs.abs().max()) + 1e-6
    if not err <= tol * size:
        raise FutureLensError(
            f"{name}: the head futurelens found ({path}) does not reproduce the model's own logits from its last "
            f"block's state (largest difference {err:.3g}, logits up to {size:.3g}): the model applies something else "
            "between its last block and its logits (a final norm, a projection, a logit scale or soft cap futurelens "
            f"does not know). {fix}"
        )


def probe_block_output(model: Any, arch: Arch) -> BlockOutput:
    """Whether block 0 returns a tuple or a tensor (`probe`'s ``block_output``)."""
    return probe(model, arch).block_output
