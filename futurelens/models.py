"""Loading a causal LM through nnsight: by hub id, local folder, built HF model, or the embedded default.

Everything downstream takes a `LensModel`: the nnsight wrapper, its tokenizer, the
resolved `Arch`, and where it runs (``remote=False | True | "local"``). Nothing is
imported at ``import futurelens`` time; torch, transformers and nnsight load on the
first `load_model` call.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from .arch import Arch, check_head, check_probe, check_supported, detect, probe
from .embedded import DEFAULT_MODEL, EMBEDDED, ensure_default_model, ensure_gguf, gguf_special_tokens
from .errors import FutureLensError
from .hub_access import hub_access
from .tokens import load_tokenizer
from .trace_api import TraceMethods

Remote = Union[bool, Literal["local"]]



@dataclass
class LensModel(TraceMethods):
    """A causal LM ready for Future Lens experiments.

    Inside an ``lm.trace`` block (or ``lm.session``) its trace methods (`futurelens.trace_api.TraceMethods`:
    ``read_layer``, ``write_layer``, ``write_prompt``, ``head``, ``top_k``) read and write the residual stream
    at a futurelens layer and apply the model's own head, locally and on NDIF alike.

    Attributes:
        nn: the ``nnsight.TransformersModel`` every trace runs on.
        tokenizer: its tokenizer.
        arch: where the blocks, embedding and head live (`futurelens.arch.Arch`).
        name: what the model was loaded from (hub id, folder, or class name).
        remote: ``False`` (run here), ``True`` (run on NDIF) or ``"local"`` (NDIF's
            serialisation path, executed in-process).
    """

    nn: Any
    tokenizer: Any
    arch: Arch
    name: str
    remote: Remote = False
    max_request_mb: float = 32.0
    """Upper bound on one remote request's tensors (payload or result): training, evaluation and
    caching split their work into requests of at most this size."""
    _envoys: dict = field(default_factory=dict, repr=False)
    _d_model: int | None = field(default=None, repr=False)
    _embed_dim: int | None = field(default=None, repr=False)
    _hidden_dtype: str | None = field(default=None, repr=False)

    @property
    def config(self) -> Any:
        return self.nn.config

    @property
    def n_layers(self) -> int:
        """Number of blocks; valid layers are ``0..n_layers`` (0 = the residual stream entering block 0)."""
        return len(self.envoy(self.arch.blocks))

    @property
    def d_model(self) -> int:
        """Width of the residual stream (the blocks' hidden states): every cached or patched state is this wide."""
        return self._d_model if self._d_model is not None else self.embed_dim

    @property
    def embed_dim(self) -> int:
        """Width of the embedding output, which a soft prompt replaces: ``d_model`` except where the model
        projects its embeddings in (OPT-350m: 512 wide embeddings, a 1024 wide residual stream)."""
        if self._embed_dim is not None:
            return self._embed_dim
        return int(self.module(self.arch.embed).weight.shape[-1])

    @property
    def vocab_size(self) -> int:
        return int(self.module(self.arch.unembed).weight.shape[0])

    @property
    def device(self) -> Any:
        import torch

        try:
            return next(self.nn._module.parameters()).device
        except StopIteration:  # pragma: no cover - a model without parameters
            return torch.device("cpu")

    @property
    def pad_id(self) -> int:
        """Token id used for padding and placeholders (never read: masked or overwritten)."""
        return self.tokenizer.pad_token_id or 0

    @property
    def dtype(self) -> Any:
        return self.module(self.arch.embed).weight.dtype

    def spec(self) -> dict:
        """What the server side (`futurelens.server`) knows of this model: plain paths, sizes and flags."""
        arch = self.arch
        return {
            "embed": arch.embed,
            "blocks": arch.blocks,
            "final_norm": arch.final_norm,
            "project_out": arch.project_out,
            "unembed": arch.unembed,
            "logit_scale": arch.logit_scale,
            "logit_softcap": arch.logit_softcap,
            "is_tuple": arch.block_output == "tuple",
            "block_input": arch.block_input,
            # The dtype of the model's own last-layer states where it is not the weights' (float32 for Mamba's
            # residual in a bfloat16 model); None: the weights' dtype, read where the model runs.
            "hidden_dtype": self._hidden_dtype,
            "kv_cache": arch.kv_cache,
            "n_layers": self.n_layers,
            "pad_id": self.pad_id,
            "remote": self.remote,
            "direct": not self.remote,
        }

    def envoy(self, path: str) -> Any:
        """The nnsight envoy at a dotted module path (cached)."""
        if path not in self._envoys:
            from .server.access import envoy_at

            self._envoys[path] = envoy_at(self.nn, path)
        return self._envoys[path]

    def module(self, path: str) -> Any:
        """The underlying ``torch.nn.Module`` at a dotted path."""
        return self.nn._module.get_submodule(path)

    def check_layer(self, layer: int, what: str = "layer") -> int:
        """Validate a layer index (negative counts from the end); return it as 0..n_layers."""
        from .server.access import layer_index

        n = self.n_layers
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise FutureLensError(f"{what} must be an int in 0..{n}, got {layer!r}.")
        resolved = layer_index(n, layer)
        if resolved is None:
            raise FutureLensError(
                f"{what}={layer} is out of range for {self.name}, which has {n} blocks: "
                f"use 0..{n} (0 = the input of block 0, {n} = the last block's output) or -1..-{n + 1}."
            )
        return resolved


def _hub_error(name: str, err: Exception, note: str = "") -> FutureLensError:
    if note:  # the hub was unreachable: say so rather than guess at the id
        return FutureLensError(f"Could not load {name!r}: {note}")
    return FutureLensError(
        f"Could not load {name!r}: it is not a local folder and the Hugging Face hub could not provide it "
        f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Check the id and your network, "
        "log in with `hf auth login` for gated models, pass a local folder instead, "
        f"or use the embedded default with load_model({DEFAULT_MODEL!r})."
    )


def load_model(
    model: Any = DEFAULT_MODEL,
    *,
    remote: Remote = False,
    arch: Arch | dict | None = None,
    tokenizer: Any = None,
    dtype: Any = None,
    device: str | None = None,
    check_head: bool = True,
    max_request_mb: float = 32.0,
    **hf_kwargs: Any,
) -> LensModel:
    """Load a causal LM for Future Lens work.

    Args:
        model: a hub id (``"EleutherAI/gpt-j-6b"``), a local checkpoint folder, a local ``.gguf`` file
            (or a folder with ``gguf_file=``; dequantised to fp32 once, its BOS setting honoured), an
            already-built ``transformers`` causal LM, ``"smollm2-135m"`` (the embedded default) or
            ``"gemma3-270m"`` (Google's Gemma 3 270M), both offline.
        remote: ``False`` to run here, ``True`` to run on NDIF (no weights are
            loaded here), ``"local"`` to run NDIF's serialisation path in-process.
        arch: an `Arch`, or a dict of its fields, overriding auto-detection.
        tokenizer: a tokenizer object or path; defaults to the model's own.
        dtype: torch dtype for the weights (default: the checkpoint's; fp32 on CPU).
        device: e.g. ``"cuda"``; default: first GPU if any, else CPU. A ``device_map`` in
            ``hf_kwargs`` (``"auto"``, or a dict placing modules on GPUs, ``"cpu"`` and ``"disk"``
            with ``offload_folder``) replaces it: accelerate dispatches the model.
        check_head: on real weights, verify that futurelens' head (final norm, projection,
            unembedding, logit scale / soft cap) turns the last block's state into the model's own
            logits, and refuse the model if it does not (a weightless remote model is not checked).
        max_request_mb: with ``remote=True``, the most megabytes of tensors one request may send or bring back
            (`LensModel.max_request_mb`).
        **hf_kwargs: passed to ``from_pretrained`` (``revision``, ``trust_remote_code`` ...).

    A name that is neither embedded nor a local path is checked against the hub before any download
    (`futurelens.hub_access`): offline or unreachable, a model not in the hub cache is refused at once.
    """
    import torch
    from nnsight import TransformersModel

    if remote not in (False, True, "local"):
        raise FutureLensError(f"remote must be False, True or 'local', not {remote!r}.")
    if not (isinstance(max_request_mb, (int, float)) and max_request_mb > 0):
        raise FutureLensError(f"max_request_mb (--max-request-mb) must be > 0 megabytes per NDIF request, got {max_request_mb!r}.")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)

    if isinstance(model, torch.nn.Module):
        name = getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
        if tokenizer is None:
            raise FutureLensError(
                f"A built {type(model).__name__} carries no tokenizer: pass tokenizer=AutoTokenizer.from_pretrained(...)."
            )
        if remote is True:
            raise FutureLensError("remote=True needs a hub id that NDIF serves, not a model built here.")
        tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
        model.requires_grad_(False)
        model.eval()
        nn = TransformersModel(model, task="text-generation", tokenizer=tok)
    else:
        name = str(model)
        if not name.strip():
            raise FutureLensError("Model name is empty: pass a hub id, a folder, or 'smollm2-135m'.")
        gguf_file = hf_kwargs.pop("gguf_file", None)
        if gguf_file is not None and not str(gguf_file).lower().endswith(".gguf"):
            raise FutureLensError(f"gguf_file={gguf_file!r} is not a .gguf file name.")
        if gguf_file is not None and Path(name).is_dir():  # folder + gguf_file: that local file
            name, gguf_file = str(Path(name) / gguf_file), None
        if name in EMBEDDED:
            source = str(ensure_default_model(name))
        elif name.lower().endswith(".gguf"):
            if remote is True:
                raise FutureLensError("remote=True needs a hub id that NDIF serves, not a local GGUF file.")
            if not Path(name).is_file():
                raise FutureLensError(f"No GGUF file at {name}: check the path (a .gguf file, or a folder with gguf_file=).")
            source = str(ensure_gguf(name))  # dequantised once, its tokenizer adding BOS as the file says
        else:
            source = name
        if remote is True:
            import nnsight

            from .remote import check_remote_ready, check_versions
            from .secrets import install_redaction

            check_remote_ready(name)  # no key: say how to set one now, not after the first request
            for message in check_versions():
                warnings.warn(message, stacklevel=2)
            install_redaction()
            nnsight.register("futurelens")  # trace bodies call futurelens helpers: their source travels
        with hub_access(name, remote is True) as note:
            tok_kwargs = {k: v for k, v in hf_kwargs.items() if k in ("revision", "trust_remote_code")}
            try:
                if tokenizer is None and gguf_file is not None:  # a hub repo's GGUF file: its tokenizer, as the file says
                    from huggingface_hub import hf_hub_download

                    tok = load_tokenizer(source, gguf_file=gguf_file, **tok_kwargs)
                    local = hf_hub_download(source, gguf_file, revision=hf_kwargs.get("revision"))
                    for key, value in gguf_special_tokens(local).items():
                        setattr(tok, key, value)
                elif tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
                    tok = load_tokenizer(str(tokenizer or source), **tok_kwargs)
                else:
                    tok = tokenizer
            except OSError as err:
                raise _hub_error(name, err, note) from err
            kwargs = dict(hf_kwargs)
            if gguf_file is not None:
                kwargs["gguf_file"] = gguf_file
            if dtype is not None:
                kwargs["dtype"] = dtype
            try:
                # nnsight 0.8.1 with transformers 5.23 cannot load from a name unless a tokenizer is passed.
                nn = TransformersModel(
                    source,
                    task="text-generation",
                    tokenizer=tok,
                    dispatch=remote is not True,
                    # A device_map of the caller's (accelerate dispatch, offloading) wins over device.
                    **({"device_map": kwargs.pop("device_map", device)} if remote is not True else {}),
                    **kwargs,
                )
            except OSError as err:
                raise _hub_error(name, err, note) from err
        nn._module.requires_grad_(False)
        nn._module.eval()

    lm = _with_arch(nn, tok, name, remote, arch, check_head)
    lm.max_request_mb = float(max_request_mb)
    return lm


