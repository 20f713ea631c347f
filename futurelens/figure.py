"""The paper's figure and the results as text: precision@k (or surprisal) per layer, one panel per N.

Views of the tidy results table, whose shape (``method, layer, n, metric, k, value, target_layer, against``;
``layer = -1`` for a method with no layer, drawn as a dashed horizontal line) and file live in
`futurelens.artifacts.results`: this module draws and prints, it writes no format of its own. The paper's
figure shows the rows with ``target_layer == layer``; `target_layer_figure` shows the (L, L') grid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .artifacts.results import AGAINST, NO_LAYER, save_figure, tidy
from .errors import FutureLensError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# --------------------------------------------------------------------------- the table as text


def paper_rows(df: pd.DataFrame, against: str = "model") -> pd.DataFrame:
    """The rows of the paper's setting: each state written at its own layer, scored ``against`` model or text."""
    if against not in AGAINST:
        raise FutureLensError(f"against must be 'model' or 'text', not {against!r}.")
    return df[(df["against"] == against) & ((df["target_layer"] == df["layer"]) | (df["layer"] == NO_LAYER))]


def precision_table(df: pd.DataFrame, k: int = 1, digits: int = 3, against: str = "model") -> str:
    """precision@k as text with no empty cells: each layer-free method on its own line, then N × layer × method.

    A method missing at some layer (e.g. no learned prompt there) shows ``-``, said once below the table.
    Rows written at another layer than their own (``target_layer``) follow as one L × L' grid per method and N.
    """
    df = tidy(df.to_dict("records"))
    every = df[(df["metric"] == "precision") & df["k"].eq(k).fillna(False).astype(bool) & (df["against"] == against)]
    sel = paper_rows(every, against)
    if sel.empty:
        raise FutureLensError(f"No precision@{k} rows against {against!r} in the table: score the methods first.")
    what = "the model's own continuation" if against == "model" else "the text's real next tokens"
    lines = [f"precision@{k} of the token N ahead (N=0 is the next token), against {what}:"]
    if "n_prefixes" in sel.columns and sel["n_prefixes"].notna().any():  # how many test prefixes each score is over
        low, high = int(sel["n_prefixes"].min()), int(sel["n_prefixes"].max())
        lines[0] = lines[0][:-1] + f", on {low if low == high else f'{low} to {high}'} test prefixes"
        if "ci_low" in sel.columns and sel["ci_low"].notna().any():
            width = float((sel["ci_high"] - sel["ci_low"]).max())
            lines[0] += f"; bootstrap 95% intervals in results.csv (ci_low, ci_high), the widest {width:.{digits}f} wide"
        lines[0] += ":"
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
    crossed = every[(every["layer"] != NO_LAYER) & (every["target_layer"] != every["layer"])]
    for method in dict.fromkeys(crossed["method"]):
        mine = every[(every["method"] == method) & (every["layer"] != NO_LAYER)]
        for n in sorted(mine["n"].unique()):
            grid = mine[mine["n"] == n].pivot_table(index="layer", columns="target_layer", values="value", sort=True)
            lines.append(f"  {method}, N={n}: source layer L (rows) x target layer L' (columns)")
            text = grid.to_string(na_rep="-", float_format=lambda v: f"{v:.{digits}f}")
            lines += ["    " + line for line in text.splitlines()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the figure


def _panels(df: pd.DataFrame, metric: str, k: int | None, ylabel: str, ylim: tuple[float, float | None],
            title: str, against: str = "model") -> Figure:
    """One panel per N: a line per layered method, a dashed horizontal line per layer-less one (the paper's
    setting: each state at its own layer; scored ``against`` the model's continuation or the text)."""
    # A bare Figure (no pyplot) renders with Agg, leaves the user's backend alone and needs no close().
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    df = paper_rows(tidy(df.to_dict("records")), against)
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
            bands = "ci_low" in rows.columns and rows["ci_low"].notna().all() and rows["ci_high"].notna().all()
            if flat[method]:
                ax.axhline(rows["value"].iloc[0], color=colors[method], linestyle="--", linewidth=1.5, label=method)
                if bands:  # its bootstrap 95% interval, across the panel
                    ax.axhspan(rows["ci_low"].iloc[0], rows["ci_high"].iloc[0], color=colors[method], alpha=0.12, linewidth=0)
            else:
                rows = rows[rows["layer"] != NO_LAYER]
                ax.plot(rows["layer"], rows["value"], color=colors[method], marker="o", markersize=3.5, label=method)
                if bands:
                    ax.fill_between(rows["layer"], rows["ci_low"], rows["ci_high"], color=colors[method], alpha=0.15,
                                    linewidth=0)
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


def precision_figure(df: pd.DataFrame, k: int = 1, title: str = "", against: str = "model") -> Figure:
    """The paper's figure as a matplotlib Figure: precision@k against layer, one panel per N, scored ``against``
    the model's own continuation (the paper) or the text's real next tokens."""
    return _panels(df, "precision", k, f"precision@{k}" + (" (vs text)" if against == "text" else ""), (0.0, 1.0),
                   title, against)


def surprisal_figure(df: pd.DataFrame, title: str = "", against: str = "model") -> Figure:
    """Surprisal (−log p_model of each method's top-1 guess, nats) against layer, one panel per N."""
    return _panels(df, "surprisal", None, "surprisal (nats)", (0.0, None), title, against)


def target_layer_figure(df: pd.DataFrame, n: int | None = None, k: int = 1, against: str = "model",
                        title: str = "") -> Figure:
    """Patchscopes' target-layer grid: precision@k at N = ``n`` (default 1, or the smallest N there is) of each prompt
    method for a state read at layer L (rows) and written at layer L' (columns), one heatmap per method."""
    from matplotlib.figure import Figure

    df = tidy(df.to_dict("records"))
    sel = df[(df["metric"] == "precision") & df["k"].eq(k).fillna(False).astype(bool) & (df["against"] == against)
             & (df["layer"] != NO_LAYER)]
    crossed = sel[sel["target_layer"] != sel["layer"]]
    if crossed.empty:
        raise FutureLensError("No rows with a target layer other than the source layer: evaluate with --target-layers.")
    ns = sorted(crossed["n"].unique())
    n = (1 if 1 in ns else ns[0]) if n is None else n
    methods = list(dict.fromkeys(crossed.loc[crossed["n"] == n, "method"]))
    if not methods:
        raise FutureLensError(f"No target-layer rows at N={n}; the table has them for N in {ns}.")
    top = max(float(sel.loc[sel["n"] == n, "value"].max()), 1e-9)  # one colour scale for the panels of this N
    fig = Figure(figsize=(3.6 * len(methods) + 1.0, 3.4), layout="constrained")
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for ax, method in zip(axes, methods):
        grid = sel[(sel["method"] == method) & (sel["n"] == n)].pivot_table(
            index="layer", columns="target_layer", values="value", sort=True)
        image = ax.imshow(grid.to_numpy(), vmin=0.0, vmax=top, cmap="viridis",
                          origin="lower", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(r) for r in grid.index])
        for (r, c), v in np.ndenumerate(grid.to_numpy()):
            if v == v:  # not NaN: a pair that was run
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.6 * top else "black")
        ax.set_xlabel("target layer L' (written at)")
        ax.set_ylabel("source layer L (read at)")
        ax.set_title(f"{method}, N={n}")
    fig.colorbar(image, ax=list(axes), label=f"precision@{k}" + (" (vs text)" if against == "text" else ""))
    if title:
        fig.suptitle(title)
    return fig


def plot_precision(df: pd.DataFrame, path: str | os.PathLike, k: int = 1, title: str = "", against: str = "model") -> Path:
    """Save `precision_figure` to ``path`` (PNG by default). Returns the path."""
    return save_figure(precision_figure(df, k, title, against), path)


def plot_surprisal(df: pd.DataFrame, path: str | os.PathLike, title: str = "", against: str = "model") -> Path:
    """Save `surprisal_figure` to ``path`` (PNG by default). Returns the path."""
    return save_figure(surprisal_figure(df, title, against), path)


def plot_target_layers(df: pd.DataFrame, path: str | os.PathLike, n: int | None = None, k: int = 1,
                       against: str = "model", title: str = "") -> Path:
    """Save `target_layer_figure` to ``path`` (PNG by default). Returns the path."""
    return save_figure(target_layer_figure(df, n, k, against, title), path)

