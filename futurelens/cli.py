"""The `futurelens` command: thin wrappers that parse a config and call the library.

A `FutureLensError` (bad input, an unusable environment) prints its message alone on stderr and
exits with status 1; `futurelens --debug ...` or ``FUTURELENS_DEBUG=1`` shows the traceback.
Arguments are checked before a model loads. Ctrl-C says what was kept and how to resume (status 130).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

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
HUB_PROBE_TIMEOUT = 3.0
"""Seconds to wait for a TCP connection to the Hugging Face hub before treating it as unreachable."""

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


def _kept(out: str | os.PathLike, pattern: str = "*") -> list[str]:
    folder = Path(out)
    return sorted(p.name for p in folder.glob(pattern)) if folder.is_dir() else []


# --------------------------------------------------------------------------- loading the model


def _quiet_transformers() -> None:
    """No "Loading weights" bar and no info chatter from transformers on every command."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    _restore.append(transformers.utils.logging.enable_progress_bar)


def _unreachable(endpoint: str) -> str | None:
    """Why the hub cannot be reached (None if a TCP connection opens within `HUB_PROBE_TIMEOUT`)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the hub client goes through a proxy; a direct probe would say nothing about it
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)),
                                 timeout=HUB_PROBE_TIMEOUT).close()
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    return None


def _check_hub(name: str, remote: bool) -> str:
    """Fail at once, not after the hub client's retries, when the hub is offline and ``name`` is not cached.

    Returns a note to add to a load error ("" if none). Only for names that are neither the embedded
    default nor an existing folder.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    from .models import DEFAULT_MODEL, EMBEDDED

    if name in EMBEDDED or Path(name).exists():
        return ""
    cache = constants.HF_HUB_CACHE
    try:
        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id: it was meant as a folder
        raise FutureLensError(
            f"{name!r} is not an existing folder, nor a hub id (owner/name): check the path, or use the "
            f"embedded default {DEFAULT_MODEL!r}."
        ) from None
    if constants.HF_HUB_OFFLINE:
        if cached:
            return ""
        raise FutureLensError(
            f"{name!r} is not a local folder and not in the Hugging Face cache ({cache}), and HF_HUB_OFFLINE is set, "
            f"so the hub cannot be asked: unset HF_HUB_OFFLINE, pass a local folder, or use the embedded default "
            f"{DEFAULT_MODEL!r}."
        )
    reason = _unreachable(constants.ENDPOINT)
    if reason is None:
        return ""
    # The hub client would retry for ~50 s; offline mode makes it use the cache (or fail) at once.
    previous, env = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"

    def restore() -> None:
        constants.HF_HUB_OFFLINE = previous
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env

    _restore.append(restore)
    note = f"The Hugging Face hub at {constants.ENDPOINT} is unreachable from here ({reason})"
    if cached:
        typer.echo(f"{note}; using the cached copy of {name!r}.", err=True)
        return ""
    if remote:
        return f"{note}, and {name!r} is not in the hub cache ({cache}): NDIF runs need its config and tokenizer from the hub."
    raise FutureLensError(
        f"{note}, and {name!r} is neither a local folder nor in the hub cache ({cache}): check your network "
        f"(or HF_ENDPOINT), pass a local folder, or use the embedded default {DEFAULT_MODEL!r}."
    )


def _load(model: str, remote: bool = False, max_request_mb: float = MAX_REQUEST_MB) -> Any:
    """`futurelens.load_model` the way every command does it: quiet, and quick to fail with no hub."""
    import futurelens as fl

    if not max_request_mb > 0:
        raise FutureLensError(f"--max-request-mb must be > 0 (megabytes per NDIF request), got {max_request_mb:g}.")
    _quiet_transformers()
    note = _check_hub(model, remote)
    try:
        lm = fl.load_model(model, remote=True if remote else False)
        lm.max_request_mb = max_request_mb
        return lm
    except FutureLensError as err:
        if note and isinstance(err.__cause__, OSError):  # the hub could not provide it (not, e.g., a missing key)
            raise FutureLensError(f"{err}\n{note}") from err
        raise


# --------------------------------------------------------------------------- argument checks (before any load)


def _check_source(cfg: Any) -> None:
    from .data.corpus import documents

    documents(cfg.source, getattr(cfg, "text_field", "text"))  # a missing file says so; 'hf:' streams, checked later
    if not 1 <= cfg.min_len <= cfg.max_len:
        raise FutureLensError(f"Need 1 <= --min-len <= --max-len, got {cfg.min_len} and {cfg.max_len}.")
    if cfg.n_prefixes < 1:
        raise FutureLensError(f"--n-prefixes must be >= 1, got {cfg.n_prefixes}.")


