"""Summarise benchmarks/results/paper_test/<model>/ as markdown: the paper's ordering per N, with intervals, and
whether the soft prompts' training had converged.

    .venv/bin/python benchmarks/paper_test_summary.py smollm2-135m gemma3-270m > benchmarks/results/paper_test/summary.md
    .venv/bin/python benchmarks/paper_test_summary.py full/smollm2-135m > benchmarks/results/paper_test/full/summary.md

A model's folder is ``<model>`` (the 340-prefix subset) or ``full/<model>`` (all 1,000 prefixes).

Convergence is judged on each prompt's recorded training loss (KL, one value per optimizer step): the mean of its
last epoch against the mean of the epoch before; "converged" when the last epoch improved by less than 5% of it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent / "results" / "paper_test"
METHODS = ["learned prompt", "fixed prompt", "linear (hidden)", "linear (vocab)", "bigram"]


def _cell(row) -> str:
    return f"{row.value:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]"


def summary(model: str) -> str:
    folder = ROOT / model
    df = pd.read_csv(folder / "results.csv")
    meta = json.loads((folder / "futurelens.json").read_text())
    p1 = df[(df.metric == "precision") & (df.k == 1) & (df.against == "model") & (df.target_layer == df.layer)
            | ((df.metric == "precision") & (df.k == 1) & (df.against == "model") & (df.layer == -1))]
    n_test = int(p1.n_prefixes.max())
    title = model.replace("full/", "") + (" (all 1,000 prefixes)" if model.startswith("full/") else "")
    lines = [f"### {title}", "",
             f"{meta['n_kept']} prefixes ({meta['n_train']} train / {meta['n_test']} test, split by document); "
             f"scores over {n_test} test prefixes, bootstrap 95% intervals in brackets.", ""]
    learned_layers = sorted(p1[p1.method == "learned prompt"].layer.unique())
    lines += ["Best layer per method (precision@1 against the model's own continuation; learned prompt at the layers "
              f"it was trained for, {', '.join(map(str, learned_layers))}):", "",
              "| N | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for n in sorted(p1.n.unique()):
        cells = []
        for m in METHODS:
            rows = p1[(p1.method == m) & (p1.n == n)]
            if rows.empty:
                cells.append("-")
                continue
            best = rows.loc[rows.value.idxmax()]
            cells.append(_cell(best) + ("" if best.layer == -1 else f" (L{int(best.layer)})"))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "At the layers with a learned prompt, precision@1 per N (learned / fixed / linear hidden / vocab):", "",
              "| layer | " + " | ".join(f"N={n}" for n in sorted(p1.n.unique())) + " |",
              "|---|" + "---|" * p1.n.nunique()]
    for layer in learned_layers:
        cells = []
        for n in sorted(p1.n.unique()):
            vals = []
            for m in METHODS[:4]:
                r = p1[(p1.method == m) & (p1.n == n) & (p1.layer == layer)]
                vals.append(f"{r.value.iloc[0]:.2f}" if len(r) else "-")
            cells.append(" / ".join(vals))
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    # Is the learned prompt's lead over the next method at N>=1 outside both intervals?
    lines += [""]
    for n in sorted(x for x in p1.n.unique() if x >= 1):
        here = p1[p1.n == n]
        best = {m: here[here.method == m].loc[here[here.method == m].value.idxmax()] for m in METHODS
                if not here[here.method == m].empty}
        order = sorted(best, key=lambda m: -best[m].value)
        top, second = order[0], order[1]
        clear = best[top].ci_low > best[second].ci_high
        lines.append(f"- N={n}: best {top} {_cell(best[top])}, then {second} {_cell(best[second])}: "
                     + ("the intervals do not overlap." if clear else "the intervals overlap (not separated)."))
    losses = json.loads((folder / "losses.json").read_text()) if (folder / "losses.json").exists() else {}
    if losses:
        lines += ["", "Soft-prompt training (KL per step; 4 epochs):", "",
                  "| layer | first 10 steps | epoch 3 mean | epoch 4 mean | change | converged (< 5%) |",
                  "|---|---|---|---|---|---|"]
        for layer, values in sorted(losses.items(), key=lambda kv: int(kv[0])):
            per = len(values) // 4
            e3 = sum(values[2 * per : 3 * per]) / per
            e4 = sum(values[3 * per :]) / len(values[3 * per :])
            first = sum(values[:10]) / 10
            change = (e3 - e4) / e3
            lines.append(f"| {layer} | {first:.2f} | {e3:.2f} | {e4:.2f} | {-100 * change:+.1f}% | "
                         f"{'yes' if change < 0.05 else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(summary(m) for m in sys.argv[1:]))
