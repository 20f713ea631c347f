"""`futurelens plan` against measured runs: each CLI stage's wall time and peak RSS beside plan's prediction.

For two models — the embedded default (SmolLM2-135M, fp32) and a tiny random GPT-J (28 blocks x 32
wide, the embedded tokenizer; `benchmarks.paper_scale.make_model`) — plan is asked first, in a fresh
process, as a user would before a run (``fl.plan(...)`` with the run's settings; it calibrates on the
model: see `futurelens.planner.calibrate`). Then the run is made: every CLI stage (`data`, `cache`,
`train`, `eval`, `lens`) a fresh child process (`benchmarks.paper_scale.stage`: wall time, and the
child's own VmHWM at exit), with the same settings. Per stage, predicted / measured for time (plan's
start-up plus the stage's work, `Plan.process`) and for peak RSS.

Goal: every stage within ±25% of plan's figure, time and peak RSS. Stop other work on the machine while
it runs (the 2 shared cores make wall time move with the load, reported per stage). Results:
``benchmarks/results/plan/`` (``README.md``, ``table.json``) with the command that made them.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAME = "plan_check"
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "plan"
GOAL = 0.25
STAGES = ("data", "cache", "train", "eval", "lens")
LENS_TEXT = "The Python interpreter reads a program"

SETTINGS = {
    # Per model: plan's settings; the CLI's flags are made from the same values (`commands`).
    "tiny": dict(n_prefixes=600, min_len=8, max_len=64, n_max=3, filter_correct=False, layers=[2, 14, 26],
                 epochs=1, train_batch_size=8, vocab_epochs=1),
    "default": dict(n_prefixes=240, min_len=8, max_len=48, n_max=3, filter_correct=False, layers=[2, 14],
                    epochs=1, train_batch_size=8, vocab_epochs=1),
}
QUICK = {"tiny": dict(n_prefixes=120), "default": dict(n_prefixes=60)}

_PLAN_CHILD = """
import json, sys
import futurelens as fl
p = fl.plan(**json.loads(sys.argv[1]))
print("PLAN " + json.dumps({"stages": {s: p.process(s) for s in %r}, "machine": p.machine,
                             "rows": [{k: v for k, v in r.items() if k != "requests"} for r in p.rows],
                             "how": p.how}, default=str))
