"""The tidy results table and the paper's figure: precision@k (or surprisal) per layer, one panel per N.

One row per number: ``method, layer, n, metric, k, value``. ``layer = -1`` marks a
method with no layer (the n-gram baseline), drawn as a dashed horizontal line;
``k`` is the precision@k cutoff and missing (<NA>) for the other metrics.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .atomic import atomic_path
from .errors import FutureLensError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLUMNS = ("method", "layer", "n", "metric", "k", "value")
METRICS = ("precision", "surprisal", "target_nll")
NO_LAYER = -1


# --------------------------------------------------------------------------- the table


def tidy(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Validate result rows and return them as a DataFrame with the `COLUMNS` first (extra columns kept after)."""
    df = pd.DataFrame(list(rows))
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
    for col in ("layer", "n", "value"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    if df[["layer", "n", "value"]].isna().any().any():
        raise FutureLensError("Every row needs a numeric layer, n and value (layer = -1 for a method with no layer).")
    if (df["layer"] < NO_LAYER).any() or (df["n"] < 0).any():
        raise FutureLensError("layer must be >= -1 (-1 = no layer) and n >= 0.")
    df["layer"], df["n"] = df["layer"].astype(int), df["n"].astype(int)

    k = pd.to_numeric(df["k"], errors="coerce")
    is_p = df["metric"] == "precision"
    if (k[is_p].isna() | (k[is_p] < 1)).any():
        raise FutureLensError("precision rows need k >= 1 (the precision@k cutoff).")
    if ((df.loc[is_p, "value"] < 0) | (df.loc[is_p, "value"] > 1)).any():
        raise FutureLensError("precision values must lie in [0, 1].")
    # k means nothing for the other metrics; NaN/0 both arrive here and become <NA>.
    df["k"] = k.where(is_p).astype("Int64")
    dup = df.duplicated(["method", "layer", "n", "metric", "k"], keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        raise FutureLensError(
            f"Two rows for method={first['method']!r} layer={first['layer']} n={first['n']} metric={first['metric']!r}: "
            "keep one run per table (add the run to the method name to compare runs)."
        )
    return df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]].reset_index(drop=True)


def rows_from_scores(method: str, layer: int, n: int, scores: Mapping[str, float]) -> list[dict[str, Any]]:
    """Tidy rows from a `futurelens.metrics.Tally.result()` dict (``precision@k``, ``surprisal``, ``target_nll``)."""
    rows = []
    for key, value in scores.items():
        metric, _, k = key.partition("@")
        if metric in METRICS:
            rows.append({"method": method, "layer": layer, "n": n, "metric": metric, "k": int(k) if k else None,
                         "value": float(value)})
    return rows


def precision_table(df: pd.DataFrame, k: int = 1, digits: int = 3) -> str:
    """precision@k as text with no empty cells: each layer-free method on its own line, then N × layer × method.

    A method missing at some layer (e.g. no learned prompt there) shows ``-``, said once below the table.
    """
    df = tidy(df.to_dict("records"))
    sel = df[(df["metric"] == "precision") & df["k"].eq(k).fillna(False).astype(bool)]
    if sel.empty:
        raise FutureLensError(f"No precision@{k} rows in the table: score the methods first.")
    lines = [f"precision@{k} of the token N ahead (N=0 is the next token):"]
    flat = sel[sel["layer"] == NO_LAYER]
    for method in dict.fromkeys(flat["method"]):
        rows = flat[flat["method"] == method].sort_values("n")
        values = "  ".join(f"N={n} {v:.{digits}f}" for n, v in zip(rows["n"], rows["value"]))
        lines.append(f"  {method} (no layer): {values}")
    layered = sel[sel["layer"] != NO_LAYER]
    if not layered.empty:
        grid = layered.pivot_table(index=["n", "layer"], columns="method", values="value", sort=True)
        grid = grid[list(dict.fromkeys(layered["method"]))]  # methods in first-seen order
        missing = bool(grid.isna().any().any())
        grid = grid.reset_index().rename(columns={"n": "N"})
        grid.columns.name = None
        text = grid.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.{digits}f}")
        lines += ["  " + line for line in text.splitlines()]
        if missing:
            lines.append("  (- = the method was not run at that layer)")
    return "\n".join(lines)


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
    df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    return tidy(df.to_dict("records"))


