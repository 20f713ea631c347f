"""The whole experiment in one call: data -> state cache -> soft prompts -> evaluation -> figure -> lens page.

`futurelens demo` runs it on the embedded default model with small settings; the
benchmark that reproduces the paper's figure runs it with larger ones. Every stage
writes under ``out`` and is skipped or resumed when its output is already there, so
an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .data.corpus import EMBEDDED


@dataclass
class PipelineConfig:
    """Settings of `futurelens demo` / `futurelens run`: the full Future Lens experiment."""

    model: str = "smollm2-135m"
    """Hub id, local folder, or the embedded default 'smollm2-135m'."""
    source: str = EMBEDDED
    """Corpus: 'pydoc' (offline Python docs), a .txt/.jsonl/.parquet file or folder, or 'hf:<dataset>[:config]'."""
    out: str = "runs/demo"
    """Folder for every stage's output (data/, cache/, prompts/, eval/, lens.html)."""
    n_prefixes: int = 300
    """Prefixes to keep (train + test) after the correctness filter."""
    min_len: int = 8
    """Shortest prefix, in tokens."""
    max_len: int = 48
    """Longest prefix, in tokens."""
    filter_correct: bool = True
    """Keep only prefixes whose next token the model predicts correctly (the paper's setup)."""
    layers: list[int] = field(default_factory=lambda: [2, 14, 26])
    """Layers to train prompts for and evaluate (0 = block 0's input, L = the residual stream after L blocks, up to the
    model's n_layers)."""
    epochs: int = 2
    """Soft-prompt training epochs."""
    lr: float = 5e-3
    """Soft-prompt learning rate."""
    batch_size: int = 8
    """Soft-prompt training batch size."""
    vocab_epochs: int = 2
    """Training epochs of the direct vocabulary probe."""
    lens_text: str = "The Python interpreter reads a program and executes the statements"
    """Text shown in the lens page."""
    rollout: int = 4
    """Tokens each lens cell rolls out."""
    wandb: bool = False
    """Log training, the table, the figure and the lens to Weights & Biases (offline with WANDB_MODE=offline)."""


def check_config(cfg: PipelineConfig) -> None:
    """Refuse bad settings before the model loads: the source exists ('hf:' streams, checked later), the lengths."""
    from .data.corpus import documents
    from .errors import FutureLensError

    documents(cfg.source, getattr(cfg, "text_field", "text"))
    if not 1 <= cfg.min_len <= cfg.max_len:
        raise FutureLensError(f"Need 1 <= --min-len <= --max-len, got {cfg.min_len} and {cfg.max_len}.")
    if cfg.n_prefixes < 1:
        raise FutureLensError(f"--n-prefixes must be >= 1, got {cfg.n_prefixes}.")


def run(cfg: PipelineConfig, lm: Any = None, progress: bool = True) -> dict[str, Any]:
    """Run every stage; returns the results table, the output paths and each stage's wall time in seconds.

    ``lm`` (a `futurelens.LensModel`) overrides ``cfg.model``, e.g. for a model built in memory.
    """
    check_config(cfg)
    from rich.console import Console

    from .artifacts.dataset import META_FILE, read_meta
    from .artifacts.results import FIGURES
    from .artifacts.run import CACHE, DATA, EVAL, PROMPTS, save_times
    from .data.prefixes import DataConfig, build_prefixes
    from .data.states import CacheConfig, build_cache
    from .evaluate import EvalConfig, evaluate
    from .models import load_model
    from .tracking import Tracker
    from .train import TrainConfig, train

    console = Console()
    out = Path(cfg.out)
    times: dict[str, float] = {}

    def stage(name: str):
        console.rule(f"[bold]{name}")
        return time.perf_counter()

    t = stage(f"Loading {cfg.model}")
    lm = lm if lm is not None else load_model(cfg.model)
    times["load"] = time.perf_counter() - t

    t = stage("Dataset: prefixes and the model's continuations")
    data_cfg = DataConfig(model=cfg.model, source=cfg.source, out=str(out / DATA), n_prefixes=cfg.n_prefixes,
                          min_len=cfg.min_len, max_len=cfg.max_len, filter_correct=cfg.filter_correct)
    if not ((out / DATA / META_FILE).exists() and read_meta(out / DATA)["config"] == asdict(data_cfg)):
        build_prefixes(lm, data_cfg, progress=progress)
    meta = read_meta(out / DATA)
    console.print(f"{meta['n_train']} train / {meta['n_test']} test prefixes; the filter dropped "
                  f"{meta['n_dropped']} of {meta['n_kept'] + meta['n_dropped']} labelled candidates.")
    times["data"] = time.perf_counter() - t

    t = stage("State cache: every layer, one forward per batch")
    build_cache(lm, CacheConfig(data=str(out / DATA), out=str(out / CACHE)), progress=progress)
    times["cache"] = time.perf_counter() - t

    t = stage(f"Soft prompts for layers {cfg.layers}")
    train(TrainConfig(cache=str(out / CACHE), out=str(out / PROMPTS), layers=cfg.layers, epochs=cfg.epochs,
                      lr=cfg.lr, batch_size=cfg.batch_size, wandb=cfg.wandb), lm=lm, progress=progress)
    times["train"] = time.perf_counter() - t

    t = stage("Evaluation: five methods × layers × N")
    df = evaluate(EvalConfig(cache=str(out / CACHE), prompts=str(out / PROMPTS), out=str(out / EVAL),
                             layers=cfg.layers, vocab_epochs=cfg.vocab_epochs, wandb=cfg.wandb), lm=lm, progress=progress)
    times["eval"] = time.perf_counter() - t

    t = stage("Lens page")
    lens_path = _lens(lm, cfg, out)
    times["lens"] = time.perf_counter() - t

    from .figure import precision_table

    console.print(precision_table(df))
    figure = out / EVAL / FIGURES["precision"]
    console.print(f"Figure: {figure}   Lens: {lens_path}   "
                  f"Times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    with Tracker(cfg.wandb, config=asdict(cfg), job="demo") as tracker:
        tracker.log({f"time/{k}": v for k, v in times.items()})
    save_times(out, times)
    return {"results": df, "figure": figure, "lens": lens_path, "times": times}


def _lens(lm: Any, cfg: PipelineConfig, out: Path) -> Path:
    """The lens page for ``cfg.lens_text`` with the layer-matched prompts just trained."""
    from .artifacts.lens import PAGE
    from .artifacts.run import PROMPTS
    from .lens.compute import lens_grid
    from .train import load_prompts

    grid = lens_grid(lm, cfg.lens_text, load_prompts(out / PROMPTS, lm), layers=cfg.layers, rollout=cfg.rollout)
    return grid.save_html(out / PAGE)
