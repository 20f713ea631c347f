"""The table-building and estimate logic of benchmarks/paper_scale.py (no model runs here), and its per-stage
memory measure."""

from __future__ import annotations

import math
import sys

import pytest

from benchmarks import paper_scale as ps
from benchmarks.common import status_mb


def _rows(stage, sizes, wall_per_sample, peaks, cpu_per_sample=None):
    cpu_per_sample = cpu_per_sample or wall_per_sample
    return [{"stage": stage, "size": s, "samples": s, "wall_s": w * s, "cpu_s": c * s, "peak_rss_mb": m}
            for s, w, c, m in zip(sizes, wall_per_sample, cpu_per_sample, peaks)]


def test_growth_flat_and_linear_passes():
    rows = _rows("cache", (10, 30, 100), (0.010, 0.011, 0.010), (500, 505, 520))
    g = ps.growth(rows)["cache"]
    assert g["peak_growth"] == pytest.approx(0.04)
    assert g["peak_growth_mb"] == 20
    assert g["time_deviation"] == {10: 0.0, 30: pytest.approx(0.1), 100: 0.0}
    assert g["memory_ok"] and g["time_ok"] and g["cpu_time_ok"]
    assert g["must_grow"] is None


def test_growth_flags_memory_and_time():
    rows = _rows("data", (10, 100), (0.02, 0.01), (500, 700), cpu_per_sample=(0.012, 0.01))
    g = ps.growth(rows, must_grow={"data": "the dataset is assembled in memory"})["data"]
    assert g["peak_growth"] == pytest.approx(0.4) and not g["memory_ok"]
    assert g["time_deviation"][10] == pytest.approx(1.0) and not g["time_ok"]
    assert g["cpu_time_ok"]  # 0.012 vs 0.010: +20%
    assert g["must_grow"] == "the dataset is assembled in memory"


def test_growth_compares_smallest_with_largest_whatever_the_order():
    rows = _rows("train", (100, 10), (0.01, 0.01), (600, 500))
    assert ps.growth(rows)["train"]["peak_growth"] == pytest.approx(0.2)


def test_markdown_table_rows_and_verdicts():
    rows = _rows("train", (10, 100), (0.01, 0.01), (500, 510)) + _rows("data", (10, 100), (0.02, 0.01), (500, 700))
    text = ps.markdown_table(rows, ps.growth(rows))
    lines = text.splitlines()
    assert lines[2].startswith("| data | 10 |")  # stages in pipeline order, then size
    assert "| train | 100 | 100 |" in text
    assert "+40.0% (+200 MB) **no**" in text
    assert "+2.0% (+10 MB) yes" in text
    assert "+100%, +0% **no**" in text


def test_greedy_calls_groups_by_length_within_shards():
    # one shard: 33 of length 8 (2 calls of <= 32), 1 of length 9 (1 call)
    assert ps.greedy_calls([8] * 33 + [9], shard_size=100, batch_size=32) == 3
    # two shards of 2: equal lengths in different shards are different calls
    assert ps.greedy_calls([8, 8, 8, 8], shard_size=2, batch_size=32) == 2


def test_model_calls_and_marginal_per_call():
    facts = {10: {"greedy_calls": 10, "n_train": 512, "n_test": 40, "n_kept": 552},
             100: {"greedy_calls": 110, "n_train": 1024 + 100, "n_test": 10, "n_kept": 1134}}
    calls = ps.model_calls(facts[100])
    assert calls["cache"] == 2 * math.ceil(ps.CACHE_SHARD / ps.CACHE_BATCH) + math.ceil(100 / ps.CACHE_BATCH) + 1
    assert calls["train"] == math.ceil(1124 / ps.TRAIN_BATCH)
    rows = [{"stage": "data", "size": 10, "wall_s": 5.0}, {"stage": "data", "size": 100, "wall_s": 15.0},
            {"stage": "cache", "size": 10, "wall_s": 1.0}, {"stage": "cache", "size": 100, "wall_s": 1.0},
            {"stage": "train", "size": 10, "wall_s": 1.0}, {"stage": "train", "size": 100, "wall_s": 2.0}]
    per = ps.marginal_per_call(rows, facts)
    assert per["data"] == pytest.approx(0.1)  # 10 s over 100 more calls: the start-up cancels
    assert "cache" not in per  # no time difference: nothing to say per call


