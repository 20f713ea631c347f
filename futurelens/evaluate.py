"""Evaluate the five methods per layer and N on held-out prefixes: tidy table, the paper's figure, wandb.

Every method sees the same cached test states (`futurelens.data.states.StateCache`);
targets are the model's own continuation and surprisal is measured under the model's
own distribution at the token N ahead (its head on the cached last-layer state).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FutureLensError

if TYPE_CHECKING:
    import torch
    import pandas as pd

    from .models import LensModel

METHODS = ("ngram", "vocab", "linear", "fixed", "learned")


@dataclass
class EvalConfig:
    """Settings of `futurelens eval`: which methods, layers and metrics."""

    cache: str = "runs/cache"
    """State cache folder written by `futurelens cache`."""
    prompts: str = "runs/prompts"
    """Folder of trained soft prompts (`futurelens train`); layers without one skip the learned method."""
    out: str = "runs/eval"
    """Folder for results.csv and the figures."""
    model: str = ""
    """Hub id or folder; empty = the model recorded in the cache."""
    layers: list[int] = field(default_factory=list)
    """Layers to evaluate; empty = every cached layer."""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """Methods to run: ngram, vocab, linear, fixed, learned."""
    k: int = 10
    """Largest k of precision@k."""
    batch_size: int = 32
    """Test prefixes per forward pass."""
    fixed_prompt: str = 'Hello! Could you please tell me more about "'
    """Prompt of the fixed-prompt intervention (the state goes to its last token)."""
    vocab_epochs: int = 3
    """Training epochs of the direct vocabulary probe."""
    linear_sgd_epochs: int = 0
    """SGD epochs (KL) after the least-squares fit of the linear approximation."""
    wandb: bool = False
    """Log the table and figures to Weights & Biases (works offline with WANDB_MODE=offline)."""
    wandb_project: str = "futurelens"
    """W&B project."""


def _ngram(cache: Any, lm: LensModel):
    """The skip-gram baseline counted on the train prefixes and their continuations."""
    from .data.prefixes import load_prefixes
    from .methods.ngram import NGram

    table, _ = load_prefixes(cache.index["data"], tokenizer=lm.tokenizer)
    train = table.filter(lambda split: split == "train", input_columns="split")
    rows = [p + t for p, t in zip(train["prefix_ids"], train["target_ids"])]
    return NGram().fit(rows, n_max=cache.n_max, vocab_size=lm.vocab_size)


def evaluate(cfg: EvalConfig, lm: LensModel | None = None, progress: bool = True) -> pd.DataFrame:
    """Score every requested method × layer × N; write ``results.csv`` and the figures to ``cfg.out``."""
    import torch

    from tqdm.auto import tqdm

    from .data.states import StateCache
    from .figure import plot_precision, plot_surprisal, rows_from_scores, save_table, tidy
    from .methods.base import Prediction
    from .methods.linear import LinearApprox, VocabProbe
    from .methods.prompts import FixedPrompt, LearnedPrompt
    from .metrics import Tally
    from .tracing import decode
    from .tracking import Tracker
    from .train import load_prompts

    unknown = set(cfg.methods) - set(METHODS)
    if unknown:
        raise FutureLensError(f"Unknown method(s) {sorted(unknown)}: choose from {', '.join(METHODS)}.")
    cache = StateCache(cfg.cache)
    if lm is None:
        from .models import load_model

        lm = load_model(cfg.model or cache.settings["model"])
    layers = cfg.layers or cache.layers
    learned = None
    if "learned" in cfg.methods:
        learned = LearnedPrompt(lm, {k: v for k, v in load_prompts(cfg.prompts, lm).items() if k in layers})

    tallies: dict[tuple[str, int, int], Tally] = {}

    def score(name: str, layer: int, batch: Any, preds: list, model_lp: torch.Tensor) -> None:
        for n, p in enumerate(preds):
            tally = tallies.setdefault((name, layer, n), Tally())
            tally.add(p.top_ids, batch.target[:, n], model_lp[:, n], p.logprobs)

    def model_logprobs(batch: Any) -> torch.Tensor:
        with torch.no_grad():
            return decode(lm, batch.final).float().log_softmax(-1)  # [b, n_max + 1, V]

    bar = tqdm(total=len(layers) + ("ngram" in cfg.methods), desc="Evaluating", unit="layer", disable=not progress)
    if "ngram" in cfg.methods:
        ngram = _ngram(cache, lm)
        for batch in cache.batches(None, "test", cfg.batch_size, final=True):
            preds = [ngram.predict(batch.last_token, n, cfg.k) for n in range(cache.n_max + 1)]
            score("bigram", -1, batch, [Prediction(ids) for ids, _ in preds], model_logprobs(batch))
        bar.update(1)
    for layer in layers:
        methods = []
        if "vocab" in cfg.methods:
            methods.append(VocabProbe(lm.vocab_size, epochs=cfg.vocab_epochs).fit(cache, layer))
        if "linear" in cfg.methods:
            methods.append(LinearApprox(lm, sgd_epochs=cfg.linear_sgd_epochs).fit(cache, layer))
        if "fixed" in cfg.methods:
            methods.append(FixedPrompt(lm, cfg.fixed_prompt))
        if learned is not None and layer in learned.prompts:
            methods.append(learned)
        for batch in cache.batches(layer, "test", cfg.batch_size, final=True):
            model_lp = model_logprobs(batch)
            for method in methods:
                score(method.name, layer, batch, method.predict(batch, layer, cfg.k), model_lp)
        bar.update(1)
    bar.close()

    df = tidy([row for (name, layer, n), t in tallies.items() for row in rows_from_scores(name, layer, n, t.result())])
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_table(df, out / "results.csv")
    title = f"{lm.name}: predicting the token N ahead from one hidden state"
    plot_precision(df, out / "precision.png", k=1, title=title)
    plot_surprisal(df, out / "surprisal.png", title=title)
    with Tracker(cfg.wandb, cfg.wandb_project, config=asdict(cfg), job="eval") as tracker:
        tracker.table("eval/results", df)
        tracker.image("eval/precision", out / "precision.png")
        tracker.image("eval/surprisal", out / "surprisal.png")
    return df

