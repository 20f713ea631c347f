"""GPU truth: futurelens at full model size on one GPU, in one prepared run of at most 8 minutes.

Every other figure in this folder comes from a 2-core CPU. On a GPU the ratios that matter differ (a
per-cell lens loop is bound by kernel launches; the cache and the training step should be bound by
matrix throughput), and bf16 has only run on a CPU. A GPU machine is lent only sometimes, for minutes,
with nothing reachable from it, so this is one self-contained command:

    bash benchmarks/gpu.sh                      # on the GPU machine: wheels, this script, files to $OUT

From a futurelens session that has the `device` tool (run `make gpu-bundle` here first, once):

    run(command="bash benchmarks/gpu.sh", carry=[".gpu-wheels"], timeout_s=600)

then copy the returned files into ``benchmarks/results/gpu/`` and refresh the suite's report with
``.venv/bin/python benchmarks/run.py --only gpu`` (that entry reads ``results/gpu/report.json``).

**Models.** Built from configs with random weights, in bf16 directly on the GPU (``with
torch.device("cuda")``; no checkpoint, no hub): GPT-J-6B (28 blocks, d 4096, vocabulary 50,400),
Llama-3.1-8B (32 blocks, d 4096, GQA 32/8, vocabulary 128,256) and a Llama-3.1-70B slice (d 8192, GQA
64/8, MLP 28,672, the full 128,256 vocabulary, as many of its 80 blocks as fit twice on the GPU beside
the rest). Each gets a second, plain copy of the same weights that nnsight never wraps, for the
Hugging Face baselines. RoPE scaling is left out of the Llama configs: it changes no shape or FLOP.
The tokenizer is a word-level one built in memory with the model's vocabulary size (``w<id>`` words),
so random-token text round-trips exactly through every path that tokenises.

**Stages** (each with its own time cap, under one deadline for the whole run; a stage that would not
fit is skipped and says so; peak GPU memory is recorded per stage):

- ``cache``: `futurelens.cache_ahead` over all layers (what `futurelens cache` runs per batch) vs a
  plain HF forward ``model(input_ids, attention_mask)`` and the headless body, on right-padded,
  length-sorted random prefixes + 3 continuation tokens (`cache_speed._sides`), interleaved with a
  bf16 8192^3 matmul: each side's FLOPs (`flops.count_flops`) over its time, as a fraction of the
  matmul's rate in the same round.
- ``train``: one soft-prompt step (loss, backward, AdamW; batch 8, prompt 10, the middle layer, N = 1,
  KL) through `futurelens.train.prompt_loss` vs a hand-written step on the plain copy (forward hooks on
  the embedding and the block, found where `futurelens.arch` says they are); the two losses and the
  prompt's gradients from the same start are compared first.
- ``lens``: `futurelens.lens_grid` vs one HF ``generate`` per (layer, token) cell with a hook writing
  the state, as the authors' demo does (a 10-token text x every layer, rollout 4, a random soft prompt
  per layer); both phrases are compared cell by cell.
- ``eval``: all five methods at every layer, states cached once (one ``cache_ahead``) vs recomputed
  before each method at each layer (a plain HF forward with ``output_hidden_states=True``), as in
  `eval_speed`; the methods are fitted on a real `StateCache` first (one fit reused at every layer:
  the predict cost does not depend on the weights); the states and top-1 predictions of both sides
  are compared.
- ``pipeline`` (GPT-J): the paper's pipeline end to end through the library's own entry points
  (`build_prefixes`, `build_cache`, `train`, `evaluate`, what the CLI calls) on random-token
  documents, at 250 and 1,000 training prefixes (+1% test) of the paper's prefix lengths (1..1,000
  tokens, uniform; `FUTURE_LENS.md`), correctness filter off (a random model is never right); each
  stage timed, then extrapolated by least squares to the paper's run: 250k candidates labelled, 101k
  prefixes cached, a prompt trained at each of the 29 layers for one epoch over 100k, and all five
  methods evaluated at 29 layers.

**Goals** (pass/fail in the report): cache >= 0.95x a plain HF forward and >= 40% of the measured
bf16 matmul peak on GPT-J-6B; lens >= 100x one ``generate`` per cell; training step <= 1.0x the
hand-written hooks; the paper's GPT-J run extrapolated <= 1 h on one H100-class GPU (the H200 has the
H100's arithmetic). A goal that could not be measured is reported as such, never as passed.

**Smoke.** ``python -m benchmarks.gpu --smoke --out DIR`` runs the same stages through the same code
on tiny configs on the CPU in fp32 (well under a minute); `tests/test_gpu_script.py` runs it in CI
and checks the report, the phrase, gradient and prediction agreement, and that every distribution
the run imports is on the GPU image or in the carried bundle (`BUNDLE`).

**Bundle.** The GPU image has torch 2.11 and transformers 5.17 but not nnsight, datasets or wandb;
`BUNDLE` lists what travels as wheels (`make gpu-bundle` downloads them into the ignored
``.gpu-wheels/``, about 10 MB; `gpu.sh` installs them with ``pip --no-index --no-deps``). wandb is
not needed: no stage logs to it. The report records every imported distribution's version and which
came from the bundle.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/gpu.py` puts benchmarks/ on the path, not the repo root
    sys.path.insert(0, str(ROOT))

NAME = "gpu"
RESULTS = ROOT / "benchmarks" / "results" / NAME
WHEELS = ".gpu-wheels"
"""The ignored folder `make gpu-bundle` fills and the `run` call carries."""
RUN_CALL = 'run(command="bash benchmarks/gpu.sh", carry=[".gpu-wheels"], timeout_s=600)'

BUNDLE = {
    # nnsight and what it needs that the GPU image lacks
    "nnsight": "0.8.1",
    "greenlet": "3.5.6",
    "pydantic": "2.14.4",
    "pydantic-core": "2.50.5",
    "annotated-types": "0.8.0",
    "typing-inspection": "0.4.5",
    "typing-extensions": "4.16.0",  # pydantic 2.14 needs >= 4.16; the image's may be older
    "websocket-client": "1.9.2",
    "zstandard": "0.25.0",
    # the dataset table (`futurelens data`, `cache`, `eval` read it) and what it needs that the image lacks
    "datasets": "5.0.1",  # the newest that accepts pyarrow >= 21 and huggingface_hub 1.x
    "dill": "0.4.1",
    "multiprocess": "0.70.19",
}
"""Wheels carried to the GPU machine (cp312, manylinux x86-64): `make gpu-bundle` reads this dict."""

PREINSTALLED = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio interface-meta iniconfig jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split())
"""Distributions on the GPU machine's image (`/work/.library/device/KINDS.md`, read 2026-11-17)."""

OPTIONAL_IMPORTS = {
    "sniffio": "anyio (on the image) imports it only where it is installed",
}
"""Distributions a run may import here that nothing needs: an import guarded by ``except ImportError``."""

GOALS = {
    "cache_vs_hf_forward": ("cache throughput >= 0.95x a plain HF forward (GPT-J-6B)", 0.95, ">="),
    "cache_fraction_of_peak": ("cache >= 40% of the measured bf16 matmul peak (GPT-J-6B)", 0.40, ">="),
    "lens_speedup": ("batched lens >= 100x one generate per cell (GPT-J-6B)", 100.0, ">="),
    "train_step_ratio": ("training step <= 1.0x the hand-written hook step (GPT-J-6B)", 1.0, "<="),
    "paper_run_hours": ("the paper's GPT-J run extrapolated <= 1 h on one H100-class GPU", 1.0, "<="),
}
"""``{key: (goal, threshold, comparison)}``, all measured on the first model (GPT-J-6B; its tiny twin in smoke)."""

GOAL_MODEL = "gptj-6b"

# --------------------------------------------------------------------------- models and settings


@dataclass(frozen=True)
class ModelSpec:
    """One model of the run: its transformers config and which stages run on it."""

    key: str
    title: str
    kind: str  # "gptj" or "llama"
    config: dict
    stages: tuple[str, ...]
    full_depth: int | None = None
    """The real model's number of blocks where this is a slice (built with as many as fit)."""


GPTJ_6B = dict(n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, n_positions=2048, vocab_size=50400,
               activation_function="gelu_new", tie_word_embeddings=False)
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=8192,
                rms_norm_eps=1e-5, tie_word_embeddings=False)
