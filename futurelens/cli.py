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


def _register() -> None:
    from .config import command
    from .data.prefixes import DataConfig
    from .data.states import CacheConfig
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


_register()


@app.callback()
def _root() -> None:
    """Future Lens: decode the tokens a single hidden state anticipates."""


def main() -> None:
    app()
