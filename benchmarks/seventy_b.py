"""Every CLI stage at Llama-3.1-70B's width and vocabulary, on this CPU, with its peak RSS.

A Llama model of Llama-3.1-70B's shape (hidden 8192, intermediate 28672, 64 heads, 8 KV heads, vocabulary
128,256, untied head, its RoPE settings) with ``BLOCKS`` block(s) and random float32 weights (N(0, 0.02), norms 1)
is saved to a local folder (``runs/seventy_b/model``, not committed), with the default tokenizer grown to the
128,256 ids by added tokens ``<|r49152|>`` ... so every id the model can emit decodes. Then every stage runs as
its own CLI process (``python -m futurelens ...``), its peak resident set read from the kernel when it exits
(``os.wait4``'s ``ru_maxrss``): ``data``, ``cache``, ``train``, ``eval`` with every method of the paper (n-gram,
vocabulary probe, linear approximation, fixed and learned prompt), ``eval`` with the MLP probe alone, and ``lens``
(with the fitted probes). `SETTINGS` is the exact run, for `futurelens plan` to predict. Goal: every stage under
24 GB (this machine's memory).

Writes ``benchmarks/results/seventy_b/seventy_b.json`` and ``README.md`` (not in ``--quick``, which runs the same
stages on a model of width 512 and the same vocabulary, as a smoke test). Stop other memory-heavy jobs first.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import machine, result

NAME = "seventy_b"
ROOT = Path(__file__).resolve().parents[1]
LIMIT_GB = 24.0
BLOCKS = 1
SHAPE = {"hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64, "num_key_value_heads": 8,
         "vocab_size": 128_256, "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "rope_theta": 500_000.0,
         "max_position_embeddings": 131_072,
         "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192}}
QUICK_SHAPE = {**SHAPE, "hidden_size": 512, "intermediate_size": 1792, "num_attention_heads": 8, "num_key_value_heads": 2}
SETTINGS = {
    "blocks": BLOCKS,
    "dtype": "float32",
    "data": {"n_prefixes": 48, "min_len": 8, "max_len": 32, "n_max": 3, "filter_correct": False, "batch_size": 8,
             "source": "pydoc"},
    "cache": {"layers": [BLOCKS], "dtype": "float32", "batch_size": 8, "shard_size": 32},
    "train": {"layers": [BLOCKS], "epochs": 1, "batch_size": 4, "prompt_len": 10, "target_n": 1},
    "eval": {"layers": [BLOCKS], "methods": ["ngram", "vocab", "linear", "fixed", "learned"], "k": 5, "batch_size": 8,
             "vocab_epochs": 3, "linear_sgd_epochs": 0},
    "eval_mlp": {"layers": [BLOCKS], "methods": ["mlp"], "k": 5, "batch_size": 8, "mlp_epochs": 1},
    "lens": {"text": "Marty McFly from", "layers": "all", "rollout": 2, "top_k": 5, "probes": "eval/probes"},
}


def build(folder: Path, shape: dict, blocks: int) -> None:
    """Save a random model of ``shape`` with ``blocks`` blocks and its tokenizer to ``folder`` (runs in a child)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from futurelens.embedded import ensure_default_model

    tok = AutoTokenizer.from_pretrained(ensure_default_model())
    tok.add_tokens([f"<|r{i}|>" for i in range(len(tok), shape["vocab_size"])])
    config = LlamaConfig(**shape, num_hidden_layers=blocks, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, torch_dtype="float32")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.02, generator=g) if p.dim() > 1 else p.fill_(1.0)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, max_shard_size="2GB")
    tok.save_pretrained(folder)


