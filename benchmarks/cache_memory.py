"""Peak memory of `build_cache` vs the number of samples: it should stay flat (one shard in memory at a time).

`build_cache` runs over all layers of the default model, same shard size, at two sample
counts, each in a fresh subprocess so that each peak is its own. The child loads the
model, then resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``) so
that a transient peak while loading the weights cannot hide the build's own; it prints
its RSS before the build and the peak during it (``VmHWM``), plus the CUDA allocator's
peak on a GPU. Goal: the build's peak RSS grows < 10% from the small to the large count,
while the bytes of cache written grow with the count (4x) — memory holds one shard, not
the cache.

Prefixes are short (8..32 tokens): memory scales with rows, and shorter rows keep the
thousand-sample build affordable on a CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import default_lm, prefix_table, pydoc_prefixes, result, status_mb

NAME = "cache_memory"
SHARD_SIZE = 128
N_MAX = 3
ROOT = Path(__file__).resolve().parents[1]


def _child(data: str, out: str) -> None:
    """Build one cache and print its memory figures as one JSON line (runs in the subprocess)."""
    import torch

    import futurelens as fl
    from futurelens.data.states import CacheConfig, build_cache

    from .common import device

    lm = fl.load_model(device=str(device()))
    load_peak = status_mb("VmHWM")
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
        fh.write("5")
    before = status_mb("VmRSS")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    cfg = CacheConfig(data=data, out=out, shard_size=SHARD_SIZE, batch_size=32, splits=["train"])
    build_cache(lm, cfg, progress=False)
    figures = {
        "load_peak_mb": round(load_peak, 1),
        "rss_before_build_mb": round(before, 1),
        "build_peak_mb": round(status_mb("VmHWM"), 1),
        "cache_bytes": sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file()),
    }
    if torch.cuda.is_available():
        figures["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(figures))


def _table(lm, n: int, folder: Path) -> Path:
    """A prefix table of ``n`` pydoc prefixes (all in the train split), written with `save_prefixes`."""
    pairs = pydoc_prefixes(lm.tokenizer, n, 8, 32, ahead=N_MAX + 1, seed=3)
    return prefix_table(lm, pairs, n, folder / f"data-{n}", N_MAX)


def run(quick: bool) -> dict[str, Any]:
    """Build caches of two sizes in fresh subprocesses and compare their peaks; see the module docstring."""
    small, large = (64, 256) if quick else (256, 1024)
    lm = default_lm()
    figures = {}
    with tempfile.TemporaryDirectory(prefix="fl-bench-mem-") as tmp:
        for n in (small, large):
            data = _table(lm, n, Path(tmp))
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.cache_memory", "--child", str(data), str(Path(tmp) / f"cache-{n}")],
                cwd=ROOT, capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"cache build of {n} samples failed:\n{proc.stderr[-3000:]}")
            figures[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    a, b = figures[small], figures[large]
    growth = b["build_peak_mb"] / a["build_peak_mb"] - 1
    cache_growth_mb = (b["cache_bytes"] - a["cache_bytes"]) / 2**20
    summary = (f"build peak {a['build_peak_mb']:.0f} MB at {small} samples, {b['build_peak_mb']:.0f} MB at {large} "
               f"({growth:+.1%}) while the cache grew from {a['cache_bytes'] / 2**20:.0f} to "
               f"{b['cache_bytes'] / 2**20:.0f} MB")
    details = {
        "settings": {"samples": [small, large], "shard_size": SHARD_SIZE, "layers": "all", "prefix_tokens": "8..32",
                     "continuation_tokens": N_MAX},
        "per_count": figures,
        "peak_growth": round(growth, 4),
        "peak_growth_mb": round(b["build_peak_mb"] - a["build_peak_mb"], 1),
        "cache_growth_mb": round(cache_growth_mb, 1),
        "note": "build_peak_mb is VmHWM after resetting it once the model was loaded; load_peak_mb is the peak "
                "of loading the model, which is not part of the build",
    }
    return result(NAME, "build_cache peak RSS grows < 10% from the small to the large sample count",
                  growth < 0.10, summary, details, value=growth)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    else:
        from .common import cli

        cli(run)
