#!/usr/bin/env bash
# Issue 12, item 1 on a CPU budget: fine-tune the shipped hybrid's top blocks with the "lab"
# augmentation preset on a subset of PBC, then score it zero-shot on another lab's cells beside
# the shipped model (single view, every image). Runs in a temporary store: nothing is added to
# model_store/. Usage: bash scripts/robust_study.sh [EPOCHS] [AUG_COPIES] [PER_CLASS]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-4}; copies=${2:-3}; per_class=${3:-300}
lab=${LAB:-../shared/data/ext-tecom}
store=$(mktemp -d)
trap 'rm -rf "$store"' EXIT
mkdir -p "$store/runs/installed-hybrid" "$store/models"
ln -s "$PWD/model_store/models/hybrid" "$store/models/hybrid"
export BCCLASSIFY_STORE="$store" PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3
# --init-from takes a run's model.keras: the installed model, exported as one.
python -c "from bcclassify.serving.classifier import load_model; load_model('hybrid').model.save('$store/runs/installed-hybrid/model.keras')"
run="robust-lab-${epochs}ep-${copies}copies-${per_class}pc"
python -m bcclassify train --arch hybrid --data ../shared/data/pbc224 --image-size 213 \
    --center-crop 0.75 --epochs "$epochs" --lr 1e-4 --freeze-until auto --aug-copies "$copies" \
    --augment-preset lab --keep-weights last --init-from installed-hybrid \
    --limit-per-class "$per_class" \
    --run-id "$run" --note "lab augmentation preset, fine-tuned from the shipped hybrid" >&2
for source in "--run $run" "--model hybrid --views identity"; do
    # shellcheck disable=SC2086
    python -m bcclassify evaluate $source --data "$lab" --json 2>/dev/null |
        python -c "import json, sys; d = json.load(sys.stdin); print(json.dumps({'source': '$source', 'accuracy': d['accuracy'], 'macro_f1': d['macro_f1'], 'num_samples': d['num_samples'], 'confusion_matrix': d['confusion_matrix']}))"
done