""" % (STAGES,)


def predict(model: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Plan's figures, from a fresh process (its start-up and fixed memory are what it measures)."""
    out = subprocess.run([sys.executable, "-c", _PLAN_CHILD, json.dumps({"model": model, **settings})], cwd=ROOT,
                         capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    line = next((x for x in out.stdout.splitlines() if x.startswith("PLAN ")), None)
    if out.returncode or line is None:
        raise RuntimeError(f"plan failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(line[5:])


def commands(model: str, s: dict[str, Any], work: Path) -> dict[str, list[str]]:
    """The CLI stages of the run ``s`` for ``model`` in ``work``."""
    d, c, p, e = (str(work / x) for x in ("data", "cache", "prompts", "eval"))
    layers = [x for layer in s["layers"] for x in ("--layers", str(layer))]
    return {
        "data": ["data", "--model", model, "--out", d, "--n-prefixes", str(s["n_prefixes"]), "--min-len", str(s["min_len"]),
                 "--max-len", str(s["max_len"]), "--n-max", str(s["n_max"]), "--no-filter-correct", "--seed", "0"],
        "cache": ["cache", "--data", d, "--out", c, *layers],
        "train": ["train", "--cache", c, "--out", p, *layers, "--epochs", str(s["epochs"]),
                  "--batch-size", str(s["train_batch_size"])],
        "eval": ["eval", "--cache", c, "--prompts", p, "--out", e, *layers, "--vocab-epochs", str(s["vocab_epochs"])],
        "lens": ["lens", LENS_TEXT, "--model", model, "--out", str(work / "lens.html"), "--fixed"],
    }


def compare(predicted: dict[str, dict[str, float]], measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage: predicted and measured time and peak RSS, their ratio, and whether each is within ±`GOAL`."""
    out = []
    for m in measured:
        p = predicted[m["stage"]]
        t, r = p["s"] / m["wall_s"], p["rss"] / 2**20 / m["peak_rss_mb"]
        out.append({"stage": m["stage"], "predicted_s": round(p["s"], 1), "measured_s": m["wall_s"],
                    "time_ratio": round(t, 3), "predicted_rss_mb": round(p["rss"] / 2**20, 1),
                    "measured_rss_mb": m["peak_rss_mb"], "rss_ratio": round(r, 3),
                    "time_ok": abs(t - 1) <= GOAL, "rss_ok": abs(r - 1) <= GOAL, "load": m.get("load")})
    return out


def run(quick: bool = False, write: Path | None = None) -> dict[str, Any]:
    """Plan, then run, both models; see the module docstring."""
    from benchmarks.common import machine, result
    from benchmarks.paper_scale import make_model, stage
    from futurelens.embedded import ensure_default_model

    started = time.perf_counter()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="plan-check-") as tmp:
        work = Path(tmp)
        tiny = work / "tiny-gptj"
        make_model(tiny)
        ensure_default_model()
        models = {"tiny": str(tiny), "default": "smollm2-135m"}
        for key, model in models.items():
            s = {**SETTINGS[key], **(QUICK[key] if quick else {})}
            # the lens page as `commands` runs it: this text (counted by the model's tokenizer), the fixed prompt
            plan_settings = {**s, "lens_text": LENS_TEXT, "lens_prompts": "fixed"}
            predicted = predict(model, plan_settings)
            measured = []
            for name, args in commands(model, s, work / key).items():
                measured.append(stage(name, args, work / f"{key}-{name}.log"))
            report[key] = {"model": model if key == "default" else "tiny random GPT-J (28 x 32)", "settings": s,
                           "comparison": compare(predicted["stages"], measured), "plan": predicted,
                           "commands": {n: "futurelens " + " ".join(a) for n, a in commands(model, s, Path("RUN")).items()}}
    rows = [r for k in report for r in report[k]["comparison"]]
    passed = all(r["time_ok"] and r["rss_ok"] for r in rows)
    worst_t = max(rows, key=lambda r: abs(r["time_ratio"] - 1))
    worst_r = max(rows, key=lambda r: abs(r["rss_ratio"] - 1))
    summary = (f"{len(rows)} stages on 2 models: plan / measured time {min(r['time_ratio'] for r in rows):.2f}-"
               f"{max(r['time_ratio'] for r in rows):.2f} (worst {worst_t['stage']} {worst_t['time_ratio']:.2f}), "
               f"peak RSS {min(r['rss_ratio'] for r in rows):.2f}-{max(r['rss_ratio'] for r in rows):.2f} "
               f"(worst {worst_r['stage']} {worst_r['rss_ratio']:.2f}); goal ±{GOAL:.0%}")
    details = {**report, "duration_s": round(time.perf_counter() - started, 1)}
    out = result(NAME, f"every stage's time and peak RSS within ±{GOAL:.0%} of futurelens plan", passed, summary,
                 details, value=max(abs(worst_t["time_ratio"] - 1), abs(worst_r["rss_ratio"] - 1)))
    if write is not None:
        _write(write, out, machine())
    return out


def markdown(details: dict[str, Any]) -> str:
    lines = ["| model | stage | plan: time | measured | plan / measured | plan: peak RSS | measured | plan / measured | load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for key in ("tiny", "default"):
        if key not in details:
            continue
        for r in details[key]["comparison"]:
            load = "{:.1f} → {:.1f}".format(*r["load"]) if r.get("load") else ""
            lines.append(f"| {key} | {r['stage']} | {r['predicted_s']:.1f} s | {r['measured_s']:.1f} s | "
                         f"{r['time_ratio']:.2f} {'yes' if r['time_ok'] else '**no**'} | {r['predicted_rss_mb']:.0f} MB | "
                         f"{r['measured_rss_mb']:.0f} MB | {r['rss_ratio']:.2f} {'yes' if r['rss_ok'] else '**no**'} | {load} |")
    return "\n".join(lines) + "\n"


def _write(folder: Path, out: dict[str, Any], mach: dict[str, Any]) -> None:
    from futurelens.atomic import atomic_path

    from benchmarks.paper_scale import _commit

    d = out["details"]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m benchmarks.plan_check --write benchmarks/results/plan"
    text = "\n".join([
        "# futurelens plan against measured runs", "",
        f"Made by `{command}` on {when}, commit {_commit()} (`benchmarks/plan_check.py`: its docstring says what "
        f"runs). Machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']}. Whole run: "
        f"{d['duration_s'] / 60:.0f} min.", "",
        markdown(d), f"Verdict: {out['summary']}.", "",
        *[f"- {k}: {d[k]['model']}, settings {json.dumps(d[k]['settings'])}; plan: {d[k]['plan']['how']['here']}."
          for k in ("tiny", "default") if k in d], "",
    ])
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in (("README.md", text), ("table.json", json.dumps({"command": command, "measured": when, **out},
                                                                      indent=2, default=str) + "\n")):
        with atomic_path(folder / name, suffix=Path(name).suffix) as tmp:
            Path(tmp).write_text(body)


# --------------------------------------------------------------------------- the 70B-width run (benchmarks/seventy_b.py)

SEVENTY_B = ROOT / "benchmarks" / "results" / "seventy_b" / "seventy_b.json"


def seventy_b_settings(report: dict[str, Any], lens_tokens: int) -> dict[str, Any]:
    """Plan's settings for the run `benchmarks.seventy_b` made (its recorded ``settings``)."""
    s = report["settings"]
    d, c, t, e, lens = s["data"], s["cache"], s["train"], s["eval"], s["lens"]
    return dict(n_prefixes=d["n_prefixes"], min_len=d["min_len"], max_len=d["max_len"], n_max=d["n_max"],
                filter_correct=d["filter_correct"], data_batch_size=d["batch_size"], layers=c["layers"],
                cache_dtype=c["dtype"], cache_batch_size=c["batch_size"], cache_shard_size=c["shard_size"],
                prompt_layers=t["layers"], epochs=t["epochs"], train_batch_size=t["batch_size"],
                prompt_len=t["prompt_len"], eval_layers=e["layers"], methods=e["methods"],
                eval_batch_size=e["batch_size"], vocab_epochs=e["vocab_epochs"], k=e["k"], dtype=s["dtype"],
                rollout=lens["rollout"], lens_top_k=lens["top_k"], lens_tokens=lens_tokens, lens_prompts="learned",
                calibrate=False)


def seventy_b_mlp_settings(report: dict[str, Any], lens_tokens: int) -> dict[str, Any]:
    """Plan's settings for the run's ``eval_mlp`` stage (the MLP probe alone, its own eval process)."""
    m = report["settings"]["eval_mlp"]
    return {**seventy_b_settings(report, lens_tokens), "eval_layers": m["layers"], "methods": m["methods"],
            "eval_batch_size": m["batch_size"], "k": m["k"], "mlp_epochs": m["mlp_epochs"]}


def seventy_b(report_path: Path = SEVENTY_B) -> dict[str, Any]:
    """Plan's peak RSS beside each stage's measured peak in the 70B-width CPU run (``report_path``, written by
    `benchmarks.seventy_b`): plan is given the model's config.json (no weights) and the run's settings."""
    import transformers

    from futurelens.embedded import ensure_default_model

    report = json.loads(report_path.read_text())
    tokens = len(transformers.AutoTokenizer.from_pretrained(ensure_default_model())(report["settings"]["lens"]["text"])
                 ["input_ids"])
    with tempfile.TemporaryDirectory(prefix="plan-70b-") as tmp:
        config = transformers.LlamaConfig(**report["shape"], num_hidden_layers=report["settings"]["blocks"])
        config.save_pretrained(tmp)
        predicted = predict(tmp, seventy_b_settings(report, tokens))
        mlp = predict(tmp, seventy_b_mlp_settings(report, tokens)) if "eval_mlp" in report["stages"] else None
    if mlp is not None:
        predicted["stages"]["eval_mlp"] = mlp["stages"]["eval"]
    rows = []
    for stage, m in report["stages"].items():
        if stage not in (*STAGES, "eval_mlp") or m.get("peak_rss_gb") is None:
            continue
        p = predicted["stages"][stage]["rss"] / 2**30
        rows.append({"stage": stage, "predicted_gb": round(p, 2), "measured_gb": m["peak_rss_gb"],
                     "ratio": round(p / m["peak_rss_gb"], 3), "ok": abs(p / m["peak_rss_gb"] - 1) <= GOAL,
                     "predicted_s": round(predicted["stages"][stage]["s"], 1), "measured_s": m["seconds"]})
    return {"report": str(report_path.relative_to(ROOT)), "commit": report.get("commit"), "rows": rows,
            "how": predicted["how"], "skipped": {k: v["skipped"] for k, v in report["stages"].items() if v.get("skipped")}}


def seventy_b_markdown(c: dict[str, Any]) -> str:
    lines = [f"Measured: `{c['report']}` (commit {c['commit']}); plan: the model's config.json and the run's settings, "
             "no weights read.", "",
             "| stage | plan: peak RSS | measured | plan / measured | plan: time (peak x efficiency) | measured |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in c["rows"]:
        lines.append(f"| {r['stage']} | {r['predicted_gb']:.2f} GiB | {r['measured_gb']:.2f} GiB | {r['ratio']:.2f} "
                     f"{'yes' if r['ok'] else '**no**'} | {r['predicted_s']:.0f} s | {r['measured_s']:.0f} s |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument("--write", help="folder for README.md and table.json (benchmarks/results/plan)")
    parser.add_argument("--seventy-b", action="store_true", help="only compare plan with the committed 70B-width run "
                        "(benchmarks/results/seventy_b/seventy_b.json); with --write, into seventy_b.md / .json there")
    a = parser.parse_args()
    if a.seventy_b:
        c = seventy_b()
        print(seventy_b_markdown(c))
        if a.write:
            Path(a.write, "seventy_b.json").write_text(json.dumps(c, indent=2, default=str) + "\n")
            Path(a.write, "seventy_b.md").write_text("# futurelens plan against the 70B-width CPU run\n\n"
                                                    "`python -m benchmarks.plan_check --seventy-b --write "
                                                    "benchmarks/results/plan`\n\n" + seventy_b_markdown(c))
    else:
        print(json.dumps(run(a.quick, Path(a.write) if a.write else None), indent=2, default=str))
