"""The `futurelens` command: thin wrappers that parse a config and call the library."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _data(cfg) -> None:
    import json

    import futurelens as fl
    from futurelens.data.prefixes import META_FILE, build_prefixes

    out = build_prefixes(fl.load_model(cfg.model), cfg)
    meta = json.loads((out / META_FILE).read_text())
    typer.echo(
        f"Wrote {meta['n_kept']} prefixes ({meta['n_train']} train / {meta['n_test']} test) to {out}; "
        f"the correctness filter dropped {meta['n_dropped']} of {meta['n_candidates']} candidates."
    )


def _cache(cfg) -> None:
    import futurelens as fl
    from futurelens.data.prefixes import load_prefixes
    from futurelens.data.states import StateCache, build_cache

    model = cfg.model or load_prefixes(cfg.data)[1]["model"]
    out = build_cache(fl.load_model(model), cfg)
    cache = StateCache(out)
    sizes = ", ".join(f"{cache.size(s)} {s}" for s in cfg.splits)
    typer.echo(f"Cached layers {cache.layers[0]}..{cache.layers[-1]} ({len(cache.layers)}) for {sizes} prefixes in {out}.")


def _train(cfg) -> None:
    from futurelens.train import train

    prompts = train(cfg)
    typer.echo(f"Trained soft prompts for layers {sorted(prompts)} in {cfg.out}.")


def _eval(cfg) -> None:
    from futurelens.evaluate import evaluate

    df = evaluate(cfg)
    p1 = df[(df.metric == "precision") & (df.k == 1)].pivot_table(index=["n", "layer"], columns="method", values="value")
    typer.echo(p1.round(3).to_string())
    typer.echo(f"Wrote results.csv, precision.png and surprisal.png to {cfg.out}.")


def _register() -> None:
    from .config import command
    from .data.prefixes import DataConfig
    from .data.states import CacheConfig
    from .evaluate import EvalConfig
    from .train import TrainConfig
    from .demo import DemoConfig, run

    app.command("demo", help="The main job on the embedded default model (offline, CPU): what each layer's state anticipates.")(
        command(DemoConfig, run)
    )
    app.command("data", help="Build the Future Lens prefix dataset: prefixes, real next tokens, the model's continuation.")(
        command(DataConfig, _data)
    )
    app.command("cache", help="Cache each prefix's hidden states at every layer, in resumable shards.")(
        command(CacheConfig, _cache)
    )
    app.command("train", help="Train a soft prompt per layer (the learned-prompt intervention) on cached states.")(
        command(TrainConfig, _train)
    )
    app.command("eval", help="Score all five methods per layer and N: results.csv and the paper's figure.")(
        command(EvalConfig, _eval)
    )


_register()


@app.callback()
def _root() -> None:
    """Future Lens: decode the tokens a single hidden state anticipates."""


def main() -> None:
    app()
