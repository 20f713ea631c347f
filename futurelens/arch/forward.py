"""What only a forward can tell (`probe`): tuple or tensor blocks, how block 0 takes the residual stream, the widths;
and the checks that refuse what futurelens cannot do exactly (`check_supported`, `check_probe`, `check_head`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from ..errors import FutureLensError
from .paths import _REFUSED, Arch, BlockOutput, _named, _text_config


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