# --------------------------------------------------------------------------- the figure


def _panels(df: pd.DataFrame, metric: str, k: int | None, ylabel: str, ylim: tuple[float, float | None],
            title: str) -> Figure:
    """One panel per N: a line per layered method, a dashed horizontal line per layer-less one."""
    # A bare Figure (no pyplot) renders with Agg, leaves the user's backend alone and needs no close().
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    df = tidy(df.to_dict("records"))
    sel = df[df["metric"] == metric]
    if k is not None:
        sel = sel[sel["k"].eq(k).fillna(False).astype(bool)]
    if sel.empty:
        have = sorted(df.loc[df["metric"] == "precision", "k"].dropna().unique().tolist())
        raise FutureLensError(
            f"No {metric} rows{f' for k={k}' if k is not None else ''} in the table"
            f"{f' (precision is there for k={have})' if have else ''}: score the methods first."
        )
    ns = sorted(sel["n"].unique())
    methods = list(dict.fromkeys(sel["method"]))  # first-seen order, stable across panels
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    flat = {m: bool((sel.loc[sel["method"] == m, "layer"] == NO_LAYER).all()) for m in methods}
    layers = sel.loc[sel["layer"] != NO_LAYER, "layer"]

    fig = Figure(figsize=(3.2 * len(ns) + 0.6, 3.6), layout="constrained")
    axes = fig.subplots(1, len(ns), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], ns):
        here = sel[sel["n"] == n]
        for method in methods:
            rows = here[here["method"] == method].sort_values("layer")
            if rows.empty:
                continue
            if flat[method]:
                ax.axhline(rows["value"].iloc[0], color=colors[method], linestyle="--", linewidth=1.5, label=method)
            else:
                rows = rows[rows["layer"] != NO_LAYER]
                ax.plot(rows["layer"], rows["value"], color=colors[method], marker="o", markersize=3.5, label=method)
        ax.set_title(f"N={n}")
        ax.set_xlabel("layer")
        if not layers.empty:
            ax.set_xlim(layers.min() - 0.5, layers.max() + 0.5)
            # Layers are integers: tick each one when there are few, else integer ticks only (never 13.8, 14.2).
            distinct = sorted(int(x) for x in layers.unique())
            if len(distinct) <= 12:
                ax.set_xticks(distinct)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    bottom, top = ylim
    axes[0][0].set_ylim(bottom, top if top is not None else 1.08 * max(float(sel["value"].max()), 1e-9))
    # One legend for the figure, from proxies, so a method missing from a panel still appears.
    handles = [
        Line2D([], [], color=colors[m], linestyle="--" if flat[m] else "-", marker=None if flat[m] else "o", label=m)
        for m in methods
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(methods), 5), frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def precision_figure(df: pd.DataFrame, k: int = 1, title: str = "") -> Figure:
    """The paper's figure as a matplotlib Figure: precision@k against layer, one panel per N."""
    return _panels(df, "precision", k, f"precision@{k}", (0.0, 1.0), title)


def surprisal_figure(df: pd.DataFrame, title: str = "") -> Figure:
    """Surprisal (−log p_model of each method's top-1 guess, nats) against layer, one panel per N."""
    return _panels(df, "surprisal", None, "surprisal (nats)", (0.0, None), title)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=path.suffix or ".png") as tmp:
        fig.savefig(tmp, dpi=150, format=(path.suffix[1:] or "png"))
    return path


def plot_precision(df: pd.DataFrame, path: str | os.PathLike, k: int = 1, title: str = "") -> Path:
    """Save `precision_figure` to ``path`` (PNG by default). Returns the path."""
    return _save(precision_figure(df, k, title), path)


def plot_surprisal(df: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """Save `surprisal_figure` to ``path`` (PNG by default). Returns the path."""
    return _save(surprisal_figure(df, title), path)

