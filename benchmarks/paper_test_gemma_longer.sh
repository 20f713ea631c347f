#!/usr/bin/env bash
# After benchmarks/paper_test.sh gemma3-270m: does Gemma's learned prompt gain with 3x the training? Layer 8,
# 12 epochs (384 steps), else the same settings; the table goes to benchmarks/results/paper_test/gemma3-270m/longer/.
set -euo pipefail
cd "$(dirname "$0")/.."
fl=${FL:-.venv/bin/futurelens}
run=runs/paper_test/gemma3-270m
$fl train --cache $run/cache --out $run/prompts-12epochs --epochs 12 --lr 5e-3 --batch-size 8 --layers 8
$fl eval --cache $run/cache --prompts $run/prompts-12epochs --out $run/eval-12epochs --methods learned --layers 8
mkdir -p benchmarks/results/paper_test/gemma3-270m/longer
cp $run/eval-12epochs/results.csv benchmarks/results/paper_test/gemma3-270m/longer/