def _check_data(cfg: Any) -> None:
    from .data.prefixes import check_config

    check_config(cfg)  # every setting, and the source (a missing file says so; 'hf:' streams, checked later)


def _check_cache(cfg: Any) -> dict:
    from .data.prefixes import META_FILE
    from .data.states import DTYPES

    if cfg.dtype not in DTYPES:
        raise FutureLensError(f"--dtype must be one of {', '.join(DTYPES)}, not {cfg.dtype!r}.")
    unknown = sorted(set(cfg.splits) - {"train", "test"})
    if unknown:
        raise FutureLensError(f"Unknown split(s) {unknown}: choose from train, test.")
    if cfg.shard_size < 1 or cfg.batch_size < 1:
        raise FutureLensError("--shard-size and --batch-size must be >= 1.")
    meta = Path(cfg.data) / META_FILE
    if not meta.is_file():
        raise FutureLensError(f"No dataset at {cfg.data} (no {META_FILE}): build one with `futurelens data --out {cfg.data}`.")
    import json

    return json.loads(meta.read_text())


def _open_cache(path: str) -> Any:
    from .data.states import INDEX, StateCache

    if not (Path(path) / INDEX).is_file():
        raise FutureLensError(f"No state cache at {path} (no {INDEX}): build one with `futurelens cache --out {path}`.")
    return StateCache(path)


# --------------------------------------------------------------------------- the commands


def _data(cfg: Any, **where: Any) -> None:
    import json

    from futurelens.data.prefixes import META_FILE, build_prefixes

    _check_data(cfg)
    out = build_prefixes(_load(cfg.model, **where), cfg)
    meta = json.loads((out / META_FILE).read_text())
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
    import json

    from futurelens.data.states import INDEX, StateCache, build_cache

    meta = _check_cache(cfg)
    index = Path(cfg.out) / INDEX
    if index.is_file() and not json.loads(index.read_text()).get("complete", True):
        done = len(_kept(cfg.out, "*/shard-*.safetensors"))
        typer.echo(f"Resuming the cache in {cfg.out}: {done} shard(s) already written are kept.", err=True)
    out = build_cache(_load(cfg.model or meta["model"], **where), cfg)
    cache = StateCache(out)
    sizes = ", ".join(f"{cache.size(s)} {s}" for s in cfg.splits)
    typer.echo(f"Cached layers {cache.layers[0]}..{cache.layers[-1]} ({len(cache.layers)}) for {sizes} prefixes in {out}.")


def _resume_notes(cfg: Any, layers: list[int]) -> list[str]:
    """What `train` will reuse in ``cfg.out``: finished prompts and checkpoints to resume from."""
    from futurelens.artifacts import prompt_path

    notes = []
    for layer, target in [(layer, t) for layer in layers for t in (cfg.target_layers or [layer])]:
        final = prompt_path(cfg.out, layer, target)
        ckpt = final.with_name(final.name.replace(".safetensors", ".ckpt.pt"))
        if target != layer:
            layer = f"{layer} -> {target}"
        if final.exists():
            notes.append(f"layer {layer}: already trained ({final}), kept")
        elif ckpt.exists():
            where = ""
            try:
                import torch

                state = torch.load(ckpt, weights_only=False, map_location="cpu")["state"]
                where = f" at epoch {state['epoch'] + 1}, batch {state['batch']}"
            except Exception:  # noqa: BLE001 - a note only; train itself checks the checkpoint
                pass
            notes.append(f"layer {layer}: resuming from {ckpt}{where}")
    return notes


def _train(cfg: Any, **where: Any) -> None:
    from futurelens.train import train

    if cfg.loss not in ("kl", "ce"):
        raise FutureLensError(f"--loss must be 'kl' or 'ce', not {cfg.loss!r}.")
    if cfg.optimizer not in ("adamw", "adam", "sgd"):
        raise FutureLensError(f"--optimizer must be 'adamw', 'adam' or 'sgd', not {cfg.optimizer!r}.")
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
    from futurelens.evaluate import METHODS, evaluate
    from futurelens.figure import precision_table

    unknown = sorted(set(cfg.methods) - set(METHODS))
    if unknown:
        raise FutureLensError(f"Unknown method(s) {unknown}: choose from {', '.join(METHODS)}.")
    cache = _open_cache(cfg.cache)
    map_large_blocks()
    df = evaluate(cfg, lm=_load(cfg.model or cache.settings["model"], **where))
    typer.echo(precision_table(df, against=cfg.against))
    extra = ", target_layers.png" if (Path(cfg.out) / "target_layers.png").exists() and cfg.target_layers else ""
    typer.echo(f"Wrote results.csv (scored against the model and the text), precision.png, surprisal.png{extra} to {cfg.out}.")


