"""A run as pushed to the hub: what a run folder holds, its manifest, its model card, and `push`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FutureLensError
from ..secrets import redact, safe_config
from .cache import INDEX
from .dataset import META_FILE, read_meta
from .lens import PAGE
from .probes import PROBES_DIR, data_fingerprint, kept_fits, read_probe
from .prompts import prompt_key, read_prompt
from .results import FIGURES, RESULTS
from .run import CACHE, DATA, EVAL, PROMPTS
from .source import MANIFEST, _layer_span, hub_id

CARD = "README.md"


@dataclass
class PushConfig:
    """Settings of `futurelens push`: upload a run's prompts, fitted probes and results, with a model card."""

    run_dir: str = "runs/demo"
    """A run folder (`futurelens demo --out`, or one with prompts/, eval/, data/, cache/), or a folder of prompts."""
    repo_id: str = ""
    """Hub repository to create or update: owner/name."""
    private: bool = False
    """Create the repository as private (an existing one keeps its visibility)."""
    revision: str = ""
    """Branch to commit to (empty = the default branch)."""
    message: str = "Upload Future Lens artifacts (futurelens push)"
    """Commit message."""


def _first(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.exists()), None)


def collect_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What a run folder holds for the hub: ``{"prompts": [files], "probes": [files], "results": file, ...}``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FutureLensError(f"No run folder at {run}: pass the folder `futurelens demo --out` (or train/eval) wrote.")
    prompts_dir = _first(run / PROMPTS, run)
    prompts = sorted(p for p in prompts_dir.glob("layer-*.safetensors")) if prompts_dir else []
    probes_dir = _first(run / EVAL / PROBES_DIR, run / PROBES_DIR)
    probes = kept_fits(probes_dir)[0] if probes_dir else []
    eval_dir = _first(run / EVAL, run)
    found = {
        "run": run,
        "prompts": prompts,
        "probes": probes,
        "results": _first(eval_dir / RESULTS) if eval_dir else None,
        "maps": sorted((prompts_dir / "maps").glob("layer-*-to-*.safetensors")) if prompts_dir else [],
        "figures": [f for f in (eval_dir / name for name in FIGURES.values()) if eval_dir and f.exists()],
        "data": _first(run / DATA / META_FILE),
        "cache": _first(run / CACHE / INDEX),
        "lens": _first(run / PAGE),
    }
    if not prompts and not probes and found["results"] is None:
        raise FutureLensError(
            f"{run} holds nothing to push: no soft prompts (prompts/layer-*.safetensors), fitted probes "
            "(eval/probes/) or results (eval/results.csv)."
        )
    return found


def _fingerprint(found: dict) -> str | None:
    if found["cache"] is None:
        return None
    from ..data.states import StateCache

    try:
        return data_fingerprint(StateCache(found["cache"].parent))
    except FutureLensError:
        return None


def manifest(found: dict, repo_id: str) -> dict[str, Any]:
    """The pushed repository's ``futurelens.json``: model, layers, data and its fingerprint, settings, files."""
    from .. import __version__

    prompts = {}
    model = None
    settings: dict = {}
    prompt_data = None
    for f in found["prompts"]:
        _, meta = read_prompt(f)
        if meta["format"] != "futurelens":
            continue
        prompts[str(prompt_key(meta["layer"], meta["target_layer"])).replace(" ", "")] = f"prompts/{f.name}"
        model = model or meta.get("model")
        settings = settings or meta.get("config", {})
        prompt_data = prompt_data or meta.get("data")
    probes = []
    for f in found["probes"]:
        _, meta = read_probe(f)
        probes.append({"file": f"probes/{f.name}", "kind": meta["kind"], "layer": meta["layer"], "data": meta["data"],
                       "settings": meta["settings"]})
        model = model or meta["model"]
    data = read_meta(found["data"].parent) if found["data"] else {}
    if not model:
        model = data.get("model")
    fingerprint = _fingerprint(found) or prompt_data or next((p["data"] for p in probes), None)
    return safe_config({
        "format": "futurelens-run/1",
        "futurelens": __version__,
        "repo_id": repo_id,
        "model": model,
        "prompt_layers": sorted({int(k.strip("(").split(",")[0]) for k in prompts}),
        "prompts": dict(sorted(prompts.items(), key=lambda kv: (int(kv[0].strip("(").split(",")[0]), kv[0]))),
        "probes": probes,
        "train_settings": {k: v for k, v in settings.items() if k not in ("cache", "out")},
        "data": {
            "fingerprint": fingerprint,
            "source": data.get("config", {}).get("source"),
            "n_kept": data.get("n_kept"), "n_train": data.get("n_train"), "n_test": data.get("n_test"),
            "n_candidates": data.get("n_candidates"), "n_dropped": data.get("n_dropped"),
            "tokenizer_hash": data.get("tokenizer_hash"),
            "config": data.get("config", {}),
        },
        "results": "results/results.csv" if found["results"] else None,
        "figures": [f"results/{f.name}" for f in found["figures"]],
    })


