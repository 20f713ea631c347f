"""This machine's throughput for one model, measured on the model itself through futurelens' own calls.

`calibrate` loads the model (its weights must be here) and times, best of two each, what the stages
call: `futurelens.cache_ahead` at two sizes (the forward's per-call cost and FLOP rate, by a line
through the two), `futurelens.greedy` (a labelling call: prefill plus ``n_max`` decode steps), and one
soft-prompt training step (`futurelens.train.prompt_loss` and its backward), and evaluation's scoring call
(`futurelens.server.jobs.score_job` on one batch: the model's own distribution alone, then with each kind of
model-side method, the difference being that method's share). The process's age and
resident memory after loading are the fixed part of a stage's process (interpreter, imports, weights).
"""

from __future__ import annotations

import gc
import time
from typing import Any, Callable

from . import flops as F
from .hardware import peak_rss, process_age, rss
from .shape import Shape

MAX_PARAMS = 2e9
"""Models larger than this are not loaded to calibrate (their weights would not fit this machine's RAM)."""


def _best(fn: Callable[[], Any], repeats: int = 2) -> tuple[float, float]:
    """``(best of repeats, first call)`` seconds: a process's first call of a kind also builds what later calls
    reuse (nnsight's instrumented forwards), a one-off cost each stage's process pays."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best, first


def calibrate(model: str, shape: Shape, n_max: int, train_batch: int, prompt_len: int,
              cache_batch: int, eval_methods: int = 5, eval_layers: int = 1, test_rows: int = 32,
              eval_batch: int = 32, prompt_ids: int = 10, lens: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measured costs of ``model`` here: ``startup_s``, ``fixed_rss``, ``load_peak_rss``, ``forward_call_s``,
    ``flop_rate``, ``greedy_call_s`` (per call, beyond its FLOPs at that rate), ``train_step_s`` (one step at
    ``train_batch``), ``score_call_s`` (per scoring batch of ``eval_batch`` rows: ``base``, the model's own
    distribution N ahead that every batch decodes, and the extra of each model-side kind, ``decode`` (a probe's
    mapped rows), ``fixed`` (a ``prompt_ids``-token prompt) and ``learned`` (``prompt_len`` vectors)),
    ``eval_results_s`` (eval writing its table and figures, `results_cost`), ``lens_s`` (the second of two lens
    grids of `LENS_TEXT` with ``lens``'s settings: ``rollout``, ``top_k``, ``fixed_prompt``, ``learned`` prompts of
    ``prompt_len`` or the fixed prompt) and ``first_call_s`` (the one-off extra of a process's first call of each
    kind)."""
    import torch

    from ..data.states import StateBatch
    from ..models import load_model
    from ..tracing import cache_ahead, greedy
    from ..train import prompt_loss

    # Each stage runs as a `futurelens` process: its start-up imports the CLI's typer (and rich) too. Importing
    # futurelens.cli itself would close an import loop (cli -> planner -> calibrate -> cli).
    import typer  # noqa: F401

    lm = load_model(model)
    startup = process_age()
    load_peak = peak_rss()  # loading copies weights: a stage's process peaks at least here
    t0 = time.perf_counter()
    gc.collect()
    fixed = rss()
    g = torch.Generator().manual_seed(0)

    def ids(rows: int, length: int) -> torch.Tensor:
        return torch.randint(5, shape.vocab - 1, (rows, length), generator=g)

    (b1, t1), (b2, t2) = (2, 8), (cache_batch, 48)
    x1, x2, c1, c2 = ids(b1, t1), ids(b2, t2), ids(b1, n_max), ids(b2, n_max)
    (s1, first1), (s2, _) = _best(lambda: cache_ahead(lm, x1, c1, None)), _best(lambda: cache_ahead(lm, x2, c2, None))
    f1, f2 = b1 * F.row(shape, t1 + n_max), b2 * F.row(shape, t2 + n_max)
    rate = (f2 - f1) / max(s2 - s1, 1e-9)
    call = max(s1 - f1 / rate, 0.0)

    rows = ids(8, 24).tolist()
    sg, first_g = _best(lambda: greedy(lm, rows, n_max + 1, batch_size=8))
    greedy_call = max(sg - 8 * (F.row(shape, 24) + F.decode(shape, 24, n_max)) / rate, 0.0)

    layer = shape.n_layers // 2
    batch = StateBatch(states=torch.randn(train_batch, shape.d_model, generator=g), target=ids(train_batch, n_max + 1),
                       last_token=ids(train_batch, 1)[:, 0], row=torch.arange(train_batch),
                       final=torch.randn(train_batch, n_max + 1, shape.d_model, generator=g))
    prompt = (torch.randn(prompt_len, shape.embed_dim, generator=g) * 0.02).requires_grad_(True)

    def step() -> None:
        prompt_loss(lm, prompt, batch, layer, 1, "kl").backward()
        prompt.grad = None

    st, first_t = _best(step)
    scores, first_s = _score_calls(lm, shape, n_max, eval_batch, prompt_len, prompt_ids, layer, g)
    lens_s = _lens_call(lm, shape, prompt_len, g, **lens) if lens is not None else None
    from .results_cost import results_seconds

    results = results_seconds(eval_methods, eval_layers, n_max + 1, test_rows)  # eval's table and figures
    took = time.perf_counter() - t0
    del lm
    gc.collect()
    return {"startup_s": startup, "fixed_rss": fixed, "load_peak_rss": load_peak, "forward_call_s": call, "flop_rate": rate,
            "greedy_call_s": greedy_call, "train_step_s": st, "train_batch": train_batch, "prompt_len": prompt_len,
            "calibration_s": took, "eval_results_s": results, "first_call_s": {"forward": max(first1 - s1, 0.0), "greedy": max(first_g - sg, 0.0),
                                                    "train": max(first_t - st, 0.0), "eval": first_s},
            "score_call_s": scores, "eval_batch": eval_batch, **({} if lens_s is None else {"lens_s": lens_s})}


