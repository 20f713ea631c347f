"""Per stage of a run: its work (FLOPs, model calls, weight reads), its memory and disk, and its NDIF requests.

`workload` turns a `PlanConfig`, a `Shape` and the run's rows (`Rows`: from a prefix table, or spread
evenly over the length range) into one `Stage` per stage; `futurelens.planner.estimate` prices them.
Memory terms name the buffers the stage holds at its peak (cited per stage); a process's fixed part
(interpreter, imports, weights) is added by the caller, measured where it can be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..data.states import cache_disk_bytes
from ..dispatch import tensor_bytes
from ..errors import FutureLensError
from . import flops as F
from . import requests as R
from .config import PlanConfig
from .shape import Shape, layers as resolve_layers
from .text import Counts, counts

BATCH_TOKENS = 32768
"""`futurelens.data.prefixes.DataConfig.batch_tokens`: labelling rows per call are capped by it."""
SEEN_BYTES = 60
"""Bytes the candidate stream keeps per candidate drawn (its ``seen`` set; benchmarks/paper_scale.py measured)."""
VOCAB_BATCH = 64
"""`futurelens.methods.linear.VocabProbe.batch_size`."""
PY_INT_BYTES = 36
"""A token id in a Python list: an 8-byte pointer and a 28-byte int object."""


@dataclass
class Rows:
    """The run's prefix lengths, per split in table order, and what the labelling saw."""

    train: list[int]
    test: list[int]
    candidates: list[int]
    """Lengths of every candidate labelled, in draw order."""
    exact: bool
    """True when read from a prefix table (and, for the candidates, without the correctness filter)."""
    distinct_targets: list[int] = field(default_factory=list)
    """Distinct train targets per N (from a table), else empty (estimated)."""