def test_gptj_estimate_arithmetic():
    est = ps.gptj_estimate(50.0, 0.02, cpu_flops=1e11, host_s_per_call={"train": 0.01})
    work = ps.gptj_workload(50.0, 0.02)
    f = ps.GPTJ["fwd_flops_per_token"]
    assert work["cache"]["flops"] == pytest.approx(101_000 * 53 * f)
    assert work["train"]["flops"] == pytest.approx(100_000 * 11 * 3 * f * 29)
    assert work["train"]["calls"] == 12_500 * 29
    h100 = ps.GPUS["H100 80GB SXM"]
    part = est["gpus"]["H100 80GB SXM"]["parts"]["train"]
    compute = work["train"]["flops"] / (h100["bf16"] * ps.UTILISATION["compute"])
    memory = work["train"]["calls"] * 2 * ps.GPTJ["weight_bytes"] / (h100["hbm"] * ps.UTILISATION["bandwidth"])
    assert part["compute_s"] == pytest.approx(compute, rel=1e-3)
    assert part["memory_s"] == pytest.approx(memory, rel=1e-3)
    assert part["s"] == pytest.approx(max(compute, memory), rel=1e-3)
    # decode steps at ~45 rows read 12 GB of weights for little arithmetic: memory-bound on both GPUs
    assert all(g["parts"]["data: decode"]["bound"] == "memory" for g in est["gpus"].values())
    stages = est["gpus"]["H100 80GB SXM"]["stages_s"]
    assert est["gpus"]["H100 80GB SXM"]["total_s"] == pytest.approx(sum(stages.values()), abs=0.5)
    assert est["gpus"]["A100 80GB SXM"]["total_s"] > est["gpus"]["H100 80GB SXM"]["total_s"]
    assert est["host_bound_s"]["train"] == pytest.approx(12_500 * 29 * 0.01)
    fits = work["eval: vocab probe fit"]["flops"] + work["eval: linear fit"]["flops"]
    assert est["fits_on_this_cpu_s"] == pytest.approx(fits / 1e11, rel=1e-3)
    text = ps.estimate_markdown(est)
    assert "| **total** |" in text and "| train |" in text and "362,500" in text


def test_growth_fits_fixed_and_per_sample_time():
    rows = [{"stage": "eval", "size": s, "samples": s, "wall_s": 20 + 0.003 * s, "cpu_s": 20 + 0.003 * s,
             "peak_rss_mb": 1000} for s in (10_000, 20_000, 40_000)]
    g = ps.growth(rows)["eval"]
    assert g["fit_fixed_s"] == pytest.approx(20, abs=0.1)
    assert g["fit_ms_per_sample"] == pytest.approx(3.0)
    # 50 s for 10k vs 140 s for 40k: the fixed part alone puts 10k at +43% per sample
    assert g["time_deviation"][10_000] == pytest.approx(5.0 / 3.5 - 1, abs=1e-3) and not g["time_ok"]
    assert "20 s + 3.00 ms" in ps.markdown_table(rows, {"eval": g})


def test_linearity_uses_marginal_cpu_time_so_the_fixed_start_up_cancels():
    rows = [{"stage": "eval", "size": s, "samples": s, "wall_s": 20 + 0.003 * s, "cpu_s": 15 + 0.002 * s,
             "peak_rss_mb": 1000} for s in (10_000, 30_000, 100_000)]
    g = ps.growth(rows)["eval"]
    assert g["cpu_fit_fixed_s"] == pytest.approx(15, abs=0.1)
    assert g["cpu_marginal_ms_per_sample"] == {"10000->30000": pytest.approx(2.0), "30000->100000": pytest.approx(2.0)}
    assert g["linear_ok"] and not g["time_ok"]  # per-sample time carries the fixed part; the marginal does not


def test_linearity_flags_a_quadratic_stage():
    rows = [{"stage": "data", "size": s, "samples": s, "wall_s": 1e-7 * s * s, "cpu_s": 1e-7 * s * s,
             "peak_rss_mb": 500} for s in (10_000, 30_000, 100_000)]
    g = ps.growth(rows)["data"]
    dev = g["cpu_marginal_deviation"]
    assert dev["10000->30000"] < -0.35 and not g["linear_ok"]
    assert "**no** |" in ps.markdown_table(rows, {"data": g}).splitlines()[-1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stages_peak_is_its_own_not_the_parents_high_water_mark(tmp_path):
    # After exec a child's ru_maxrss holds its parent's high-water mark (vfork), so a parent that once held a
    # large buffer made every stage look that large. The stage must report the child's own peak.
    buffer = bytearray(1 << 30)
    buffer[:: 1 << 12] = b"\1" * len(range(0, 1 << 30, 1 << 12))  # touch every page
    parent_peak = status_mb("VmHWM")
    del buffer
    row = ps.stage("help", ["--help"], tmp_path / "help.log")
    assert "Usage" in (tmp_path / "help.log").read_text()
    assert 10 < row["peak_rss_mb"] < parent_peak - 700, (row, parent_peak)