LLAMA_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=8192,
                 rms_norm_eps=1e-5, tie_word_embeddings=False)

FULL_MODELS = (
    ModelSpec("gptj-6b", "GPT-J-6B", "gptj", GPTJ_6B, ("cache", "train", "lens", "pipeline", "eval")),
    ModelSpec("llama-3.1-8b", "Llama-3.1-8B", "llama", LLAMA_8B, ("cache", "train", "lens")),
    ModelSpec("llama-3.1-70b-slice", "Llama-3.1-70B slice", "llama", LLAMA_70B, ("cache", "train"), full_depth=80),
)
SMOKE_MODELS = (
    ModelSpec("gptj-6b", "GPT-J-6B (tiny twin)", "gptj",
              dict(n_embd=32, n_layer=3, n_head=4, rotary_dim=4, n_positions=256, vocab_size=400,
                   tie_word_embeddings=False), FULL_MODELS[0].stages),
    ModelSpec("llama-3.1-8b", "Llama-3.1-8B (tiny twin)", "llama",
              dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, vocab_size=500, max_position_embeddings=256,
                   tie_word_embeddings=False), FULL_MODELS[1].stages),
    ModelSpec("llama-3.1-70b-slice", "Llama-3.1-70B slice (tiny twin)", "llama",
              dict(hidden_size=48, intermediate_size=96, num_hidden_layers=8, num_attention_heads=6,
                   num_key_value_heads=2, head_dim=8, vocab_size=600, max_position_embeddings=256,
                   tie_word_embeddings=False), FULL_MODELS[2].stages, full_depth=8),
)


@dataclass
class Settings:
    """Every size and cap of a run; `full` (the GPU run) and `smoke` (tiny, CPU) differ only here."""

    smoke: bool = False
    dtype: str = "bfloat16"
    budget_s: float = 420.0
    """Deadline for all stages (the whole command, wheels and imports included, stays under 8 min)."""
    caps_s: dict = field(default_factory=lambda: {"cache": 25, "train": 15, "lens": 50, "pipeline": 180, "eval": 45})
    """Per stage, per model: past its cap a stage takes no more timed rounds (pipeline: no larger size)."""
    matmul_n: int = 8192
    # cache
    cache_prefixes: int = 64
    cache_len: tuple[int, int] = (8, 512)
    cache_batch: int = 32
    cache_rounds: int = 5
    # train
    train_batch: int = 8
    prompt_len: int = 10
    train_warmup: int = 3
    train_rounds: int = 20
    # lens
    lens_tokens: int = 10
    lens_rounds: int = 2
    rollout: int = 4
    top_k: int = 5
    # eval
    eval_train: int = 64
    eval_test: int = 32
    eval_len: tuple[int, int] = (8, 96)
    eval_rounds: int = 1
    # pipeline
    sizes: tuple[int, ...] = (250, 1000)
    warmup_size: int = 32
    """An untimed first pass of the whole pipeline at this size: first-call costs stay out of the slopes."""
    prefix_len: tuple[int, int] = (1, 1000)
    length_dist: str = "uniform"
    n_docs: int = 400
    test_docs: int = 4
    """Documents held out (the split is by document): 4 of 400, the paper's 1% of prefixes."""
    cache_dtype: str = "bfloat16"
    agree: float = 0.90
    """Share of lens cells whose batched phrase must equal the per-cell one (bf16: a near-tie may flip a pick)."""
    grad_rtol: float = 5e-2
    """Relative difference allowed between the two training steps' gradients (bf16 kernels of other shapes)."""
    slice_reserve_gb: float = 24.0
    """GPU memory kept free beside the two copies of the 70B slice (activations, the other stages)."""

    @classmethod
    def full(cls) -> "Settings":
        return cls()

    @classmethod
    def smoke_run(cls) -> "Settings":
        return cls(smoke=True, dtype="float32", budget_s=600.0,
                   caps_s={"cache": 60, "train": 60, "lens": 60, "pipeline": 120, "eval": 60}, matmul_n=256,
                   cache_prefixes=8, cache_len=(4, 24), cache_batch=4, cache_rounds=2,
                   train_batch=4, prompt_len=4, train_warmup=1, train_rounds=2,
                   lens_tokens=4, lens_rounds=1, eval_train=16, eval_test=8, eval_len=(4, 16), eval_rounds=1,
                   sizes=(12, 24), warmup_size=6, prefix_len=(1, 16), n_docs=20, test_docs=2, cache_dtype="float32",
                   agree=1.0, grad_rtol=1e-4, slice_reserve_gb=0.0)


# --------------------------------------------------------------------------- small helpers


def _torch():
    import torch

    return torch


def on_gpu() -> bool:
    return _torch().cuda.is_available()


def reset_peak() -> None:
    torch = _torch()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_mb() -> float | None:
    """The CUDA allocator's peak since the last `reset_peak` (None on a CPU)."""
    torch = _torch()
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def free_memory() -> None:
    gc.collect()
    torch = _torch()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Clock:
    """The run's deadline and each stage's cap."""

    def __init__(self, budget_s: float):
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def capped_interleaved(sides: dict[str, Callable[[], Any]], rounds: int, cap_s: float, clock: Clock,
                       warmup: int = 1) -> dict[str, list[float]]:
    """`common.interleaved`, one round at a time: at least one timed round, then more while the stage's cap and
    the run's deadline leave room for another round as long as the last."""
    from .common import interleaved

    start = time.perf_counter()
    times = interleaved(sides, repeats=1, warmup=warmup)
    for _ in range(rounds - 1):
        last = sum(t[-1] for t in times.values())
        if time.perf_counter() - start + last > cap_s or clock.left() < last:
            break
        for name, t in interleaved(sides, repeats=1, warmup=0).items():
            times[name] += t
    return times