def _spread(n: int, lo: int, hi: int) -> list[int]:
    """``n`` lengths spread evenly over ``lo..hi`` (the expected multiset of a uniform draw)."""
    span = hi - lo + 1
    return [lo + (i * span) // n for i in range(n)] if n else []


def rows(cfg: PlanConfig) -> Rows:
    """The rows of the run: read from ``cfg.data`` (a prefix table) when given, else spread over the length range."""
    if cfg.data:
        from ..artifacts.dataset import load_prefixes

        table, meta = load_prefixes(cfg.data)
        cols = table.select_columns(["prefix_ids", "target_ids", "split"]).to_dict()
        lengths = [len(p) for p in cols["prefix_ids"]]
        train = [n for n, s in zip(lengths, cols["split"]) if s == "train"]
        test = [n for n, s in zip(lengths, cols["split"]) if s == "test"]
        heads = len(cols["target_ids"][0]) if cols["target_ids"] else cfg.n_max + 1
        distinct = [len({t[h] for t, s in zip(cols["target_ids"], cols["split"]) if s == "train"}) for h in range(heads)]
        filtered = meta.get("config", {}).get("filter_correct", True)
        n_cand = meta.get("n_candidates", len(lengths))
        candidates = lengths if not filtered and n_cand == len(lengths) else _spread(n_cand, cfg.min_len, cfg.max_len)
        return Rows(train, test, candidates, exact=not filtered and n_cand == len(lengths), distinct_targets=distinct)
    n_test = round(cfg.n_prefixes * cfg.test_fraction)
    spread = _spread(cfg.n_prefixes, cfg.min_len, cfg.max_len)
    # Every k-th row is a test row, so both splits span the length range.
    test_idx = set(_spread(n_test, 0, cfg.n_prefixes - 1)) if n_test else set()
    n_cand = cfg.n_prefixes if not cfg.filter_correct else math.ceil(cfg.n_prefixes / cfg.keep_rate)
    return Rows([n for i, n in enumerate(spread) if i not in test_idx], [n for i, n in enumerate(spread) if i in test_idx],
                _spread(n_cand, cfg.min_len, cfg.max_len), exact=False)


@dataclass
class Stage:
    """One stage's work and footprint, before pricing."""

    name: str
    flops: float = 0.0
    """Model-side FLOPs (forward, or forward + backward)."""
    calls: float = 0.0
    """Calls into the model (forward passes / greedy calls / training steps): each reads the weights once+."""
    weight_reads: float = 1.0
    """Weight reads per call (2 for a training step: forward and backward)."""
    client_flops: float = 0.0
    """FLOPs that run where the cache is, on the client's CPU (probe fits, ridge), float32/64."""
    kind: str = "forward"
    """Which calibrated per-call cost applies here: 'greedy', 'forward', 'train' (see `futurelens.planner.calibrate`)."""
    ram: float = 0.0
    """Bytes the client holds at its peak beyond the process's fixed part (the stage's own buffers)."""
    model_ram: float = 0.0
    """Bytes of the model's working set (activations, logits, KV cache): in the client's RAM when the model runs
    here, on the server when remote."""
    gpu: float = 0.0
    """Device working set beyond the weights (activations, logits, KV cache)."""
    disk: float = 0.0
    """Bytes written (peak, temporaries included)."""
    requests: dict[str, Any] | None = None
    """Remote: `futurelens.planner.requests.total`, or ``{"error": message}`` when an item exceeds the bound."""
    exact: bool = False
    """Whether ``requests`` was counted from the run's own rows (else from the length distribution)."""
    note: str = ""


def _remote(fn, *args, **kwargs) -> dict[str, Any]:
    try:
        return R.total(fn(*args, **kwargs))
    except FutureLensError as err:
        return {"error": str(err)}


def _pools(lengths: list[int], size: int) -> list[list[int]]:
    return [lengths[a : a + size] for a in range(0, len(lengths), size)] or [[]]


def _activations(shape: Shape, rows: int, tokens: float, logits: float = 0) -> float:
    """Bytes of one block's float32 activations for ``rows x tokens`` (residual, MLP, attention scores), and
    ``logits`` rows x positions of vocabulary-sized float32 logits (what the call's head computes and keeps)."""
    mlp = 4 * shape.d_model
    scores = (shape.attn_width // 64 or 1) * tokens if shape.attention else 0
    return 4 * rows * tokens * (3 * shape.d_model + mlp + scores) + 4 * logits * shape.vocab


def _padded_flops(shape: Shape, lengths: list[int], batch_size: int, n_max: int) -> float:
    """A shard's forward FLOPs as `futurelens.server.jobs.cache_shard` runs it: rows sorted by length, ``batch_size``
    at a time, each batch padded to its longest prefix (plus the ``n_max`` continuation tokens)."""
    ordered = sorted(lengths)
    return sum(len(ordered[a : a + batch_size]) * F.row(shape, max(ordered[a : a + batch_size]) + n_max)
               for a in range(0, len(ordered), batch_size))


def _kv(shape: Shape, rows: int, tokens: float, itemsize: int = 4) -> float:
    """Bytes of a key/value cache (or nothing for a recurrent model's small state)."""
    return 2 * shape.n_layers * rows * tokens * (shape.attn_width or shape.d_model) * itemsize if shape.attention else 0


def workload(cfg: PlanConfig, shape: Shape, run: Rows, itemsize: int) -> list[Stage]:
    """The stages of ``cfg``'s run for ``shape``: data, cache, train, eval (one row per method), lens."""
    lm = R.bound(cfg.max_request_mb)
    cached = resolve_layers(shape, cfg.layers)
    prompt_layers = resolve_layers(shape, cfg.prompt_layers) if cfg.prompt_layers else cached
    eval_layers = resolve_layers(shape, cfg.eval_layers) if cfg.eval_layers else cached
    n_train, n_test, n_all = len(run.train), len(run.test), len(run.train) + len(run.test)
    heads, d, V = cfg.n_max + 1, shape.d_model, shape.vocab
    out: list[Stage] = []

    # data: per shard, per group of equal length, greedy calls of n_max + 1 tokens (data.labels.label).
    per_call = {L: max(1, min(cfg.data_batch_size, BATCH_TOKENS // max(L, 1))) for L in set(run.candidates)}
    pools = _pools(run.candidates, cfg.data_shard_size)
    calls = sum(math.ceil(pool.count(L) / per_call[L]) for pool in pools for L in set(pool))
    biggest = max((len(p) for p in pools), default=0)
    mean_len = sum(run.candidates) / max(len(run.candidates), 1)
    data = Stage("data", flops=sum(F.row(shape, L) + F.decode(shape, L, cfg.n_max) for L in run.candidates),
                 calls=calls * heads, kind="greedy",
                 # generate keeps the last position's logits and scores per step, and the KV cache of the batch.
                 ram=1_000_000 * 4 + SEEN_BYTES * len(run.candidates) + PY_INT_BYTES * biggest * (mean_len + 2 * heads),
                 model_ram=_activations(shape, cfg.data_batch_size, cfg.max_len, 2 * heads * cfg.data_batch_size)
                 + _kv(shape, cfg.data_batch_size, cfg.max_len + heads),
                 gpu=_activations(shape, cfg.data_batch_size, cfg.max_len, 2 * heads * cfg.data_batch_size)
                 + _kv(shape, cfg.data_batch_size, cfg.max_len + heads, 2),
                 disk=2 * n_all * 8 * (mean_len + 2 * heads + 2),
                 note=f"{len(run.candidates):,} candidates labelled" + ("" if not cfg.filter_correct or cfg.data
                                                                      else f" (keep rate {cfg.keep_rate:g} assumed)"))
    data.calls_model = calls  # type: ignore[attr-defined]
    if cfg.remote:
        data.requests = _remote(R.greedy, lm, pools, heads, cfg.data_batch_size)
        data.exact = run.exact
    out.append(data)

    # cache: per split, shards of cache_shard_size rows, forward passes of cache_batch_size (states._shard).
    shards = [s for split in (run.train, run.test) for s in _pools(split, cfg.cache_shard_size) if s]
    row_bytes = (len(cached) + heads) * d * itemsize
    cache = Stage("cache", flops=sum(_padded_flops(shape, shard, cfg.cache_batch_size, cfg.n_max) for shard in shards),
                  calls=sum(math.ceil(len(s) / cfg.cache_batch_size) for s in shards),
                  ram=2 * cfg.cache_shard_size * row_bytes,
                  model_ram=_activations(shape, cfg.cache_batch_size, cfg.max_len + cfg.n_max),
                  gpu=_activations(shape, cfg.cache_batch_size, cfg.max_len + cfg.n_max),
                  disk=cache_disk_bytes(n_all, len(cached), cfg.n_max, d, itemsize, len(shards)),
                  note=f"{len(cached)} layers x {n_all:,} rows, {cfg.cache_dtype}")
    if cfg.remote:
        cache.requests = _remote(R.cache, lm, shards, len(cached), cfg.n_max, d, cfg.cache_dtype)
        cache.exact = bool(cfg.data)
    out.append(cache)

    # train: per prompt layer, ceil(n_train / batch) steps an epoch of P + target_n tokens, forward and backward.
    texts = counts(cfg.model, shape.source, cfg.lens_text, cfg.fixed_prompt, cfg.lens_tokens)
    target_n, P, b = 1, texts.lead + cfg.prompt_len, cfg.train_batch_size  # the model reads the lead rows too
    steps = math.ceil(n_train / b) * cfg.epochs
    kl = cfg.loss == "kl"
    step_flops = F.BACKWARD * b * F.row(shape, P + target_n) + (2 * b * d * V if kl else 0)
    train = Stage("train", flops=steps * step_flops * len(prompt_layers), calls=steps * len(prompt_layers),
                  weight_reads=2, kind="train",
                  ram=cfg.cache_shard_size * (1 + (heads if kl else 0)) * d * itemsize * 2,
                  model_ram=_activations(shape, b, P + target_n) * 2,
                  gpu=_activations(shape, b, P + target_n) * shape.n_layers,
                  disk=len(prompt_layers) * P * shape.embed_dim * 4 * 5,
                  note=f"{len(prompt_layers)} prompts x {steps:,} steps of {b} x {P + target_n} tokens")
    train.step_flops = step_flops  # type: ignore[attr-defined]
    if cfg.remote:
        _train_remote(cfg, shape, train, lm, run, kl, len(prompt_layers), texts.lead)
    out.append(train)

    out += _eval(cfg, shape, run, itemsize, eval_layers, prompt_layers, texts)
    out.append(lens_stage(cfg, shape, lm, texts))
    return out


def _train_remote(cfg: PlanConfig, shape: Shape, train: Stage, lm: Any, run: Rows, kl: bool,
                  prompts: int, lead: int = 0) -> None:
    """Remote training both ways (`futurelens.train_states`): shipping each batch's cached states, or sending its
    prefix ids for the server to recompute them; ``--states auto`` picks by `choose_states`, as the stage does."""
    from ..train_states import choose_states, recompute_bytes_per_row, recompute_flops_per_row, ship_bytes_per_row

    d, n_train, b = shape.d_model, len(run.train), cfg.train_batch_size
    mean_len = sum(run.train) / max(n_train, 1)
    ship_row = ship_bytes_per_row(d, cfg.n_max, cfg.loss, cfg.cache_dtype)
    id_row = recompute_bytes_per_row(mean_len, cfg.n_max)
    id_flops = recompute_flops_per_row(shape.params, mean_len, cfg.n_max)
    mode = cfg.states if cfg.states != "auto" else choose_states(ship_row, id_row, id_flops)
    args = (lm, n_train, b, cfg.epochs, cfg.prompt_len, shape.embed_dim, d, cfg.n_max, cfg.cache_dtype, kl)
    ways = {"ship": _remote(R.train, *args, lead=lead),
            "recompute": _remote(R.train, *args, lead=lead, batch_bytes=lambda rows: math.ceil(rows * id_row))}
    ways = {k: (v if "error" in v else {x: (y if x == "largest" else y * prompts) for x, y in v.items()})
            for k, v in ways.items()}
    train.requests, train.exact = ways[mode], bool(cfg.data) and mode == "ship"
    extra = n_train * cfg.epochs * prompts * F.row(shape, mean_len + cfg.n_max)  # the recompute forwards
    if mode == "recompute":
        train.flops += extra
    other = "recompute" if mode == "ship" else "ship"
    alt = ways[other]
    alt_text = "over the bound" if "error" in alt else f"{alt['requests']:,} requests, {alt['sent'] / 2**30:.3g} GiB sent"
    train.note += (f"; states {mode}" + (" (auto)" if cfg.states == "auto" else "") + f"; {other} would be {alt_text}"
                   + (f" and +{extra:.3g} FLOPs on the server" if other == "recompute" else ""))


def _distinct(run: Rows, heads: int, vocab: int) -> list[int]:
    """Distinct train targets per N: counted from the table, else Heaps' law (7 x draws^0.6, capped at the vocabulary)."""
    if run.distinct_targets:
        return run.distinct_targets
    return [min(vocab, int(7 * max(len(run.train), 1) ** 0.6) + 1)] * heads


def _eval(cfg: PlanConfig, shape: Shape, run: Rows, itemsize: int, layers: list[int], prompt_layers: list[int],
          texts: Counts) -> list[Stage]:
    """One stage per method, all layers together (`futurelens.evaluate`)."""
    heads, d, V, n_train, n_test = cfg.n_max + 1, shape.d_model, shape.vocab, len(run.train), len(run.test)
    L, b = len(layers), cfg.eval_batch_size
    batches = math.ceil(n_test / b) * L
    scoring = _activations(shape, b, 1, 3 * b * heads)  # per batch: logits, log-softmax and the model's own
    out = []
    for method in cfg.methods:
        s = Stage(f"eval: {method}", kind="forward")
        if method == "ngram":
            s.ram, s.note = 16 * n_train * heads * 8, "counts on the train text; no model calls"
        elif method == "vocab":
            from ..methods.vocab import vocab_probe_fit_bytes, vocab_probe_rows

            # The bounded fit's own formulas (futurelens.methods.vocab): rows per N capped by its memory budget.
            rows = vocab_probe_rows(d, V, heads, _distinct(run, heads, V), cfg.vocab_memory_mb)
            s.client_flops = 3 * 2 * d * sum(rows) * n_train * cfg.vocab_epochs * L
            s.ram = vocab_probe_fit_bytes(d, rows, VOCAB_BATCH) + 8 * heads * V + scoring
            s.disk = L * 3 * 4 * sum(rows) * (d + 1)
            s.note = f"probe {heads} x ~{rows[0] - 1:,} targets x {d} per layer" + ("" if run.distinct_targets else " (targets estimated)")
        elif method == "linear":
            s.client_flops = L * (2 * n_train * (d + 1) ** 2 + heads * 2 * n_train * (d + 1) * d + heads * (d + 1) ** 3
                                  + 2 * n_test * heads * (d + 1) * d)
            s.ram, s.model_ram = 8 * (d + 1) ** 2 + 8 * heads * (d + 1) * d + 4 * heads * (d + 1) * d, scoring
            s.flops, s.calls = batches * b * heads * 2 * d * V, batches
            s.disk = L * 4 * heads * (d + 1) * d
            s.note = "ridge in float64 on the client, mapped there; the mapped rows decoded by the model's head"
        elif method == "mlp":
            from ..methods.mlp import MLPProbe, fit_bytes

            # One N at a time (`MLPProbe.fit`): per step the block on a batch, the model's head on its rows and on the
            # cached final states, and the backward through the head and the block; every N's block is kept.
            fb = MLPProbe.batch_size
            steps = math.ceil(n_train / fb) * cfg.mlp_epochs * heads
            head_flops = 2 * fb * d * V
            step = head_flops + 3 * (head_flops + 2 * fb * 2 * d * d)
            s.client_flops = L * (steps * step + 2 * n_test * heads * 2 * d * d)
            # the block, one N's gradient and moments; per step ~7 [b, V] float32 logits-sized tensors (the guess,
            # the target, their log-softmax, the KL's terms, the gradients through the softmax)
            s.ram = fit_bytes(d, heads) + 7 * 4 * fb * V + scoring
            s.flops, s.calls = batches * b * heads * 2 * d * V, batches
            s.disk = L * 4 * heads * (2 * d * d + 2 * d) * 2  # the probe, and its checkpoint while fitting
            s.note = (f"MLP probe {heads} x (2 x {d} x {d}) fitted on the client one N at a time (KL through the "
                      "model's head" + ("; remotely one request per batch, not counted" if cfg.remote else "") + ")")
        elif method in ("fixed", "learned"):
            tokens = texts.prompt_ids if method == "fixed" else texts.lead + cfg.prompt_len
            # One patched forward of the prompt and the n_max teacher tokens gives every N (jobs.prompt_logits);
            # scoring decodes the model's own final states beside it (jobs.score_job).
            s.flops = L * n_test * (F.row(shape, tokens + cfg.n_max) + heads * 2 * d * V)
            # The patched forward's logits over every position of the prompt and the teacher tokens, log-softmaxed.
            patched = _activations(shape, b, tokens + cfg.n_max, 2 * b * (tokens + cfg.n_max))
            s.calls, s.ram, s.model_ram, s.gpu = batches, 8 * b * heads * 10 * 3, scoring + patched, patched
        if method in ("linear", "mlp", "fixed", "learned"):
            s.score = "decode" if method in ("linear", "mlp") else method  # type: ignore[attr-defined]
        out.append(s)
    # Every scoring batch also decodes the model's own final states N ahead (jobs.score_job), whatever the methods:
    # on the first row that calls the model, as its requests are.
    first = next((s for s in out if s.calls), out[0] if out else None)
    if first is not None:
        first.base_calls = batches  # type: ignore[attr-defined]
        first.flops += batches * b * heads * 2 * d * V
        first.calls = first.calls or batches
    if cfg.remote:
        _eval_remote(cfg, shape, run, layers, prompt_layers, out, texts.lead)
    return out


def _eval_remote(cfg: PlanConfig, shape: Shape, run: Rows, layers: list[int], prompt_layers: list[int],
                 out: list[Stage], lead: int = 0) -> None:
    """Scoring's requests (`futurelens.evaluate._score`), layer by layer as the stage makes them: its test batches
    sized by `futurelens.scoring` and split by its `score_spans`, with every model-side method's tensors (a soft
    prompt) sent with each request. All methods share those requests: they go on the first row that calls the model."""
    from .. import scoring

    lm = R.bound(cfg.max_request_mb)
    heads, d, n_test, b = cfg.n_max + 1, shape.d_model, len(run.test), cfg.eval_batch_size
    rows = [min(b, n_test - a) for a in range(0, n_test, b)]
    methods = set(cfg.methods)
    decoded = len(methods & {"linear", "mlp"})
    requests: R.Requests = []
    try:
        for j, layer in enumerate(layers):
            learned = "learned" in methods and layer in prompt_layers
            model_side = decoded + ("fixed" in methods) + learned
            client = ("vocab" in methods) + ("ngram" in methods and j == 0)  # the bigram is scored at the first layer
            sent = [scoring.batch_bytes(r, heads, d, cfg.cache_dtype) + scoring.client_bytes(r, heads, client)
                    + decoded * scoring.hidden_bytes(r, heads, d) for r in rows]
            back = [scoring.returned_bytes(r, heads, cfg.k, model_side, client) for r in rows]
            # the soft prompt as saved (its lead rows first), float32
            fixed = tensor_bytes(lead + cfg.prompt_len, shape.embed_dim) if learned else 0
            for a, z in scoring.score_spans(lm, sent, back, fixed):
                requests.append((fixed + sum(sent[a:z]), sum(back[a:z])))
        req: dict[str, Any] = R.total(requests)
    except FutureLensError as err:
        req = {"error": str(err)}
    target = next((s for s in out if s.name.split(": ")[1] in ("linear", "mlp", "fixed", "learned")), out[0] if out else None)
    if target is not None:
        target.requests, target.exact = req, bool(cfg.data)
        target.note = (target.note + "; " if target.note else "") + f"requests: every method's scoring ({', '.join(cfg.methods)})"


def lens_stage(cfg: PlanConfig, shape: Shape, lm: Any, texts: Counts) -> Stage:
    """The lens page of one text (`futurelens.lens.compute`): every layer x token cell decoded, then rolled out."""
    T, r, P = texts.columns, cfg.rollout, texts.lead + cfg.prompt_len  # a learned prompt as saved: lead rows first
    learned = cfg.lens_prompts == "learned"
    prompt = P if learned else texts.prompt_ids
    rows = shape.n_layers + 1
    cells = rows * T
    # The row's states once; per cell the logit lens (the head) and r rollout tokens after the prompt, whose own
    # states are computed once and shared by every cell (the shared-prefix rollout).
    s = Stage("lens", flops=F.row(shape, texts.text_ids) + F.row(shape, prompt)
              + cells * (2 * shape.d_model * shape.vocab + F.decode(shape, prompt, r)),
              # Per chunk of up to 512 cells (LensConfig.chunk_size): the logit lens' and each rollout step's
              # vocabulary-sized logits, softmax and top-k temporaries, and the rollout's KV cache.
              calls=1 + math.ceil(cells / 512) * max(r, 1),
              ram=8 * cells * (cfg.lens_top_k + r) * 3,
              model_ram=_activations(shape, min(cells, 512), prompt + r, 4 * min(cells, 512)) + _kv(shape, min(cells, 512), prompt + r),
              gpu=_activations(shape, min(cells, 512), prompt + r, 4 * min(cells, 512)) + _kv(shape, min(cells, 512), prompt + r, 2),
              disk=cells * 2_000, note=f"{cells:,} cells, {r}-token rollouts, "
                                       + ("a learned prompt per row" if learned else "the fixed prompt"))
    s.cells = cells  # type: ignore[attr-defined]
    if cfg.remote:
        from ..lens.compute import lens_request_sizes

        # The stage's own sizes (lens_request_sizes) and split: a float32 soft prompt per grid row, or none.
        sizes = lens_request_sizes(texts.text_ids, 0 if learned else texts.prompt_ids,
                                   [tensor_bytes(P, shape.embed_dim) if learned else 0] * rows, T,
                                   cfg.lens_top_k, r)
        s.requests = _remote(lambda: R.split(lm, sizes["payload"], [sizes["result"]] * rows, sizes["fixed"]))
        s.exact = texts.exact
        s.note += "" if texts.exact else "; requests estimated (no tokenizer here to count the text)"
    return s