def model_card(info: dict[str, Any], results: Any = None) -> str:
    """The README.md of a pushed run: what it is, how to load it, model, layers, data, settings, results."""
    from ..figure import precision_table

    repo, model = info["repo_id"], info["model"] or "unknown"
    layers = info["prompt_layers"]
    lines = [
        "---",
        "library_name: futurelens",
        "tags:\n- futurelens\n- interpretability\n- future-lens\n- soft-prompt",
    ]
    if model and hub_id(f"hf:{model}") is not None and "/" in model:
        lines.append(f"base_model: {model}")
    lines += [
        "---",
        "",
        f"# Future Lens artifacts for `{model}`",
        "",
        "Trained with [futurelens](https://arxiv.org/abs/2311.04897) (Pal et al., *Future Lens*, CoNLL 2023): what a single "
        "hidden state already knows about the tokens after the next one.",
        "",
        f"- **Model**: `{model}`",
        f"- **Soft prompts**: {_layer_span(layers) or 'none'}" + (" (`prompts/layer-<L>.safetensors`)" if layers else ""),
    ]
    kinds: dict[str, list[int]] = {}
    for p in info["probes"]:
        kinds.setdefault(p["kind"], []).append(p["layer"])
    names = {"vocab": "vocabulary probes", "linear": "linear model approximations", "mlp": "MLP probes"}
    for kind, at in sorted(kinds.items()):
        lines.append(f"- **Fitted {names.get(kind, kind)}**: {_layer_span(at)} (`probes/{kind}-layer-<L>.safetensors`)")
    lines.append(f"- **futurelens**: {info['futurelens']}")
    lines += ["", "## How to load it", "", "```python", "import futurelens as fl", "",
              f'lm = fl.load_model("{model}")',
              f'prompts = fl.load_prompts("{repo}", lm)      # {{layer: [P, d_model]}}; pin a commit with "{repo}@<revision>"',
              f'grid = fl.lens(lm, "Marty McFly from", prompts="{repo}")   # displays inline in a notebook',
              "```", "", "```bash",
              f'futurelens lens "Marty McFly from" --model {model} --prompts {repo} --out lens.html']
    if info["probes"]:
        lines.append(f"futurelens eval --cache runs/cache --prompts {repo} --probes {repo} --out runs/eval")
    lines += ["```", "", "Every loader records the revision it read (the lens page shows it in its header).", ""]

    data = info["data"]
    lines += ["## Data", ""]
    cfg = data.get("config") or {}
    rows = [
        ("source", data.get("source")),
        ("prefixes kept (train / test)", f"{data.get('n_kept')}" + (f" ({data['n_train']} / {data['n_test']})"
         if data.get("n_train") is not None else "") if data.get("n_kept") is not None else None),
        ("candidates labelled / dropped by the correctness filter",
         f"{data.get('n_candidates')} / {data.get('n_dropped')}" if data.get("n_candidates") is not None else None),
        ("prefix length", f"{cfg.get('min_len')}..{cfg.get('max_len')} tokens" if cfg.get("max_len") else None),
        ("split", f"by document, test fraction {cfg.get('test_fraction')}, seed {cfg.get('seed')}" if "seed" in cfg else None),
        ("tokenizer hash", data.get("tokenizer_hash")),
        ("data fingerprint", data.get("fingerprint")),
    ]
    lines += ["| | |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in rows if v not in (None, "None")]
    lines.append("")
    if info["train_settings"]:
        lines += ["## Training settings (soft prompts)", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | `{v}` |" for k, v in info["train_settings"].items() if v not in ("", None)]
        lines.append("")
    if results is not None:
        lines += ["## Results (held-out test split)", "", "```"]
        ks = sorted({int(k) for k in results[results["metric"] == "precision"]["k"].dropna()})
        for k in sorted({ks[0], ks[-1]}) if ks else []:
            try:
                lines += [precision_table(results, k=k), ""]
            except FutureLensError:
                pass
        lines += ["```", "", "`results/results.csv` is the whole table (method, layer, n, metric, k, value)."]
        if "results/precision.png" in info["figures"]:
            lines += ["", "![precision@1 per layer for each N](results/precision.png)"]
        lines.append("")
    lines += ["## Files", "", f"`{MANIFEST}` lists every file with what it belongs to (model, layer, data fingerprint, "
              "settings); each safetensors file carries the same in its metadata, and futurelens refuses a file "
              "that belongs to another model, layer or dataset."]
    return redact("\n".join(lines) + "\n")


def stage_run(found: dict, repo_id: str, into: Path) -> dict[str, Any]:
    """Lay a run out in ``into`` as it will be on the hub; returns the manifest."""
    from .results import load_table

    info = manifest(found, repo_id)
    for f in found["prompts"]:
        _copy(f, into / "prompts" / f.name)
    for f in found.get("maps", []):  # a cross-model run's state maps, where `evaluate` looks for them
        _copy(f, into / "prompts" / "maps" / f.name)
    for f in found["probes"]:
        _copy(f, into / "probes" / f.name)
    results = None
    if found["results"] is not None:
        _copy(found["results"], into / "results" / RESULTS)
        results = load_table(found["results"])
    for f in found["figures"]:
        _copy(f, into / "results" / f.name)
    if found["data"] is not None:
        (into / "data").mkdir(parents=True, exist_ok=True)
        (into / "data" / META_FILE).write_text(redact(json.dumps(safe_config(read_meta(found["data"].parent)), indent=2)))
    (into / MANIFEST).write_text(redact(json.dumps(info, indent=2)))
    (into / CARD).write_text(model_card(info, results))
    return info


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


@dataclass
class PushResult:
    repo_id: str
    revision: str | None
    url: str
    files: list[str]
    card: str


def push(
    run_dir: "str | os.PathLike | PushConfig",
    repo_id: str | None = None,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    api: Any = None,
    token: str | None = None,
) -> PushResult:
    """Upload a run's prompts, fitted probes and results with a generated model card, in one commit.

    ``fl.push("runs/demo", "me/future-lens-smollm2")``; `futurelens push RUN_DIR REPO_ID` is the same (a
    `PushConfig` works as the first argument too). ``api`` is a ``huggingface_hub.HfApi`` (default: a new one,
    which reads HF_TOKEN or the saved login; ``token`` overrides). The token is never written anywhere.
    Returns the repo, the commit it made (``revision``: load it pinned with ``"<repo_id>@<revision>"``), the
    files and the card.
    """
    if isinstance(run_dir, PushConfig):
        cfg = run_dir
    else:
        cfg = PushConfig(run_dir=str(run_dir), repo_id=repo_id or "", private=private, revision=revision or "",
                         **({"message": message} if message else {}))
    if hub_id(f"hf:{cfg.repo_id}") is None or "@" in cfg.repo_id:
        raise FutureLensError(f"{cfg.repo_id!r} is not a hub repo id: give owner/name.")
    found = collect_run(cfg.run_dir)
    if api is None:
        import huggingface_hub

        api = huggingface_hub.HfApi(token=token, library_name="futurelens")
    with tempfile.TemporaryDirectory(prefix="futurelens-push-") as tmp:
        staging = Path(tmp)
        stage_run(found, cfg.repo_id, staging)
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        card = (staging / CARD).read_text()
        try:
            url = api.create_repo(cfg.repo_id, private=cfg.private or None, exist_ok=True, repo_type="model")
            commit = api.upload_folder(repo_id=cfg.repo_id, folder_path=str(staging), repo_type="model",
                                       commit_message=cfg.message, revision=cfg.revision or None)
        except Exception as err:  # noqa: BLE001 - auth, network, permissions: one message, no token
            raise FutureLensError(
                f"Could not push to {cfg.repo_id} ({type(err).__name__}: {redact(str(err))[:400]}). Log in with "
                "`hf auth login` or set HF_TOKEN (a write token)."
            ) from err
    revision = getattr(commit, "oid", None)
    return PushResult(cfg.repo_id, revision, str(getattr(commit, "commit_url", None) or url), files, card)