LENS_TEXT = "The Python interpreter"
"""The lens grid calibration times: a few columns, so that it costs a fraction of a real page."""


def _lens_call(lm: Any, shape: Shape, prompt_len: int, g: Any, rollout: int, top_k: int, fixed_prompt: str,
               learned: bool) -> float:
    """Seconds of one `futurelens.lens.lens_grid` of `LENS_TEXT` (its second call): its model calls and everything
    around them (the logit lens' and each rollout step's top-k over the vocabulary, the rows' key/value cache)."""
    import torch

    from ..lens.compute import lens_grid

    prompts = ({layer: torch.randn(prompt_len, shape.embed_dim, generator=g) * 0.02 for layer in range(shape.n_layers + 1)}
               if learned else None)
    took, _ = _best(lambda: lens_grid(lm, LENS_TEXT, prompts, rollout=rollout, top_k=top_k, fixed_prompt=fixed_prompt),
                    repeats=1)
    return took


def _score_calls(lm: Any, shape: Shape, n_max: int, rows: int, prompt_len: int, prompt_ids: int, layer: int,
                 g: Any) -> tuple[dict[str, float], float]:
    """``({"base", "decode", "fixed", "learned"}: seconds a scoring batch of ``rows``, first-call extra)``: one
    `futurelens.server.jobs.score_job` call, as `futurelens.evaluate` makes it, with no model-side method (the
    model's own distribution and a client method's top-1 scored under it) and with each kind alone."""
    import torch

    from ..dispatch import run_job
    from ..server import jobs

    heads, d = n_max + 1, shape.d_model
    vocab = lambda *size: torch.randint(5, shape.vocab - 1, size, generator=g)  # noqa: E731
    batch = {"states": torch.randn(rows, d, generator=g), "final": torch.randn(rows, heads, d, generator=g),
             "target": vocab(rows, heads), "text": vocab(rows, heads), "hidden": {0: torch.randn(rows, heads, d, generator=g)}}
    client = [{"bigram": [vocab(rows) for _ in range(heads)]}]
    kinds = {"decode": ("decode", 0, 0, None), "fixed": ("fixed", 0, vocab(prompt_ids).tolist(), None),
             "learned": ("learned", 0, torch.randn(prompt_len, shape.embed_dim, generator=g) * 0.02, None)}

    def score(methods: list) -> Callable[[], Any]:
        return lambda: run_job(lm, jobs.score_job, methods, [batch], layer, 10, client)

    base, first = _best(score([]), repeats=1)  # a scoring batch is seconds at 135M: once after the first
    out, extra = {"base": base}, max(first - base, 0.0)
    for kind, method in kinds.items():
        took, first = _best(score([method]), repeats=1)
        out[kind] = max(took - base, 0.0)
        extra += max(first - took, 0.0)
    return out, extra
