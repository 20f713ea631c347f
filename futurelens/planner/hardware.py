"""The machines a plan prices a run on: three data-centre GPUs from their data sheets, and this machine, measured.

A GPU stage's time is a roofline per model call (`roofline`): the larger of its FLOPs at
``UTILISATION['compute']`` of the dense peak for its precision and its weight reads at
``UTILISATION['bandwidth']`` of HBM bandwidth. Nothing here is measured on those GPUs; the
table says so. This machine's matmul rate is measured (`matmul_rate`).
"""

from __future__ import annotations

import os
import time
from typing import Any

GPUS: dict[str, dict[str, float]] = {
    # Dense peaks from NVIDIA's data sheets (no sparsity), FLOP/s; HBM bandwidth, bytes/s; memory, bytes.
    # fp32 is the non-tensor-core rate (PyTorch's default for float32 matmuls: TF32 off).
    "A100 80GB SXM": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12, "fp64": 19.5e12, "hbm": 2.039e12, "memory": 80e9},
    "H100 80GB SXM": {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12, "fp64": 67e12, "hbm": 3.35e12, "memory": 80e9},
    "H200 141GB SXM": {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12, "fp64": 67e12, "hbm": 4.8e12, "memory": 141e9},
}
UTILISATION = {"compute": 0.40, "bandwidth": 0.70}
"""Fractions of peak a well-batched transformer workload reaches (an assumption, not a measurement)."""

CPU_EFFICIENCY = 0.5
"""Fraction of this machine's measured matmul rate a model's forward reaches when no calibration on the model
itself is available (benchmarks/flops.py measures ~0.1-0.5 on the small models, overhead-bound)."""


def roofline(calls: float, flops: float, weight_reads: float, weight_bytes: float, peak: float,
             gpu: dict[str, float]) -> dict[str, Any]:
    """Seconds for ``calls`` calls doing ``flops`` FLOPs in all and reading ``weight_bytes`` of weights
    ``weight_reads`` times each: per call, the larger of the arithmetic at ``UTILISATION['compute']`` of ``peak``
    and the weight reads at ``UTILISATION['bandwidth']`` of HBM bandwidth."""
    calls = max(calls, 1)
    per_call_compute = flops / calls / (peak * UTILISATION["compute"])
    per_call_memory = weight_reads * weight_bytes / (gpu["hbm"] * UTILISATION["bandwidth"])
    return {"compute_s": calls * per_call_compute, "memory_s": calls * per_call_memory,
            "s": calls * max(per_call_compute, per_call_memory),
            "bound": "compute" if per_call_compute >= per_call_memory else "memory"}


def matmul_rate(n: int = 1024, repeats: int = 5) -> float:
    """This machine's fp32 matmul FLOP/s: best of ``repeats`` ``n x n @ n x n`` products (2 n^3 FLOPs each)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up: the first call allocates and picks a kernel
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def this_machine() -> dict[str, Any]:
    """CPU cores usable, RAM and free disk (of the working directory) of this machine."""
    import shutil

    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"cores": cores, "ram": ram, "disk_free": shutil.disk_usage(".").free}


def _status(field: str) -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss() -> int:
    """This process's resident set size now, bytes (Linux ``VmRSS``; 0 elsewhere)."""
    return _status("VmRSS")


def peak_rss() -> int:
    """This process's peak resident set size so far, bytes (Linux ``VmHWM``; 0 elsewhere)."""
    return _status("VmHWM")


def process_age() -> float:
    """Seconds since this process started (Linux; 0 elsewhere): its interpreter start, imports and all."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]) / ticks
        return float(open("/proc/uptime").read().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return 0.0
