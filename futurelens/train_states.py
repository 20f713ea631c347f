"""Where a training batch's source states come from: shipped from the cache, or recomputed by the server.

`futurelens train --states`:
- ``ship``: each batch sends its cached states ``[b, d]`` (and, for the KL loss, the last layer over the
  continuation ``[b, N + 1, d]``): `ship_bytes_per_row`.
- ``recompute``: each batch sends only the prefix ids and targets (`recompute_bytes_per_row`); the server
  recomputes the states in the same request (`futurelens.server.recompute`), a forward over prefix and
  continuation (`recompute_flops_per_row`). The results are the shipped way's (the same forward `futurelens cache`
  ran, cast to the cache's dtype), up to float round-off from other batch compositions.
- ``auto``: ship when the model is local (reading a cache costs nothing); remotely, whichever `choose_states`
  estimates faster, from the bytes each way and the recompute's FLOPs.

The byte and FLOP formulas are pure, for `futurelens plan` to call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .dispatch import ids_bytes, tensor_bytes
from .errors import FutureLensError

if TYPE_CHECKING:
    import torch

    from .data.states import StateBatch, StateCache
    from .models import LensModel

STATES = ("auto", "ship", "recompute")
UPLOAD_MB_S = 10.0
"""Assumed client upload bandwidth to NDIF, MB/s (a home or office uplink), for `choose_states`."""
SERVER_FLOP_S = 1e14
"""Assumed useful FLOP/s of the server's forward (an A100/H100 at modest efficiency), for `choose_states`."""


def ship_bytes_per_row(d: int, n_max: int, loss: str, dtype: str) -> int:
    """Bytes one row sends when its states are shipped: the state ``[d]``, the final states ``[N + 1, d]`` for
    ``loss='kl'``, in the cache's ``dtype`` (its name), and its targets ``[N + 1]`` int64."""
    return tensor_bytes(1 + (n_max + 1 if loss == "kl" else 0), d, dtype=dtype) + ids_bytes(n_max + 1)


def recompute_bytes_per_row(prefix_len: float, n_max: int) -> float:
    """Bytes one row sends when the server recomputes its states: ``prefix_len`` int32 ids (a batch is padded to
    its longest prefix: pass the mean of the per-batch maxima for an exact figure), its length and targets int64."""
    return tensor_bytes(dtype="int32") * prefix_len + ids_bytes(1 + n_max + 1)


def recompute_flops_per_row(n_params: float, prefix_len: float, n_max: int) -> float:
    """FLOPs the server adds per row to recompute its states: one forward (2 per parameter per token) over the
    prefix and the ``n_max`` continuation tokens (the cache's forward)."""
    return 2 * n_params * (prefix_len + n_max)


def choose_states(ship_bytes: float, recompute_bytes: float, recompute_flops: float, *,
                  upload_mb_s: float = UPLOAD_MB_S, server_flop_s: float = SERVER_FLOP_S) -> str:
    """'ship' or 'recompute', whichever is estimated faster: ``ship_bytes / upload`` against
    ``recompute_bytes / upload + recompute_flops / server_flop_s`` (totals or per row, alike on both sides).

    E.g. Llama-3.1-70B (d 8192, 70.6e9 parameters), KL, float16 cache, 52-token prefixes: 82 KB against 0.25 KB
    and 7.8 TFLOP per row, 8.2 ms against 78 ms: ship. A smaller model on a slower uplink tips it: GPT-J-6B (d 4096,
    41 KB a row) at 1 MB/s, 41 ms against 6.6 ms: recompute.
    """
    rate = upload_mb_s * 1e6
    return "recompute" if recompute_bytes / rate + recompute_flops / server_flop_s < ship_bytes / rate else "ship"


def resolve_states(mode: str, lm: LensModel, cache: Any, loss: str) -> str:
    """The ``--states`` choice for this run: 'ship' or 'recompute' (see the module docstring)."""
    if mode not in STATES:
        raise FutureLensError(f"states must be one of {', '.join(STATES)}, not {mode!r}.")
    mapped = bool(cache.settings.get("source_model"))  # a MappedCache: another model's states; the server has no A
    if mode == "recompute" and mapped:
        raise FutureLensError("--states recompute needs the cache of the model being trained; with --source-cache the "
                              "states are another model's, mapped: use --states ship.")
    if mode != "auto":
        return mode
    if not lm.remote or mapped:
        return "ship"
    mean_len = _mean_prefix_len(cache)
    n_params = sum(p.numel() for p in lm.nn._module.parameters())
    return choose_states(ship_bytes_per_row(lm.d_model, cache.n_max, loss, cache.settings["dtype"]),
                         recompute_bytes_per_row(mean_len, cache.n_max),
                         recompute_flops_per_row(n_params, mean_len, cache.n_max))


def prefix_ids(cache: StateCache, tokenizer: Any) -> list[list[int]]:
    """Every row's prefix ids, indexed by the cache's ``row`` (the dataset table the cache was built from)."""
    from .artifacts.dataset import load_prefixes

    table, _ = load_prefixes(cache.index["data"], tokenizer=tokenizer)
    return table["prefix_ids"]


def _mean_prefix_len(cache: Any) -> float:
    cfg = cache.settings.get("dataset", {}).get("config", {})
    return (cfg.get("min_len", 8) + cfg.get("max_len", 96)) / 2


def id_batch(batch: StateBatch, prefixes: list[list[int]]) -> dict[str, torch.Tensor]:
    """What a recompute request sends for a cache batch: ``prefix`` int32 ``[b, T]`` right-padded with 0,
    ``lengths [b]``, ``target [b, N + 1]`` (`futurelens.server.recompute.states_batch` reads them)."""
    import torch

    rows = [prefixes[i] for i in batch.row.tolist()]
    ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.int32)
    return {"prefix": ids, "lengths": torch.tensor([len(r) for r in rows]), "target": batch.target}
