#!/usr/bin/env bash
# The paper's figure on the paper's own test set: the authors' 1,000 Pile prefixes (futurelens/data/paper/),
# split by document (a quarter of the 830 documents held out), for one model, every method, on CPU.
#   benchmarks/paper_test.sh smollm2-135m        benchmarks/paper_test.sh gemma3-270m
# Every stage resumes after a kill (the data's labelled shards, the cache's shards, the prompts' checkpoints, the
# fitted probes), and a finished stage is skipped, so re-running the same command continues where it stopped.
# STAGES="data cache train eval" (default all) runs some of them. MAX_PREFIX_LEN=N keeps only the authors' rows whose
# prefix is at most N GPT-J tokens (their file, those rows, unchanged: the authors' CSV format), for a run that fits
# a 2-core CPU (the whole set is 535k tokens; N=384 keeps 340 rows of 319 documents, 67k tokens). Writes runs/paper_test/<model>/ and copies the
# table, figures, dataset record, training losses and timings to benchmarks/results/paper_test/full/<model>/ (a subset: .../<model>/).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: benchmarks/paper_test.sh MODEL}
# Cached and evaluated layers; soft prompts are trained at a subset (TRAIN_LAYERS), as CPU time allows.
case "$model" in
  smollm2-135m) layers="0 2 4 6 8 10 12 14 16 18 20 22 24 26 28 30"; train_layers="0 4 8 12 16 20 24 28 30" ;;
  gemma3-270m) layers="0 2 4 6 8 10 12 14 16 18"; train_layers="0 4 8 12 16 18" ;;
  *) layers=${LAYERS:?set LAYERS for $model}; train_layers=${TRAIN_LAYERS:-$layers} ;;
esac
train_layers=${TRAIN_LAYERS:-$train_layers}
stages=${STAGES:-data cache train eval}
run=runs/paper_test/$model
# The whole set's results go to full/<model>/; a MAX_PREFIX_LEN subset's to <model>/ (the committed 340-prefix run).
dest=benchmarks/results/paper_test/$model
[ -n "${MAX_PREFIX_LEN:-}" ] || dest=benchmarks/results/paper_test/full/$model
fl=${FL:-.venv/bin/futurelens}  # FL: another way to call the CLI (e.g. a frozen snapshot of the code)
mkdir -p "$run" "$dest"
layer_args=(); for l in $layers; do layer_args+=(--layers "$l"); done
train_args=(); for l in $train_layers; do train_args+=(--layers "$l"); done
stamp() { echo "$1 $(date +%s)" >> "$run/times.txt"; }
source=paper-test
if [ -n "${MAX_PREFIX_LEN:-}" ]; then
  source=runs/paper_test/paper-test-max$MAX_PREFIX_LEN.csv
  [ -f "$source" ] || .venv/bin/python -c "
import sys, pandas as pd
from futurelens.data.table import PAPER_DIR, PAPER_FILE
d = pd.read_csv(PAPER_DIR / PAPER_FILE, index_col=0, keep_default_na=False, dtype=str)
d[d.prefix_len.astype(int) <= int(sys.argv[1])].to_csv(sys.argv[2])" "$MAX_PREFIX_LEN" "$source"
fi

for stage in $stages; do
  stamp "start-$stage"
  case "$stage" in
    data)
      # Every prefix of the table (no correctness filter: both models are scored on the same prefixes); labels =
      # each model's own greedy continuation (neither tokenizer is GPT-J's, so 'auto' picks the model's).
      [ -f "$run/data/futurelens.json" ] || $fl data --model "$model" --source "$source" --out "$run/data" \
        --n-prefixes 1000 --no-filter-correct --test-fraction 0.25 --batch-tokens 8192 --shard-size 100 ;;
    cache)
      $fl cache --data "$run/data" --out "$run/cache" --dtype float32 --batch-size 4 --shard-size 64 "${layer_args[@]}" ;;
    train)
      $fl train --cache "$run/cache" --out "$run/prompts" --epochs 4 --lr 5e-3 --batch-size 8 "${train_args[@]}" ;;
    eval)
      $fl eval --cache "$run/cache" --prompts "$run/prompts" --out "$run/eval" --vocab-epochs 50 "${layer_args[@]}"
      cp "$run/eval/results.csv" "$run/eval/precision.png" "$run/eval/surprisal.png" "$dest/" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
  stamp "end-$stage"
done
cp "$run/data/futurelens.json" "$run/times.txt" "$dest/"
.venv/bin/python - "$run" "$dest" <<'EOF'
import json, sys
from pathlib import Path
from safetensors import safe_open
run, dest = Path(sys.argv[1]), Path(sys.argv[2])
losses = {}
for f in sorted((run / "prompts").glob("layer-*.safetensors")):
    with safe_open(str(f), "pt") as h:
        meta = h.metadata()
    losses[meta["layer"]] = json.loads(meta["losses"])
(dest / "losses.json").write_text(json.dumps(losses))
EOF
