#!/usr/bin/env bash
# The paper's main figure on the embedded default model (SmolLM2-135M, offline corpus), CPU.
# Writes runs/paper_figure/ and copies the table, figures, lens page and timings to benchmarks/results/paper_figure/.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
.venv/bin/futurelens demo --out runs/paper_figure --n-prefixes 1500 --max-len 96 \
  --layers 2 --layers 8 --layers 14 --layers 22 --layers 30 \
  --epochs 2 --lr 5e-3 --vocab-epochs 3
end=$(date +%s)
dest=benchmarks/results/paper_figure
mkdir -p "$dest"
cp runs/paper_figure/eval/results.csv runs/paper_figure/eval/precision.png runs/paper_figure/eval/surprisal.png \
   runs/paper_figure/lens.html runs/paper_figure/times.json runs/paper_figure/data/futurelens.json "$dest/"
echo "wall time: $((end - start)) s" > "$dest/wall_time.txt"