def random_prefixes(n: int, lo: int, hi: int, vocab: int, ahead: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """``n`` seeded ``(prefix, next ahead tokens)`` pairs of random ids in ``[FIRST_WORD, vocab)``, lengths uniform in lo..hi."""
    g = random.Random(seed)
    return [([g.randrange(FIRST_WORD, vocab) for _ in range(g.randint(lo, hi))],
             [g.randrange(FIRST_WORD, vocab) for _ in range(ahead)]) for _ in range(n)]


# --------------------------------------------------------------------------- tokenizer and models

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
FIRST_WORD = len(SPECIALS)


def make_tokenizer(vocab_size: int):
    """A word-level tokenizer of exactly ``vocab_size`` ids, built in memory: ``<pad> <bos> <eos> <unk>``, then
    ``w4 .. w<vocab-1>``, split on whitespace, nothing added around a text; ``" ".join(f"w{i}")`` round-trips."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(FIRST_WORD, vocab_size)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


def words(ids: list[int]) -> str:
    return " ".join(f"w{i}" for i in ids)


def transformers_config(spec: ModelSpec, n_blocks: int | None = None):
    import transformers

    kw = dict(spec.config, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if spec.kind == "gptj":
        if n_blocks is not None:
            kw["n_layer"] = n_blocks
        return transformers.GPTJConfig(**kw)
    if n_blocks is not None:
        kw["num_hidden_layers"] = n_blocks
    return transformers.LlamaConfig(**kw)


def param_bytes(spec: ModelSpec, dtype_bytes: int) -> tuple[int, int]:
    """``(bytes outside the blocks, bytes per block)`` of ``spec``, counted on a meta-device build of 1 block."""
    import transformers

    torch = _torch()
    with torch.device("meta"):
        one = transformers.AutoModelForCausalLM.from_config(transformers_config(spec, 1))
        two = transformers.AutoModelForCausalLM.from_config(transformers_config(spec, 2))
    n1 = sum(p.numel() for p in one.parameters())
    n2 = sum(p.numel() for p in two.parameters())
    return (2 * n1 - n2) * dtype_bytes, (n2 - n1) * dtype_bytes


def slice_blocks(spec: ModelSpec, s: Settings) -> tuple[int, dict]:
    """How many blocks of a slice fit twice (the wrapped model and its plain copy) in the GPU's free memory,
    keeping ``s.slice_reserve_gb`` free; on a CPU (smoke) the config's own depth."""
    torch = _torch()
    if not torch.cuda.is_available():
        n = spec.config.get("num_hidden_layers", spec.config.get("n_layer"))
        return n, {"rule": "smoke: the tiny config's depth"}
    free, total = torch.cuda.mem_get_info()
    outside, per_block = param_bytes(spec, 2)
    budget = (free - s.slice_reserve_gb * 2**30) / 2
    n = max(1, min(spec.full_depth or 10**9, int((budget - outside) // per_block)))
    return n, {"rule": f"two copies of the weights in the free memory less {s.slice_reserve_gb:g} GB",
               "free_gb": round(free / 2**30, 1), "total_gb": round(total / 2**30, 1),
               "outside_blocks_gb": round(outside / 2**30, 2), "per_block_gb": round(per_block / 2**30, 3)}


def build(spec: ModelSpec, s: Settings, n_blocks: int | None = None) -> tuple[Any, Any, Any, dict]:
    """``(LensModel, plain HF copy, tokenizer, facts)``: random weights built on the device in the run's dtype."""
    import transformers

    import futurelens as fl

    from .common import device, sync

    torch = _torch()
    dtype = getattr(torch, s.dtype)
    dev = device()
    cfg = transformers_config(spec, n_blocks)
    tok = make_tokenizer(cfg.vocab_size)
    torch.manual_seed(0)
    sync()
    t0 = time.perf_counter()
    with torch.device(dev):  # parameters are created (and initialised) on the GPU: no host copy of the weights
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model = model.to(dev).requires_grad_(False).eval()
    sync()
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = copy.deepcopy(model)  # before futurelens wraps it: the baselines run on a module nnsight never touched
    sync()
    copied = time.perf_counter() - t0
    t0 = time.perf_counter()
    lm = fl.load_model(model, tokenizer=tok)
    loaded = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    facts = {"class": type(model).__name__, "params": n_params, "params_b": round(n_params / 1e9, 3),
             "blocks": lm.n_layers, "d_model": lm.d_model, "vocab": lm.vocab_size, "dtype": s.dtype,
             "weights_gb": round(n_params * torch.empty(0, dtype=dtype).element_size() / 2**30, 2),
             "build_s": round(built, 2), "plain_copy_s": round(copied, 2), "load_model_s": round(loaded, 2),
             "arch": {k: getattr(lm.arch, k) for k in ("embed", "blocks", "final_norm", "unembed")}}
    return lm, plain, tok, facts


# --------------------------------------------------------------------------- matmul peak


def matmul_peak(s: Settings) -> tuple[Callable[[], Any], int, dict]:
    """``(one matmul, its FLOPs, the peak measured now)``: ``a @ b`` of two random n x n matrices in the run's dtype."""
    from .common import device, stats, timed

    torch = _torch()
    n = s.matmul_n
    g = torch.Generator(device=device()).manual_seed(0)
    a = torch.randn(n, n, device=device(), dtype=getattr(torch, s.dtype), generator=g)
    b = torch.randn(n, n, device=device(), dtype=getattr(torch, s.dtype), generator=g)

    def mm() -> Any:
        return a @ b

    flops = 2 * n**3
    for _ in range(3):
        mm()
    times = [timed(mm) for _ in range(20 if not s.smoke else 5)]
    best = min(times)
    return mm, flops, {"matmul": f"{s.dtype} {n} x {n} @ {n} x {n} (random data)", "tflops_per_s_best": round(flops / best / 1e12, 2),
                       "tflops_per_s_median": round(flops / stats(times)["median_s"] / 1e12, 2), "times": stats(times)}


# --------------------------------------------------------------------------- stage: cache


def stage_cache(lm, plain, s: Settings, clock: Clock, mm, mm_flops: int) -> dict:
    """`cache_ahead` over all layers vs a plain HF forward and the headless body; FLOPs as a fraction of the matmul."""
    from .cache_speed import AHEAD, _sides
    from .common import length_sorted_batches, paired_ratio, stats
    from .flops import count_flops

    samples = random_prefixes(s.cache_prefixes, *s.cache_len, lm.vocab_size, AHEAD, seed=1)
    batches = length_sorted_batches(samples, s.cache_batch, key=lambda pc: len(pc[0]))
    sides = {k: v for k, v in _sides(lm, plain, batches).items() if k != "hf_hidden_states"}
    tokens = sum(len(p) + len(c) for p, c in samples)
    padded = sum(len(b) * max(len(p) + len(c) for p, c in b) for b in batches)
    # Attention FLOPs added analytically only where no counted kernel covered them (the CPU's SDPA): rows x width^2.
    width = math.sqrt(sum(len(b) * max(len(p) + len(c) for p, c in b) ** 2 for b in batches) / len(samples))
    shape = dict(n_layers=lm.n_layers, d_model=lm.d_model, rows=len(samples), length=width)
    flops = {name: count_flops(fn, **shape) for name, fn in sides.items()}
    times = capped_interleaved({**sides, "matmul": mm}, s.cache_rounds, s.caps_s["cache"], clock, warmup=1)
    t_fl = times["futurelens"]
    fraction = {name: paired_ratio(times["matmul"], times[name]) * flops[name]["total"] / mm_flops for name in sides}
    ratio = paired_ratio(times["hf_forward"], t_fl)
    return {
        "prefixes": f"{len(samples)} random prefixes of {s.cache_len[0]}..{s.cache_len[1]} tokens + {AHEAD} continuation "
                    f"tokens, right-padded, length-sorted, batch {s.cache_batch}: {tokens} real tokens, {padded} with padding",
        "rounds": len(t_fl),
        "tokens_per_s": {name: round(tokens / stats(t)["median_s"], 1) for name, t in times.items() if name != "matmul"},
        "ratio_vs_hf_forward": round(ratio, 4),
        "ratio_vs_hf_body": round(paired_ratio(times["hf_body"], t_fl), 4),
        "fraction_of_matmul_peak": {name: round(f, 4) for name, f in fraction.items()},
        "achieved_tflops_per_s": {name: round(flops[name]["total"] / stats(times[name])["median_s"] / 1e12, 2) for name in sides},
        "matmul_tflops_per_s": round(mm_flops / stats(times["matmul"])["median_s"] / 1e12, 2),
        "flops": {name: {"total": f["total"], "attention_added_analytically": f["attention_added_analytically"]}
                  for name, f in flops.items()},
        "times": {name: stats(t) for name, t in times.items()},
        "_goals": {"cache_vs_hf_forward": ratio, "cache_fraction_of_peak": fraction["futurelens"]},
        "_summary": f"cache_ahead {tokens / stats(t_fl)['median_s']:,.0f} tok/s = {ratio:.2f}x plain HF forward, "
                    f"{fraction['futurelens']:.0%} of the matmul peak (HF forward {fraction['hf_forward']:.0%})",
    }


# --------------------------------------------------------------------------- stage: train


def state_batch(lm, pairs: list[tuple[list[int], list[int]]], layer: int):
    """A `StateBatch` as the cache serves it: ``layer``'s states, last-layer states over the continuation, targets."""
    import futurelens as fl
    from futurelens.data.states import StateBatch

    torch = _torch()
    with torch.no_grad():
        states, final = fl.cache_ahead(lm, [p for p, _ in pairs], [c[:-1] for _, c in pairs], [layer])
    return StateBatch(states=states[0].cpu(), target=torch.tensor([c for _, c in pairs]),
                      last_token=torch.tensor([p[-1] for p, _ in pairs]), row=torch.arange(len(pairs)), final=final.cpu())


def hook_loss(lm, plain, layer: int, n: int, prompt_len: int) -> Callable:
    """The hand-written objective on the plain copy: forward hooks write the soft prompt over the embedding
    output and the state over block ``layer - 1``'s output at the prompt's last position; KL at the read position
    against the model's head on the cached last-layer state: `common.hook_kl_loss`, as `train_step` runs it, with the
    modules found where `futurelens.arch` says they are."""
    from .common import hook_kl_loss

    arch = lm.arch
    embed, block = plain.get_submodule(arch.embed), plain.get_submodule(arch.blocks)[layer - 1]
    norm, head = plain.get_submodule(arch.final_norm), plain.get_submodule(arch.unembed)
    return hook_kl_loss(plain, embed, block, norm, head, lm.pad_id, n, prompt_len)


def stage_train(lm, plain, s: Settings, clock: Clock) -> dict:
    """One soft-prompt step through `prompt_loss` vs the hand-written hooks; losses and gradients compared first."""
    from futurelens.train import prompt_loss

    from .common import paired_ratio, stats
    from .train_step import _step

    torch = _torch()
    layer, n = lm.n_layers // 2, 1
    pairs = random_prefixes(s.train_batch, 8, 96, lm.vocab_size, 4, seed=2)
    batch = state_batch(lm, pairs, layer)
    by_hooks = hook_loss(lm, plain, layer, n, s.prompt_len)

    def by_futurelens(prompt, b):
        return prompt_loss(lm, prompt, b, layer, n, "kl")

    g = torch.Generator().manual_seed(0)
    init = (torch.randn(s.prompt_len, lm.embed_dim, generator=g) * 0.02).to(lm.device)
    check = {}
    for name, fn in (("futurelens", by_futurelens), ("hand_written", by_hooks)):
        p = init.clone().requires_grad_(True)
        loss = fn(p, batch)
        loss.backward()
        check[name] = (loss.item(), p.grad.detach().float().cpu())
    loss_a, grad_a = check["futurelens"]
    loss_b, grad_b = check["hand_written"]
    grad_rel = ((grad_a - grad_b).norm() / grad_b.norm().clamp_min(1e-30)).item()
    loss_rel = abs(loss_a - loss_b) / max(abs(loss_b), 1e-12)
    sides = {"futurelens": _step(by_futurelens, init.clone().requires_grad_(True), batch),
             "hand_written": _step(by_hooks, init.clone().requires_grad_(True), batch)}
    times = capped_interleaved(sides, s.train_rounds, s.caps_s["train"], clock, warmup=s.train_warmup)
    ratio = paired_ratio(times["futurelens"], times["hand_written"])
    same = grad_rel <= s.grad_rtol and loss_rel <= s.grad_rtol
    return {
        "setup": f"batch {s.train_batch}, soft prompt {s.prompt_len} x {lm.embed_dim}, layer {layer}, N = {n}, KL, AdamW "
                 f"(TrainConfig's lr and weight decay); {s.train_warmup} warm-up steps each, then interleaved",
        "rounds": len(times["futurelens"]),
        "loss": {"futurelens": loss_a, "hand_written": loss_b, "relative_difference": loss_rel},
        "gradient_relative_difference": grad_rel,
        "gradients_equal": same,
        "tolerance": s.grad_rtol,
        "samples_per_s": {k: round(s.train_batch / stats(t)["median_s"], 2) for k, t in times.items()},
        "step_ms": {k: round(1e3 * stats(t)["median_s"], 2) for k, t in times.items()},
        "ratio": round(ratio, 4),
        "times": {k: stats(t) for k, t in times.items()},
        "_goals": {"train_step_ratio": ratio},
        "_checks": {"train_gradients_equal": same},
        "_summary": f"step {1e3 * stats(times['futurelens'])['median_s']:.1f} ms = {ratio:.2f}x the hand-written hooks; "
                    f"loss and gradient equal to {max(grad_rel, loss_rel):.1e} (relative)",
    }


# --------------------------------------------------------------------------- stage: lens


def hidden_states(lm, plain, ids) -> Any:
    """``[n_layers + 1, T, d]``: the embedding output, then every block's output (before the final norm), by hooks."""
    arch = lm.arch
    seen: list = []
    grab = lambda _m, _i, out: seen.append((out[0] if isinstance(out, tuple) else out)[0])  # noqa: E731
    hooks = [plain.get_submodule(arch.embed).register_forward_hook(grab)]
    hooks += [block.register_forward_hook(grab) for block in plain.get_submodule(arch.blocks)]
    try:
        plain(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return _torch().stack(seen)


def per_cell_lens(lm, plain, ids: list[int], prompts: dict, rollout: int, top_k: int) -> dict:
    """The lens one cell at a time, as the authors' demo: for each (layer, token), ``generate(inputs_embeds=prompt,
    max_new_tokens=rollout)`` with a hook writing the cell's state over block ``layer - 1``'s output at the prompt's
    last position (layer 0: the prompt's last embedding). `common.per_cell_phrases`, as `lens_speed` runs it, with the
    modules found where `futurelens.arch` says they are (any architecture)."""
    from .common import per_cell_phrases

    torch = _torch()
    arch = lm.arch
    device = next(plain.parameters()).device
    blocks = plain.get_submodule(arch.blocks)
    norm, head = plain.get_submodule(arch.final_norm), plain.get_submodule(arch.unembed)
    x = torch.tensor([ids], device=device)
    with torch.no_grad():
        return per_cell_phrases(plain, blocks, norm, head, hidden_states(lm, plain, x), prompts, rollout, top_k, lm.pad_id)


def stage_lens(lm, plain, s: Settings, clock: Clock) -> dict:
    """`lens_grid` vs one `generate` per cell on a ``lens_tokens`` text x every layer; phrases compared per cell."""
    from futurelens.lens import lens_grid

    from .common import paired_ratio, stats

    torch = _torch()
    layers = list(range(lm.n_layers + 1))
    ids = random_prefixes(1, s.lens_tokens, s.lens_tokens, lm.vocab_size, 0, seed=3)[0][0]
    scale = lm.module(lm.arch.embed).weight.float().std().item()
    g = torch.Generator().manual_seed(0)
    prompts = {layer: torch.randn(s.prompt_len, lm.embed_dim, generator=g) * scale for layer in layers}
    got: dict = {}

    def batched() -> None:
        got["grid"] = lens_grid(lm, ids, prompts, rollout=s.rollout, top_k=s.top_k)

    def per_cell() -> None:
        got["ref"] = per_cell_lens(lm, plain, ids, prompts, s.rollout, s.top_k)

    with torch.no_grad():
        last = {layers[-1]: prompts[layers[-1]]}
        lens_grid(lm, ids[:1], last, rollout=1, top_k=s.top_k)  # first-trace costs, on one cell
        per_cell_lens(lm, plain, ids[:1], last, 1, s.top_k)
        times = capped_interleaved({"batched": batched, "per_cell": per_cell}, s.lens_rounds, s.caps_s["lens"], clock, warmup=0)
    speedup = paired_ratio(times["per_cell"], times["batched"])
    grid, ref = got["grid"], got["ref"]
    dec = lambda row: [lm.tokenizer.decode([i]) for i in row]  # noqa: E731
    cells = [(i, t) for i in range(len(layers)) for t in range(len(ids))]
    same = sum(grid.phrase_tokens[i][t] == dec(ref["phrase_ids"][i, t].tolist()) for i, t in cells)
    first = sum(grid.phrase_tokens[i][t][:1] == dec(ref["phrase_ids"][i, t, :1].tolist()) for i, t in cells)
    top1 = sum(grid.top_tokens[i][t][0] == dec(ref["top_ids"][i, t, :1].tolist())[0] for i, t in cells)
    agree = same / len(cells)
    return {
        "grid": f"{len(ids)} tokens x {len(layers)} layers = {len(cells)} cells, rollout {s.rollout}, "
                f"a random [{s.prompt_len}, {lm.embed_dim}] soft prompt per layer",
        "rounds": len(times["batched"]),
        "batched": stats(times["batched"]),
        "per_cell": stats(times["per_cell"]),
        "per_cell_ms": round(1e3 * stats(times["per_cell"])["median_s"] / len(cells), 2),
        "speedup": round(speedup, 2),
        "phrases_equal": f"{same}/{len(cells)}",
        "first_tokens_equal": f"{first}/{len(cells)}",
        "top1_equal": f"{top1}/{len(cells)}",
        "agree_required": s.agree,
        "_goals": {"lens_speedup": speedup},
        "_checks": {"lens_phrases_agree": agree >= s.agree},
        "_summary": f"{len(cells)} cells: lens_grid {stats(times['batched'])['median_s']:.3f} s vs one generate per cell "
                    f"{stats(times['per_cell'])['median_s']:.2f} s = {speedup:.0f}x; phrases equal in {same}/{len(cells)}",
    }


# --------------------------------------------------------------------------- stage: eval


def stage_eval(lm, plain, s: Settings, clock: Clock, work: Path) -> dict:
    """All five methods at every layer: states cached once vs recomputed per layer and method (`eval_speed`)."""
    import futurelens as fl
    from futurelens.data.states import CacheConfig, StateBatch, StateCache, build_cache
    from futurelens.methods.linear import LinearApprox, VocabProbe
    from futurelens.methods.ngram import NGram
    from futurelens.methods.prompts import FixedPrompt, LearnedPrompt
    from futurelens.server.jobs import pad_rows
    from futurelens.server.traces import length_mask

    from .common import length_sorted_batches, paired_ratio, prefix_table, stats

    torch = _torch()
    n_max, k = 3, 10
    pairs = random_prefixes(s.eval_train + s.eval_test, *s.eval_len, lm.vocab_size, n_max + 1, seed=4)
    train_pairs, test_pairs = pairs[: s.eval_train], pairs[s.eval_train :]
    data = prefix_table(lm, pairs, s.eval_train, work / "eval-data", n_max)
    cache = StateCache(build_cache(lm, CacheConfig(data=str(data), out=str(work / "eval-cache"), splits=["train"],
                                                   dtype=s.cache_dtype), progress=False))
    layers = list(range(lm.n_layers + 1))
    middle = layers[len(layers) // 2]
    t0 = time.perf_counter()
    ngram = NGram().fit([p + c for p, c in train_pairs], n_max=n_max, vocab_size=lm.vocab_size)
    vocab = VocabProbe(lm.vocab_size, epochs=1).fit(cache, middle)
    vocab.probes = {layer: vocab.probes[middle] for layer in layers}
    vocab.tokens = {layer: vocab.tokens[middle] for layer in layers if middle in vocab.tokens}  # a compact probe's ids
    vocab.rows = {layer: vocab.rows[middle] for layer in layers if middle in vocab.rows}  # its per-N row counts
    linear = LinearApprox(lm).fit(cache, middle)
    linear.maps = {layer: linear.maps[middle] for layer in layers}
    g = torch.Generator().manual_seed(0)
    learned = LearnedPrompt(lm, {layer: torch.randn(s.prompt_len, lm.embed_dim, generator=g) * 0.02 for layer in layers})
    methods = [vocab, linear, FixedPrompt(lm), learned]
    fit_s = time.perf_counter() - t0
    batches = [([p for p, _ in b], torch.tensor([c for _, c in b]))
               for b in length_sorted_batches(test_pairs, 32, key=lambda pc: len(pc[0]))]
    dev = lm.device

    def batch_of(states, target, prefixes) -> StateBatch:
        return StateBatch(states=states, target=target, last_token=torch.tensor([p[-1] for p in prefixes]),
                          row=torch.arange(len(prefixes)))

    seen: dict[str, dict] = {"cached": {}, "recomputed": {}}

    def ngram_all() -> None:
        for prefixes, _ in batches:
            last = torch.tensor([p[-1] for p in prefixes])
            for n in range(n_max + 1):
                ngram.predict(last, n, k)

    def cached() -> None:
        with torch.no_grad():
            states = [fl.cache_ahead(lm, prefixes, target[:, :n_max], None)[0].cpu() for prefixes, target in batches]
            ngram_all()
            for layer in layers:
                for b, ((prefixes, target), st) in enumerate(zip(batches, states)):
                    batch = batch_of(st[layer], target, prefixes)
                    seen["cached"][layer, b] = st[layer]
                    for method in methods:
                        seen["cached"][layer, b, method.name] = method.predict(batch, layer, k)[0].top_ids[:, 0]

    def recomputed() -> None:
        with torch.no_grad():
            ngram_all()
            for layer in layers:
                for method in methods:
                    for b, (prefixes, target) in enumerate(batches):
                        ids, lengths = pad_rows(prefixes, lm.pad_id)
                        out = plain(input_ids=ids.to(dev), attention_mask=length_mask(lengths, ids.shape[1]).to(dev),
                                    output_hidden_states=True)
                        st = out.hidden_states[layer][torch.arange(len(prefixes)), lengths - 1].cpu()
                        seen["recomputed"][layer, b] = st
                        seen["recomputed"][layer, b, method.name] = method.predict(batch_of(st, target, prefixes), layer, k)[0].top_ids[:, 0]

    with torch.no_grad():  # warm-up: first trace, first patched forward, first probe matmul
        prefixes, target = batches[0]
        warm = fl.cache_ahead(lm, prefixes, target[:, :n_max], None)[0].cpu()
        for method in methods:
            method.predict(batch_of(warm[layers[0]], target, prefixes), layers[0], k)
    times = capped_interleaved({"cached": cached, "recomputed": recomputed}, s.eval_rounds, s.caps_s["eval"], clock, warmup=0)
    ratio = paired_ratio(times["recomputed"], times["cached"])
    # HF's last hidden state is after the final norm; futurelens' last layer is before it: compared below it.
    compared = [key for key in seen["cached"] if len(key) == 2 and key[0] < lm.n_layers]
    diff = max(((seen["cached"][key].float() - seen["recomputed"][key].float()).norm()
                / seen["recomputed"][key].float().norm().clamp_min(1e-30)).item() for key in compared)
    preds = [key for key in seen["cached"] if len(key) == 3 and key[0] < lm.n_layers]
    equal = sum(int((seen["cached"][key] == seen["recomputed"][key]).sum()) for key in preds)
    total = sum(len(seen["cached"][key]) for key in preds)
    return {
        "setup": f"{s.eval_test} random test prefixes of {s.eval_len[0]}..{s.eval_len[1]} tokens, all {len(layers)} layers, "
                 f"n-gram + {', '.join(m.name for m in methods)}; fitted on a StateCache of {s.eval_train} train prefixes "
                 f"(one vocabulary probe and one linear map, at layer {middle}, reused at every layer) in {fit_s:.1f} s, untimed",
        "rounds": len(times["cached"]),
        "times": {side: stats(t) for side, t in times.items()},
        "ratio": round(ratio, 3),
        "states_max_relative_difference": diff,
        "top1_equal": f"{equal}/{total} (layers 0..{lm.n_layers - 1})",
        "_checks": {"eval_predictions_equal": equal >= s.agree * total},
        "_summary": f"cached {stats(times['cached'])['median_s']:.2f} s vs recomputed {stats(times['recomputed'])['median_s']:.2f} s "
                    f"= {ratio:.1f}x; top-1 equal in {equal}/{total}",
    }


# --------------------------------------------------------------------------- stage: the paper's pipeline

PAPER = {"candidates": 250_000, "cached": 101_000, "train": 100_000, "layers": 29, "prompts": 29, "eval_layers": 29}
"""The paper's GPT-J run (`paper_scale.PAPER`): 250k candidates labelled (a ~40% keep rate), 101k prefixes cached,
a prompt per layer trained one epoch over 100k, all five methods evaluated at 29 layers (fits over the 100k)."""


def make_corpus(path: Path, s: Settings, vocab: int) -> dict:
    """``s.n_docs`` random-token documents as JSONL, long enough for the longest prefix + the continuation, and the
    test fraction that holds out exactly ``s.test_docs`` of them (the split is by document hash)."""
    from futurelens.data.prefixes import is_test

    from .paper_scale import _u

    g = random.Random(5)
    length = s.prefix_len[1] + 8
    ids = [f"doc{i}" for i in range(s.n_docs)]
    with path.open("w", encoding="utf-8") as fh:
        for doc in ids:
            fh.write(json.dumps({"id": doc, "text": words([g.randrange(FIRST_WORD, vocab) for _ in range(length)])}) + "\n")
    u = sorted(_u(i) for i in ids)
    fraction = (u[s.test_docs - 1] + u[s.test_docs]) / 2 if s.test_docs else 0.0
    held = sum(is_test(i, 0, fraction) for i in ids)
    return {"documents": s.n_docs, "tokens_per_document": length, "test_fraction": fraction, "test_documents": held}


def least_squares(x: list[float], y: list[float]) -> tuple[float, float]:
    """``(slope, intercept)``; through the origin when there is one point."""
    if len(x) == 1:
        return y[0] / x[0], 0.0
    from .paper_scale import _lstsq

    slope, intercept = _lstsq(x, y)
    if slope <= 0:  # noise swamped the step between sizes: proportional to the largest
        return y[-1] / x[-1], 0.0
    return slope, intercept


def extrapolate(rows: list[dict]) -> dict:
    """The paper's run from the measured stages: per stage ``time = fixed + slope x count`` (least squares over the
    sizes), at the paper's count, times the paper's number of prompts / layers where the slice did one."""
    out: dict[str, Any] = {"stages": {}}
    unit = {"data": ("candidates", PAPER["candidates"], 1), "cache": ("cached", PAPER["cached"], 1),
            "train": ("train", PAPER["train"], PAPER["prompts"]), "eval": ("train", PAPER["train"], PAPER["eval_layers"])}
    for stage, (key, count, times) in unit.items():
        mine = [r for r in rows if r["stage"] == stage]
        if not mine:
            continue
        slope, fixed = least_squares([r[key] for r in mine], [r["wall_s"] for r in mine])
        total = times * (fixed + slope * count)
        out["stages"][stage] = {"per": key, "slope_ms": round(1e3 * slope, 3), "fixed_s": round(fixed, 2),
                                "paper_count": count, "times": times, "seconds": round(total, 1)}
    out["total_s"] = round(sum(v["seconds"] for v in out["stages"].values()), 1)
    out["total_h"] = round(out["total_s"] / 3600, 3)
    return out


def stage_pipeline(lm, s: Settings, clock: Clock, work: Path) -> dict:
    """`build_prefixes` -> `build_cache` -> `train` -> `evaluate` at each size; the paper's run extrapolated."""
    from futurelens.artifacts.dataset import load_prefixes
    from futurelens.data.prefixes import DataConfig, build_prefixes
    from futurelens.data.states import CacheConfig, build_cache
    from futurelens.evaluate import EvalConfig, evaluate
    from futurelens.train import TrainConfig, train

    corpus = make_corpus(work / "corpus.jsonl", s, lm.vocab_size)
    layer = lm.n_layers // 2
    rows: list[dict] = []
    facts: list[dict] = []
    start = time.perf_counter()
    skipped = []
    warm: dict[str, float] = {}
    for size in (s.warmup_size, *s.sizes):
        if warm:  # the next size would take about (its size / the last size) x the last one's time
            ref, last = ((rows[-1]["size"], sum(r["wall_s"] for r in rows if r["size"] == rows[-1]["size"])) if rows
                         else (s.warmup_size, sum(warm.values())))
            guess = last * size / ref
            if time.perf_counter() - start + guess > s.caps_s["pipeline"] or guess > clock.left():
                skipped.append(size)
                continue
        d = work / f"n{size}"
        n_total = round(size / (1 - corpus["test_documents"] / corpus["documents"]))
        t = {}
        reset_peak()
        t0 = time.perf_counter()
        build_prefixes(lm, DataConfig(model=lm.name, source=str(work / "corpus.jsonl"), out=str(d / "data"),
                                      n_prefixes=n_total, min_len=s.prefix_len[0], max_len=s.prefix_len[1],
                                      length_dist=s.length_dist, n_max=3, test_fraction=corpus["test_fraction"],
                                      filter_correct=False, seed=0), progress=False)
        t["data"], mem = time.perf_counter() - t0, {"data": peak_mb()}
        table, meta = load_prefixes(d / "data")
        lengths = [len(p) for p in table["prefix_ids"]]
        reset_peak()
        t0 = time.perf_counter()
        build_cache(lm, CacheConfig(data=str(d / "data"), out=str(d / "cache"), dtype=s.cache_dtype), progress=False)
        t["cache"], mem["cache"] = time.perf_counter() - t0, peak_mb()
        reset_peak()
        t0 = time.perf_counter()
        train(TrainConfig(cache=str(d / "cache"), out=str(d / "prompts"), layers=[layer], epochs=1, batch_size=8,
                          lr=5e-4, prompt_len=10, target_n=1), lm=lm, progress=False)
        t["train"], mem["train"] = time.perf_counter() - t0, peak_mb()
        reset_peak()
        t0 = time.perf_counter()
        df = evaluate(EvalConfig(cache=str(d / "cache"), prompts=str(d / "prompts"), out=str(d / "eval"), layers=[layer],
                                 vocab_epochs=1, batch_size=32), lm=lm, progress=False)
        t["eval"], mem["eval"] = time.perf_counter() - t0, peak_mb()
        shutil.rmtree(d, ignore_errors=True)  # a vocabulary probe of GPT-J alone is a 3.3 GB file
        if not warm:  # the untimed warm-up pass
            warm = {stage: round(v, 2) for stage, v in t.items()}
            continue
        f = {"size": size, "candidates": meta["n_candidates"], "cached": meta["n_kept"], "train": meta["n_train"],
             "test": meta["n_test"], "mean_prefix_len": round(sum(lengths) / len(lengths), 1),
             "tokens": sum(lengths), "results_rows": len(df)}
        facts.append(f)
        for stage in ("data", "cache", "train", "eval"):
            rows.append({"stage": stage, "size": size, "wall_s": round(t[stage], 2), "peak_gpu_mb": mem[stage],
                         **{k: f[k] for k in ("candidates", "cached", "train")}})
    est = extrapolate(rows)
    biggest = max(r["size"] for r in rows)
    took = sum(r["wall_s"] for r in rows if r["size"] == biggest)
    parts = ", ".join(f"{r['stage']} {r['wall_s']:.0f} s" for r in rows if r["size"] == biggest)
    return {
        "setup": f"{corpus['documents']} random-token documents ({corpus['test_documents']} held out), prefixes of "
                 f"{s.prefix_len[0]}..{s.prefix_len[1]} tokens ({s.length_dist}), n_max 3, no correctness filter; cache all "
                 f"{lm.n_layers + 1} layers ({s.cache_dtype}); train one prompt at layer {layer} (1 epoch, batch 8, lr 5e-4, "
                 f"KL, N = 1); eval all five methods at layer {layer} (vocabulary probe 1 epoch)",
        "corpus": corpus,
        "sizes": [f["size"] for f in facts],
        "sizes_skipped": skipped,
        "warmup": {"size": s.warmup_size, "wall_s": warm, "note": "untimed: first-call costs, not in the fit"},
        "datasets": facts,
        "rows": rows,
        "paper": PAPER,
        "extrapolation": est,
        "_goals": {"paper_run_hours": est["total_h"]},
        "_summary": f"{biggest:,} train prefixes end to end in {took:.0f} s "
                    f"({parts}); "
                    f"the paper's run extrapolated to {est['total_h']:.2f} h ("
                    + ", ".join(f"{k} {v['seconds'] / 3600:.2f} h" for k, v in est["stages"].items()) + ")",
    }


# --------------------------------------------------------------------------- the run

STAGES = ("cache", "train", "lens", "pipeline", "eval")
MIN_LEFT_S = {"cache": 10, "train": 8, "lens": 20, "pipeline": 40, "eval": 20}
"""A stage starts only with at least this much of the deadline left (else it is reported as skipped)."""


def machine_facts() -> dict:
    """The device, its driver and the library versions, plus the host."""
    from .common import machine

    torch = _torch()
    out = machine()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(gpu_memory_gb=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            out["nvidia_smi"] = smi.stdout.strip()
            out["driver"] = smi.stdout.split(",")[1].strip() if smi.returncode == 0 and "," in smi.stdout else "unknown"
        except (OSError, subprocess.SubprocessError) as err:
            out["driver"] = f"unknown ({type(err).__name__})"
    else:
        out["driver"] = "none (CPU)"
    return out


def imported_distributions() -> dict[str, str]:
    """``{distribution: version}`` of every installed distribution a loaded module's file belongs to (by the
    distributions' RECORDs: a namespace package such as ``google`` shared by several is no evidence of any)."""
    from importlib import metadata

    tops = {name.split(".")[0] for name in list(sys.modules)}
    names = {d for top, dists in metadata.packages_distributions().items() if top in tops for d in dists}
    owner: dict[str, Any] = {}
    for name in names:
        dist = metadata.distribution(name)
        for f in dist.files or ():
            if f.suffix in (".py", ".so", ".pyd"):
                owner[os.path.normpath(str(dist.locate_file(f)))] = dist
    out = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        dist = owner.get(os.path.normpath(file)) if file else None
        if dist is not None:
            out[canonical(dist.metadata["Name"])] = dist.version
    return dict(sorted(out.items()))


def requirements(name: str) -> set[str]:
    """The distributions ``name`` requires here (markers evaluated, extras left out)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    out = set()
    for line in metadata.requires(name) or ():
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.add(canonical(req.name))
    return out


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def carried_wheels() -> dict[str, str]:
    """``{distribution: version}`` of the wheels `gpu.sh` installed (``FUTURELENS_GPU_WHEELS``), if any."""
    folder = os.environ.get("FUTURELENS_GPU_WHEELS")
    if not folder or not Path(folder).is_dir():
        return {}
    return {canonical(w.name.split("-")[0]): w.name.split("-")[1] for w in sorted(Path(folder).glob("*.whl"))}


def bundle_gaps(versions: dict[str, str]) -> tuple[list[str], list[str]]:
    """``(gaps, pulled in)`` among the imported distributions that are neither on the GPU image nor carried:
    ``pulled in`` are required (maybe through each other) by a distribution the image has, so its own version
    there brings what it needs; ``gaps`` are the rest, which the GPU run would fail to import."""
    known = PREINSTALLED | {canonical(n) for n in BUNDLE} | set(OPTIONAL_IMPORTS) | {"futurelens"}
    missing = {d for d in versions if d not in known}
    pulled: set[str] = set()
    frontier = {d for d in versions if d in PREINSTALLED}
    while frontier:
        needed = set().union(*(requirements(d) for d in frontier)) & (missing - pulled)
        pulled |= needed
        frontier = needed
    return sorted(missing - pulled), sorted(pulled)


def _goal(key: str, measured: float | None, stage: str, model: str) -> dict:
    goal, threshold, op = GOALS[key]
    passed = None if measured is None else (measured >= threshold if op == ">=" else measured <= threshold)
    return {"key": key, "goal": goal, "threshold": threshold, "measured": None if measured is None else round(measured, 4),
            "passed": passed, "stage": stage, "model": model}


def run_all(s: Settings, out: Path | None, models: tuple[ModelSpec, ...] | None = None,
            only: set[str] | None = None) -> dict:
    """Every stage of every model, the report rewritten after each; returns the report."""
    torch = _torch()
    clock = Clock(s.budget_s)
    started = datetime.datetime.now(datetime.timezone.utc)
    models = models or (SMOKE_MODELS if s.smoke else FULL_MODELS)
    report: dict[str, Any] = {
        "name": NAME, "mode": "smoke" if s.smoke else "gpu", "ran_on_gpu": torch.cuda.is_available(),
        "started": started.strftime("%Y-%m-%d %H:%M UTC"), "commit": _commit(),
        "command": "python -m benchmarks.gpu " + " ".join(sys.argv[1:]),
        "machine": machine_facts(), "settings": asdict(s), "models": {}, "stages": [], "goals": [], "checks": [],
    }
    mm, mm_flops, report["matmul_peak"] = matmul_peak(s)
    goal_values: dict[str, tuple[float | None, str]] = {}
    with tempfile.TemporaryDirectory(prefix="fl-gpu-") as tmp:
        for spec in models:
            stages = [st for st in spec.stages if only is None or st in only]
            if not stages:
                continue
            if clock.left() < min(MIN_LEFT_S[st] for st in stages):
                for st in stages:
                    report["stages"].append({"model": spec.key, "stage": st, "status": "skipped",
                                             "summary": "skipped: the run's deadline was near"})
                continue
            entry: dict[str, Any] = {"title": spec.title}
            lm = plain = None
            try:
                n_blocks = None
                if spec.full_depth:
                    n_blocks, entry["slice"] = slice_blocks(spec, s)
                    entry["slice"]["blocks_of"] = f"{n_blocks} of {spec.full_depth}"
                reset_peak()
                lm, plain, _, facts = build(spec, s, n_blocks)
                entry.update(facts, build_peak_gpu_mb=peak_mb())
            except Exception as err:  # noqa: BLE001 - reported; the other models still run
                entry["error"] = f"{type(err).__name__}: {err}"
                entry["traceback"] = traceback.format_exc()
                for st in stages:
                    report["stages"].append({"model": spec.key, "stage": st, "status": "error",
                                             "summary": f"model build failed: {entry['error'][:200]}"})
            report["models"][spec.key] = entry
            if lm is not None:
                for st in stages:
                    report["stages"].append(_stage(st, spec, lm, plain, s, clock, Path(tmp), mm, mm_flops, goal_values))
                    if out is not None:
                        _finish(report, goal_values, clock, final=False)
                        write(report, out)
                    if report["stages"][-1]["status"] == "interrupted":
                        break
            del lm, plain
            free_memory()
            if report["stages"] and report["stages"][-1]["status"] == "interrupted":
                break
    _finish(report, goal_values, clock)
    if out is not None:
        write(report, out)
    return report


def _stage(st: str, spec: ModelSpec, lm, plain, s: Settings, clock: Clock, tmp: Path, mm, mm_flops: int,
           goal_values: dict) -> dict:
    """Run one stage (never raising): its entry for the report, its goals into ``goal_values``."""
    row: dict[str, Any] = {"model": spec.key, "stage": st}
    if clock.left() < MIN_LEFT_S[st]:
        return {**row, "status": "skipped", "summary": f"skipped: {clock.left():.0f} s of the deadline left"}
    work = tmp / f"{spec.key}-{st}"
    work.mkdir(parents=True, exist_ok=True)
    print(f"[gpu] {spec.key} {st} ...", file=sys.stderr, flush=True)
    reset_peak()
    t0 = time.perf_counter()
    try:
        if st == "cache":
            details = stage_cache(lm, plain, s, clock, mm, mm_flops)
        elif st == "train":
            details = stage_train(lm, plain, s, clock)
        elif st == "lens":
            details = stage_lens(lm, plain, s, clock)
        elif st == "pipeline":
            details = stage_pipeline(lm, s, clock, work)
        else:
            details = stage_eval(lm, plain, s, clock, work)
        row["status"] = "ok"
    except KeyboardInterrupt:  # gpu.sh's hard limit (SIGINT): this stage is reported as cut short, the run ends
        details = {"error": "interrupted: the hard time limit (gpu.sh's GPU_LIMIT_S) ended the run"}
        row["status"] = "interrupted"
    except Exception as err:  # noqa: BLE001 - reported; the other stages still run
        details = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        row["status"] = "error"
    row["duration_s"] = round(time.perf_counter() - t0, 1)
    row["peak_gpu_mb"] = peak_mb()
    row["summary"] = details.pop("_summary", None) or f"error: {details.get('error', '')[:300]}"
    for key, value in details.pop("_goals", {}).items():
        if spec.key == GOAL_MODEL:
            goal_values[key] = (value, f"{spec.key}/{st}")
    row["checks"] = details.pop("_checks", {})
    row["details"] = details
    print(f"[gpu] {spec.key} {st}: {row['summary']} ({row['duration_s']} s, peak {row['peak_gpu_mb']} MB)",
          file=sys.stderr, flush=True)
    return row


def _finish(report: dict, goal_values: dict, clock: Clock, final: bool = True) -> None:
    """Goals (every one of `GOALS`, measured or not), checks, versions and the bundle, from what has run
    (the versions are read once between stages, and again at the end: reading them takes seconds)."""
    report["goals"] = []
    for key in GOALS:
        value, stage = goal_values.get(key, (None, ""))
        report["goals"].append(_goal(key, value, stage, GOAL_MODEL))
    report["checks"] = [{"model": r["model"], "stage": r["stage"], "check": k, "passed": bool(v)}
                        for r in report["stages"] for k, v in r.get("checks", {}).items()]
    report["duration_s"] = round(clock.elapsed(), 1)
    if "versions" in report and not final:
        return
    versions = imported_distributions()
    carried = carried_wheels()
    report["versions"] = versions
    gaps, pulled = bundle_gaps(versions)
    report["bundle"] = {"wanted": BUNDLE, "carried": carried,
                        "used": {d: v for d, v in versions.items() if carried.get(d) == v},
                        "imported_but_not_on_the_image_or_carried": gaps,
                        "imported_here_as_needs_of_the_image_s_packages": pulled}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("FUTURELENS_COMMIT", "unknown")


# --------------------------------------------------------------------------- the report


def _fmt(value: Any) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def markdown(report: dict) -> str:
    """The readable report: machine and versions, goals, stages, models."""
    m = report["machine"]
    smoke = report["mode"] == "smoke"
    lines = [
        "# futurelens on one GPU" if not smoke else "# futurelens GPU script: smoke run (tiny configs, not GPU figures)",
        "",
        f"`{report['command']}` on {report['started']}, commit {report['commit']}, {report['duration_s'] / 60:.1f} min "
        f"(`benchmarks/gpu.py`: its docstring says exactly what each stage measures).",
        "",
        "| machine | |",
        "|---|---|",
        f"| device | {m['device']}" + (f", {m.get('gpu_memory_gb')} GiB, {m.get('multiprocessors')} SMs, compute "
                                      f"{m.get('capability')}" if report["ran_on_gpu"] else "") + " |",
        f"| driver / CUDA | {m.get('driver')} / {m.get('cuda', 'none')} |",
        f"| host | {m['cpu']} ({m['cores']} cores), Python {m['python']} |",
        f"| torch / transformers / nnsight | {m['torch']} / {m['transformers']} / {m['nnsight']} |",
        f"| datasets | {report.get('versions', {}).get('datasets', 'not imported')} |",
        f"| carried wheels used | {', '.join(f'{k} {v}' for k, v in report.get('bundle', {}).get('used', {}).items()) or 'none'} |",
        f"| matmul peak (measured) | {report['matmul_peak']['tflops_per_s_best']} TFLOP/s best, "
        f"{report['matmul_peak']['tflops_per_s_median']} median ({report['matmul_peak']['matmul']}) |",
        "",
        "## Goals",
        "",
        "| goal | measured | passed | where |",
        "|---|---|---|---|",
    ]
    for g in report["goals"]:
        ok = "not measured" if g["passed"] is None else ("yes" if g["passed"] else "**no**")
        lines.append(f"| {g['goal']} | {_fmt(g['measured'])} | {ok} | {g['stage']} |")
    lines += ["", "| check | model | passed |", "|---|---|---|"]
    for c in report["checks"]:
        lines.append(f"| {c['check']} | {c['model']} | {'yes' if c['passed'] else '**no**'} |")
    lines += ["", "## Stages", "", "| model | stage | status | time | peak GPU memory | summary |", "|---|---|---|---:|---:|---|"]
    for r in report["stages"]:
        mem = "" if r.get("peak_gpu_mb") is None else f"{r['peak_gpu_mb'] / 1024:.1f} GiB"
        lines.append(f"| {r['model']} | {r['stage']} | {r['status']} | {r.get('duration_s', '')} s | {mem} | {r['summary']} |")
    lines += ["", "## Models", "", "| model | params | blocks | d | vocab | weights | build | copy | load_model |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, e in report["models"].items():
        if "error" in e:
            lines.append(f"| {e['title']} | error: {e['error'][:200]} | | | | | | | |")
            continue
        blocks = e["blocks"] if "slice" not in e else f"{e['slice']['blocks_of']}"
        lines.append(f"| {e['title']} | {e['params_b']} B | {blocks} | {e['d_model']} | {e['vocab']:,} | "
                     f"{e['weights_gb']} GiB | {e['build_s']} s | {e['plain_copy_s']} s | {e['load_model_s']} s |")
    pipe = next((r for r in report["stages"] if r["stage"] == "pipeline" and r["status"] == "ok"), None)
    if pipe:
        est = pipe["details"]["extrapolation"]
        lines += ["", "## The paper's GPT-J run, extrapolated", "",
                  "| stage | per | fixed | per 1k | paper count | × | seconds |", "|---|---|---:|---:|---:|---:|---:|"]
        for stage, v in est["stages"].items():
            lines.append(f"| {stage} | {v['per']} | {v['fixed_s']} s | {v['slope_ms']:.0f} s | {v['paper_count']:,} | "
                         f"{v['times']} | {v['seconds']:,.0f} |")
        lines.append(f"| **total** | | | | | | **{est['total_h']:.2f} h** |")
        lines += ["", "| stage | train prefixes | wall | peak GPU memory |", "|---|---:|---:|---:|"]
        for r in pipe["details"]["rows"]:
            mem = "" if r.get("peak_gpu_mb") is None else f"{r['peak_gpu_mb'] / 1024:.1f} GiB"
            lines.append(f"| {r['stage']} | {r['train']:,} | {r['wall_s']} s | {mem} |")
    gaps = report.get("bundle", {}).get("imported_but_not_on_the_image_or_carried")
    lines += ["", "Every distribution imported, with its version, is in `report.json` (`versions`)"
              + (f"; imported but neither on the GPU image nor carried: {', '.join(gaps)}." if gaps else ".")]
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> None:
    from futurelens.atomic import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("report.json", json.dumps(report, indent=2, default=str) + "\n"), ("README.md", markdown(report))):
        with atomic_path(out / name, suffix=Path(name).suffix) as tmp:
            Path(tmp).write_text(text)


# --------------------------------------------------------------------------- benchmarks/run.py


def run(quick: bool) -> dict[str, Any]:
    """For `benchmarks/run.py`: ``--quick`` runs the smoke; a full run on a GPU runs this script (writing
    ``results/gpu/``); a full run without one reports the committed GPU report, or that there is none yet."""
    from .common import result

    if quick:
        with tempfile.TemporaryDirectory(prefix="fl-gpu-smoke-") as tmp:
            rep = run_all(Settings.smoke_run(), Path(tmp))
        return _entry(rep, "smoke run: tiny configs on this machine, not GPU figures")
    if on_gpu():
        return _entry(run_all(Settings.full(), RESULTS), "")
    try:
        rep = json.loads((RESULTS / "report.json").read_text())
    except (OSError, ValueError):
        rep = {}
    if not rep.get("ran_on_gpu"):
        return result(NAME, "; ".join(g for g, _, _ in GOALS.values()), False,
                      "not yet run on a GPU: no GPU here, and benchmarks/results/gpu/ holds no GPU run's report "
                      f"(run it with the device tool: {RUN_CALL})", {"report": str((RESULTS / "report.json").relative_to(ROOT))})
    return _entry(rep, f"from the committed GPU report ({rep['machine']['device']}, commit {rep['commit']}, {rep['started']})")


def _entry(rep: dict, note: str) -> dict[str, Any]:
    from .common import result

    goals = rep["goals"]
    measured = [g for g in goals if g["passed"] is not None]
    passed = len(measured) == len(goals) and all(g["passed"] for g in goals) and all(c["passed"] for c in rep["checks"])
    summary = "; ".join(f"{g['key']} {_fmt(g['measured'])} ({'ok' if g['passed'] else 'missed' if g['passed'] is False else 'not measured'})"
                        for g in goals)
    return result(NAME, "; ".join(g for g, _, _ in GOALS.values()), passed, (note + ": " if note else "") + summary,
                  {"goals": goals, "checks": rep["checks"], "stages": [{k: r.get(k) for k in ("model", "stage", "status", "summary")}
                                                                       for r in rep["stages"]],
                   "machine": rep["machine"], "report": str((RESULTS / "report.json").relative_to(ROOT))})


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny configs, fp32, on the CPU: the CI smoke test")
    parser.add_argument("--out", help=f"folder for report.json and README.md (default: {RESULTS.relative_to(ROOT)}; "
                                      "required with --smoke)")
    parser.add_argument("--only", nargs="+", choices=STAGES, help="run only these stages")
    parser.add_argument("--models", nargs="+", choices=[m.key for m in FULL_MODELS], help="run only these models")
    parser.add_argument("--budget-s", type=float, help="deadline for all stages, seconds")
    parser.add_argument("--sizes", type=int, nargs="+", help="training prefixes of the pipeline slice, per size")
    parser.add_argument("--prefix-len", type=int, nargs=2, metavar=("MIN", "MAX"), help="pipeline prefix lengths")
    parser.add_argument("--print-bundle", action="store_true", help="print the carried wheels as pip specs and exit")
    args = parser.parse_args(argv)
    if args.print_bundle:
        print(" ".join(f"{k}=={v}" for k, v in BUNDLE.items()))
        return 0
    if args.smoke and not args.out:
        parser.error("--smoke needs --out (a smoke run must not overwrite the committed GPU report)")
    s = Settings.smoke_run() if args.smoke else Settings.full()
    changes = {k: v for k, v in (("budget_s", args.budget_s), ("sizes", tuple(args.sizes) if args.sizes else None),
                                 ("prefix_len", tuple(args.prefix_len) if args.prefix_len else None)) if v is not None}
    s = replace(s, **changes)
    if not args.smoke and not on_gpu():
        print("[gpu] no CUDA GPU here: the full run needs one (use --smoke for the tiny CPU run)", file=sys.stderr)
        return 2
    models = tuple(m for m in (SMOKE_MODELS if args.smoke else FULL_MODELS) if not args.models or m.key in args.models)
    out = Path(args.out) if args.out else RESULTS
    report = run_all(s, out, models, set(args.only) if args.only else None)
    print(markdown(report))
    bad = [r for r in report["stages"] if r["status"] in ("error", "interrupted")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
