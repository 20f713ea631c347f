"""Settings of `futurelens plan` / `fl.plan`: a run's settings, each defaulting to its stage's own default."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.prefixes import DataConfig
from ..data.states import CacheConfig
from ..evaluate import DEFAULT_METHODS, EvalConfig
from ..lens.config import LensConfig
from ..train import TrainConfig

_MAX_REQUEST_MB = 32.0  # the library's and the CLI's default for LensModel.max_request_mb


@dataclass
class PlanConfig:
    """What a Future Lens run would cost, per stage (data, cache, train, eval per method, lens), before it runs."""

    model: str = "smollm2-135m"
    """Hub id (EleutherAI/gpt-j-6b, meta-llama/Llama-3.1-8B, meta-llama/Llama-3.1-70B and state-spaces/mamba-2.8b-hf
    ship with futurelens: offline), a local model folder or config.json, or the embedded default 'smollm2-135m'."""
    remote: bool = False
    """Price the run on NDIF: requests and bytes each way per stage, client RAM without the weights."""
    max_request_mb: float = _MAX_REQUEST_MB
    """With --remote: the bound on one request's tensors each way (--max-request-mb of the stages)."""
    n_prefixes: int = DataConfig.n_prefixes
    """Prefixes kept (train + test), as `futurelens data --n-prefixes`."""
    test_fraction: float = DataConfig.test_fraction
    """Share of the prefixes held out for testing (by document)."""
    min_len: int = DataConfig.min_len
    """Shortest prefix, in tokens."""
    max_len: int = DataConfig.max_len
    """Longest prefix, in tokens (lengths uniform in between)."""
    n_max: int = DataConfig.n_max
    """Furthest future token scored (N = 0..n_max)."""
    filter_correct: bool = DataConfig.filter_correct
    """Keep only prefixes whose next token the model predicts (candidates labelled = n-prefixes / keep-rate)."""
    keep_rate: float = 0.4
    """Expected share of candidates passing the correctness filter (0.39 measured on the embedded default)."""
    data: str = ""
    """An existing prefix table (futurelens data's output): count the cache's, training's and (without the filter)
    labelling's requests from its rows instead of from the length distribution."""
    layers: list[int] = field(default_factory=list)
    """Layers cached (0 = embeddings, n = last block); empty = all, as `futurelens cache`."""
    cache_dtype: str = CacheConfig.dtype
    """dtype of the cached states."""
    dtype: str = ""
    """dtype of the weights where the model runs; empty = float32 on this CPU, bfloat16 on a GPU."""
    prompt_layers: list[int] = field(default_factory=list)
    """Layers a soft prompt is trained at; empty = every cached layer, as `futurelens train`."""
    epochs: int = TrainConfig.epochs
    """Soft-prompt training epochs."""
    prompt_len: int = TrainConfig.prompt_len
    """Soft-prompt length."""
    train_batch_size: int = TrainConfig.batch_size
    """Soft-prompt training batch size."""
    loss: str = TrainConfig.loss
    """Soft-prompt loss, 'kl' (ships the cached final states) or 'ce'."""
    states: str = TrainConfig.states
    """With --remote: how training batches get their source states, 'ship', 'recompute' (only prefix ids travel; the
    server recomputes them) or 'auto' (as `futurelens train --states auto` picks); the table shows the other way too."""
    eval_layers: list[int] = field(default_factory=list)
    """Layers evaluated; empty = every cached layer, as `futurelens eval`."""
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    """Methods evaluated: ngram, vocab, linear, mlp, fixed, learned."""
    vocab_epochs: int = EvalConfig.vocab_epochs
    """Training epochs of the direct vocabulary probe."""
    vocab_memory_mb: float = EvalConfig.vocab_memory_mb
    """The vocabulary probe's memory budget (futurelens eval --vocab-memory-mb)."""
    mlp_epochs: int = EvalConfig.mlp_epochs
    """Training epochs of the MLP probe."""
    data_batch_size: int = DataConfig.batch_size
    """Labelling batch size (rows per greedy call)."""
    data_shard_size: int = DataConfig.shard_size
    """Candidates labelled per resumable shard."""
    cache_batch_size: int = CacheConfig.batch_size
    """Rows per forward pass while caching."""
    cache_shard_size: int = CacheConfig.shard_size
    """Rows per cache shard file."""
    eval_batch_size: int = EvalConfig.batch_size
    """Test rows per scoring batch."""
    k: int = EvalConfig.k
    """Largest k of precision@k (scoring returns k ids per row and N)."""
    lens_text: str = LensConfig.text
    """The lens page's text: its tokens are counted with the model's tokenizer when it is on this machine (a folder,
    the embedded default, a hub id already downloaded)."""
    lens_tokens: int = 0
    """Tokens of the lens page's text (its columns); 0 = --lens-text counted, or 8 where no tokenizer is at hand."""
    lens_prompts: str = "learned"
    """What the lens patches into: 'learned' (a soft prompt per grid row, e.g. `futurelens lens --prompts`) or
    'fixed' (the fixed text prompt, `futurelens lens --fixed`)."""
    lens_top_k: int = LensConfig.top_k
    """Logit-lens tokens kept per cell."""
    rollout: int = LensConfig.rollout
    """Tokens each lens cell rolls out."""
    fixed_prompt: str = EvalConfig.fixed_prompt
    """The fixed prompt (of `futurelens eval` and the lens): its tokens are counted like --lens-text's."""
    calibrate: bool = True
    """Time the model's own forward on this machine when its weights are here and it is small (< 2B parameters):
    this machine's column then comes from measured throughput, else from its measured matmul rate."""
    markdown: bool = False
    """Print the table as Markdown (for a README) instead of a terminal table."""
