"""Evaluate the methods per layer and N on held-out prefixes: tidy table, the paper's figure, wandb.

Every method sees the same cached test states (`futurelens.data.states.StateCache`). Each is
scored twice: against the model's own continuation (the paper's target) and against the corpus's
real next tokens (``against`` = ``model`` / ``text`` in the table); surprisal is measured under the
model's own distribution at the token N ahead (its head on the cached last-layer state). The
prompt methods can write the layer-L state at other layers L' (``target_layers``, Patchscopes'
target layer), a ``target_layer`` column of the table. With ``source_cache`` the states are another model A's,
mapped into this model (`futurelens.mapping.MappedCache`); then only the fixed and learned prompts run.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FutureLensError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from .models import LensModel

METHODS = ("ngram", "vocab", "linear", "mlp", "fixed", "learned")
DEFAULT_METHODS = ("ngram", "vocab", "linear", "fixed", "learned")
"""The paper's five."""
AGAINST = ("model", "text")
"""What a method is scored against: the model's own continuation (the paper), or the corpus's real next tokens."""


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
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    """Methods to run: ngram, vocab, linear, mlp, fixed, learned (default: the paper's five; the MLP probe is opt-in,
    as its fit reads the model's head every step: one request per batch with --remote)."""
    source_cache: str = ""
    """State cache of another model A (same `futurelens data` folder): its states are mapped into this model (B) by
    affine least squares and written at --target-layers; prompts are trained in B (only fixed and learned run)."""
    target_layers: list[int] = field(default_factory=list)
    """Layers the fixed and learned prompts write the state at (Patchscopes' target layer L'); learned prompts need
    one trained for each (layer, target) pair (`futurelens train --target-layers`); empty = each layer itself."""
    against: str = "model"
    """What the figures score against: 'model' (its own continuation, the paper) or 'text' (the corpus's real next
    tokens); results.csv always has both."""
    k: int = 10
    """Largest k of precision@k."""
    batch_size: int = 32
    """Test prefixes per forward pass."""
    fixed_prompt: str = 'Hello! Could you please tell me more about "'
    """Prompt of the fixed-prompt intervention (the state goes to its last token)."""
    vocab_epochs: int = 3
    """Training epochs of the direct vocabulary probe."""
    vocab_memory_mb: float = 4096
    """Memory budget of the vocabulary probe's fit (weights and AdamW's moments): past it, each N's rarest train
    targets share one row (futurelens.methods.vocab)."""
    probes: str = ""
    """Fitted vocabulary probes and linear approximations: a folder or hub id to reuse them from (empty =
    <out>/probes). Each fit is saved there as it finishes and reused when model, layer, data and settings match."""
    linear_sgd_epochs: int = 0
    """SGD epochs (KL) after the least-squares fit of the linear approximation."""
    mlp_epochs: int = 3
    """Training epochs (KL) of the MLP probe (one residual MLP block per N, then the model's own head)."""
    wandb: bool = False
    """Log the table and figures to Weights & Biases (works offline with WANDB_MODE=offline)."""
    wandb_project: str = "futurelens"
    """W&B project."""


def interrupted_note(cfg: EvalConfig) -> str:
    """What an interrupted `evaluate` kept (fitted probes and fit checkpoints, which a re-run reuses), for Ctrl-C."""
    # Fits are written to --probes when it is a folder, else to <out>/probes (as `evaluate` does).
    from .artifacts.probes import PROBES_DIR, kept_fits
    from .artifacts.results import RESULTS

    folder = Path(cfg.probes) if cfg.probes and Path(cfg.probes).is_dir() else Path(cfg.out) / PROBES_DIR
    done, ckpts = kept_fits(folder)
    results = f"{RESULTS} and the figures were not written (they are written when every layer is scored)"
    if not done and not ckpts:
        return f"Nothing was kept: {results}, and no probe was fitted yet. Run the same command again."
    mb = sum(p.stat().st_size for p in done + ckpts) / 2**20
    parts = []
    if done:
        parts.append(f"{len(done)} fitted probe(s) ({', '.join(p.stem for p in done)})")
    if ckpts:
        parts.append(f"{len(ckpts)} fit checkpoint(s) ({', '.join(p.name for p in ckpts)})")
    return (f"Kept in {folder}: {' and '.join(parts)}, {mb:.1f} MB in all; {results}. Run the same command again: it "
            "reuses the fitted probes and resumes the checkpointed fits (delete the folder to refit).")


