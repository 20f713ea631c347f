"""benchmarks/gpu.py, the prepared GPU run: its smoke mode (the same stages through the same code, tiny configs,
fp32 on the CPU) must keep working here, since a GPU is lent only sometimes and only for minutes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu

ROOT = Path(__file__).resolve().parents[1]


def _smoke(out: Path) -> tuple[dict, str]:
    """One smoke run as the GPU machine would run it (a fresh process, `python -m benchmarks.gpu`): its report."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((out / "report.json").read_text()), (out / "README.md").read_text()


def test_smoke_run(tmp_path):
    """One run (about 20 s), four questions: a test each would run it once per xdist worker."""
    smoke = _smoke(tmp_path)
    check_every_stage_runs_and_every_goal_is_measured(smoke)
    check_the_two_sides_of_each_comparison_compute_the_same_thing(smoke)
    check_pipeline_slice_and_its_extrapolation(smoke)
    check_what_the_run_imports_is_on_the_gpu_image_or_carried(smoke)


def _stage(report, model, stage):
    return next(r for r in report["stages"] if r["model"] == model and r["stage"] == stage)


def check_every_stage_runs_and_every_goal_is_measured(smoke):
    report, readme = smoke
    assert report["mode"] == "smoke" and not report["ran_on_gpu"]
    wanted = {(m.key, st) for m in gpu.SMOKE_MODELS for st in m.stages}
    got = {(r["model"], r["stage"]): r for r in report["stages"]}
    assert set(got) == wanted
    failed = {k: r["summary"] for k, r in got.items() if r["status"] != "ok"}
    assert not failed, failed
    # Each of the goals with a number and a verdict (the thresholds are the GPU's: not asserted here).
    assert [g["key"] for g in report["goals"]] == list(gpu.GOALS)
    for g in report["goals"]:
        assert isinstance(g["measured"], float) and math.isfinite(g["measured"]) and g["measured"] > 0, g
        assert isinstance(g["passed"], bool), g
    assert report["matmul_peak"]["tflops_per_s_best"] > 0
    assert "smoke run" in readme and "| cache throughput >= 0.95x" in readme


def check_the_two_sides_of_each_comparison_compute_the_same_thing(smoke):
    report, _ = smoke
    checks = {(c["model"], c["check"]): c["passed"] for c in report["checks"]}
    assert checks and all(checks.values()), checks
    for model in gpu.SMOKE_MODELS:
        train = _stage(report, model.key, "train")["details"]
        assert train["gradient_relative_difference"] <= 1e-4 and train["loss"]["relative_difference"] <= 1e-5, train
        if "lens" in model.stages:  # fp32: every cell's batched phrase is the per-cell generate's
            lens = _stage(report, model.key, "lens")["details"]
            n, of = map(int, lens["phrases_equal"].split("/"))
            assert n == of > 0, lens["phrases_equal"]
    ev = _stage(report, "gptj-6b", "eval")["details"]
    n, of = map(int, ev["top1_equal"].split()[0].split("/"))
    assert n == of > 0 and ev["states_max_relative_difference"] < 1e-4, ev


def check_pipeline_slice_and_its_extrapolation(smoke):
    report, _ = smoke
    pipe = _stage(report, "gptj-6b", "pipeline")["details"]
    assert pipe["sizes"] == list(gpu.Settings.smoke_run().sizes) and not pipe["sizes_skipped"]
    assert {(r["stage"], r["size"]) for r in pipe["rows"]} == {(st, n) for st in ("data", "cache", "train", "eval")
                                                                for n in pipe["sizes"]}
    for facts in pipe["datasets"]:
        assert facts["test"] >= 1 and facts["train"] >= facts["size"] - 2 and facts["results_rows"] > 0, facts
    est = pipe["extrapolation"]
    assert set(est["stages"]) == {"data", "cache", "train", "eval"}
    assert est["total_s"] == pytest.approx(sum(v["seconds"] for v in est["stages"].values()), abs=0.5)


def check_what_the_run_imports_is_on_the_gpu_image_or_carried(smoke):
    report, _ = smoke
    bundle = report["bundle"]
    assert bundle["imported_but_not_on_the_image_or_carried"] == [], bundle
    for name in ("nnsight", "torch", "transformers"):
        assert name in report["versions"]
    assert "wandb" not in report["versions"]  # not carried: no stage may need it


def test_gap_check_and_gradient_check_can_fail():
    assert gpu.bundle_gaps({"nnsight": "0.8.1", "torch": "2.11.0", "no-such-dist": "1.0"})[0] == ["no-such-dist"]

    import torch

    s = gpu.Settings.smoke_run()
    lm, plain, _, _ = gpu.build(gpu.SMOKE_MODELS[1], s)
    layer = lm.n_layers // 2
    batch = gpu.state_batch(lm, gpu.random_prefixes(4, 6, 12, lm.vocab_size, 4, seed=0), layer)
    from futurelens.train import prompt_loss

    grads = []
    for loss in (lambda p: prompt_loss(lm, p, batch, layer, 1, "kl"),
                 lambda p: gpu.hook_loss(lm, plain, layer, 1, s.prompt_len)(p, batch),
                 lambda p: gpu.hook_loss(lm, plain, layer + 1, 1, s.prompt_len)(p, batch)):  # the state at another block
        p = (torch.randn(s.prompt_len, lm.embed_dim, generator=torch.Generator().manual_seed(0)) * 0.02).requires_grad_(True)
        loss(p).backward()
        grads.append(p.grad)
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(grads[0], grads[1]) <= s.grad_rtol < rel(grads[0], grads[2])


def test_the_one_command_is_wired_together():
    assert gpu.WHEELS in (ROOT / "benchmarks" / "gpu.sh").read_text()
    assert f"/{gpu.WHEELS}/" in (ROOT / ".gitignore").read_text().splitlines()
    makefile = (ROOT / "Makefile").read_text()
    assert "gpu-bundle:" in makefile and "benchmarks.gpu --print-bundle" in makefile
    for doc in ("benchmarks/README.md", "benchmarks/gpu.py", "benchmarks/gpu.sh"):
        assert gpu.RUN_CALL in (ROOT / doc).read_text(), doc
    assert gpu.main(["--print-bundle"]) == 0


def test_the_suite_entry_reports_the_committed_gpu_report():
    """Without a GPU, `run.py`'s entry reads results/gpu/report.json: a GPU report there has every goal measured."""
    from benchmarks import run as suite

    assert "gpu" in suite.BENCHMARKS
    committed = json.loads((gpu.RESULTS / "report.json").read_text())
    if not committed.get("ran_on_gpu"):
        if gpu.on_gpu():
            pytest.skip("here run(quick=False) would run the full GPU measurement")
        entry = gpu.run(quick=False)
        assert not entry["passed"] and entry["summary"].startswith("not yet run on a GPU")
        assert "not yet run on a GPU" in (gpu.RESULTS / "README.md").read_text()
        return
    assert [g["key"] for g in committed["goals"]] == list(gpu.GOALS)
    assert all(g["measured"] is not None and isinstance(g["passed"], bool) for g in committed["goals"]), committed["goals"]
