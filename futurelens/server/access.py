"""Where a layer, the soft prompt and the head are, inside a trace: the one implementation. Ships to NDIF (see the rule
in `futurelens.server`).

These are what a user's own ``with lm.trace(...)`` block calls (through the thin `futurelens.LensModel` methods
``read_layer``, ``write_layer``, ``write_prompt``, ``head``, ``top_k``) and what futurelens' own trace bodies
(`futurelens.server.traces`) are built on, so a primitive and a user's experiment read, write and decode the same
way. Layers: ``0`` is the residual stream entering block 0 (block 0's hidden-state argument), ``L`` the output of
block ``L-1`` (after ``L`` blocks, before the final norm), a negative ``L`` counts from the end (``-1`` is the last
block's output). A soft prompt is written over the embedding output's first ``P`` positions. The head is the
model's own: final norm -> projection -> unembedding -> logit scale -> soft cap, each where the model has it.

Inside a trace, nnsight serves modules in the order the forward runs them: write the prompt first, then read and
write layers in ascending order (a layer may be read, then written), then call the head.

``spec`` keys used here: ``embed``, ``blocks``, ``final_norm``, ``project_out``, ``unembed`` (module paths),
``is_tuple``, ``block_input``, ``n_layers``, ``pad_id``, ``logit_scale``, ``logit_softcap``, ``remote``.
"""

from __future__ import annotations

from collections import namedtuple

import torch


# --------------------------------------------------------------------------- model pieces


def envoy_at(model, path):
    """The envoy at a dotted module path (``"model.layers"``)."""
    obj = model
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def param_dtype(module):
    """The dtype of a module's weights (what it must be fed); ``module`` is an envoy or a ``torch.nn.Module``."""
    module = module._module if hasattr(module, "_module") else module
    return next(module.parameters()).dtype


def hidden_of(out, is_tuple):
    """The hidden state in a block's output: the tensor itself, or element 0 of a tuple."""
    return out[0] if is_tuple else out


def block_input_of(inputs, where):
    """Block 0's hidden-state argument in its ``(args, kwargs)``: ``where`` is a positional index or a keyword."""
    args, kwargs = inputs
    return args[where] if isinstance(where, int) else kwargs[where]


def with_block_input(inputs, where, value):
    """``(args, kwargs)`` with the hidden-state argument ``where`` replaced by ``value``."""
    args, kwargs = inputs
    if isinstance(where, int):
        return tuple(args[:where]) + (value,) + tuple(args[where + 1:]), kwargs
    kwargs = dict(kwargs)
    kwargs[where] = value
    return tuple(args), kwargs


# --------------------------------------------------------------------------- layers