def _ngram(cache: Any, lm: LensModel):
    """The skip-gram baseline counted on the train prefixes and their continuations.

    The rows stream from the Arrow table a batch at a time into `NGram.fit`, which merges its pair keys every
    `futurelens.methods.ngram.CHUNK`: memory is one batch plus the distinct pairs, whatever the train split's size.
    """
    from .artifacts.dataset import load_prefixes
    from .methods.ngram import NGram

    table, _ = load_prefixes(cache.index["data"], tokenizer=lm.tokenizer)
    columns = table.select_columns(["split", "prefix_ids", "target_ids"])

    def train_rows():
        for batch in columns.iter(batch_size=1024):
            for split, prefix, target in zip(batch["split"], batch["prefix_ids"], batch["target_ids"]):
                if split == "train":
                    yield prefix + target

    return NGram().fit(train_rows(), n_max=cache.n_max, vocab_size=lm.vocab_size)


def text_targets(cache: Any, lm: LensModel) -> torch.Tensor:
    """``[rows, n_max + 1]`` the corpus's real next tokens of every dataset row (what ``--against text`` scores)."""
    import torch

    from .artifacts.dataset import load_prefixes

    table, _ = load_prefixes(cache.index["data"], tokenizer=lm.tokenizer)
    # Straight from the Arrow buffers (every row holds the same number of next ids): no Python int per token.
    column = table.data.column("next_ids")
    if not len(column):
        return torch.zeros(0, cache.n_max + 1, dtype=torch.long)
    flat = torch.tensor(column.combine_chunks().flatten().to_numpy(), dtype=torch.long)  # a copy: Arrow's is read-only
    return flat.view(len(column), -1)[:, : cache.n_max + 1]


def _score(lm: LensModel, layer: int, batches: list, client: list, model_side: list, ngram: Any, k: int,
           text_ids: torch.Tensor, tallies: dict) -> None:
    """Score one layer's test ``batches`` into ``tallies`` (keyed ``(method, layer, target layer, n, against)``).

    ``client`` methods predict here (no model run), ``model_side`` ``(method, write layer)`` pairs where the model
    is, in requests bounded by ``lm.max_request_mb``; ``ngram`` (layer-free) is scored once, at layer -1. Every
    prediction is tallied against the model's own continuation and against the text.
    """
    from .artifacts.results import NO_LAYER
    from .methods.base import Prediction, plain_batch
    from .metrics import Tally, target_nll
    from .dispatch import payload_bytes, run_job
    from .scoring import hidden_bytes, returned_bytes, score_spans
    from .server import jobs

    def reduced(p: Prediction, target: torch.Tensor, text: torch.Tensor) -> tuple:
        """``(top ids, nll of the model's token, nll of the text's)``: what is tallied of a client prediction."""
        if p.logprobs is None:
            return p.top_ids, None, None
        return p.top_ids, target_nll(p.logprobs, target), target_nll(p.logprobs, text)

    plain = [{**plain_batch(b), "text": text_ids[b.row]} for b in batches]
    # Per batch: {name: [reduced prediction per N]}. Reduced as each batch is predicted, so memory holds one batch's
    # log-distributions (a vocabulary each), not the whole test split's.
    local = []
    for batch, sent in zip(batches, plain):
        preds = {m.name: m.predict(batch, layer, k) for m in client}
        if ngram is not None:
            preds["bigram"] = [Prediction(ngram.predict(batch.last_token, n, k)[0]) for n in range(batch.target.shape[1])]
        local.append({name: [reduced(p, batch.target[:, n], sent["text"][:, n]) for n, p in enumerate(ps)]
                      for name, ps in preds.items()})
        del preds  # before the next batch's predict, not after it
    # Contiguous: a column of [b, k] ids is a view, and a view travels with its whole storage.
    top1 = [{name: [p[0][:, 0].contiguous() for p in preds] for name, preds in d.items()} for d in local]
    # Each model-side method goes by its index, so the same method at two target layers stays two rows.
    labels = [(m.name, target) for m, target in model_side]
    methods, mapped = [], []  # mapped: (index, method) of the probes applied here, whose rows the model decodes
    for i, (m, target) in enumerate(model_side):
        kind, _, payload, write = m.describe(layer, target)
        if kind == "decode":
            mapped.append((i, m))
            payload = i
        methods.append((kind, i, payload, write))
    heads = batches[0].target.shape[1] if batches else 0
    sent = [payload_bytes(p) + payload_bytes(t) + len(mapped) * hidden_bytes(len(b.row), heads, b.states.shape[-1])
            for p, t, b in zip(plain, top1, batches)]
    back = [returned_bytes(len(b.row), heads, k, len(methods), len(t)) for b, t in zip(batches, top1)]
    # Remotely as few requests as the bound allows; locally one batch a call, so one batch's mapped rows are held.
    groups = score_spans(lm, sent, back, payload_bytes(methods)) if lm.remote else [(i, i + 1) for i in range(len(plain))]
    scored = []
    for start, stop in groups:
        chunk = []
        for p, b in zip(plain[start:stop], batches[start:stop]):
            if lm.remote:  # a batch is a view of its shard's tensors: sent as a copy, only its own rows travel
                p = {name: t.clone() for name, t in p.items()}
            if mapped:
                p["hidden"] = {i: m.mapped(b.states, layer) for i, m in mapped}
            chunk.append(p)
        for i, *rest in run_job(lm, jobs.score_job, methods, chunk, layer, k, top1[start:stop]):
            scored.append((start + i, *rest))
        del chunk
    for i, key, n, top_ids, surprisals, nlls, text_nlls in scored:
        target_ids, text = batches[i].target[:, n], plain[i]["text"][:, n]
        if top_ids is None:  # a client-side prediction: only its surprisal came back
            name, write = key, (NO_LAYER if key == "bigram" else layer)
            top_ids, nlls, text_nlls = local[i][name][n]
        else:
            name, write = labels[key]
        at = NO_LAYER if name == "bigram" else layer
        for against, wanted, nll in (("model", target_ids, nlls), ("text", text, text_nlls)):
            tallies.setdefault((name, at, write, n, against), Tally()).add_reduced(top_ids, wanted, surprisals, nll)


