"""The `futurelens` command: thin wrappers that parse a config and call the library.

A `FutureLensError` (bad input, an unusable environment) prints its message alone on stderr and
exits with status 1; `futurelens --debug ...` or ``FUTURELENS_DEBUG=1`` shows the traceback.
Arguments are checked before a model loads. Ctrl-C says what was kept and how to resume (status 130).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import typer

from .errors import FutureLensError

# Locals stay out of tracebacks: they can hold an API key.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Future Lens: decode the tokens a single hidden state anticipates. An error prints its message alone; "
    "--debug (or FUTURELENS_DEBUG=1) shows the traceback.",
    pretty_exceptions_show_locals=False,
)

REMOTE_HELP = (
    "Run the model on NDIF (remote=True): --model must be a hub id NDIF serves; no weights are downloaded. "
    "Needs an NDIF API key (NDIF_API_KEY or nnsight.CONFIG.set_default_api_key)."
)
MAX_REQUEST_MB = 32.0
"""The CLI's default for ``LensModel.max_request_mb``, the same as the library's."""
REQUEST_HELP = (
    "With --remote: the most megabytes of tensors one NDIF request may send or bring back; every stage splits its "
    "work into as many requests as keep each under it (lower it if NDIF refuses a request as too large)."
)
_restore: list[Callable[[], None]] = []  # undo process-wide settings a command changed (tests run many in one process)


# --------------------------------------------------------------------------- errors, Ctrl-C, the version


_DEBUG = False  # `futurelens --debug`: set by the root callback on every invocation


def _debug() -> bool:
    return _DEBUG or os.environ.get("FUTURELENS_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _guard(run: Callable[..., Any], interrupted: Callable[[Any], str]) -> Callable[..., Any]:
    """``run`` with the CLI's error contract: a FutureLensError is its message, Ctrl-C says what was kept."""

    def guarded(cfg: Any, **extra: Any) -> Any:
        try:
            return run(cfg, **extra)
        except FutureLensError as err:
            if _debug():
                raise
            typer.echo(f"Error: {err}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as err:
            # A library step may say itself what it kept (futurelens.data.prefixes.Interrupted); else the command does.
            typer.echo(f"\n{err}" if str(err) else f"\nInterrupted. {interrupted(cfg)}", err=True)
            if _debug():
                raise
            raise typer.Exit(130) from None
        finally:
            while _restore:
                _restore.pop()()

    return guarded


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("futurelens")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from . import __version__

        return __version__


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"futurelens {_version()}")
        raise typer.Exit()


# --------------------------------------------------------------------------- loading the model


