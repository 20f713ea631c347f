"""Your own experiment as an nnsight trace: futurelens' layers, soft prompt and head inside an ``lm.trace`` block.

`TraceMethods` is what `futurelens.LensModel` offers inside a trace block. Each method checks its arguments here
and calls the accessor of the same name in `futurelens.server.access`, the one implementation futurelens' own
primitives (`cache`, `patch`, `rollout`, `decode` ...) are built on, so a user's trace reads, writes and decodes
exactly as they do:

- ``lm.read_layer(L)``: the residual stream at layer ``L`` (``0`` = what enters block 0, ``L`` = after ``L``
  blocks, before the final norm, negative from the end), ``[B, T, d_model]``;
- ``lm.write_layer(L, value, position=None)``: overwrite it (all positions, or one / a list of positions);
- ``lm.write_prompt(prompt)``: a soft prompt ``[P, embed_dim]`` over the first ``P`` embedding outputs;
- ``lm.head(hidden)``: the model's own head (final norm, projection, unembedding, logit scale, soft cap);
- ``lm.top_k(hidden, k)``: ``(probs, ids)`` of that head's distribution.

nnsight serves modules in the order the forward runs them: write the prompt first, then layers in ascending order
(read a layer, then write it), then the head. With ``remote=True`` the block runs on NDIF: ``lm`` named in it
travels as a plain ``(model, spec)`` pair rebuilt there as the same methods (`futurelens.server.access.trace_view`,
under the server rule), so only those methods, ``lm.nn``, ``lm.blocks``, ``lm.envoy(path)``, ``lm.n_layers`` and
``lm.pad_id`` are there: no tokenizer, and arguments are checked there rather than here.
"""

from __future__ import annotations

from typing import Any

from .errors import FutureLensError
from .server import access


class TraceMethods:
    """The trace-side API of `futurelens.LensModel` (a mixin: it uses the model's ``nn``, ``spec()`` and sizes)."""

    nn: Any
    remote: Any

    def trace(self, *inputs: Any, **kwargs: Any) -> Any:
        """An nnsight trace (``with lm.trace`` over a text or ids ``as tracer:``) of this model, on NDIF when ``lm.remote``.

        ``remote=`` overrides where it runs (``"local"``: NDIF's serialisation path, here). Everything nnsight's
        ``trace`` takes passes through; inside, use the methods below, ``lm.nn`` (the nnsight model) and ``.save()``.
        """
        self._register(kwargs.get("remote", self.remote))
        return access.open_trace(self.nn, self.spec(), *inputs, **kwargs)

    def session(self, **kwargs: Any) -> Any:
        """Several traces (``with lm.session`` around them) as one request (one NDIF request when remote)."""
        self._register(kwargs.get("remote", self.remote))
        return access.open_session(self.nn, self.spec(), **kwargs)

    @property
    def blocks(self) -> Any:
        """The envoy of the block list (``lm.blocks[i].attn ...``: the model's own modules, its own names)."""
        return self.envoy(self.arch.blocks)

    def read_layer(self, layer: int) -> Any:
        """Inside a trace: the residual stream at ``layer``, ``[B, T, d_model]`` (0 = block 0's input, -1 = the last
        block's output, before the final norm)."""
        return access.read_layer(self.nn, self.spec(), self.check_layer(layer))

    def write_layer(self, layer: int, value: Any, position: "int | list[int] | None" = None, rows: Any = None) -> None:
        """Inside a trace: overwrite the residual stream at ``layer`` with ``value``, in its dtype.

        ``position`` None: ``value`` is ``[B, T, d_model]`` (or broadcasts to it: a ``[d_model]`` steering vector
        added to what `read_layer` gave); an int: ``value [B, d_model]`` or ``[d_model]`` at that position; a list
        of ints: ``value [B, len, d_model]``. ``rows`` writes only those batch rows.
        """
        self._check_width(value, self.d_model, "write_layer's value", "d_model")
        access.write_layer(self.nn, self.spec(), self.check_layer(layer), value, position, rows)

    def write_prompt(self, prompt: Any) -> None:
        """Inside a trace: a soft prompt ``[P, embed_dim]`` (or ``[B, P, embed_dim]``) over the first ``P`` embedding
        outputs. The input's first ``P`` tokens are placeholders (``lm.pad_id``); call this before any layer."""
        self._check_width(prompt, self.embed_dim, "write_prompt's prompt", "embed_dim")
        if prompt.dim() not in (2, 3):
            raise FutureLensError(f"write_prompt takes [P, {self.embed_dim}] or [B, P, {self.embed_dim}], got {tuple(prompt.shape)}.")
        access.write_prompt(self.nn, self.spec(), prompt)

    def head(self, hidden: Any) -> Any:
        """Inside a trace: the model's own head on ``hidden [..., d_model]`` -> ``logits [..., vocab]`` (outside one,
        `futurelens.decode`)."""
        self._check_width(hidden, self.d_model, "head's input", "d_model")
        return access.head(self.nn, self.spec(), hidden)

    def top_k(self, hidden: Any, k: int) -> Any:
        """Inside a trace: ``(probs, ids)``, each ``[..., k]``, the ``k`` likeliest tokens of `head` on ``hidden``."""
        self._check_width(hidden, self.d_model, "top_k's input", "d_model")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.vocab_size:
            raise FutureLensError(f"top_k's k must be an int in 1..{self.vocab_size}, got {k!r}.")
        return access.top_k(self.nn, self.spec(), hidden, k)

    def __reduce__(self) -> tuple:
        # Named in a remote trace block, the model travels as its spec and nnsight's model reference, rebuilt where
        # the block runs as the same trace methods: no futurelens class, tokenizer or config crosses the wire.
        return access.trace_view, (self.nn, self.spec())

    def __copy__(self) -> Any:
        import dataclasses

        return dataclasses.replace(self)

    def _register(self, remote: Any) -> None:
        if remote:
            import nnsight

            nnsight.register("futurelens")  # the accessors the block calls ship by value, as run_job's jobs do

    @staticmethod
    def _check_width(x: Any, width: int, what: str, name: str) -> None:
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) == 0 or int(shape[-1]) != width:
            raise FutureLensError(f"{what} must end in {name}={width}, got shape {None if shape is None else tuple(shape)}.")