def _with_arch(nn: Any, tok: Any, name: str, remote: Remote, arch: Arch | dict | None, check: bool) -> LensModel:
    """Detect and probe the architecture, refuse what futurelens cannot do exactly, and build the `LensModel`."""
    module = nn._module
    check_supported(module)
    # Real weights: not a weightless remote copy (an accelerate-offloaded model has meta parameters and a device map).
    real = next(module.parameters()).device.type != "meta" or bool(getattr(module, "hf_device_map", None))
    found = detect(module, arch, verified=check and real)
    seen = probe(module, found)
    given = arch if isinstance(arch, dict) else {}
    if not isinstance(arch, Arch):
        changes: dict[str, Any] = {}
        if "block_output" not in given:
            changes["block_output"] = seen.block_output
        if "block_input" not in given and seen.block_input is not None:
            changes["block_input"] = seen.block_input
        if "kv_cache" not in given:
            # A shared prefix is copied as a plain DynamicCache: not for a recurrent state or a cache class of its own.
            changes["kv_cache"] = found.kv_cache and seen.plain_kv_cache
        found = found.replace(**changes)
    if isinstance(arch, Arch) or "block_input" in given:
        seen.block_input = found.block_input
    check_probe(module, found, seen)
    hidden_dtype = seen.last_hidden.dtype
    own_dtype = None if hidden_dtype == module.get_submodule(found.embed).weight.dtype else str(hidden_dtype).split(".")[-1]
    lm = LensModel(nn=nn, tokenizer=tok, arch=found, name=name, remote=remote,
                   _d_model=seen.d_model, _embed_dim=seen.embed_dim, _hidden_dtype=own_dtype)
    if check and real:
        from .server.access import head

        spec = lm.spec()
        check_head(type(module).__name__, found, seen, lambda hidden: head(nn, spec, hidden, direct=True))
    return lm
