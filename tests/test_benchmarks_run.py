"""benchmarks/run.py: the report is written after every benchmark, and --only updates entries in place."""

from __future__ import annotations

import json

import pytest

from benchmarks import run as bench


def _fake(calls):
    def run_one(name, quick):
        calls.append(name)
        if name == "flops" and "boom" in calls:
            raise KeyboardInterrupt  # a run cut short after its first benchmark
        return {"name": name, "goal": "g", "passed": True, "ratio": float(len(calls)), "summary": f"{name} ok",
                "details": {}, "duration_s": 0.1, "commit": "abc", "measured": "now"}
    return run_one


def test_report_is_written_after_each_benchmark_and_only_merges(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(bench, "run_one", _fake(calls))
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["name"] for r in report["results"]] == list(bench.BENCHMARKS)
    assert "quick mode" in (tmp_path / "report.md").read_text()

    # --only replaces its entries and keeps the others, in the suite's order.
    assert bench.main(["--quick", "--only", "lens_speed", "--out", str(tmp_path)]) == 0
    merged = json.loads((tmp_path / "report.json").read_text())
    assert [r["name"] for r in merged["results"]] == list(bench.BENCHMARKS)
    by_name = {r["name"]: r for r in merged["results"]}
    assert by_name["lens_speed"]["ratio"] == len(bench.BENCHMARKS) + 1  # the new measurement
    assert by_name["flops"]["ratio"] == bench.BENCHMARKS.index("flops") + 1  # the old one, kept
    assert merged["updated"] == ["lens_speed"] and "updated lens_speed" in (tmp_path / "report.md").read_text()

    # A full-mode run does not mix with the quick report; cut short, it keeps what it finished.
    calls.append("boom")
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--out", str(tmp_path)])
    partial = json.loads((tmp_path / "report.json").read_text())
    assert partial["quick"] is False
    assert [r["name"] for r in partial["results"]] == list(bench.BENCHMARKS[: bench.BENCHMARKS.index("flops")])
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
