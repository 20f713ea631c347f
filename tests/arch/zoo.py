"""Tiny random models of every decoder-only causal LM the conformance suite covers, built from transformers configs.

Each entry is written out by hand, independently of futurelens: the model type, the path of its
block list, the residual width and a tiny config (2-4 blocks, width 32-64, a 512-token vocabulary).
Head transforms are set to values that bite (a soft cap of 2 on logits of size ~5, a logit scale of
0.5 ...), multipliers to values other than 1, so a missed one shows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import transformers

warnings.filterwarnings("ignore", message=".*mamba_ssm.*|.*causal_conv1d.*|.*fast path.*")

VOCAB = 512
"""Token ids are drawn from [3, VOCAB): the embedded tokenizer's pad id (2) is below it."""

_ATTN = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128)


def _a(**kw):
    return dict(_ATTN, **kw)


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
    refused: str | None = None
    """For an architecture futurelens refuses: a regex of the refusal load_model must raise."""
    note: str = ""


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
    # ---- more architectures transformers 5.22 builds as a causal LM
    "starcoder2": Tiny("starcoder2", "model.layers", _a(sliding_window=4)),
    "gpt_bigcode": Tiny("gpt_bigcode", "transformer.h", dict(n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=128)),
    "mpt": Tiny("mpt", "transformer.blocks", dict(d_model=32, n_layers=2, n_heads=4, max_seq_len=128)),
    "persimmon": Tiny("persimmon", "model.layers", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                      intermediate_size=64, max_position_embeddings=128)),
    "nemotron": Tiny("nemotron", "model.layers", _a(head_dim=8)),
    "nemotron_h": Tiny("nemotron_h", "model.layers", _a(head_dim=8, moe_intermediate_size=32, n_routed_experts=4,
                                                       num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1,
                                                       num_nextn_predict_layers=0), hs0=True),
    "olmoe": Tiny("olmoe", "model.layers", _a(num_experts=4, num_experts_per_tok=2)),
    "olmo3": Tiny("olmo3", "model.layers", _a(sliding_window=4)),
    "olmo_hybrid": Tiny("olmo_hybrid", "model.layers", _a()),
    "flex_olmo": Tiny("flex_olmo", "model.layers", _a(num_experts=4, num_experts_per_tok=2)),
    "phimoe": Tiny("phimoe", "model.layers", _a(num_local_experts=4, num_experts_per_tok=2, sliding_window=4)),
    "qwen2_moe": Tiny("qwen2_moe", "model.layers", _a(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                                     shared_expert_intermediate_size=32)),
    "glm": Tiny("glm", "model.layers", _a(head_dim=8)),
    "glm4": Tiny("glm4", "model.layers", _a(head_dim=8)),
    "glm4_moe": Tiny("glm4_moe", "model.layers", _a(moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2,
                                                   first_k_dense_replace=1, n_shared_experts=1, n_group=1, topk_group=1,
                                                   num_nextn_predict_layers=0)),
    "helium": Tiny("helium", "model.layers", _a(head_dim=8)),
    "granitemoe": Tiny("granitemoe", "model.layers", _a(num_local_experts=4, num_experts_per_tok=2, logits_scaling=4.0,
                                                       embedding_multiplier=3.0, residual_multiplier=0.5)),
    "granitemoeshared": Tiny("granitemoeshared", "model.layers", _a(num_local_experts=4, num_experts_per_tok=2,
                                                                   logits_scaling=4.0, embedding_multiplier=3.0)),
    "granite_swa": Tiny("granite_swa", "model.layers", _a(sliding_window=4, logits_scaling=4.0, embedding_multiplier=3.0)),
    "granitemoe_swa": Tiny("granitemoe_swa", "model.layers", _a(num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
                                                               logits_scaling=4.0, embedding_multiplier=3.0)),
    "cohere2": Tiny("cohere2", "model.layers", _a(head_dim=8, sliding_window=4, logit_scale=0.5)),
    "cohere2_moe": Tiny("cohere2_moe", "model.layers", _a(head_dim=8, num_experts=4, num_experts_per_tok=2, sliding_window=4,
                                                         logit_scale=0.5)),
    "exaone4": Tiny("exaone4", "model.layers", _a(sliding_window=4)),
    "exaone_moe": Tiny("exaone_moe", "model.layers", _a(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                                       first_k_dense_replace=1, n_group=1, topk_group=1)),
    "smollm3": Tiny("smollm3", "model.layers", _a(sliding_window=4)),
    "ministral": Tiny("ministral", "model.layers", _a(head_dim=8, sliding_window=4)),
    "ministral3": Tiny("ministral3", "model.layers", _a(head_dim=8, sliding_window=4)),
    "apertus": Tiny("apertus", "model.layers", _a()),
    "arcee": Tiny("arcee", "model.layers", _a(head_dim=8)),
    "vaultgemma": Tiny("vaultgemma", "model.layers", _a(head_dim=8, sliding_window=4, final_logit_softcapping=2.0)),
    "nanochat": Tiny("nanochat", "model.layers", _a(final_logit_softcapping=2.0)),
    "hyperclovax": Tiny("hyperclovax", "model.layers", _a(head_dim=8, logits_scaling=2.0)),
    "minicpm3": Tiny("minicpm3", "model.layers", _a(head_dim=8, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4,
                                                   qk_nope_head_dim=4, v_head_dim=8, dim_model_base=16)),
    "lfm2": Tiny("lfm2", "model.layers", _a()),
    "seed_oss": Tiny("seed_oss", "model.layers", _a(head_dim=8)),
    "hunyuan_v1_dense": Tiny("hunyuan_v1_dense", "model.layers", _a(head_dim=8)),
    "hunyuan_v1_moe": Tiny("hunyuan_v1_moe", "model.layers", _a(head_dim=8, num_experts=4)),
    "hy_v3": Tiny("hy_v3", "model.layers", _a(head_dim=8, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)),
    "jetmoe": Tiny("jetmoe", "model.layers", _a(num_local_experts=4, num_experts_per_tok=2)),
    "biogpt": Tiny("biogpt", "biogpt.layers", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                   intermediate_size=64, max_position_embeddings=128)),
    "bitnet": Tiny("bitnet", "model.layers", _a()),
    "cwm": Tiny("cwm", "model.layers", _a(head_dim=8, sliding_window=4)),
    "doge": Tiny("doge", "model.layers", _a(num_experts=4, num_experts_per_tok=2, sliding_window=4)),
    "diffllama": Tiny("diffllama", "model.layers", _a(head_dim=8)),
    "gpt_neox_japanese": Tiny("gpt_neox_japanese", "gpt_neox_japanese.layers", dict(hidden_size=32, num_hidden_layers=2,
                                                                                    num_attention_heads=4,
                                                                                    max_position_embeddings=128)),
    "gpt_oss": Tiny("gpt_oss", "model.layers", _a(head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=4)),
    "deepseek_v2": Tiny("deepseek_v2", "model.layers", _a(num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=4,
                                                         num_experts_per_tok=2, first_k_dense_replace=1, n_shared_experts=1,
                                                         kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4,
                                                         qk_nope_head_dim=4, v_head_dim=8, n_group=1, topk_group=1)),
    "deepseek_v3": Tiny("deepseek_v3", "model.layers", _a(num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=4,
                                                         num_experts_per_tok=2, first_k_dense_replace=1, n_shared_experts=1,
                                                         kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4,
                                                         qk_nope_head_dim=4, v_head_dim=8, n_group=1, topk_group=1)),
    "xglm": Tiny("xglm", "model.layers", dict(d_model=32, num_layers=2, attention_heads=4, ffn_dim=64,
                                              max_position_embeddings=128)),
    "minimax": Tiny("minimax", "model.layers", _a(head_dim=8, num_local_experts=4, num_experts_per_tok=2)),
    "minimax_m2": Tiny("minimax_m2", "model.layers", _a(head_dim=8, num_local_experts=4, num_experts_per_tok=2)),
    "ernie4_5": Tiny("ernie4_5", "model.layers", _a(head_dim=8)),
    "ernie4_5_moe": Tiny("ernie4_5_moe", "model.layers", _a(moe_intermediate_size=32)),
    "dots1": Tiny("dots1", "model.layers", _a(moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2,
                                             first_k_dense_replace=1, n_shared_experts=1, n_group=1, topk_group=1)),
    "llama4": Tiny("llama4_text", "model.layers", _a(head_dim=8, num_local_experts=4, num_experts_per_tok=2)),
    "afmoe": Tiny("afmoe", "model.layers", _a(head_dim=8, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)),
    "solar_open": Tiny("solar_open", "model.layers", _a(head_dim=8, moe_intermediate_size=32, n_routed_experts=4,
                                                       num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1)),
    "laguna": Tiny("laguna", "model.layers", _a(head_dim=8, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                               shared_expert_intermediate_size=32)),
    "kolibri1": Tiny("kolibri1", "model.layers", _a(head_dim=8, moe_intermediate_size=32, num_local_experts=4,
                                                   num_experts_per_tok=2, shared_expert_intermediate_size=32)),
    "jais2": Tiny("jais2", "model.layers", _a(head_dim=8)),
    "mellum": Tiny("mellum", "model.layers", _a(head_dim=8, moe_intermediate_size=32, num_local_experts=4,
                                               num_experts_per_tok=2, num_nextn_predict_layers=0)),
    "mimo_v2_flash": Tiny("mimo_v2_flash", "model.layers", _a(head_dim=8, moe_intermediate_size=32, n_routed_experts=4,
                                                             num_experts_per_tok=2, v_head_dim=8, n_group=1, topk_group=1)),
    "longcat_flash": Tiny("longcat_flash", "model.layers", dict(hidden_size=32, num_layers=2, num_attention_heads=4,
                                                               num_key_value_heads=4, ffn_hidden_size=64,
                                                               expert_ffn_hidden_size=32, n_routed_experts=4, moe_topk=2,
                                                               zero_expert_num=2, kv_lora_rank=16, q_lora_rank=16,
                                                               qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
                                                               head_dim=4, max_position_embeddings=128),
                          note="config.num_hidden_layers counts sub-layers (2 per block)"),
    "qwen3_next": Tiny("qwen3_next", "model.layers", _a(head_dim=8, linear_key_head_dim=8, linear_value_head_dim=8,
                                                       linear_num_key_heads=2, linear_num_value_heads=4,
                                                       moe_intermediate_size=32, shared_expert_intermediate_size=32,
                                                       num_experts=4, num_experts_per_tok=2,
                                                       layer_types=["linear_attention", "full_attention"])),
    "qwen3_5": Tiny("qwen3_5_text", "model.layers", _a(head_dim=8, linear_key_head_dim=8, linear_value_head_dim=8,
                                                      linear_num_key_heads=2, linear_num_value_heads=4,
                                                      layer_types=["linear_attention", "full_attention"])),
    "kimi_linear": Tiny("kimi_linear", "model.layers", _a(num_key_value_heads=4, moe_intermediate_size=32, kv_lora_rank=16,
                                                         qk_rope_head_dim=4, v_head_dim=8, qk_nope_head_dim=4,
                                                         num_experts_per_tok=2, num_local_experts=4, linear_head_dim=8,
                                                         linear_num_heads=4,
                                                         layer_types=["linear_attention", "full_attention"])),
    "bailing_hybrid": Tiny("bailing_hybrid", "model.layers", _a(num_key_value_heads=4, moe_intermediate_size=32,
                                                               kv_lora_rank=16, qk_rope_head_dim=4, v_head_dim=8,
                                                               qk_nope_head_dim=4, n_group=1, topk_group=1,
                                                               num_experts_per_tok=2, num_local_experts=4,
                                                               first_k_dense_replace=1, head_dim=8, layer_group_size=2,
                                                               num_mtp_layers=0)),
    "granitemoehybrid": Tiny("granitemoehybrid", "model.layers", _a(num_local_experts=4, num_experts_per_tok=2,
                                                                   shared_intermediate_size=32,
                                                                   layer_types=["mamba", "attention"], mamba_n_heads=4,
                                                                   mamba_d_state=4, mamba_d_head=16, mamba_chunk_size=8,
                                                                   logits_scaling=4.0, embedding_multiplier=3.0)),
    "lfm2_moe": Tiny("lfm2_moe", "model.layers", _a(moe_intermediate_size=32, num_dense_layers=1, num_experts=4,
                                                   num_experts_per_tok=2, layer_types=["conv", "full_attention"])),
    "xlstm": Tiny("xlstm", "backbone.blocks", dict(hidden_size=64, embedding_dim=64, num_hidden_layers=2, num_blocks=2,
                                                   num_heads=4, qk_dim_factor=1.0, output_logit_soft_cap=2.0),
                  d_model=64),
    # ModernBERT-decoder: a prediction head (dense, act, norm) at lm_head before the unembedding at decoder.
    "modernbert_decoder": Tiny("modernbert-decoder", "model.layers", dict(hidden_size=32, intermediate_size=64,
                                                                          num_hidden_layers=2, num_attention_heads=4,
                                                                          local_attention=4, max_position_embeddings=128,
                                                                          cls_token_id=1, sep_token_id=2)),
    # GPT-1: post-LN blocks returning a list, no final norm (found by checking the head against the model's logits).
    "openai_gpt": Tiny("openai-gpt", "transformer.h", dict(n_embd=32, n_layer=2, n_head=4, n_positions=128)),
    "ctrl": Tiny("ctrl", "transformer.h", dict(n_embd=32, n_layer=2, n_head=4, dff=64, n_positions=128)),
    "flint": Tiny("flint", "model.layers", _a()),
    # Inkling divides the last hidden state by logits_mup_width_multiplier (24 by default) before lm_head.
    "inkling": Tiny("inkling_text", "model.layers", _a(head_dim=8, logits_mup_width_multiplier=2.0)),
    # ---- refused at load, with the reason
    "cpmant": Tiny("cpmant", "cpmant.encoder.layers", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                           dim_head=8, dim_ff=64, prompt_length=4),
                   refused=r"block 0 receives \d+ positions for 2 tokens"),
    "hy_v4": Tiny("hy_v4", "model.layers", _a(head_dim=8), refused=r"several residual streams at once"),
    "rwkv": Tiny("rwkv", "rwkv.blocks", dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                                             attention_hidden_size=32), refused=r"RWKV `generate` continues a batch"),
    "hrm_text": Tiny("hrm_text", "model.L_module.layers", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4),
                     refused=r"blocks run more than once in one forward"),
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
