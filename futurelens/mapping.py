"""Target model != source model: a state of model A, mapped into model B, patched into B.

Patchscopes may decode a state of one model (A, the source) with another (B, the target). The two residual
streams live in different spaces (even different widths), so a state goes through an affine map fitted on
paired states of the SAME prefixes, by ridge least squares like the linear approximation
(`futurelens.methods.linear.ridge`):

    h_A [b, d_A]  at A's layer L   ->   [h_A, 1] @ W   ≈   h_B [b, d_B]  at B's layer L'
    W   [d_A + 1, d_B]             (last row: the bias)

fitted on the train split of two state caches built by `futurelens cache` from one `futurelens data` folder
(one with ``--model A``, one with ``--model B``), whose rows are checked to be the same prefixes. Then B's
fixed prompt or a soft prompt trained in B receives the mapped state at L' (`FixedPrompt(mapping=W)`,
`LearnedPrompt(mapping=W)`), and `MappedCache` is the view train and evaluate read: A's states, mapped,
with B's targets and final states (so the KL targets and surprisal are B's own distribution on the same text).

Maps are artifacts (`futurelens.artifacts.save_map` / `load_map`): ``<prompts>/maps/layer-<L>-to-<L'>.safetensors``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .errors import FutureLensError

if TYPE_CHECKING:
    import torch

    from .data.states import StateBatch, StateCache

_SAME_DATA = ("build both caches from one `futurelens data` folder: `futurelens cache --data D --model A --out CA` and "
              "`futurelens cache --data D --model B --out CB`, with the same --shard-size")


def check_paired(cache_a: StateCache, cache_b: StateCache) -> None:
    """Refuse two caches whose rows are not the same prefixes of one dataset, with what to do."""
    a, b = cache_a.settings, cache_b.settings
    why = None
    if a["tokenizer_hash"] != b["tokenizer_hash"]:
        why = "the two models have different tokenizers (the same rows would be other texts)"
    elif a["dataset"] != b["dataset"] or a["n_max"] != b["n_max"]:
        why = "they were built from different datasets"
    elif sorted(cache_a.index["splits"]) != sorted(cache_b.index["splits"]):
        why = f"they hold different splits ({sorted(cache_a.index['splits'])} vs {sorted(cache_b.index['splits'])})"
    else:
        for split in cache_a.index["splits"]:
            if [s["rows"] for s in cache_a.index["splits"][split]] != [s["rows"] for s in cache_b.index["splits"][split]]:
                why = f"their {split!r} shards hold different numbers of rows (another --shard-size)"
                break
            for x, y in zip(cache_a.batches(None, split, 1 << 30), cache_b.batches(None, split, 1 << 30)):
                if not (x.row.equal(y.row) and x.last_token.equal(y.last_token) and x.target.equal(y.target)):
                    why = f"their {split!r} rows are other prefixes (different datasets)"
                    break
            if why:
                break
    if why:
        raise FutureLensError(
            f"The state caches {cache_a.path} (model {a['model']!r}) and {cache_b.path} (model {b['model']!r}) are not "
            f"paired: {why}. A mapping is fitted on the states of the same prefixes in both models: {_SAME_DATA}."
        )


def fit_map(cache_a: StateCache, layer_a: int, cache_b: StateCache, layer_b: int, alpha: float = 1e-3) -> torch.Tensor:
    """``W [d_A + 1, d_B]``: A's layer-``layer_a`` train states -> B's layer-``layer_b`` states of the same rows (ridge)."""
    from .methods.linear import ridge

    check_paired(cache_a, cache_b)
    x, y = cache_a.load(layer_a, "train"), cache_b.load(layer_b, "train")
    if not x.row.equal(y.row):  # check_paired saw the same rows; the loaders must keep them in step
        raise FutureLensError(f"Rows of {cache_a.path} and {cache_b.path} are out of step: {_SAME_DATA}.")
    return ridge(x.states.float(), y.states.float(), alpha)


def apply_map(w: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """``states [b, d_A]`` -> ``[b, d_B]``: ``states @ W[:-1] + W[-1]`` (float32)."""
    w = w.float()
    return states.float() @ w[:-1] + w[-1]


class MappedCache:
    """A read-only `StateCache` view for train and evaluate: A's states mapped into B's ``target_layer`` space,
    with B's targets, last tokens, rows and final states.

    ``maps``: ``{A layer: W}`` to use; missing ones are loaded from ``folder`` (``<folder>/maps/``) when saved there,
    else fitted (ridge, ``alpha``) and, with ``folder``, saved there.
    """

    def __init__(self, cache_a: StateCache, cache_b: StateCache, target_layer: int, maps: dict | None = None,
                 folder: str | os.PathLike | None = None, alpha: float = 1e-3):
        check_paired(cache_a, cache_b)
        self.a, self.b, self.target_layer = cache_a, cache_b, int(target_layer)
        self.b._check_layer(self.target_layer)  # B's states at L' are what the map is fitted to
        self.maps = dict(maps or {})
        self.folder = None if folder is None else Path(folder)
        self.alpha = alpha
        self.settings = {**cache_b.settings, "source_model": cache_a.settings["model"]}
        self.index, self.path = cache_b.index, cache_b.path

    @property
    def layers(self) -> list[int]:
        return self.a.layers

    @property
    def n_max(self) -> int:
        return self.b.n_max

    @property
    def d_model(self) -> int:
        return self.b.d_model

    def __len__(self) -> int:
        return len(self.b)

    def size(self, split: str) -> int:
        return self.b.size(split)

    def map(self, layer: int) -> torch.Tensor:
        """``W [d_A + 1, d_B]`` for A's ``layer`` (held in memory once fitted or loaded)."""
        if layer in self.maps:
            return self.maps[layer]
        from .artifacts import MapInfo, data_fingerprint, load_map, map_path, save_map

        self.a._check_layer(layer)
        info = MapInfo(self.a.settings["model"], self.b.settings["model"], layer, self.target_layer,
                       data_fingerprint(self.a), data_fingerprint(self.b), {"alpha": self.alpha})
        path = None if self.folder is None else map_path(self.folder, layer, self.target_layer)
        if path is not None and path.exists():
            w = load_map(path, info)
        else:
            w = fit_map(self.a, layer, self.b, self.target_layer, self.alpha)
            if path is not None:
                save_map(path, w, info)
        self.maps[layer] = w
        return w

    def batches(self, layer: int | None, split: str = "train", batch_size: int = 64, shuffle: bool = False,
                seed: int = 0, final: bool = False) -> Iterator[StateBatch]:
        """`StateCache.batches` of A (its states at ``layer``, mapped) zipped with B's (targets, final states).

        Both caches have the same shard layout (`check_paired`), so the same seed shuffles both the same way."""
        from .data.states import StateBatch

        if layer is None:
            yield from self.b.batches(None, split, batch_size, shuffle, seed, final)
            return
        w = self.map(layer)
        for x, y in zip(self.a.batches(layer, split, batch_size, shuffle, seed),
                        self.b.batches(None, split, batch_size, shuffle, seed, final), strict=True):
            if not x.row.equal(y.row):
                raise FutureLensError(f"Rows of {self.a.path} and {self.b.path} are out of step: {_SAME_DATA}.")
            yield StateBatch(apply_map(w, x.states), y.target, y.last_token, y.row, y.final)

    def load(self, layer: int | None, split: str = "train", final: bool = False) -> StateBatch:
        from .data.states import whole_split

        return whole_split(self, layer, split, final)
