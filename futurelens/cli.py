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


def _register() -> None:
    from .config import command
    from .data.prefixes import DataConfig
    from .demo import DemoConfig, run

    app.command("demo", help="The main job on the embedded default model (offline, CPU): what each layer's state anticipates.")(
        command(DemoConfig, run)
    )
    app.command("data", help="Build the Future Lens prefix dataset: prefixes, real next tokens, the model's continuation.")(
        command(DataConfig, _data)
    )


_register()


@app.callback()
def _root() -> None:
    """Future Lens: decode the tokens a single hidden state anticipates."""


def main() -> None:
    app()