def _quiet_transformers() -> None:
    """No "Loading weights" bar and no info chatter from transformers on every command."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    _restore.append(transformers.utils.logging.enable_progress_bar)


def _load(model: str, remote: bool = False, max_request_mb: float = MAX_REQUEST_MB) -> Any:
    """`futurelens.load_model` the way every command does it: quiet (its checks are the library's)."""
    import futurelens as fl

    _quiet_transformers()
    return fl.load_model(model, remote=True if remote else False, max_request_mb=max_request_mb)


# --------------------------------------------------------------------------- argument checks (before any load)


def _check_data(cfg: Any) -> None:
    from .data.prefixes import check_config

    check_config(cfg)  # every setting, and the source (a missing file says so; 'hf:' streams, checked later)


def _check_cache(cfg: Any) -> dict:
    from .artifacts.dataset import read_meta
    from .data.states import check_config

    check_config(cfg)
    return read_meta(cfg.data)


def _open_cache(path: str) -> Any:
    from .data.states import StateCache

    return StateCache(path)


# --------------------------------------------------------------------------- the commands


def _data(cfg: Any, **where: Any) -> None:
    from futurelens.artifacts.dataset import read_meta
    from futurelens.data.prefixes import build_prefixes

    _check_data(cfg)
    out = build_prefixes(_load(cfg.model, **where), cfg)
    meta = read_meta(out)
    unused = meta.get("n_unused", 0)
    typer.echo(
        f"Wrote {meta['n_kept']} prefixes ({meta['n_train']} train / {meta['n_test']} test) to {out}; "
        f"the correctness filter dropped {meta['n_dropped']} of {meta['n_candidates']} candidates labelled"
        + (f" ({unused} more passed it but were not needed)." if unused else ".")
    )


def _data_note(cfg: Any) -> str:
    from .data import prefixes

    note = getattr(prefixes, "resume_note", None)
    return note(cfg.out) if note is not None else f"{cfg.out} was not written; run the same command again."


def _cache(cfg: Any, **where: Any) -> None:
    from futurelens.artifacts.cache import kept_shards, read_index
    from futurelens.data.states import StateCache, build_cache

    meta = _check_cache(cfg)
    index = read_index(cfg.out)
    if index is not None and not index.get("complete", True):
        done = len(kept_shards(cfg.out))
        typer.echo(f"Resuming the cache in {cfg.out}: {done} shard(s) already written are kept.", err=True)
    out = build_cache(_load(cfg.model or meta["model"], **where), cfg)
    cache = StateCache(out)
    sizes = ", ".join(f"{cache.size(s)} {s}" for s in cfg.splits)
    typer.echo(f"Cached layers {cache.layers[0]}..{cache.layers[-1]} ({len(cache.layers)}) for {sizes} prefixes in {out}.")


def _resume_notes(cfg: Any, layers: list[int]) -> list[str]:
    """What `train` will reuse in ``cfg.out``: finished prompts and checkpoints to resume from."""
    from futurelens.artifacts import prompt_checkpoint_path, prompt_path
    from futurelens.artifacts.prompts import checkpoint_position

    notes = []
    for layer, target in [(layer, t) for layer in layers for t in (cfg.target_layers or [layer])]:
        final = prompt_path(cfg.out, layer, target)
        ckpt = prompt_checkpoint_path(cfg.out, layer, target)
        if target != layer:
            layer = f"{layer} -> {target}"
        if final.exists():
            notes.append(f"layer {layer}: already trained ({final}), kept")
        elif ckpt.exists():
            state = checkpoint_position(ckpt)
            where = f" at epoch {state['epoch'] + 1}, batch {state['batch']}" if state else ""
            notes.append(f"layer {layer}: resuming from {ckpt}{where}")
    return notes


def _train(cfg: Any, **where: Any) -> None:
    from futurelens.train import check_config, train

    check_config(cfg)
    cache = _open_cache(cfg.cache)
    states = _open_cache(cfg.source_cache) if cfg.source_cache else cache  # --source-cache: model A's layers
    for note in _resume_notes(cfg, cfg.layers or states.layers):
        typer.echo(f"Resuming in {cfg.out}: {note}.", err=True)
    prompts = train(cfg, lm=_load(cfg.model or cache.settings["model"], **where))
    from futurelens.artifacts import source_layers

    pairs = sorted(k for k in prompts if isinstance(k, tuple))
    targets = f" and (layer, target layer) pairs {pairs}" if pairs else ""
    same = sorted(k for k in prompts if isinstance(k, int))
    typer.echo(f"Trained {len(prompts)} soft prompts: layers {same or 'none'} at their own layer{targets} "
               f"(read at {list(source_layers(prompts))}) in {cfg.out}.")


def _eval(cfg: Any, **where: Any) -> None:
    from futurelens.allocator import map_large_blocks
    from futurelens.evaluate import check_config, evaluate
    from futurelens.figure import precision_table

    check_config(cfg)
    cache = _open_cache(cfg.cache)
    map_large_blocks()
    df = evaluate(cfg, lm=_load(cfg.model or cache.settings["model"], **where))
    typer.echo(precision_table(df, against=cfg.against))
    extra = ", target_layers.png" if (Path(cfg.out) / "target_layers.png").exists() and cfg.target_layers else ""
    typer.echo(f"Wrote results.csv (scored against the model and the text), precision.png, surprisal.png{extra} to {cfg.out}.")


def _lens(cfg: Any, **where: Any) -> None:
    from futurelens.allocator import map_large_blocks
    from futurelens.lens.config import check_config, run

    check_config(cfg)
    map_large_blocks()
    grid = run(cfg, lm=_load(cfg.model, **where))
    typer.echo(grid.to_text(width=cfg.width))
    typer.echo(f"{grid.method}; prompts: {grid.source}; wrote {Path(cfg.out)}")


def _push(cfg: Any) -> None:
    from futurelens.artifacts import push

    result = push(cfg)
    typer.echo(f"Pushed {len(result.files)} files to {result.repo_id} (revision {result.revision or 'unknown'}): "
               f"{', '.join(result.files)}")
    typer.echo(f"Load them with: futurelens lens \"...\" --prompts {result.repo_id}@{result.revision or 'main'}")


def _demo(cfg: Any, **where: Any) -> None:
    from .pipeline import check_config, run

    check_config(cfg)
    run(cfg, lm=_load(cfg.model, **where))


def _kept_shards(out: str) -> list:
    from .artifacts.cache import kept_shards

    return kept_shards(out)


def _kept_prompts(out: str) -> list[str]:
    from .artifacts.prompts import kept_prompts

    return kept_prompts(out)


def _eval_note(cfg: Any) -> str:
    from .evaluate import interrupted_note

    return interrupted_note(cfg)


# What Ctrl-C leaves behind, per command, and how to go on.
_INTERRUPTED: dict[str, Callable[[Any], str]] = {
    "data": lambda cfg: _data_note(cfg),
    "cache": lambda cfg: f"Kept {len(_kept_shards(cfg.out))} finished shard(s) in {cfg.out}; run the "
    "same command again to continue at the first missing shard.",
    "train": lambda cfg: f"Kept in {cfg.out}: {', '.join(_kept_prompts(cfg.out)) or 'nothing yet'} (finished prompts "
    "*.safetensors, checkpoints *.ckpt.pt); run the same command again to resume from them.",
    "eval": lambda cfg: _eval_note(cfg),
    "lens": lambda cfg: f"{cfg.out} was not written; run the same command again.",
    "doctor": lambda cfg: "Nothing is kept by the checks; run the same command again.",
    "push": lambda cfg: f"The upload to {cfg.repo_id} may be incomplete (one commit: nothing or all of it lands); run "
    "the same command again.",
    "demo": lambda cfg: f"Every finished stage is kept under {cfg.out} and the cache and training keep their partial "
    "progress; run the same command again to resume.",
}


def _doctor(cfg: Any, remote: bool = False, max_request_mb: float = MAX_REQUEST_MB) -> None:
    from rich.console import Console

    from . import doctor

    doctor.check_config(cfg, remote=remote)
    console = Console()
    lm = _load(cfg.model, remote=True, max_request_mb=max_request_mb)
    results = doctor.run(lm, cfg.only, progress=lambda r: console.print(f"{'pass' if r.ok else 'FAIL'}  {r.name}"))
    console.print(doctor.table(results, cfg.model))
    failed = [r.name for r in results if not r.ok]
    if failed:
        raise FutureLensError(f"{len(failed)} of {len(results)} remote checks failed: {', '.join(failed)}.")
    typer.echo(f"All {len(results)} remote checks passed on {cfg.model}.")


def _plan(cfg: Any) -> None:
    from .planner import run

    _quiet_transformers()
    run(cfg)


def _positional(fn, name: str, help: str):
    """Make option ``--<name>`` of a `command` wrapper its first positional argument."""
    import inspect

    sig = inspect.signature(fn)
    params = [
        p.replace(default=typer.Argument(p.default.default, help=help, show_default=True)) if p.name == name else p
        for p in sig.parameters.values()
    ]
    fn.__signature__ = sig.replace(parameters=params)
    return fn


def _text_argument(fn, help: str):
    """Make ``--text`` of a `command` wrapper the first positional argument: `futurelens lens "Marty McFly from"`."""
    return _positional(fn, "text", help)


def _register() -> None:
    from .artifacts import PushConfig
    from .config import command, field_docs, option
    from .data.prefixes import DataConfig
    from .data.states import CacheConfig
    from .doctor import DoctorConfig
    from .evaluate import EvalConfig
    from .lens.config import LensConfig
    from .pipeline import PipelineConfig
    from .train import TrainConfig

    remote = [option("remote", bool, False, "--remote", help=REMOTE_HELP),
              option("max_request_mb", float, MAX_REQUEST_MB, "--max-request-mb", help=REQUEST_HELP)]

    def cmd(cls: type, name: str, run: Callable[..., Any]) -> Callable[..., Any]:
        return command(cls, _guard(run, _INTERRUPTED[name]), extra=remote)

    app.command(
        "demo",
        help="The whole experiment on the embedded default model (offline, CPU, a few minutes): dataset, state cache, "
        "soft prompts, all five methods evaluated, the paper's figure and a lens page.",
    )(cmd(PipelineConfig, "demo", _demo))
    app.command("data", help="Build the Future Lens prefix dataset: prefixes, real next tokens, the model's continuation.")(
        cmd(DataConfig, "data", _data)
    )
    app.command("cache", help="Cache each prefix's hidden states at every layer, in resumable shards.")(
        cmd(CacheConfig, "cache", _cache)
    )
    app.command("lens", help="The Future Lens grid of a text: per layer and token, the logit lens and a rolled-out phrase, as HTML.")(
        _text_argument(cmd(LensConfig, "lens", _lens), field_docs(LensConfig)["text"])
    )
    app.command("train", help="Train a soft prompt per layer (the learned-prompt intervention) on cached states.")(
        cmd(TrainConfig, "train", _train)
    )
    app.command("eval", help="Score the methods per layer and N, against the model and the text: results.csv and the paper's figure.")(
        cmd(EvalConfig, "eval", _eval)
    )
    app.command("doctor", help="Check every remote operation against NDIF on a served model (--remote): a pass/fail "
                "table with request counts and bytes.")(
        _positional(cmd(DoctorConfig, "doctor", _doctor), "model", field_docs(DoctorConfig)["model"])
    )
    from .planner import PlanConfig

    app.command("plan", help="What a run would cost before it runs, per stage: FLOPs, time here and on A100/H100/H200, "
                "RAM, GPU memory, disk and, with --remote, NDIF requests and bytes each way (offline for shipped configs).")(
        command(PlanConfig, _guard(_plan, lambda cfg: "Nothing is written by plan; run it again."))
    )
    push_docs = field_docs(PushConfig)
    app.command("push", help="Upload a run's soft prompts, fitted probes and results to the Hugging Face hub, with a "
                "generated model card (HF_TOKEN or `hf auth login`); every loader then takes the repo id.")(
        _positional(_positional(command(PushConfig, _guard(_push, _INTERRUPTED["push"])), "run_dir", push_docs["run_dir"]),
                    "repo_id", push_docs["repo_id"])
    )


_register()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error (also FUTURELENS_DEBUG=1)."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                 help="Print futurelens' version and exit."),
) -> None:
    """Future Lens: decode the tokens a single hidden state anticipates."""
    global _DEBUG
    _DEBUG = debug


def main() -> None:
    app()
