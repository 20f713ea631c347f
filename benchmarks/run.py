"""Run the futurelens benchmarks and write ``report.md`` and ``report.json``.

    python benchmarks/run.py [--quick] [--only NAME ...] [--out benchmarks/results]

Each benchmark is a module in this folder with ``run(quick: bool) -> dict`` returning
``{"name", "goal", "ratio" or "value", "passed", "summary", "details"}``. They run one
after another in this process (the default model is loaded once and shared); a
benchmark that raises is reported as an error and the others still run. The exit
status is 1 when a benchmark errored, 0 otherwise (a missed goal is a result, not an error).

The report is rewritten (atomically) after every benchmark, so a run cut short keeps what
it finished. ``--only`` updates just those entries of an existing report of the same mode;
each entry records the commit and time it was measured at.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/run.py` puts benchmarks/ on the path, not the repo root
    sys.path.insert(0, str(ROOT))

BENCHMARKS = ("cache_speed", "train_step", "eval_speed", "lens_speed", "cache_memory", "data_scale", "paper_scale", "flops", "gpu",
              "vocab_probe", "seventy_b", "plan_check")


def _commit() -> str:
    """Short commit id, marked when the working tree has uncommitted changes (the numbers then describe no commit)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", ":(exclude)benchmarks/results"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def run_one(name: str, quick: bool) -> dict[str, Any]:
    """Import and run one benchmark; an exception becomes an error entry instead of ending the run."""
    start = time.perf_counter()
    try:
        out = dict(importlib.import_module(f"benchmarks.{name}").run(quick))
    except Exception as err:  # noqa: BLE001 - any failure is reported, the remaining benchmarks still run
        out = {
            "name": name,
            "goal": "",
            "passed": False,
            "error": f"{type(err).__name__}: {err}",
            "summary": f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
            "details": {"traceback": traceback.format_exc()},
        }
    out.setdefault("name", name)
    out.setdefault("goal", "")
    out.setdefault("details", {})
    out["passed"] = bool(out.get("passed", False))
    if not out.get("summary"):
        measured = out.get("ratio", out.get("value"))
        out["summary"] = f"{'ratio' if 'ratio' in out else 'value'} {measured}" if measured is not None else ""
    out["duration_s"] = round(time.perf_counter() - start, 1)
    out["commit"] = _commit()
    out["measured"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return out


def _measured(r: dict[str, Any]) -> str:
    if "error" in r:
        return "error"
    if "ratio" in r:
        return f"{r['ratio']:.3g}x"
    if "value" in r:
        return f"{r['value']:.3g}"
    return ""


def markdown(report: dict[str, Any]) -> str:
    """The human-readable report: machine header, one table row per benchmark, then each one's details."""
    m = report["machine"]
    lines = [
        "# futurelens benchmarks",
        "",
        f"`python benchmarks/run.py{' --quick' if report['quick'] else ''}` on {report['started']}, "
        f"commit {report['commit']}, {report['duration_s'] / 60:.1f} min"
        + (" — **quick mode: smoke-test sizes, not the committed figures**" if report["quick"] else "") + "."
        + (f" This run updated {', '.join(report['updated'])}; the other entries come from earlier runs (each names its commit)."
           if report.get("updated") else ""),
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']} ({m['cores']} cores, {m['cores_usable']} usable) |",
        f"| device | {m['device']} |",
        f"| torch | {m['torch']}, {m['torch_threads']} threads |",
        f"| transformers / nnsight | {m['transformers']} / {m['nnsight']} |",
        f"| python | {m['python']} |",
        "",
        "Both sides of every ratio are timed interleaved (A, B, A, B, ...) in this one run; a ratio is the median "
        "of the per-round ratios. Each benchmark's module docstring says exactly what is compared.",
        "",
        "| benchmark | goal | measured | passed | summary |",
        "|---|---|---|---|---|",
    ]
    for r in report["results"]:
        ok = "error" if "error" in r else ("yes" if r["passed"] else "**no**")
        lines.append(f"| {r['name']} | {r['goal']} | {_measured(r)} | {ok} | {r['summary']} |")
    for r in report["results"]:
        lines += [
            "",
            f"## {r['name']}",
            "",
            r["summary"] + f" ({r['duration_s']:.0f} s; commit {r.get('commit', report['commit'])}, {r.get('measured', report['started'])})",
            "",
            "<details><summary>details</summary>",
            "",
            "```json",
            json.dumps(r["details"], indent=2, default=str),
            "```",
            "",
            "</details>",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the futurelens benchmarks and write report.md / report.json.")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of every benchmark")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=BENCHMARKS, help=f"run only these: {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for report.md and report.json")
    args = parser.parse_args(argv)

    from benchmarks.common import machine

    names = [n for n in BENCHMARKS if not args.only or n in args.only]
    out = Path(args.out)
    kept = _kept(out / "report.json", args.quick) if args.only else {}
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    results = dict(kept)
    report: dict[str, Any] = {}
    for name in names:
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        r = run_one(name, args.quick)
        print(f"[benchmarks] {name}: {r['summary']} ({r['duration_s']:.0f} s)", file=sys.stderr, flush=True)
        results[name] = r
        report = {
            "started": started.strftime("%Y-%m-%d %H:%M UTC"),
            "commit": _commit(),
            "quick": args.quick,
            "duration_s": round(time.perf_counter() - t0, 1),
            "machine": machine(),
            "results": [results[n] for n in BENCHMARKS if n in results],
        }
        if kept:
            report["updated"] = sorted(set(results) - set(kept) | set(names))
        _write(out, report)
    print(f"[benchmarks] wrote {out / 'report.md'} and {out / 'report.json'}", file=sys.stderr)
    return 1 if any("error" in r for r in report.get("results", [])) else 0


def _kept(path: Path, quick: bool) -> dict[str, dict[str, Any]]:
    """Entries of an existing report of the same mode, by name (``--only`` replaces some of them)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if old.get("quick") != quick:
        return {}
    return {r["name"]: r for r in old.get("results", []) if r.get("name") in BENCHMARKS}


def _write(out: Path, report: dict[str, Any]) -> None:
    from futurelens.atomic import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("report.json", json.dumps(report, indent=2, default=str) + "\n"), ("report.md", markdown(report))):
        with atomic_path(out / name, suffix=Path(name).suffix) as tmp:
            Path(tmp).write_text(text)


if __name__ == "__main__":
    sys.exit(main())
