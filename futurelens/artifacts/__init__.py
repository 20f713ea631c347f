"""Artifacts: every file futurelens writes for someone else to read, and every reader of one, in one package.

THE RULE for this package (and for any format futurelens adds):

1. **One home.** A format has one writer and one reader, in one module here:

   - `source`: where an artifact came from (`Source`, `PromptSet`), hub ids and `pull`;
   - `dataset`: the prefix dataset (``table/`` + ``futurelens.json``) and an unfinished build's shards;
   - `cache`: the hidden-state cache (``cache.json`` + safetensors shards, their checksums);
   - `prompts`: soft prompts (futurelens' own, a bare tensor as the authors' ``gptj_soft_prefix.pt``, the prompts
     shipped in the package), where training writes them, and training's checkpoints;
   - `probes`: fitted probes, their fits' checkpoints and the data fingerprint they are checked against;
   - `checkpoint`: the resumable checkpoint both of those keep (a ``torch.save``d dict with its settings);
   - `maps`: state maps between two models;
   - `ngram`: the bigram baseline's table;
   - `results`: the evaluation's table (``results.csv``: its columns and their check), ``sources.json`` and the
     figures' file names;
   - `lens`: the lens page's file;
   - `run`: a run folder's layout (one folder per stage) and ``times.json``;
   - `push`: a run as pushed to the hub, its manifest and model card.

   A stage (data, cache, train, eval, the lens, the pipeline, push, the CLI) calls these; it never opens or lays
   out such a file itself. What is presentation stays with the stage: `futurelens.figure` draws the figures and
   prints the table, `futurelens.lens.html` renders the page; they hand a drawn figure or a rendered page to
   `results.save_figure` / `lens.save_page`, which write it. Files futurelens only reads and never writes
   (a user's corpus or table, `futurelens.data.corpus` / `futurelens.data.table`; a model's own ``config.json``
   and weights, `futurelens.planner.shape` / `futurelens.embedded`) are other projects' formats, not artifacts.
2. **Every artifact says what it belongs to** — model, layer, data fingerprint, settings, format — and its
   reader refuses a wrong one with a message that names the file, what it belongs to, and what to do.
3. **Atomic writes** (`futurelens.atomic`): a reader never meets half a file.
4. **Anywhere a path goes, a hub id goes**: ``owner/name``, ``owner/name@revision`` or ``hf:owner/name``.
   What was loaded records where from (`Source`: kind, location, the hub revision it resolved to).
5. **No secrets**: every config written into an artifact goes through `futurelens.secrets.safe_config`, and a
   card's text through `futurelens.secrets.redact`, so HF_TOKEN, NDIF_API_KEY and WANDB_API_KEY never reach a
   file or the Hub.
6. **Client side only**: nothing here ships to NDIF (that is `futurelens.server`, with its own rule);
   importing this package is cheap (torch, safetensors and huggingface_hub load on first use).
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .lens import PAGE, save_page
from .maps import MAP_FORMAT, MAP_KEY, MapInfo, load_map, map_path, save_map
from .ngram import NGRAM_KIND, read_ngram, save_ngram
from .probes import (
    PROBE_FORMAT,
    PROBE_KINDS,
    ProbeInfo,
    PROBES_DIR,
    data_fingerprint,
    kept_fits,
    load_fit_checkpoint,
    load_probe,
    probe_checkpoint_path,
    probe_path,
    probes_folder,
    read_probe,
    save_fit_checkpoint,
    save_probe,
)
from .prompts import (
    PACKAGE_PROMPTS,
    PROMPT_KEY,
    checkpoint_position,
    kept_prompts,
    load_prompt,
    load_prompt_checkpoint,
    load_prompts,
    prompt_checkpoint_path,
    prompt_key,
    prompt_path,
    prompt_width,
    read_prompt,
    save_prompt,
    save_prompt_checkpoint,
    select_target,
    shipped_prompts,
    shipped_prompts_dir,
)
from .push import CARD, PushConfig, PushResult, collect_run, manifest, model_card, push, stage_run
from .results import RESULTS, SOURCES, load_table, read_sources, rows_from_scores, save_figure, save_sources, save_table, tidy
from .run import save_times, read_times
from .source import MANIFEST, PROMPT_SUFFIXES, PromptSet, Source, hub_id, pull, source_layers

__all__ = [
    "CARD", "MANIFEST", "MAP_FORMAT", "MAP_KEY", "NGRAM_KIND", "read_ngram", "save_ngram", "PACKAGE_PROMPTS", "PROBE_FORMAT", "PROBE_KINDS", "PROMPT_KEY",
    "PROMPT_SUFFIXES", "MapInfo", "ProbeInfo", "PromptSet", "PushConfig", "PushResult", "Source", "collect_run",
    "data_fingerprint", "load_fit_checkpoint", "save_fit_checkpoint", "hub_id", "load_map", "load_probe", "load_prompt", "load_prompts", "manifest", "map_path",
    "model_card", "probe_checkpoint_path", "probe_path", "prompt_checkpoint_path", "prompt_key", "prompt_path", "prompt_width", "probes_folder", "pull", "push", "read_probe", "read_prompt",
    "save_map", "save_probe", "save_prompt", "select_target", "shipped_prompts", "shipped_prompts_dir",
    "source_layers", "stage_run",
    "PAGE", "PROBES_DIR", "RESULTS", "SOURCES", "checkpoint_position", "kept_fits", "kept_prompts", "load_checkpoint",
    "load_prompt_checkpoint", "load_table", "read_sources", "read_times", "rows_from_scores", "save_checkpoint",
    "save_figure", "save_page", "save_prompt_checkpoint", "save_sources", "save_table", "save_times", "tidy",
]
