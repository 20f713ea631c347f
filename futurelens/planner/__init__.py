"""`futurelens plan` / `fl.plan`: what a run will cost, per stage, before it runs.

For a model (a shipped config, a folder, a hub id, the embedded default) and a run's settings
(`PlanConfig`), every stage — data (labelling), cache, train, eval per method, lens — gets its FLOPs,
its time here and on an A100 / H100 / H200, its peak client RAM, GPU memory and disk and, remotely,
its NDIF requests and bytes each way. Modules: `shape` (the model without weights), `flops` (the
analytic counter), `requests` (remote requests by `futurelens.dispatch.spans`), `stages` (work and
footprint per stage), `calibrate` (this machine, measured on the model), `hardware` (the GPUs),
`estimate` (pricing), `table` (printing).
"""

from __future__ import annotations

from typing import Any

from .config import PlanConfig
from .estimate import Plan


def plan(cfg: PlanConfig | None = None, **settings) -> Plan:
    """The `Plan` of a run: ``plan(PlanConfig(...))`` or ``plan(model=..., n_prefixes=..., remote=True)``."""
    from dataclasses import replace

    from ..errors import FutureLensError
    from .calibrate import MAX_PARAMS, calibrate
    from .estimate import _BYTES, price
    from .shape import resolve
    from .stages import rows, workload
    from .text import counts

    cfg = replace(cfg or PlanConfig(), **settings)
    if cfg.n_prefixes < 1 or cfg.min_len < 1 or cfg.max_len < cfg.min_len or cfg.n_max < 0:
        raise FutureLensError("n_prefixes and min_len must be >= 1, max_len >= min_len and n_max >= 0.")
    if not 0 < cfg.keep_rate <= 1:
        raise FutureLensError(f"keep_rate must be in (0, 1], got {cfg.keep_rate}.")
    if cfg.states not in ("auto", "ship", "recompute"):
        raise FutureLensError(f"states must be 'auto', 'ship' or 'recompute', not {cfg.states!r}.")
    if cfg.cache_dtype not in _BYTES:
        raise FutureLensError(f"cache_dtype must be one of {', '.join(_BYTES)}, not {cfg.cache_dtype!r}.")
    shape = resolve(cfg.model)
    run = rows(cfg)
    if cfg.data:
        cfg = replace(cfg, n_prefixes=len(run.train) + len(run.test))
    stages = workload(cfg, shape, run, _BYTES[cfg.cache_dtype])
    cal = None
    if cfg.calibrate and not cfg.remote and shape.params < MAX_PARAMS and shape.source != "shipped":
        from .shape import layers as resolve_layers

        cal = calibrate(cfg.model, shape, cfg.n_max, cfg.train_batch_size, cfg.prompt_len, cfg.cache_batch_size,
                        len(cfg.methods), len(resolve_layers(shape, cfg.eval_layers or cfg.layers)), len(run.test),
                        cfg.eval_batch_size, counts(cfg.model, shape.source, cfg.lens_text, cfg.fixed_prompt).prompt_ids,
                        lens=dict(rollout=cfg.rollout, top_k=cfg.lens_top_k, fixed_prompt=cfg.fixed_prompt,
                                  learned=cfg.lens_prompts == "learned"))
        cal["lens_cell_s"] = lens_cell_seconds(cfg, shape, cal)
    return price(cfg, shape, stages, cal)


def lens_cell_seconds(cfg: PlanConfig, shape: Any, cal: dict) -> float:
    """What a lens cell costs beyond its model calls and FLOPs at the measured rates: the calibration grid's measured
    time less what plan's own lens row says of that grid, per cell."""
    from .calibrate import LENS_TEXT
    from .stages import lens_stage
    from .text import counts

    grid = lens_stage(cfg, shape, None, counts(cfg.model, shape.source, LENS_TEXT, cfg.fixed_prompt))
    model_s = grid.calls * cal["forward_call_s"] + grid.flops / cal["flop_rate"]
    return max(cal["lens_s"] - model_s, 0.0) / grid.cells


def run(cfg: PlanConfig) -> Plan:
    """`futurelens plan`: compute and print the table (Markdown with ``cfg.markdown``)."""
    from .table import markdown, show

    p = plan(cfg)
    if cfg.markdown:
        print(markdown(p), end="")
    else:
        show(p)
    return p


__all__ = ["Plan", "PlanConfig", "plan", "run"]
