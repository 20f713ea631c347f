"""`LensGrid`: the data of one Future Lens view, and its HTML / notebook / wandb / text forms.

A grid is ``L`` layers × ``T`` input tokens. Cell ``[i][j]`` describes the hidden state
of token ``j`` at layer ``layers[i]``: its logit-lens top-``k`` tokens and the ``R``-token
phrase an intervention rolls out from it, each token with its probability.

Everything is plain python or numpy, so a grid pickles, and `to_dict` is JSON-able.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FutureLensError
from . import html as _html

_FORMAT = 1  # version of the `to_dict` layout


@dataclass(eq=False)  # numpy fields make the generated __eq__ ambiguous; compare `to_dict()`s instead
class LensGrid:
    """One lens view: rows = layers, columns = input tokens.

    Attributes:
        tokens: ``[T]`` input tokens as decoded text (raw; rendering escapes them).
        layers: ``[L]`` layer numbers, one per row, distinct.
        top_tokens: ``[L][T][k]`` logit-lens top-k token texts, best first (``k >= 1``).
        top_probs: ``[L, T, k]`` their probabilities.
        phrase_tokens: ``[L][T][R]`` rolled-out phrase tokens (``R`` may be 0).
        phrase_probs: ``[L, T, R]`` their probabilities.
        title, model, method: free metadata shown above the grid.
        source: where the prompts came from (shipped with futurelens, a folder, a file, a hub repo and
            revision, the authors' bare-tensor file), shown in the header.
        probes: fitted methods' guesses per cell, shown on hover: ``{name: {"layers": [L'], "tokens":
            [L'][T][N+1], "probs": [L', T, N+1]}}``, the top-1 token N = 0..n_max ahead for the rows
            (``layers``, a subset of the grid's) that have a fit (`futurelens.lens(..., probes=...)`).
    """

    tokens: list[str]
    layers: list[int]
    top_tokens: list[list[list[str]]]
    top_probs: np.ndarray
    phrase_tokens: list[list[list[str]]]
    phrase_probs: np.ndarray
    title: str = ""
    model: str = ""
    method: str = ""
    source: str = ""
    probes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokens = _str_list(self.tokens, "tokens")
        try:
            self.layers = [int(x) for x in self.layers]
        except (TypeError, ValueError) as e:
            raise FutureLensError(f"LensGrid.layers must be a list of ints, got {self.layers!r}.") from e
        if len(set(self.layers)) != len(self.layers):
            raise FutureLensError(f"LensGrid.layers has repeats {self.layers}: each row needs its own layer.")
        L, T = len(self.layers), len(self.tokens)
        if L == 0 or T == 0:
            raise FutureLensError(f"LensGrid needs at least one layer and one token, got L={L}, T={T}.")
        self.top_probs = _probs(self.top_probs, "top_probs", L, T)
        self.phrase_probs = _probs(self.phrase_probs, "phrase_probs", L, T)
        k, R = self.top_probs.shape[2], self.phrase_probs.shape[2]
        if k == 0:
            raise FutureLensError("LensGrid.top_probs has k=0 (shape [L, T, 0]): the lens needs at least the top-1 token.")
        self.top_tokens = _nested(self.top_tokens, "top_tokens", (L, T, k), "top_probs")
        self.phrase_tokens = _nested(self.phrase_tokens, "phrase_tokens", (L, T, R), "phrase_probs")
        for name in ("title", "model", "method", "source"):
            if not isinstance(getattr(self, name), str):
                raise FutureLensError(f"LensGrid.{name} must be a str, got {type(getattr(self, name)).__name__}.")
        self.probes = {str(name): _probe_entry(entry, name, self.layers, T) for name, entry in dict(self.probes).items()}

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(L, T, k, R)``."""
        return (len(self.layers), len(self.tokens), self.top_probs.shape[2], self.phrase_probs.shape[2])

    # ------------------------------------------------------------------ views

    def to_html(self) -> str:
        """A standalone, offline HTML page (inline CSS/JS)."""
        return _html.render_page(self)

    def _repr_html_(self) -> str:
        # A fragment, not a document: Jupyter inserts it into its own page. Its CSS is
        # scoped under .fl-lens and it uses no ids, so several grids can share a notebook.
        return _html.render_fragment(self)

    def save_html(self, path: str | os.PathLike) -> Path:
        """Write `to_html` to ``path`` atomically (`futurelens.artifacts.lens.save_page`)."""
        from ..artifacts.lens import save_page

        return save_page(self.to_html(), path)

    def to_wandb(self) -> Any:
        """A ``wandb.Html`` of the page, for ``run.log({"lens": grid.to_wandb()})``."""
        import wandb  # lazy: wandb is slow to import and only needed here

        # A file-like object, so wandb never mistakes the text for a path; inject=False
        # keeps the page offline (inject adds a stylesheet link to app.wandb.ai).
        return wandb.Html(io.StringIO(self.to_html()), inject=False)

    def to_text(self, width: int = 12) -> str:
        """A fixed-width text grid: layers highest first, each cell the phrase cut to ``width``.

        Whitespace is shown as in the HTML (``·`` for a leading space, ``⏎`` for a newline),
        so the result has one line per layer plus a header.
        """
        if width < 2:
            raise FutureLensError(f"to_text(width={width}): a cell needs at least 2 characters.")
        lw = max(len("layer"), *(len(str(x)) for x in self.layers))

        def cut(s: str) -> str:
            s = _html.visible(s)
            return (s if len(s) <= width else s[: width - 1] + "…").ljust(width)

        lines = [self.title] if self.title else []
        lines.append(" │ ".join(["layer".rjust(lw)] + [cut(t) for t in self.tokens]).rstrip())
        lines.append("─┼─".join(["─" * lw] + ["─" * width] * len(self.tokens)))
        for i in reversed(range(len(self.layers))):
            cells = [cut("".join(p)) for p in self.phrase_tokens[i]]
            lines.append(" │ ".join([str(self.layers[i]).rjust(lw)] + cells).rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (lists and floats); `from_dict` reverses it."""
        return {
            "format": _FORMAT,
            "tokens": list(self.tokens),
            "layers": list(self.layers),
            "top_tokens": self.top_tokens,
            "top_probs": self.top_probs.tolist(),
            "phrase_tokens": self.phrase_tokens,
            "phrase_probs": self.phrase_probs.tolist(),
            "title": self.title,
            "model": self.model,
            "method": self.method,
            "source": self.source,
            "probes": {name: {"layers": e["layers"], "tokens": e["tokens"], "probs": e["probs"].tolist()}
                       for name, e in self.probes.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LensGrid:
        """Rebuild a grid from `to_dict` output (validated like any new grid)."""
        if d.get("format", _FORMAT) != _FORMAT:
            raise FutureLensError(f"LensGrid dict has format {d.get('format')!r}; this futurelens reads {_FORMAT}.")
        fields = ("tokens", "layers", "top_tokens", "top_probs", "phrase_tokens", "phrase_probs")
        missing = [f for f in fields if f not in d]
        if missing:
            raise FutureLensError(f"LensGrid dict lacks {missing}.")
        return cls(**{f: d[f] for f in fields}, **{m: d.get(m, "") for m in ("title", "model", "method", "source")},
                   probes=d.get("probes", {}))


# ---------------------------------------------------------------------- validation


def _str_list(xs: Any, name: str) -> list[str]:
    xs = list(xs)
    bad = [x for x in xs if not isinstance(x, str)]
    if bad:
        raise FutureLensError(f"LensGrid.{name} must hold str (decoded text), found {type(bad[0]).__name__} {bad[0]!r}.")
    return xs


def _probs(x: Any, name: str, L: int, T: int) -> np.ndarray:
    """``x`` as a float64 array of shape ``[L, T, *]`` with values in [0, 1]."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise FutureLensError(f"LensGrid.{name} must be a numeric [L, T, n] array: {e}") from e
    if a.ndim != 3 or a.shape[:2] != (L, T):
        raise FutureLensError(f"LensGrid.{name} has shape {tuple(a.shape)} but expected ({L}, {T}, n) = (layers, tokens, n).")
    bad = ~((a >= -1e-6) & (a <= 1 + 1e-6))  # NaN compares false, so it is bad too
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise FutureLensError(
            f"LensGrid.{name} must hold probabilities in [0, 1] (no NaN): {int(bad.sum())} values are not, "
            f"e.g. {name}[{where}] = {a[where]}."
        )
    return np.clip(a, 0.0, 1.0)


def _probe_entry(entry: Any, name: str, layers: list[int], T: int) -> dict:
    """One ``probes`` entry checked: its layers are grid rows, tokens ``[L'][T][n]`` match probs ``[L', T, n]``."""
    try:
        rows = [int(x) for x in entry["layers"]]
        tokens, probs = entry["tokens"], entry["probs"]
    except (KeyError, TypeError, ValueError) as e:
        raise FutureLensError(f"LensGrid.probes[{name!r}] must be {{'layers', 'tokens', 'probs'}}: {e}") from e
    missing = [x for x in rows if x not in layers]
    if missing:
        raise FutureLensError(f"LensGrid.probes[{name!r}] has layers {missing} that are not rows of the grid {layers}.")
    probs = _probs(probs, f"probes[{name!r}].probs", len(rows), T) if rows else np.zeros((0, T, 0))
    return {"layers": rows, "tokens": _nested(tokens, f"probes[{name!r}].tokens", (len(rows), T, probs.shape[2]),
                                               "probs") if rows else [], "probs": probs}


def _nested(x: Any, name: str, shape: tuple[int, int, int], probs_name: str) -> list[list[list[str]]]:
    """``x`` as ``[L][T][n]`` lists of str matching ``shape`` (taken from the probability array)."""
    L, T, n = shape
    rows = list(x)
    if len(rows) != L:
        raise FutureLensError(f"LensGrid.{name} has {len(rows)} rows but expected L={L} (len(layers)).")
    out = []
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != T:
            raise FutureLensError(f"LensGrid.{name}[{i}] has {len(row)} entries but expected T={T} (len(tokens)).")
        cells = []
        for j, cell in enumerate(row):
            if isinstance(cell, str):
                raise FutureLensError(f"LensGrid.{name}[{i}][{j}] is a str {cell!r}; expected a list of {n} token strings.")
            cell = _str_list(cell, f"{name}[{i}][{j}]")
            if len(cell) != n:
                raise FutureLensError(
                    f"LensGrid.{name}[{i}][{j}] has {len(cell)} tokens but expected {n} ({probs_name}.shape[2]); "
                    f"{name} must be [L={L}][T={T}][{n}]."
                )
            cells.append(cell)
        out.append(cells)
    return out
