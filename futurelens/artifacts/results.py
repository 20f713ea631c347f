"""The evaluation's files: the tidy results table (``results.csv``), where its prompts and probes came from
(``sources.json``), and the files its figures are saved as.

The table has one row per number: ``method, layer, n, metric, k, value``, then ``target_layer`` (where a
prompt method wrote the state: ``layer`` itself in the paper's setting, Patchscopes' L' otherwise)
and ``against`` (``model``: the model's own continuation; ``text``: the corpus's real next tokens), and, when
scored with intervals, ``ci_low``/``ci_high`` (a bootstrap 95% interval over the test prefixes) and
``n_prefixes``. ``layer = -1`` (`NO_LAYER`) marks a method with no layer (the n-gram baseline); ``k`` is the
precision@k cutoff and missing (<NA>) for the other metrics. `tidy` is the one check of that shape: every
writer and reader goes through it. The figures are drawn by `futurelens.figure` (presentation); `save_figure`
writes one here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_path
from ..errors import FutureLensError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

RESULTS = "results.csv"
"""The results table in an eval folder (`save_table` also writes ``.parquet`` anywhere else)."""
SOURCES = "sources.json"
"""Which prompts and probes (and hub revisions) an eval folder's results came from."""
FIGURES = {"precision": "precision.png", "surprisal": "surprisal.png", "target_layers": "target_layers.png"}
"""The figures `futurelens eval` saves beside the table (``target_layers`` only when prompts wrote at other layers)."""
COLUMNS = ("method", "layer", "n", "metric", "k", "value", "target_layer", "against")
AGAINST = ("model", "text")
METRICS = ("precision", "surprisal", "target_nll")
NO_LAYER = -1
"""The ``layer`` of a method with no layer (the n-gram baseline)."""


def tidy(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Validate result rows and return them as a DataFrame with the `COLUMNS` first (extra columns kept after)."""
    import pandas as pd

    df = pd.DataFrame(list(rows))
    if "layer" in df.columns:  # tables from before the target-layer and ground-truth columns: the paper's setting
        if "target_layer" not in df.columns:
            df["target_layer"] = df["layer"]
        df["target_layer"] = df["target_layer"].fillna(df["layer"])
        df["against"] = df["against"].fillna("model") if "against" in df.columns else "model"
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing or df.empty:
        raise FutureLensError(
            f"Result rows need the columns {list(COLUMNS)} (missing {missing or 'none'}, {len(df)} rows): "
            "pass dicts like {'method': 'learned', 'layer': 14, 'n': 1, 'metric': 'precision', 'k': 1, 'value': 0.48}."
        )
    bad = sorted(set(df["metric"]) - set(METRICS))
    if bad:
        raise FutureLensError(f"Unknown metric(s) {bad}: use one of {list(METRICS)}.")
    df["method"] = df["method"].astype(str)
    for col in ("layer", "n", "value", "target_layer"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    bad_against = sorted(set(df["against"].astype(str)) - set(AGAINST))
    if bad_against:
        raise FutureLensError(f"Unknown against value(s) {bad_against}: use 'model' or 'text'.")
    if df[["layer", "n", "value", "target_layer"]].isna().any().any():
        raise FutureLensError("Every row needs a numeric layer, n and value (layer = -1 for a method with no layer).")
    if (df["layer"] < NO_LAYER).any() or (df["n"] < 0).any():
        raise FutureLensError("layer must be >= -1 (-1 = no layer) and n >= 0.")
    df["layer"], df["n"], df["target_layer"] = df["layer"].astype(int), df["n"].astype(int), df["target_layer"].astype(int)
    df["against"] = df["against"].astype(str)

    k = pd.to_numeric(df["k"], errors="coerce")
    is_p = df["metric"] == "precision"
    if (k[is_p].isna() | (k[is_p] < 1)).any():
        raise FutureLensError("precision rows need k >= 1 (the precision@k cutoff).")
    if ((df.loc[is_p, "value"] < 0) | (df.loc[is_p, "value"] > 1)).any():
        raise FutureLensError("precision values must lie in [0, 1].")
    # k means nothing for the other metrics; NaN/0 both arrive here and become <NA>.
    df["k"] = k.where(is_p).astype("Int64")
    dup = df.duplicated(["method", "layer", "target_layer", "n", "metric", "k", "against"], keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        raise FutureLensError(
            f"Two rows for method={first['method']!r} layer={first['layer']} target_layer={first['target_layer']} "
            f"n={first['n']} metric={first['metric']!r} against={first['against']!r}: "
            "keep one run per table (add the run to the method name to compare runs)."
        )
    return df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]].reset_index(drop=True)


def rows_from_scores(method: str, layer: int, n: int, scores: Mapping[str, float], *, target_layer: int | None = None,
                     against: str = "model", intervals: Mapping[str, tuple[float, float]] | None = None
                     ) -> list[dict[str, Any]]:
    """Tidy rows from a `futurelens.metrics.Tally.result()` dict (``precision@k``, ``surprisal``, ``target_nll``).

    With ``intervals`` (`Tally.intervals`), each row gets ``ci_low``/``ci_high`` (a bootstrap 95% interval over the
    test prefixes) and ``n_prefixes`` (how many test prefixes the score is over).
    """
    rows = []
    for key, value in scores.items():
        metric, _, k = key.partition("@")
        if metric in METRICS:
            row = {"method": method, "layer": layer, "n": n, "metric": metric, "k": int(k) if k else None,
                   "value": float(value), "target_layer": layer if target_layer is None else target_layer,
                   "against": against}
            if intervals is not None:
                low, high = intervals.get(key, (float("nan"), float("nan")))
                row.update(ci_low=low, ci_high=high, n_prefixes=int(scores["n"]))
            rows.append(row)
    return rows


def save_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the table as ``.csv`` or ``.parquet`` (by suffix), atomically. Returns the path."""
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise FutureLensError(f"Save the table as .csv or .parquet, not {path.name!r}.")
    with atomic_path(path, suffix=path.suffix) as tmp:
        if path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
    return path


def load_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by `save_table`, validated by `tidy`."""
    path = Path(path)
    if not path.exists():
        raise FutureLensError(f"No results table at {path}.")
    import pandas as pd

    df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    return tidy(df.to_dict("records"))


def save_sources(out: str | os.PathLike, sources: dict[str, Any]) -> Path:
    """Write ``<out>/sources.json`` (secrets masked, `futurelens.secrets.safe_config`), atomically. Returns the path."""
    from ..secrets import safe_config

    path = Path(out) / SOURCES
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(safe_config(sources), indent=2, default=str))
    return path


def read_sources(out: str | os.PathLike) -> dict[str, Any]:
    """``<out>/sources.json`` as `save_sources` wrote it (``{}`` when the results record no source)."""
    path = Path(out) / SOURCES
    return json.loads(path.read_text()) if path.exists() else {}


def save_figure(fig: "Figure", path: str | os.PathLike) -> Path:
    """Write a drawn figure to ``path`` (PNG unless its suffix says otherwise), atomically. Returns the path."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix or ".png") as tmp:
        fig.savefig(tmp, dpi=150, format=(path.suffix[1:] or "png"))
    return path
