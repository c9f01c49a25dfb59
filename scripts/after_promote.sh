#!/usr/bin/env bash
# Everything the default's card and README figures need after `promote RUN --name hybrid
# --default`, in the order the card needs them: promote writes a fresh card without the
# calibration, novelty detector, second opinion, evaluations, saliency choice and adaptation
# curve, and the README quotes all of them. One command, so that a promotion is not a morning of
# remembering (issue 21). Each step prints its wall time; the studies that resume (faithfulness,
# adapt_study) pick up where a stopped run left off when run again.
#
#   bash scripts/after_promote.sh [STEP ...]
#
# Steps, all by default: calibrate dispute floors colour budget prior evaluate studies faithfulness
# adapt bench.
# Time on the 2-core CPU for the hybrid (2026-12-07): calibrate and dispute about 25 minutes,
# floors 10, colour 10, budget 8, prior seconds (15 minutes without calibrate's cache), evaluate 15, studies 5, faithfulness 22 (200 cells; FAITHFULNESS_CELLS=80: 9),
# adapt 40 (5 and 10 cells a class on both sets; ADAPT_SIZES="5 10 20 50" for the whole curve:
# 3 hours more), bench 5.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
model=${MODEL:-hybrid}
sizes=${ADAPT_SIZES:-5 10}
cells=${FAITHFULNESS_CELLS:-200}
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(calibrate dispute floors colour budget prior evaluate studies faithfulness adapt bench)
for need in cache/noncell/fit cache/noncell/dev cache/ext-tecom-lowres; do
    [ -d "$need" ] || { echo "missing $need: run scripts/make_noncell_sets.py and scripts/make_lowres_set.py" >&2; exit 2; }
done
mkdir -p logs
bcc() { "$python" -m bcclassify "$@"; }

for step in "${steps[@]}"; do
    echo "== $step ($(date -u +%H:%M:%S))" >&2
    SECONDS=0
    case $step in
    calibrate)
        bcc calibrate --model "$model" --data ../shared/data/pbc224 --outliers cache/noncell/fit \
            --noncell cache/noncell/dev --shifted ../shared/data/ext-tecom --quantile 0.997 \
            --low-confidence 0.7 ;;
    dispute)
        bcc calibrate --model "$model" --data ../shared/data/pbc224 \
            --second-opinion robust-mobilenetv2 --dispute-budget 0.01 ;;
    floors)
        # After calibrate (it drops floors chosen under the old temperature) and dispute (the
        # floors' budget counts beyond the served flags, disputes included).
        bcc calibrate --model "$model" --data ../shared/data/pbc224 \
            --class-floor eosinophil erythroblast --floor-budget 0.01 ;;
    colour)
        # After the floors (its budget counts beyond every other served flag): answers of
        # eosinophil disputed when their greyscale view says neutrophil.
        bcc calibrate --model "$model" --data ../shared/data/pbc224 \
            --colour-check eosinophil neutrophil --colour-budget 0.005 ;;
    budget)
        # Last of the thresholds: the global low-confidence threshold re-chosen so that every
        # served flag together (disputes, floors and colour check on) stays within 3% of the validation cells.
        bcc calibrate --model "$model" --data ../shared/data/pbc224 --flag-budget 0.03 ;;
    prior)
        # The guess written for unidentified cells: re-weighted to a white-cell differential's
        # class mix (bcclassify/serving/blood_prior.py), for cells outside the acquisition range
        # and those scoring above every validation and test cell, fading in from the validation
        # split's highest score, each guessed cell's probabilities first mixed half and half
        # with the second opinion's (scripts/guess_fusion_study.py). Reads the features
        # calibrate cached; flags do not change.
        bcc calibrate --model "$model" --data ../shared/data/pbc224 --unidentified-prior \
            --beyond-own-cells --second-opinion-share 0.5 ;;
    evaluate)
        for data in ../shared/data/pbc-originals ../shared/data/ext-tecom cache/ext-tecom-lowres; do
            bcc evaluate --model "$model" --data "$data" --record --json > "logs/evaluate-$(basename "$data").json"
        done
        bcc evaluate --model "$model" --data ../shared/data/pbc-originals --held-out --record --json \
            > logs/evaluate-pbc-originals-held-out.json
        bcc evaluate --model "$model" --ood cache/noncell/dev ;;
    studies)
        "$python" scripts/second_opinion_study.py ../shared/data/ext-tecom > docs/second-opinion-ext-tecom.json
        "$python" scripts/second_opinion_study.py cache/ext-tecom-lowres > docs/second-opinion-ext-tecom-lowres.json ;;
    faithfulness)
        bcc faithfulness --model "$model" --data ../shared/data/pbc224 --cells "$cells" --save docs \
            --set-default layercam-fine ;;
    adapt)
        # shellcheck disable=SC2086
        "$python" scripts/adapt_study.py --per-class $sizes --seeds 0 1 2 3 4 \
            --out docs/adapt-curve-ext-tecom.json --write-card
        # shellcheck disable=SC2086
        "$python" scripts/adapt_study.py --cells cache/ext-tecom-lowres --per-class $sizes \
            --seeds 0 1 2 3 4 --out docs/adapt-curve-ext-tecom-lowres.json --write-card ;;
    bench)
        bcc bench --model "$model" --save ;;
    *)
        echo "unknown step $step" >&2; exit 2 ;;
    esac
    echo "== $step done in ${SECONDS}s" >&2
done
