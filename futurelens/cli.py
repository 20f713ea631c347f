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


def _lens(cfg) -> None:
    import futurelens as fl
    from futurelens.lens.compute import lens_grid
    from futurelens.train import load_prompts

    lm = fl.load_model(cfg.model)
    prompts = load_prompts(cfg.prompts, lm, force=cfg.force) if cfg.prompts else None
    if cfg.shared:
        if prompts is None or len(prompts) != 1:
            raise fl.FutureLensError(f"--shared needs exactly one learned prompt, got {0 if prompts is None else len(prompts)}.")
        prompts = next(iter(prompts.values()))
    grid = lens_grid(
        lm,
        cfg.text,
        prompts,
        layers=cfg.layers or None,
        rollout=cfg.rollout,
        top_k=cfg.top_k,
        fixed_prompt=cfg.fixed_prompt,
        chunk_size=cfg.chunk_size,
        progress=True,
    )
    path = grid.save_html(cfg.out)
    typer.echo(grid.to_text(width=cfg.width))
    typer.echo(f"{grid.method}; wrote {path}")


def _text_argument(fn, help: str):
    """Make ``--text`` of a `command` wrapper the first positional argument: `futurelens lens "Marty McFly from"`."""
    import inspect

    sig = inspect.signature(fn)
    params = [
        p.replace(default=typer.Argument(p.default.default, help=help, show_default=True)) if p.name == "text" else p
        for p in sig.parameters.values()
    ]
    fn.__signature__ = sig.replace(parameters=params)
    return fn


def _register() -> None:
    from .config import command, field_docs
    from .data.prefixes import DataConfig
    from .data.states import CacheConfig
    from .evaluate import EvalConfig
    from .train import TrainConfig
    from .pipeline import PipelineConfig, run
    from .lens.compute import LensConfig

    app.command(
        "demo",
        help="The whole experiment on the embedded default model (offline, CPU, a few minutes): dataset, state cache, "
        "soft prompts, all five methods evaluated, the paper's figure and a lens page.",
    )(command(PipelineConfig, run))
    app.command("data", help="Build the Future Lens prefix dataset: prefixes, real next tokens, the model's continuation.")(
        command(DataConfig, _data)
    )
    app.command("cache", help="Cache each prefix's hidden states at every layer, in resumable shards.")(
        command(CacheConfig, _cache)
    )
    app.command("lens", help="The Future Lens grid of a text: per layer and token, the logit lens and a rolled-out phrase, as HTML.")(
        _text_argument(command(LensConfig, _lens), field_docs(LensConfig)["text"])
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