def check_config(cfg: EvalConfig) -> None:
    """Refuse bad settings before anything loads, with what to do."""
    unknown = sorted(set(cfg.methods) - set(METHODS))
    if unknown:
        raise FutureLensError(f"Unknown method(s) {unknown}: choose from {', '.join(METHODS)}.")


def evaluate(cfg: EvalConfig, lm: LensModel | None = None, progress: bool = True) -> pd.DataFrame:
    """Score every requested method × layer × N; write ``results.csv`` and the figures to ``cfg.out``."""
    check_config(cfg)

    from tqdm.auto import tqdm

    from .artifacts import Source, data_fingerprint, probes_folder
    from .artifacts.probes import PROBES_DIR
    from .artifacts.results import FIGURES, NO_LAYER, RESULTS, rows_from_scores, save_sources, save_table, tidy
    from .data.states import StateCache
    from .figure import plot_precision, plot_surprisal, plot_target_layers
    from .methods.linear import LinearApprox, VocabProbe, fitted
    from .methods.mlp import MLPProbe
    from .methods.prompts import FixedPrompt, LearnedPrompt
    from .metrics import Tally
    from .tracking import Tracker
    from .train import load_prompts

    unknown = set(cfg.methods) - set(METHODS)
    if unknown:
        raise FutureLensError(f"Unknown method(s) {sorted(unknown)}: choose from {', '.join(METHODS)}.")
    if cfg.against not in AGAINST:
        raise FutureLensError(f"against must be 'model' or 'text', not {cfg.against!r}.")
    cache = StateCache(cfg.cache)
    source = StateCache(cfg.source_cache) if cfg.source_cache else None  # model A's states, mapped into this model
    if source is not None:
        dropped = [m for m in cfg.methods if m not in ("fixed", "learned")]
        if dropped:
            logging.getLogger(__name__).warning("With --source-cache only the fixed and learned prompts run (states "
                                                "of another model): skipping %s.", ", ".join(dropped))
        cfg = replace(cfg, methods=[m for m in cfg.methods if m in ("fixed", "learned")])
        if not cfg.methods:
            raise FutureLensError("With --source-cache only the fixed and learned prompts apply: --methods fixed learned.")
    if lm is None:
        from .models import load_model

        lm = load_model(cfg.model or cache.settings["model"])
    cache.check_tokens(lm.tokenizer)
    layers = cfg.layers or (source or cache).layers
    targets = [lm.check_layer(t, "target layer") for t in cfg.target_layers]
    out = Path(cfg.out)
    sources: dict[str, Any] = {}
    mapped: dict[int, Any] = {}
    if source is not None:
        sources["source_model"] = {"model": source.settings["model"], "cache": str(source.path)}

    def views(layer: int) -> list[tuple[Any, list[int]]]:
        """``(cache view, write layers)`` for ``layer``: the cache itself, or A's states mapped at each target."""
        if source is None:
            return [(cache, targets or [layer])]
        from .mapping import MappedCache

        maps = Path(cfg.prompts) if (Path(cfg.prompts) / "maps").is_dir() else None  # saved by training, if local
        writes = targets or [lm.check_layer(layer, "target layer")]  # default: the same layer number in this model
        for t in writes:
            if t not in mapped:
                mapped[t] = MappedCache(source, cache, t, folder=maps)
        return [(mapped[t], [t]) for t in writes]

    learned = None
    if "learned" in cfg.methods:
        prompts = load_prompts(cfg.prompts, lm)  # a folder, a file or a hub id; its source is recorded
        sources["prompts"] = prompts.source.to_dict()
        # A prompt trained on another model's mapped states (its `source_model`) is only used for those states.
        wanted = None if source is None else source.settings["model"]
        chosen = {k: v for k, v in prompts.items() if prompts.meta.get(k, {}).get("source_model") == wanted}
        if source is not None and not chosen:
            raise FutureLensError(f"No soft prompt in {cfg.prompts} was trained on {wanted!r}'s mapped states: train them "
                                  f"with `futurelens train --source-cache {source.path}`.")
        learned = LearnedPrompt(lm, chosen)
    fits = {}
    if {"vocab", "linear", "mlp"} & set(cfg.methods):
        # Fitted probes are artifacts: a finished layer's fit is loaded, never redone (futurelens.artifacts).
        # The default <out>/probes is a folder even before it exists (an out of one path part is no hub id).
        read_dir, probe_source = probes_folder(cfg.probes) if cfg.probes else (out / PROBES_DIR, Source("folder", str(out / PROBES_DIR)))
        write_dir = read_dir if probe_source.kind == "folder" else out / PROBES_DIR
        fits = {"model": lm.name, "data": data_fingerprint(cache), "folder": read_dir, "save_to": write_dir}
        sources["probes"] = {**probe_source.to_dict(), "data": fits["data"]}

    text_ids = text_targets(cache, lm)
    tallies: dict[tuple[str, int, int, int, str], Tally] = {}
    ngram = _ngram(cache, lm) if "ngram" in cfg.methods else None
    bar = tqdm(total=len(layers), desc="Evaluating", unit="layer", disable=not progress)
    for i_layer, layer in enumerate(layers):
        for view, writes in views(layer):  # one view of the states (per target layer when they are mapped)
            client, model_side = [], []  # methods that need no model run here; (method, write layer) where the model is
            if "vocab" in cfg.methods:
                client.append(fitted(VocabProbe(lm.vocab_size, epochs=cfg.vocab_epochs,
                                                      memory_mb=cfg.vocab_memory_mb), cache, layer, **fits))
            if "linear" in cfg.methods:
                model_side.append((fitted(LinearApprox(lm, sgd_epochs=cfg.linear_sgd_epochs), cache, layer, **fits), layer))
            if "mlp" in cfg.methods:
                model_side.append((fitted(MLPProbe(lm, epochs=cfg.mlp_epochs), cache, layer, **fits), layer))
            for target in writes:
                if "fixed" in cfg.methods:
                    model_side.append((FixedPrompt(lm, cfg.fixed_prompt), target))
                if learned is not None and learned.has(layer, target):
                    model_side.append((learned, target))
            batches = list(view.batches(layer, "test", cfg.batch_size, final=True))
            _score(lm, layer, batches, client, model_side, ngram if i_layer == 0 else None, cfg.k, text_ids, tallies)
        bar.update(1)
    bar.close()

    # Every score with a bootstrap 95% interval over the test prefixes (ci_low, ci_high) and their count.
    df = tidy([row for (name, layer, write, n, against), t in tallies.items()
               for row in rows_from_scores(name, layer, n, t.result(), target_layer=write, against=against,
                                           intervals=t.intervals())])
    out.mkdir(parents=True, exist_ok=True)
    save_table(df, out / RESULTS)
    if sources:  # which prompts and probes (and hub revisions) these results came from
        save_sources(out, sources)
    title = f"{lm.name}: predicting the token N ahead from one hidden state"
    shown = df
    if source is not None:  # A's layer on the x axis, a line per method and write layer L' in this model
        title = f"{lm.name}: predicting the token N ahead from one hidden state of {source.settings['model']}"
        shown = df.assign(method=df["method"] + " at L'" + df["target_layer"].astype(int).astype(str),
                          target_layer=df["layer"])
    figures = {"precision": plot_precision(shown, out / FIGURES["precision"], k=1, title=title, against=cfg.against),
               "surprisal": plot_surprisal(shown, out / FIGURES["surprisal"], title=title, against=cfg.against)}
    if (df["target_layer"] != df["layer"]).any() and (df["layer"] != NO_LAYER).any():
        figures["target_layers"] = plot_target_layers(df, out / FIGURES["target_layers"], against=cfg.against, title=title)
    with Tracker(cfg.wandb, cfg.wandb_project, config=asdict(cfg), job="eval") as tracker:
        tracker.table("eval/results", df)
        for name, path in figures.items():
            tracker.image(f"eval/{name}", path)
    return df
