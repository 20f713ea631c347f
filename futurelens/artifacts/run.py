"""A run folder (`futurelens demo --out`, `futurelens.pipeline.run`): one folder per stage, the lens page, and
``times.json``.

Layout::

    data/        the prefix dataset (`futurelens.artifacts.dataset`)
    cache/       the state cache (`futurelens.artifacts.cache`)
    prompts/     soft prompts and their checkpoints (`futurelens.artifacts.prompts`), state maps in maps/
    eval/        results.csv, sources.json, the figures (`futurelens.artifacts.results`), fitted probes in probes/
    lens.html    the lens page (`futurelens.artifacts.lens`)
    times.json   each stage's wall time in seconds, ``{"load": s, "data": s, ...}``

`futurelens push` reads a run through these names (`futurelens.artifacts.push.collect_run`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import atomic_path

DATA, CACHE, PROMPTS, EVAL = "data", "cache", "prompts", "eval"
"""The stage folders of a run."""
TIMES = "times.json"


def save_times(out: str | os.PathLike, times: dict[str, float]) -> Path:
    """Write ``<out>/times.json`` (seconds per stage), atomically. Returns the path."""
    path = Path(out) / TIMES
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(times, indent=2))
    return path


def read_times(out: str | os.PathLike) -> dict[str, float]:
    """``<out>/times.json`` as `save_times` wrote it."""
    return json.loads((Path(out) / TIMES).read_text())
