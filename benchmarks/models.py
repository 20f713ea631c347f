"""Small random GPT-J and Mamba models for the benchmarks, built from configs (offline, seconds to build).

The same idea as the tiny models in ``tests/conftest.py``, but wider (d 256, 4 blocks)
so that a forward pass does enough arithmetic for timings to mean something. The
vocabulary is the default model's tokenizer, so the same pydoc prefixes feed every model.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch

from .common import default_lm, device

D_MODEL = 256
N_LAYERS = 4


def config(kind: str, tokenizer: Any) -> Any:
    """The transformers config of a benchmark model: ``"gptj"`` or ``"mamba"``.

    Without the optional kernels (mamba_ssm, causal_conv1d; CUDA only) transformers runs
    Mamba's reference PyTorch path and logs so: that is the path measured on a CPU.
    """
    import transformers

    # The special ids must lie inside this vocabulary (GPT-J's defaults are GPT-2's 50256).
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if kind == "gptj":
        return transformers.GPTJConfig(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=8, rotary_dim=16, n_positions=512, **common)
    if kind == "mamba":
        return transformers.MambaConfig(
            hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, state_size=16, expand=2, conv_kernel=4, **common
        )
    raise ValueError(f"unknown benchmark model {kind!r}: use 'gptj' or 'mamba'")


@functools.lru_cache(maxsize=None)
def tiny(kind: str, seed: int = 0) -> tuple[Any, Any]:
    """``(LensModel, plain HF model)`` of one architecture: the same weights, two separate objects.

    The plain copy is taken *before* futurelens wraps the model, so the baseline
    forward runs on a module nnsight has never touched.
    """
    import transformers

    import futurelens as fl

    tokenizer = default_lm().tokenizer
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config(kind, tokenizer))
    model = model.to(device()).requires_grad_(False).eval()
    plain = copy.deepcopy(model)
    return fl.load_model(model, tokenizer=tokenizer), plain
