"""Tiny random models of every decoder-only causal LM the conformance suite covers, built from transformers configs.

Each entry is written out by hand, independently of futurelens: the model type, the path of its
block list, the residual width and a tiny config (2-4 blocks, width 32-64, a 512-token vocabulary).
Head transforms are set to values that bite (a soft cap of 2 on logits of size ~5, a logit scale of
0.5 ...), multipliers to values other than 1, so a missed one shows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import transformers

warnings.filterwarnings("ignore", message=".*mamba_ssm.*|.*causal_conv1d.*|.*fast path.*")

VOCAB = 512
"""Token ids are drawn from [3, VOCAB): the embedded tokenizer's pad id (2) is below it."""

_ATTN = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128)


@dataclass(frozen=True)
class Tiny:
    model_type: str
    blocks: str
    config: dict
    d_model: int = 32
    embed_dim: int | None = None
    """Width of the embedding output where it differs from d_model (OPT-350m's layout)."""
    hs0: bool = True
    """Whether the model's ``output_hidden_states[0]`` is block 0's input (False where the model records
    block 0's output there, as Mamba's own loop does)."""
    note: str = ""
    extra: dict = field(default_factory=dict)


ZOO: dict[str, Tiny] = {
    "gpt2": Tiny("gpt2", "transformer.h", dict(n_embd=32, n_layer=2, n_head=4, n_positions=128)),
    "gpt_neo": Tiny("gpt_neo", "transformer.h", dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                                                     attention_types=[[["global", "local"], 1]], window_size=4,
                                                     max_position_embeddings=128)),
    "gpt_neox": Tiny("gpt_neox", "gpt_neox.layers", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                         num_attention_heads=4, max_position_embeddings=128)),
    "gptj": Tiny("gptj", "transformer.h", dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=128)),
    "opt": Tiny("opt", "model.decoder.layers", dict(hidden_size=32, word_embed_proj_dim=32, ffn_dim=64, num_hidden_layers=2,
                                                    num_attention_heads=4, max_position_embeddings=128)),
    # facebook/opt-350m: 32-wide embeddings projected in to a 64-wide residual stream and out again, post-LN blocks, no final norm.
    "opt_350m": Tiny("opt", "model.decoder.layers", dict(hidden_size=64, word_embed_proj_dim=32, ffn_dim=128, num_hidden_layers=2,
                                                         num_attention_heads=4, do_layer_norm_before=False,
                                                         max_position_embeddings=128), d_model=64, embed_dim=32),
    "bloom": Tiny("bloom", "transformer.h", dict(hidden_size=32, n_layer=2, n_head=4)),
    "falcon": Tiny("falcon", "transformer.h", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4)),
    "phi": Tiny("phi", "model.layers", dict(_ATTN, num_key_value_heads=4, partial_rotary_factor=0.5)),
    "phi3": Tiny("phi3", "model.layers", dict(_ATTN, pad_token_id=0)),
    "gemma": Tiny("gemma", "model.layers", dict(_ATTN, head_dim=8)),
    "gemma2": Tiny("gemma2", "model.layers", dict(_ATTN, head_dim=8, final_logit_softcapping=2.0, sliding_window=4,
                                                 query_pre_attn_scalar=8)),
    "gemma3": Tiny("gemma3_text", "model.layers", dict(_ATTN, head_dim=8, sliding_window=4, final_logit_softcapping=3.0,
                                                      layer_types=["sliding_attention", "full_attention"])),
    "qwen2": Tiny("qwen2", "model.layers", dict(_ATTN)),
    "qwen3": Tiny("qwen3", "model.layers", dict(_ATTN, head_dim=8)),
    "qwen3_moe": Tiny("qwen3_moe", "model.layers", dict(_ATTN, head_dim=8, num_experts=4, num_experts_per_tok=2,
                                                       moe_intermediate_size=32, decoder_sparse_step=1)),
    "mixtral": Tiny("mixtral", "model.layers", dict(_ATTN, num_local_experts=4, num_experts_per_tok=2)),
    "mistral": Tiny("mistral", "model.layers", dict(_ATTN, sliding_window=4)),
    "stablelm": Tiny("stablelm", "model.layers", dict(_ATTN)),
    "olmo": Tiny("olmo", "model.layers", dict(_ATTN)),
    "olmo2": Tiny("olmo2", "model.layers", dict(_ATTN)),
    "codegen": Tiny("codegen", "transformer.h", dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=128)),
    "llama": Tiny("llama", "model.layers", dict(_ATTN)),
    "mamba": Tiny("mamba", "backbone.layers", dict(hidden_size=32, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=4),
                  hs0=False),
    "mamba2": Tiny("mamba2", "backbone.layers", dict(hidden_size=32, num_heads=8, head_dim=8, state_size=4, n_groups=1,
                                                     expand=2, num_hidden_layers=2, chunk_size=8), hs0=False),
    "falcon_mamba": Tiny("falcon_mamba", "backbone.layers", dict(hidden_size=32, state_size=4, num_hidden_layers=2, expand=2,
                                                                 conv_kernel=4), hs0=False),
    "jamba": Tiny("jamba", "model.layers", dict(_ATTN, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                                               expert_layer_offset=1, num_experts=2, mamba_d_state=4, mamba_dt_rank=4)),
    "zamba": Tiny("zamba", "model.layers", dict(_ATTN, num_hidden_layers=3, num_key_value_heads=4,
                                               layers_block_type=["mamba", "hybrid", "hybrid"],
                                               mamba_d_state=4, mamba_dt_rank=4, n_mamba_heads=2)),
    "zamba2": Tiny("zamba2", "model.layers", dict(_ATTN, num_key_value_heads=4, layers_block_type=["mamba", "hybrid"],
                                                 mamba_d_state=4, n_mamba_heads=2, mamba_headdim=32, chunk_size=8,
                                                 adapter_rank=4)),
    "bamba": Tiny("bamba", "model.layers", dict(_ATTN, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16,
                                               mamba_d_state=4, mamba_chunk_size=8)),
    "cohere": Tiny("cohere", "model.layers", dict(_ATTN, logit_scale=0.5)),
    "granite": Tiny("granite", "model.layers", dict(_ATTN, logits_scaling=4.0, embedding_multiplier=3.0,
                                                   residual_multiplier=0.5, attention_multiplier=0.2)),
    "falcon_h1": Tiny("falcon_h1", "model.layers", dict(_ATTN, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8,
                                                       mamba_d_state=4, mamba_chunk_size=8, lm_head_multiplier=0.5,
                                                       embedding_multiplier=2.0)),
    "recurrent_gemma": Tiny("recurrent_gemma", "model.layers", dict(hidden_size=32, lru_width=32, intermediate_size=64,
                                                                    num_hidden_layers=2, num_attention_heads=4,
                                                                    num_key_value_heads=1, attention_window_size=4,
                                                                    block_types=["recurrent", "attention"],
                                                                    logits_soft_cap=2.0)),
}


def tiny_config(name: str):
    spec = ZOO[name]
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # inside the tiny vocabulary
    return transformers.AutoConfig.for_model(spec.model_type, vocab_size=VOCAB, **{**ids, **spec.config})


def build(name: str, dtype=torch.float32, seed: int = 0):
    """The tiny model ``name``, in eval mode, with embedding and unembedding weights large enough for peaked logits."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_config(tiny_config(name))
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 1.0)
        out = model.get_output_embeddings()
        if out.weight is not model.get_input_embeddings().weight:
            out.weight.normal_(0, 1.0 / out.weight.shape[1] ** 0.5 * 4)
    return model.to(dtype).eval()