def _lens(cfg: Any, **where: Any) -> None:
    from futurelens.allocator import map_large_blocks
    from futurelens.artifacts import hub_id, load_prompts
    from futurelens.lens.compute import FIXED, lens
    from futurelens.methods import PAPER_PROMPT

    if cfg.rollout < 0 or cfg.top_k < 1 or cfg.chunk_size < 1:
        raise FutureLensError("--rollout must be >= 0, --top-k and --chunk-size >= 1.")
    if cfg.prompt and cfg.prompts:
        raise FutureLensError("Give --prompt (one prompt, every row's state patched at its layer) or --prompts (one per "
                              "layer), not both.")
    given = cfg.prompt or cfg.prompts
    if cfg.prompt and cfg.shared:
        raise FutureLensError("--shared goes with --prompts; --prompt already uses its one prompt for every row.")
    if given and hub_id(given) is None:
        # the files exist and are soft prompts (a bare tensor has its --layer), before the model loads
        load_prompts(given, layer=cfg.layer if Path(given).is_file() else None, force=cfg.force)
    map_large_blocks()
    lm = _load(cfg.model, **where)
    if given:
        prompts = given
    else:
        prompts = FIXED if cfg.fixed or cfg.fixed_prompt != PAPER_PROMPT else None  # None: the shipped ones, if any
    layer = cfg.layer
    if cfg.prompt and layer is None:  # one prompt: every row goes to the layer it records
        from futurelens.artifacts import PromptSet

        loaded = load_prompts(given, lm, force=cfg.force, revision=cfg.revision or None)
        if len(loaded) != 1:
            raise FutureLensError(f"--prompt {given} holds prompts for layers {sorted(loaded)}: say which with --layer.")
        layer = next(iter(loaded))
        prompts = PromptSet(loaded, loaded.source, loaded.meta)
    grid = lens(
        lm,
        cfg.text,
        prompts,
        layer=layer,
        layers=cfg.layers or None,
        shared=cfg.shared,
        rollout=cfg.rollout,
        top_k=cfg.top_k,
        fixed_prompt=cfg.fixed_prompt,
        chunk_size=cfg.chunk_size,
        progress=True,
        force=cfg.force,
        revision=cfg.revision or None,
        probes=cfg.probes or None,
        target_layer=cfg.target_layer,
    )
    path = grid.save_html(cfg.out)
    typer.echo(grid.to_text(width=cfg.width))
    typer.echo(f"{grid.method}; prompts: {grid.source}; wrote {path}")


def _push(cfg: Any) -> None:
    from futurelens.artifacts import push

    result = push(cfg)
    typer.echo(f"Pushed {len(result.files)} files to {result.repo_id} (revision {result.revision or 'unknown'}): "
               f"{', '.join(result.files)}")
    typer.echo(f"Load them with: futurelens lens \"...\" --prompts {result.repo_id}@{result.revision or 'main'}")


def _demo(cfg: Any, **where: Any) -> None:
    from .pipeline import run

    _check_source(cfg)
    run(cfg, lm=_load(cfg.model, **where))


def _eval_note(cfg: Any) -> str:
    from .evaluate import interrupted_note

    return interrupted_note(cfg)


# What Ctrl-C leaves behind, per command, and how to go on.
_INTERRUPTED: dict[str, Callable[[Any], str]] = {
    "data": lambda cfg: _data_note(cfg),
    "cache": lambda cfg: f"Kept {len(_kept(cfg.out, '*/shard-*.safetensors'))} finished shard(s) in {cfg.out}; run the "
    "same command again to continue at the first missing shard.",
    "train": lambda cfg: f"Kept in {cfg.out}: {', '.join(_kept(cfg.out, 'layer-*')) or 'nothing yet'} (finished prompts "
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

    if not remote:
        raise FutureLensError(
            "futurelens doctor checks the remote operations on NDIF: run it as `futurelens doctor MODEL --remote` "
            "(with an NDIF API key set)."
        )
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
    from .lens.compute import LensConfig
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