def _flags(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            for v in value:
                out += [flag, str(v)]
        else:
            out += [flag, str(value)]
    return out


def commands(run_dir: Path, model: Path) -> list[tuple[str, list[str]]]:
    """``(stage, argv)`` of every stage, from `SETTINGS`."""
    s = SETTINGS
    lens = {k: v for k, v in s["lens"].items() if k not in ("text", "layers", "probes")}
    return [
        ("data", ["data", "--model", str(model), "--out", str(run_dir / "data"), *_flags(s["data"])]),
        ("cache", ["cache", "--data", str(run_dir / "data"), "--out", str(run_dir / "cache"), *_flags(s["cache"])]),
        ("train", ["train", "--cache", str(run_dir / "cache"), "--out", str(run_dir / "prompts"), *_flags(s["train"])]),
        ("eval", ["eval", "--cache", str(run_dir / "cache"), "--prompts", str(run_dir / "prompts"),
                  "--out", str(run_dir / "eval"), *_flags(s["eval"])]),
        ("eval_mlp", ["eval", "--cache", str(run_dir / "cache"), "--out", str(run_dir / "eval_mlp"),
                      *_flags(s["eval_mlp"])]),
        ("lens", ["lens", s["lens"]["text"], "--model", str(model), "--prompts", str(run_dir / "prompts"), "--probes",
                  str(run_dir / "eval" / "probes"), "--out", str(run_dir / "lens.html"), *_flags(lens)]),
    ]


def measured(argv: list[str], log: Path) -> dict[str, Any]:
    """Run ``argv`` as a child; its wall time, exit status and peak RSS (``ru_maxrss``, KiB on Linux)."""
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    return {"rc": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_gb": round(usage.ru_maxrss * 1024 / 2**30, 2),
            "said": [line for line in text.splitlines() if "to write to" in line or "Vocabulary probe at" in line],
            "tail": text[-1500:] if proc.returncode else ""}


def run(quick: bool) -> dict[str, Any]:
    """Build the 70B-width model once, run every stage in its own process and report each one's peak RSS."""
    import shutil

    run_dir = ROOT / "runs" / ("seventy_b_quick" if quick else "seventy_b")
    model = run_dir / "model"
    shape = QUICK_SHAPE if quick else SHAPE
    stages: dict[str, Any] = {}
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (model / "config.json").exists():
        stages["build_model"] = measured([sys.executable, "-m", "benchmarks.seventy_b", "--build", str(model),
                                          json.dumps(shape), str(BLOCKS)], run_dir / "build.log")
    for stage, _ in commands(run_dir, model):  # each stage from scratch: what it writes is removed first
        shutil.rmtree(run_dir / {"lens": "lens.html"}.get(stage, stage), ignore_errors=True)
    (run_dir / "lens.html").unlink(missing_ok=True)
    for stage, argv in commands(run_dir, model):
        available = _available_gb()
        model_rss = max([v["peak_rss_gb"] for k, v in stages.items() if k in ("data", "cache", "train")] or [_model_gb(model)])
        if stage == "eval_mlp" and mlp_estimate_gb(shape) + model_rss > available - 1:
            # The MLP probe is d^2-sized (mlp.py, not bounded by this issue): with the model in RAM as well it may
            # not fit next to what else this machine runs; refuse to risk the OOM killer on a shared machine.
            stages[stage] = {"command": "futurelens " + shlex.join(argv), "rc": None, "skipped": (
                f"estimated {mlp_estimate_gb(shape):.1f} GB for the MLP fit + {model_rss:.1f} GB of model > "
                f"{available:.1f} GB available - 1"), "peak_rss_gb": None, "seconds": 0, "said": []}
            print(f"[seventy_b] {stage}: skipped ({stages[stage]['skipped']})", file=sys.stderr, flush=True)
            continue
        print(f"[seventy_b] {stage}: futurelens {shlex.join(argv)}", file=sys.stderr, flush=True)
        stages[stage] = {"command": "futurelens " + shlex.join(argv), "available_gb_before": round(available, 1),
                         **measured([sys.executable, "-m", "futurelens", *argv], run_dir / f"{stage}.log")}
        print(f"[seventy_b] {stage}: {stages[stage]['peak_rss_gb']} GB, {stages[stage]['seconds']} s, "
              f"rc {stages[stage]['rc']}", file=sys.stderr, flush=True)
    model_gb = _model_gb(model)
    cli = {k: v for k, v in stages.items() if k != "build_model" and not v.get("skipped")}
    ok = all(v["rc"] == 0 for v in cli.values())
    under = all(v["peak_rss_gb"] < LIMIT_GB for v in cli.values())
    from .run import _commit

    report = {"shape": shape, "settings": SETTINGS, "model_file_gb": round(model_gb, 2), "stages": stages,
              "machine": machine(), "commit": _commit()}
    if not quick:
        out = ROOT / "benchmarks" / "results" / "seventy_b"
        out.mkdir(parents=True, exist_ok=True)
        (out / "seventy_b.json").write_text(json.dumps(report, indent=2))
        (out / "README.md").write_text(readme(report))
    worst = max(cli, key=lambda k: cli[k]["peak_rss_gb"])
    summary = (f"{len(cli)} stages {'all ran' if ok else 'NOT all ran'}; peak RSS " +
               ", ".join(f"{k} {v['peak_rss_gb']:.1f} GB" for k, v in cli.items()) +
               f" (model file {model_gb:.1f} GB); highest {worst}")
    return result(NAME, f"every CLI stage runs at 70B width and vocabulary, each under {LIMIT_GB:.0f} GB peak RSS",
                  ok and under, summary, report, value=cli[worst]["peak_rss_gb"])


def _model_gb(model: Path) -> float:
    return sum(p.stat().st_size for p in model.glob("*.safetensors")) / 2**30


def _available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / 2**30
    return float("inf")


def mlp_estimate_gb(shape: dict, heads: int = 4) -> float:
    """The MLP probe's fit (`futurelens.methods.mlp.fit_bytes`: every N's block, one N's gradient, moments and
    scratch): 4.6 GB at d 8192 (the joint fit it replaced held 10 GB, and peaked 10.1 GB above the model's 7.8 GB)."""
    from futurelens.methods.mlp import fit_bytes

    return fit_bytes(shape["hidden_size"], heads) / 2**30


def readme(report: dict) -> str:
    rows = "\n".join((f"| {k} | {v['peak_rss_gb']:.2f} | {v['seconds']:.0f} | {'ok' if v['rc'] == 0 else 'FAILED'} | "
                       if not v.get("skipped") else f"| {k} | - | - | skipped: {v['skipped']} | ")
                      + f"`{v.get('command', 'python -m benchmarks.seventy_b --build ...')}` |"
                      for k, v in report["stages"].items())
    said = "\n".join(f"- {k}: {line.strip()}" for k, v in report["stages"].items() for line in v.get("said", []))
    return f"""# Every stage at Llama-3.1-70B's width and vocabulary, on a CPU

`python -m benchmarks.seventy_b` (module docstring: what it builds and how it measures). A random Llama of
Llama-3.1-70B's shape with {report['settings']['blocks']} block(s), float32: {report['model_file_gb']} GB of weights.
Each stage is its own `futurelens` process; peak RSS is the kernel's `ru_maxrss` of that process.

Shape: `{json.dumps(report['shape'])}`

Settings (what `futurelens plan` is asked to predict): `{json.dumps(report['settings'])}`

| stage | peak RSS (GiB) | seconds | status | command |
|---|---|---|---|---|
{rows}

What the stages said before they wrote or fitted:
{said}

Machine: `{json.dumps(report['machine'])}`; commit {report.get('commit', 'unknown')}.
"""


def rerun(stage: str, note: str) -> dict[str, Any]:
    """Measure one stage again on the run folder's model and cache (``runs/seventy_b``, kept from the full run), and
    record it in ``seventy_b.json`` (and README.md) with ``note``: for a stage whose code changed since the run."""
    run_dir = ROOT / "runs" / "seventy_b"
    argv = dict(commands(run_dir, run_dir / "model"))[stage]
    out = ROOT / "benchmarks" / "results" / "seventy_b"
    report = json.loads((out / "seventy_b.json").read_text())
    import shutil

    shutil.rmtree(run_dir / stage, ignore_errors=True)
    from .run import _commit

    available = _available_gb()
    print(f"[seventy_b] {stage}: futurelens {shlex.join(argv)}", file=sys.stderr, flush=True)
    got = {"command": "futurelens " + shlex.join(argv), "available_gb_before": round(available, 1),
           **measured([sys.executable, "-m", "futurelens", *argv], run_dir / f"{stage}.log"),
           "note": f"re-run alone at commit {_commit()}: {note}"}
    report["stages"][stage] = got
    (out / "seventy_b.json").write_text(json.dumps(report, indent=2))
    (out / "README.md").write_text(readme(report))
    print(f"[seventy_b] {stage}: {got['peak_rss_gb']} GB, {got['seconds']} s, rc {got['rc']}", file=sys.stderr)
    return got


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--build":
        build(Path(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--rerun":
        print(json.dumps(rerun(sys.argv[2], sys.argv[3]), indent=2))
    else:
        from .common import cli

        cli(run)
