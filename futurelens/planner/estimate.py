"""Price a run's stages: time here and on each GPU, memory, disk, requests; the `Plan` that `futurelens plan` prints.

Time here: measured on the model itself where `futurelens.planner.calibrate` ran (its per-call costs and
FLOP rate), else this machine's measured matmul rate x `hardware.CPU_EFFICIENCY`. On a GPU: the
`hardware.roofline` of each stage's model calls, from data-sheet peaks and `hardware.UTILISATION`
(never measured here); the client-side fits (probes, ridge) run on the CPU where the cache is, so every
column prices them at this machine's rate. Every figure says which way it was made.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any

from .config import PlanConfig
from .hardware import CPU_EFFICIENCY, GPUS, matmul_rate, process_age, roofline, rss, this_machine
from .shape import Shape
from .stages import Stage

_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass
class Plan:
    """What `futurelens.planner.plan` returns: the settings, the model's shape, and one priced row per stage."""

    cfg: PlanConfig
    shape: Shape
    machine: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Per stage: ``name, flops, client_flops, here_s, gpu_s {gpu: s}, ram, gpu_mem, disk, requests, exact, note``."""
    how: dict[str, str] = field(default_factory=dict)
    """How each kind of figure was made (shown under the table)."""

    def stage(self, name: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["name"] == name)

    def process(self, name: str) -> dict[str, float]:
        """The CLI process of stage ``name`` ('data', 'cache', 'train', 'eval', 'lens'): ``{"s", "rss"}``, its
        start-up, its first model call's one-off cost and its fixed memory included (eval: its methods' times
        summed, their peaks' largest)."""
        mine = [r for r in self.rows if r["name"] == name or r["name"].startswith(name + ":")]
        first = self.machine.get("first_call_s", {}).get({"data": "greedy", "train": "train", "eval": "eval"}.get(name, "forward"), 0.0)
        results = self.machine.get("eval_results_s", 0.0) if name == "eval" else 0.0  # its table and figures, timed
        return {"s": self.machine["startup_s"] + (0.0 if self.cfg.remote else first) + results
                + sum(r["here_s"] for r in mine),
                "rss": max(self.machine.get("load_peak_rss", 0), self.machine["fixed_rss"] + max(r["ram"] for r in mine))}


def weight_bytes(shape: Shape, dtype: str) -> float:
    return shape.params * _BYTES.get(dtype, 4)


def resident_weight_bytes(shape: Shape, dtype: str) -> float:
    """Weights resident in RAM once a CPU run has loaded and used them. Loaded in the checkpoint's own dtype,
    safetensors' tensors are memory-mapped and a page counts only once read: an untied input embedding is read
    a row per token seen, so it stays (almost all) out (4 GB of Llama-3.1-70B's 128,256 x 8192 float32 rows);
    converted to another dtype, every weight is copied in."""
    own = _BYTES.get(shape.weight_dtype.replace("torch.", ""), 4) == _BYTES.get(dtype, 4)
    untouched = shape.embed_params if own and not shape.tied else 0
    return (shape.params - untouched) * _BYTES.get(dtype, 4)


