"""Evaluate the five methods per layer and N on held-out prefixes: tidy table, the paper's figure, wandb.

Every method sees the same cached test states (`futurelens.data.states.StateCache`);
targets are the model's own continuation and surprisal is measured under the model's
own distribution at the token N ahead (its head on the cached last-layer state).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FutureLensError

if TYPE_CHECKING:
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
    probes: str = ""
    """Fitted vocabulary probes and linear approximations: a folder or hub id to reuse them from (empty =
    <out>/probes). Each fit is saved there as it finishes and reused when model, layer, data and settings match."""
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

    from tqdm.auto import tqdm

    from .data.states import StateCache
    from .figure import plot_precision, plot_surprisal, rows_from_scores, save_table, tidy
    from .methods.base import Prediction, plain_batch
    from .artifacts import data_fingerprint, probes_folder
    from .methods.linear import LinearApprox, VocabProbe, fitted
    from .methods.prompts import FixedPrompt, LearnedPrompt
    from .metrics import Tally, target_nll
    from .remote import request_spans, run_job
    from .server import jobs
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
    out = Path(cfg.out)
    sources: dict[str, Any] = {}
    learned = None
    if "learned" in cfg.methods:
        prompts = load_prompts(cfg.prompts, lm)  # a folder, a file or a hub id; its source is recorded
        sources["prompts"] = prompts.source.to_dict()
        learned = LearnedPrompt(lm, {k: v for k, v in prompts.items() if k in layers})
    fits = {}
    if {"vocab", "linear"} & set(cfg.methods):
        # Fitted probes are artifacts: a finished layer's fit is loaded, never redone (futurelens.artifacts).
        read_dir, probe_source = probes_folder(cfg.probes or out / "probes")
        write_dir = read_dir if probe_source.kind == "folder" else out / "probes"
        fits = {"model": lm.name, "data": data_fingerprint(cache), "folder": read_dir, "save_to": write_dir}
        sources["probes"] = {**probe_source.to_dict(), "data": fits["data"]}

    tallies: dict[tuple[str, int, int], Tally] = {}
    ngram = _ngram(cache, lm) if "ngram" in cfg.methods else None
    bar = tqdm(total=len(layers), desc="Evaluating", unit="layer", disable=not progress)
    for i_layer, layer in enumerate(layers):
        client, model_side = [], []  # methods that need no model run here; the rest where the model is
        if "vocab" in cfg.methods:
            client.append(fitted(VocabProbe(lm.vocab_size, epochs=cfg.vocab_epochs), cache, layer, **fits))
        if "linear" in cfg.methods:
            model_side.append(fitted(LinearApprox(lm, sgd_epochs=cfg.linear_sgd_epochs), cache, layer, **fits))
        if "fixed" in cfg.methods:
            model_side.append(FixedPrompt(lm, cfg.fixed_prompt))
        if learned is not None and layer in learned.prompts:
            model_side.append(learned)
        batches = list(cache.batches(layer, "test", cfg.batch_size, final=True))
        local = []  # per batch: {name: [Prediction per N]}
        for batch in batches:
            preds = {m.name: m.predict(batch, layer, cfg.k) for m in client}
            if ngram is not None and i_layer == 0:  # layer-free: scored once, recorded at layer -1
                preds["bigram"] = [Prediction(ngram.predict(batch.last_token, n, cfg.k)[0]) for n in range(cache.n_max + 1)]
            local.append(preds)
        top1 = [{name: [p.top_ids[:, 0] for p in preds] for name, preds in d.items()} for d in local]
        methods = [m.describe(layer) for m in model_side]
        plain = [plain_batch(b) for b in batches]
        scored = []
        for start, stop in request_spans(lm, plain, fixed=methods):
            for i, *rest in run_job(lm, jobs.score_job, methods, plain[start:stop], layer, cfg.k, top1[start:stop]):
                scored.append((start + i, *rest))
        for i, name, n, top_ids, surprisals, nlls in scored:
            target = batches[i].target[:, n]
            if top_ids is None:  # a client-side prediction: only its surprisal came back
                p = local[i][name][n]
                top_ids, nlls = p.top_ids, target_nll(p.logprobs, target) if p.logprobs is not None else None
            tallies.setdefault((name, -1 if name == "bigram" else layer, n), Tally()).add_reduced(
                top_ids, target, surprisals, nlls
            )
        bar.update(1)
    bar.close()

    df = tidy([row for (name, layer, n), t in tallies.items() for row in rows_from_scores(name, layer, n, t.result())])
    out.mkdir(parents=True, exist_ok=True)
    save_table(df, out / "results.csv")
    if sources:  # which prompts and probes (and hub revisions) these results came from
        from .artifacts import clean_config
        from .atomic import atomic_path

        with atomic_path(out / "sources.json") as tmp:
            Path(tmp).write_text(json.dumps(clean_config(sources), indent=2, default=str))
    title = f"{lm.name}: predicting the token N ahead from one hidden state"
    plot_precision(df, out / "precision.png", k=1, title=title)
    plot_surprisal(df, out / "surprisal.png", title=title)
    with Tracker(cfg.wandb, cfg.wandb_project, config=asdict(cfg), job="eval") as tracker:
        tracker.table("eval/results", df)
        tracker.image("eval/precision", out / "precision.png")
        tracker.image("eval/surprisal", out / "surprisal.png")
    return df