def layer_index(n_layers, layer):
    """``layer`` as ``0..n_layers`` (a negative one counts from the end: ``-1`` is ``n_layers``), None if invalid."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        return None
    resolved = layer + n_layers + 1 if layer < 0 else layer
    return resolved if 0 <= resolved <= n_layers else None


def resolve_layer(spec, layer):
    """`layer_index` or an IndexError that says the valid range (raised where the model is)."""
    resolved = layer_index(spec["n_layers"], layer)
    if resolved is None:
        n = spec["n_layers"]
        raise IndexError(
            f"[futurelens] layer={layer!r} is out of range: the model has {n} blocks, so layers are 0..{n} "
            f"(0 = the input of block 0, {n} = the last block's output) or -1..-{n + 1}."
        )
    return resolved


def read_layer(model, spec, layer):
    """Inside a trace: the residual stream at ``layer``, ``[B, T, d]`` (0: what enters block 0; L: block L-1's output)."""
    layer = resolve_layer(spec, layer)
    blocks = envoy_at(model, spec["blocks"])
    if layer == 0:
        return block_input_of(blocks[0].inputs, spec["block_input"])
    return hidden_of(blocks[layer - 1].output, spec["is_tuple"])


def replaced(hidden, value, position, rows):
    """A copy of ``hidden [B, T, d]`` with ``value`` written in, in ``hidden``'s dtype (gradients flow through the cast).

    ``position`` None: ``value`` (broadcastable to ``[B, T, d]``) replaces every position. ``position`` an int:
    ``value [B, d]`` or ``[d]`` replaces that position; a list of ints: ``value [B, len, d]``. ``rows`` (a list or
    tensor of row indices) limits the write to those rows, ``value`` then having ``len(rows)`` rows.
    """
    new = hidden.clone()
    value = value.to(new.device, new.dtype)
    if not isinstance(position, int) and position is not None:
        position = torch.tensor(position, device=new.device)
    if rows is None:
        if position is None:
            new[...] = value
        else:
            new[:, position] = value
        return new
    rows = torch.as_tensor(rows, device=new.device)
    if position is None:
        new[rows] = value
    elif isinstance(position, int):
        new[rows, position] = value
    else:
        new[rows[:, None], position[None]] = value
    return new


def write_layer(model, spec, layer, value, position=None, rows=None):
    """Inside a trace: write ``value`` into the residual stream at ``layer`` (see `replaced` for its shapes).

    Layer 0 replaces block 0's hidden-state argument, layer ``L`` block ``L-1``'s output (its other outputs kept).
    """
    layer = resolve_layer(spec, layer)
    blocks = envoy_at(model, spec["blocks"])
    if layer == 0:
        inputs = blocks[0].inputs
        hidden = replaced(block_input_of(inputs, spec["block_input"]), value, position, rows)
        blocks[0].inputs = with_block_input(inputs, spec["block_input"], hidden)
        return
    block = blocks[layer - 1]
    out = block.output
    hidden = replaced(hidden_of(out, spec["is_tuple"]), value, position, rows)
    block.output = (hidden,) + tuple(out[1:]) if spec["is_tuple"] else hidden


def write_prompt(model, spec, prompt):
    """Inside a trace: ``prompt [P, e]`` or ``[B, P, e]`` over the first ``P`` embedding outputs (``e``: the embedding's
    width), in the embedding's dtype (a float32 prompt into a bfloat16 model; gradients flow through the cast)."""
    embed = envoy_at(model, spec["embed"])
    emb = embed.output
    prompt = prompt.to(emb.device, emb.dtype)
    if prompt.dim() == 2:
        prompt = prompt[None].expand(emb.shape[0], -1, -1)
    embed.output = torch.cat([prompt, emb[:, prompt.shape[1]:]], dim=1)


# --------------------------------------------------------------------------- the head


def part(model, path, direct):
    """The module at ``path``: its envoy (inside a trace, remotely) or, ``direct``, the torch module (gradients flow)."""
    return model._module.get_submodule(path) if direct else envoy_at(model, path)


def apply_logit_transform(logits, spec):
    """What a model does to its unembedding's output (a scale, a soft cap), in the model's own order."""
    if spec["logit_scale"] is not None:
        logits = logits * spec["logit_scale"]
    if spec["logit_softcap"] is not None:
        cap = spec["logit_softcap"]
        logits = torch.tanh(logits / cap) * cap
    return logits


def final_norm(model, spec, hidden, direct=False):
    """The model's final norm on ``hidden [..., d]`` (the head's first step; ``hidden`` itself where there is none)."""
    if spec["final_norm"] is None:
        return hidden
    return part(model, spec["final_norm"], direct)(hidden)


def head_after_norm(model, spec, x, direct=False):
    """Final-normed states -> logits: ``project_out``, the unembedding, then the logit transform.

    The normed state goes in in the weights' dtype, as the models that keep a float32 residual cast it (Mamba).
    """
    if spec["project_out"] is not None:
        project = part(model, spec["project_out"], direct)
        x = project(x.to(param_dtype(project)))
    unembed = part(model, spec["unembed"], direct)
    return apply_logit_transform(unembed(x.to(param_dtype(unembed))), spec)


def head(model, spec, hidden, direct=False):
    """The model's own head on ``hidden [..., d]``: ``logits [..., vocab]``.

    Inside a trace the modules are called as envoys (a call spends no occurrence of the module's own output, so the
    final norm is applied here even where the model runs it more than once); ``direct`` calls the torch modules
    (outside a trace, locally).
    """
    return head_after_norm(model, spec, final_norm(model, spec, hidden, direct), direct)


def top_of(logits, k):
    """``(probs, ids)``, each ``[..., k]``: the ``k`` most probable tokens of ``logits [..., vocab]`` (a float32
    softmax: what `futurelens.patch`, the lens and `top_k` report)."""
    top = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return top.values, top.indices


def top_k(model, spec, hidden, k, direct=False):
    """`top_of` the head on ``hidden [..., d]``."""
    return top_of(head(model, spec, hidden, direct), k)


# --------------------------------------------------------------------------- a user's trace


def open_trace(model, spec, *inputs, **kwargs):
    """``model.trace(*inputs, **kwargs)``, remote where the model is unless ``remote=`` says otherwise."""
    remote = kwargs.pop("remote", spec["remote"])
    return model.trace(*inputs, remote=remote, **kwargs)


def open_session(model, spec, **kwargs):
    """``model.session(**kwargs)`` (one request for every trace inside it), remote where the model is by default."""
    remote = kwargs.pop("remote", spec["remote"])
    return model.session(remote=remote, **kwargs)


def trace_view(model, spec):
    """What a `futurelens.LensModel` becomes where a user's remote trace runs: a record of the same trace methods.

    A ``LensModel`` named in a trace block pickles as ``(trace_view, (model, spec))`` (no futurelens class crosses
    the wire); here it is rebuilt as a named tuple of functions over the server's model, so ``lm.read_layer(6)``
    in the user's block runs these functions there. Traces opened inside run in the request (``remote=False``).
    """
    spec = dict(spec, remote=False, direct=False)
    fields = ["nn", "spec", "n_layers", "pad_id", "blocks", "envoy", "read_layer", "write_layer", "write_prompt",
              "head", "top_k", "trace", "session"]
    view = namedtuple("LensModelView", fields)
    return view(
        model, spec, spec["n_layers"], spec["pad_id"], envoy_at(model, spec["blocks"]),
        lambda path: envoy_at(model, path),
        lambda layer: read_layer(model, spec, layer),
        lambda layer, value, position=None, rows=None: write_layer(model, spec, layer, value, position, rows),
        lambda prompt: write_prompt(model, spec, prompt),
        lambda hidden: head(model, spec, hidden),
        lambda hidden, k: top_k(model, spec, hidden, k),
        lambda *inputs, **kwargs: open_trace(model, spec, *inputs, **kwargs),
        lambda **kwargs: open_session(model, spec, **kwargs),
    )