def price(cfg: PlanConfig, shape: Shape, stages: list[Stage], cal: dict[str, Any] | None) -> Plan:
    """The `Plan` of ``stages``: see the module docstring for how each figure is made."""
    here_dtype = cfg.dtype or "float32"
    gpu_dtype = cfg.dtype or "bfloat16"
    gpu_weights = weight_bytes(shape, gpu_dtype)
    mm = matmul_rate()
    machine = dict(this_machine(), matmul_rate=mm)
    if cal is not None:
        machine.update(cal)
        how_here = (f"measured: {shape.name}'s own calls timed here (forward {cal['flop_rate'] / 1e9:.1f} GFLOP/s + "
                    f"{1e3 * cal['forward_call_s']:.0f} ms a call; start-up {cal['startup_s']:.1f} s)")
    else:
        gc.collect()
        local = 0.0 if cfg.remote else resident_weight_bytes(shape, here_dtype)
        machine.update(startup_s=process_age(), fixed_rss=rss() + local, flop_rate=mm * CPU_EFFICIENCY,
                       forward_call_s=0.0, greedy_call_s=0.0)
        how_here = (f"peak x efficiency: this machine's measured fp32 matmul rate {mm / 1e9:.0f} GFLOP/s x "
                    f"{CPU_EFFICIENCY:g}; start-up = this process's age")
    if cfg.remote:
        how_here = "remote: the client's own work here (probe fits, ridge); the model-side work is in the GPU columns"
    rate, client_rate = machine["flop_rate"], mm * CPU_EFFICIENCY
    plan = Plan(cfg, shape, machine)
    plan.how = {
        "here": how_here,
        "gpus": (f"peak x efficiency: data-sheet dense {gpu_dtype} peak x {100 * 0.4:.0f}% or weight reads at 70% of HBM "
                 "bandwidth, the larger per call (not measured); client-side fits at this machine's rate"),
        "ram": ("measured fixed part (this process after imports" + ("" if cfg.remote or cal is None else " and the weights")
                + ") + the stage's buffers" + ("" if cal is not None or cfg.remote else f" + the {here_dtype} weights it reads "
                                                                "(an untied embedding memory-mapped, mostly unread)")),
        "requests": "exact: futurelens.dispatch.spans over the run's rows" if cfg.data else
                    "futurelens.dispatch.spans over rows spread evenly over the length range",
    }
    for s in stages:
        client_s = s.client_flops / client_rate
        if cfg.remote:
            here = client_s
        elif s.kind == "train" and cal is not None:
            # Measured per step at the calibrated batch and prompt; other sizes scale by FLOPs.
            per_step = cal["train_step_s"] * (s.step_flops / _cal_step_flops(shape, cal)) if hasattr(s, "step_flops") else 0
            here = s.calls * per_step + client_s
        elif cal is not None and "score_call_s" in cal and (hasattr(s, "score") or hasattr(s, "base_calls")):
            # Evaluation's scoring, measured per batch (`calibrate._score_calls`): each method its share, and the
            # model's own distribution that every batch decodes on the first row that calls the model.
            scored = cal["score_call_s"]
            here = (s.calls * scored[s.score] if hasattr(s, "score") else 0.0) \
                + getattr(s, "base_calls", 0) * scored["base"] + client_s
        else:
            calls = getattr(s, "calls_model", s.calls)
            per_call = machine["greedy_call_s"] if s.kind == "greedy" else machine["forward_call_s"]
            here = calls * per_call + s.flops / rate + client_s
            if cal is not None and hasattr(s, "cells"):  # a lens cell's cost beyond its model calls, measured
                here += s.cells * cal.get("lens_cell_s", 0.0)
        gpu_s = {}
        for name, gpu in GPUS.items():
            model_side = roofline(s.calls, s.flops, s.weight_reads, gpu_weights, gpu["bf16" if gpu_dtype != "float32"
                                                                                       else "fp32"], gpu)["s"] if s.calls else 0.0
            gpu_s[name] = model_side + client_s
        plan.rows.append({
            "name": s.name, "flops": s.flops, "client_flops": s.client_flops, "here_s": here, "gpu_s": gpu_s,
            "ram": s.ram + (0.0 if cfg.remote else s.model_ram), "gpu_mem": (gpu_weights + s.gpu) if s.calls else 0.0, "disk": s.disk,
            "requests": s.requests, "exact": s.exact, "note": s.note,
        })
    return plan


def _cal_step_flops(shape: Shape, cal: dict[str, Any]) -> float:
    from . import flops as F

    b, P = cal["train_batch"], cal["prompt_len"]
    return F.BACKWARD * b * F.row(shape, P + 1) + 2 * b * shape.d_model * shape.vocab
