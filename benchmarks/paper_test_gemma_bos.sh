#!/usr/bin/env bash
# After benchmarks/paper_test.sh gemma3-270m (MAX_PREFIX_LEN=384): is Gemma's learned prompt held back by the BOS it
# lacked? The same prompts (10 vectors, 4 epochs, lr 5e-3, batch 8) trained with `--lead auto` (the embedded BOS
# before them, as Gemma reads any text) against the run's prompts trained with none, at the layers where the
# learned prompt did best; the table goes to benchmarks/results/paper_test/gemma3-270m/bos/.
set -euo pipefail
cd "$(dirname "$0")/.."
fl=${FL:-.venv/bin/futurelens}
run=${RUN:-runs/paper_test-max384/gemma3-270m}
layers=(--layers 0 --layers 4 --layers 8 --layers 12)
$fl train --cache $run/cache --out $run/prompts-bos --epochs 4 --lr 5e-3 --batch-size 8 --lead auto "${layers[@]}"
$fl eval --cache $run/cache --prompts $run/prompts-bos --out $run/eval-bos --methods learned "${layers[@]}"
mkdir -p benchmarks/results/paper_test/gemma3-270m/bos
cp $run/eval-bos/results.csv benchmarks/results/paper_test/gemma3-270m/bos/
