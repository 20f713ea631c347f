"""Shared fixtures: the embedded tokenizer and tiny random models of each architecture, all offline."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import transformers

import futurelens as fl
from futurelens import secrets
from futurelens.artifacts.dataset import save_prefixes
from futurelens.tokens import tokenizer_hash
from futurelens.embedded import ensure_default_model

warnings.filterwarnings("ignore", message=".*mamba_ssm.*|.*causal_conv1d.*")

# Where each architecture keeps its blocks, written out by hand so tests can check
# futurelens' auto-detection and its hook-free traces against an independent source.
BLOCKS = {
    "gptj": "transformer.h",
    "llama": "model.layers",
    "mamba": "backbone.layers",
    "gpt2": "transformer.h",
    "neox": "gpt_neox.layers",
    "qwen2": "model.layers",
}
CORE = ("gptj", "llama", "mamba")
D = 32
N_LAYERS = 3


def tiny_config(kind: str, vocab: int):
    common = dict(vocab_size=vocab)
    return {
        "gptj": lambda: transformers.GPTJConfig(n_embd=D, n_layer=N_LAYERS, n_head=4, rotary_dim=4, n_positions=256, **common),
        "llama": lambda: transformers.LlamaConfig(
            hidden_size=D, intermediate_size=64, num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2, **common
        ),
        "mamba": lambda: transformers.MambaConfig(hidden_size=D, state_size=4, num_hidden_layers=N_LAYERS, expand=2, conv_kernel=4, **common),
        "gpt2": lambda: transformers.GPT2Config(n_embd=D, n_layer=N_LAYERS, n_head=4, n_positions=256, **common),
        "neox": lambda: transformers.GPTNeoXConfig(
            hidden_size=D, intermediate_size=64, num_hidden_layers=N_LAYERS, num_attention_heads=4, **common
        ),
        "qwen2": lambda: transformers.Qwen2Config(
            hidden_size=D, intermediate_size=64, num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2, **common
        ),
    }[kind]()


@pytest.fixture(scope="session")
def default_dir():
    return ensure_default_model()


@pytest.fixture(scope="session")
def tokenizer(default_dir):
    return transformers.AutoTokenizer.from_pretrained(default_dir)


def build_tiny(kind: str, tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(kind, len(tokenizer)))
    # Random init gives near-uniform logits; a larger scale makes argmax/rollout tests meaningful.
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 1.0)
    return model.eval()


@pytest.fixture
def tiny(tokenizer):
    """Factory: ``tiny(kind)`` -> (LensModel, the raw HF model)."""

    def make(kind: str, remote=False):
        model = build_tiny(kind, tokenizer)
        lm = fl.load_model(model, tokenizer=tokenizer)
        if remote:
            lm.remote = remote
        return lm, model

    return make


@pytest.fixture(scope="session")
def default_lm():
    return fl.load_model()


def synthetic_prefixes(out, tokenizer, model_name, n=20, n_max=2, seed=0):
    """A prefix table with random ids: the cache's correctness does not depend on where targets came from."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (n,), generator=g).tolist()
    columns = {
        "doc_id": [f"doc{i % 5}" for i in range(n)],
        "offset": [0] * n,
        "prefix_ids": [torch.randint(5, 1000, (k,), generator=g).tolist() for k in lengths],
        "next_ids": [torch.randint(5, 1000, (n_max + 1,), generator=g).tolist() for _ in range(n)],
        "target_ids": [torch.randint(5, 1000, (n_max + 1,), generator=g).tolist() for _ in range(n)],
        "split": ["test" if i % 4 == 0 else "train" for i in range(n)],
    }
    meta = {"model": model_name, "tokenizer_hash": tokenizer_hash(tokenizer), "config": {"n_max": n_max}, "n_kept": n}
    return save_prefixes(columns, meta, out), columns


@pytest.fixture
def tiny_cache(tiny, tokenizer, tmp_path):
    """Factory: ``tiny_cache(kind, n=...)`` -> (lm, hf model, StateCache) over synthetic prefixes."""
    from futurelens.data.states import CacheConfig, StateCache, build_cache

    def make(kind: str = "llama", n: int = 40, n_max: int = 2, **cfg):
        lm, model = tiny(kind)
        data, _ = synthetic_prefixes(tmp_path / f"data-{kind}", tokenizer, lm.name, n=n, n_max=n_max)
        out = build_cache(lm, CacheConfig(data=str(data), out=str(tmp_path / f"cache-{kind}"), **cfg), progress=False)
        return lm, model, StateCache(out)

    return make


@pytest.fixture
def restore_log_filters():
    """Undo install_redaction (load_model(remote=True) calls it): its filters outlive a test on the shared root handlers."""
    targets = [logging.getLogger(n) for n in secrets._LOGGERS]
    targets += [h for t in list(targets) for h in t.handlers]
    saved = {id(t): list(t.filters) for t in targets}
    yield
    for t in targets:
        t.filters[:] = saved[id(t)]
