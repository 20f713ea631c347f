"""Artifacts: every file futurelens writes for someone else to read, and every reader of one, in one package.

THE RULE for this package (and for any format futurelens adds):

1. **One home.** A format has one writer and one reader, in one module here:

   - `source`: where an artifact came from (`Source`, `PromptSet`), hub ids and `pull`;
   - `prompts`: soft prompts (futurelens' own, a bare tensor as the authors' ``gptj_soft_prefix.pt``, the prompts
     shipped in the package) and where training writes them;
   - `probes`: fitted probes and the data fingerprint they are checked against;
   - `maps`: state maps between two models;
   - `ngram`: the bigram baseline's table;
   - `push`: a run as pushed to the hub, its manifest and model card.

   A stage (train, eval, the lens, push) calls these; it never opens or lays out such a file itself.
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

from .maps import MAP_FORMAT, MAP_KEY, MapInfo, load_map, map_path, save_map
from .ngram import NGRAM_KIND, read_ngram, save_ngram
from .probes import (
    PROBE_FORMAT,
    PROBE_KINDS,
    ProbeInfo,
    data_fingerprint,
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
    load_prompt,
    load_prompts,
    prompt_checkpoint_path,
    prompt_key,
    prompt_path,
    prompt_width,
    read_prompt,
    save_prompt,
    select_target,
    shipped_prompts,
    shipped_prompts_dir,
)
from .push import CARD, PushConfig, PushResult, collect_run, manifest, model_card, push, stage_run
from .source import MANIFEST, PROMPT_SUFFIXES, PromptSet, Source, hub_id, pull, source_layers

__all__ = [
    "CARD", "MANIFEST", "MAP_FORMAT", "MAP_KEY", "NGRAM_KIND", "read_ngram", "save_ngram", "PACKAGE_PROMPTS", "PROBE_FORMAT", "PROBE_KINDS", "PROMPT_KEY",
    "PROMPT_SUFFIXES", "MapInfo", "ProbeInfo", "PromptSet", "PushConfig", "PushResult", "Source", "collect_run",
    "data_fingerprint", "load_fit_checkpoint", "save_fit_checkpoint", "hub_id", "load_map", "load_probe", "load_prompt", "load_prompts", "manifest", "map_path",
    "model_card", "probe_checkpoint_path", "probe_path", "prompt_checkpoint_path", "prompt_key", "prompt_path", "prompt_width", "probes_folder", "pull", "push", "read_probe", "read_prompt",
    "save_map", "save_probe", "save_prompt", "select_target", "shipped_prompts", "shipped_prompts_dir",
    "source_layers", "stage_run",
]
