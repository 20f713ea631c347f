"""Where the time goes: the default model's forward pass as a fraction of this machine's matmul peak.

- peak: fp32 ``a @ b`` of two 2048 x 2048 matrices (2 n^3 FLOPs), best of several.
- achieved: FLOPs of one forward (counted exactly by ``torch.utils.flop_counter.FlopCounterMode``;
  attention kernels it has no formula for, such as the CPU flash kernel, are added
  analytically: 4 x layers x d x T^2 per row) / its best wall time. Measured for the
  plain HF forward and for ``futurelens.cache_ahead`` over all layers on the same batch
  (equal-length pydoc rows, so no padding and no mask).
- the matmul and both forwards are timed interleaved, round by round, and the fraction
  of peak is the median of the per-round fractions: a peak taken in a quiet moment and
  a forward taken in a busy one (or the reverse) would give a meaningless fraction.
- a profile of one plain forward splits the time between matrix products and the rest
  (elementwise ops, norms, copies), which is where a small model loses its peak.

Informational: there is no pass/fail threshold; ``value`` is the plain forward's fraction.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from futurelens.planner.flops import analytic as analytic_flops

from .common import default_lm, device, interleaved, paired_ratio, plain_default, pydoc_prefixes, result, stats

NAME = "flops"
MATMUL_N = 2048
MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "scaled_dot_product", "flash_attention", "efficient_attention")


def count_flops(fn: Callable[[], Any], n_layers: int, d_model: int, rows: int, length: int) -> dict[str, Any]:
    """FLOPs of one call of ``fn``, with attention added analytically when no counted op covered it."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    by_op = {str(op): int(f) for op, f in counter.get_flop_counts()["Global"].items()}
    total = int(counter.get_total_flops())
    attention_counted = any("attention" in op for op in by_op)
    attention = 0 if attention_counted else 4 * n_layers * d_model * length**2 * rows
    return {"total": total + attention, "counted_by_op": by_op, "attention_added_analytically": attention}


def time_split(fn: Callable[[], Any]) -> dict[str, Any]:
    """Share of one call's self time spent in matrix products, and the most expensive ops."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device().type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        fn()
    attr = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    events = [(e.key, getattr(e, attr)) for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(t for _, t in events) or 1
    matmul = sum(t for k, t in events if any(m in k for m in MATMUL_OPS))
    top = sorted(events, key=lambda kv: -kv[1])[:6]
    return {
        "clock": "GPU kernel time" if on_gpu else "CPU self time",
        "matmul_share": round(matmul / total, 3),
        "top_ops_share": {k: round(t / total, 3) for k, t in top},
    }


def run(quick: bool) -> dict[str, Any]:
    """Measure the matmul peak and the forward's achieved FLOP/s; see the module docstring."""
    import futurelens as fl

    rows, length, repeats = (4, 64, 4) if quick else (8, 128, 10)
    lm, plain = default_lm(), plain_default()
    pairs = pydoc_prefixes(lm.tokenizer, rows, length, length, ahead=1, seed=4)
    ids = torch.tensor([p for p, _ in pairs], device=lm.device)

    def hf_forward() -> None:
        with torch.no_grad():
            plain(input_ids=ids)

    def cache_all_layers() -> None:
        with torch.no_grad():
            fl.cache_ahead(lm, ids, None, None)

    a = torch.randn(MATMUL_N, MATMUL_N, device=lm.device)
    b = torch.randn(MATMUL_N, MATMUL_N, device=lm.device)
    mm_flops = 2 * MATMUL_N**3

    shape = dict(n_layers=lm.n_layers, d_model=lm.d_model, rows=rows, length=length)
    flops = {"hf_forward": count_flops(hf_forward, **shape), "futurelens_cache": count_flops(cache_all_layers, **shape)}
    times = interleaved({"matmul": lambda: a @ b, "hf_forward": hf_forward, "futurelens_cache": cache_all_layers},
                        repeats=repeats, warmup=1)
    peak = mm_flops / min(times["matmul"])

    n_params = sum(p.numel() for name, p in plain.named_parameters() if "embed" not in name)
    analytic = analytic_flops(n_params, lm.vocab_size, lm.d_model, lm.n_layers, rows, length)
    sides = ("hf_forward", "futurelens_cache")
    achieved = {side: flops[side]["total"] / min(times[side]) for side in sides}
    # Per round: (F / t_side) / (F_mm / t_mm), the median over rounds.
    fraction = {side: paired_ratio(times["matmul"], times[side]) * flops[side]["total"] / mm_flops for side in sides}
    summary = (f"matmul peak {peak / 1e9:.0f} GFLOP/s; plain forward {achieved['hf_forward'] / 1e9:.0f} "
               f"GFLOP/s = {fraction['hf_forward']:.0%} of peak, cache_ahead {fraction['futurelens_cache']:.0%}")
    details = {
        "batch": f"{rows} x {length} tokens (pydoc, no padding)",
        "matmul_peak_gflops_per_s": round(peak / 1e9, 1),
        "matmul": f"fp32 {MATMUL_N} x {MATMUL_N} @ {MATMUL_N} x {MATMUL_N}, {mm_flops / 1e9:.1f} GFLOP",
        "flops": flops,
        "analytic_hf_forward_flops (2 x non-embedding params x tokens + head + attention)": analytic,
        "achieved_gflops_per_s (best time)": {side: round(a / 1e9, 1) for side, a in achieved.items()},
        "fraction_of_peak (median of rounds)": {side: round(f, 4) for side, f in fraction.items()},
        "times": {side: stats(t) for side, t in times.items()},
        "hf_forward_time_split": time_split(hf_forward),
    }
    return result(NAME, "informational: achieved FLOP/s of the default model's forward as a fraction of matmul peak",
                  True, summary, details, value=fraction["hf_forward"])


if __name__ == "__main__":
    from .common import cli

    cli(run)
