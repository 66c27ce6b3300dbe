#!/usr/bin/env bash
# The whole slfer job in one command: parse-masks, build-shards, train, evaluate.
#
# `make demo` runs this script with the venv on PATH and these variables:
#   DATA    dataset root; empty means the synthetic demo faces of
#           pipeline/demo_faces.py, generated into $WORK/data
#   FORMAT  dataset layout of DATA: rafdb, sfew, folder or csv (default folder)
#   LIMIT   passed as --limit to parse-masks and build-shards when set
#   WORK    folder for everything the job writes (default work/demo)
# Optional settings, from the environment or the make command line:
#   PARSER      bisenet or landmarks (default: bisenet when parsing_bisenet.pth
#               is in $SLFER_CACHE/weights or ~/.cache/slfer/weights, else landmarks)
#   VARIANT     ablation variant to train (default proposed)
#   SIZE, CROP  stored image side and training crop in pixels (default 48 and 40)
#   EPOCHS, BATCH_SIZE, LR, SEED   training schedule (default 6, 32, 0.001, 0)
#   WORKERS     processes for decoding and parsing (default 2)
#   DEMO_PER_CLASS, DEMO_VAL_PER_CLASS   demo images per class (default 80 and 30)
#
# Every stage skips work that an earlier run finished, so rerunning the
# script after an interruption continues where it stopped.
set -euo pipefail

DATA="${DATA:-}"
FORMAT="${FORMAT:-folder}"
LIMIT="${LIMIT:-}"
WORK="${WORK:-work/demo}"
VARIANT="${VARIANT:-proposed}"
# The defaults below are sized for a 2-core CPU, where training dominates:
# 6 epochs of 560 demo images at a 40-pixel crop. On a fresh clone with the
# venv installed, the whole demo took 36 s on 2 idle cores (AMD EPYC, torch
# 2.14.1, 2026-12-04), and 3.5 to 6 minutes on a slower container shared with
# other jobs. It reached 43% val accuracy on the demo faces.
SIZE="${SIZE:-48}"
CROP="${CROP:-40}"
EPOCHS="${EPOCHS:-6}"
BATCH_SIZE="${BATCH_SIZE:-32}"
LR="${LR:-0.001}"
SEED="${SEED:-0}"
WORKERS="${WORKERS:-2}"
DEMO_PER_CLASS="${DEMO_PER_CLASS:-80}"
DEMO_VAL_PER_CLASS="${DEMO_VAL_PER_CLASS:-30}"

stage() {
    echo
    echo "== $* ($(date -u +%H:%M:%S) UTC)"
}

bisenet_weights() {
    echo "${SLFER_CACHE:-$HOME/.cache/slfer}/weights/parsing_bisenet.pth"
}

choose_parser() {
    if [[ -n "${PARSER:-}" ]]; then
        echo "$PARSER"
    elif [[ -f "$(bisenet_weights)" ]]; then
        echo bisenet
    else
        echo landmarks
    fi
}

# Print "TRAIN_SPLIT EVAL_SPLIT" from the shard manifest: train, and test
# when the dataset has it (RAF-DB), else val (SFEW, folder exports). Stop when
# the shards cannot give a meaningful run, for example after a LIMIT too small
# to leave images of several classes in each split.
choose_splits() {
    python - "$1/manifest.json" "$LIMIT" <<'EOF'
import json
import sys

manifest, limit = sys.argv[1], sys.argv[2]
hint = f" (LIMIT={limit} keeps only {limit} images of the dataset; raise it or leave it empty)" if limit else ""
splits = json.load(open(manifest, encoding="utf-8"))["splits"]
if "train" not in splits:
    sys.exit(f"the shards in {manifest} have no train split, only {', '.join(splits) or 'none'}{hint}")
held_out = [name for name in ("test", "val") if name in splits]
if not held_out:
    sys.exit(f"the shards in {manifest} have no test or val split to evaluate on, only {', '.join(splits)}{hint}")
train_classes = [name for name, count in splits["train"]["labels"].items() if count > 0]
if len(train_classes) < 2:
    sys.exit(f"the train split in {manifest} contains only the class {', '.join(train_classes)}, "
             f"so a classifier cannot be trained{hint}")
print("train", held_out[0])
EOF
}

# Write the demo faces into $1 unless an earlier run finished them with the
# same settings (the sidecar file is written after the last image).
generate_demo_data() {
    local root="$1"
    local sidecar="$root/demo_faces.json"
    if [[ -f "$sidecar" ]]; then
        python - "$sidecar" "$DEMO_PER_CLASS" "$DEMO_VAL_PER_CLASS" <<'EOF'
import json
import sys

settings = json.load(open(sys.argv[1], encoding="utf-8"))["settings"]
expected = {"per_class": int(sys.argv[2]), "val_per_class": int(sys.argv[3])}
found = {name: settings[name] for name in expected}
if found != expected:
    sys.exit(f"{sys.argv[1]} was generated with {found}, not {expected}; "
             "choose another WORK folder or delete this one")
EOF
        echo "reusing the demo faces in $root"
        return
    fi
    python -m pipeline.demo_faces "$root" --per-class "$DEMO_PER_CLASS" --val-per-class "$DEMO_VAL_PER_CLASS" --seed 0
}

if [[ -n "$LIMIT" && ! "$LIMIT" =~ ^[1-9][0-9]*$ ]]; then
    echo "LIMIT=$LIMIT is not a positive whole number of images; set it to one, such as LIMIT=2000, or leave it empty" >&2
    exit 1
fi

if [[ -z "$DATA" ]]; then
    job_dir="$WORK"
    dataset_root="$WORK/data"
    FORMAT=folder
else
    if [[ ! -e "$DATA" ]]; then
        echo "dataset $DATA not found; set DATA to the root of a $FORMAT dataset" >&2
        exit 1
    fi
    dataset_root="$DATA"
    job_dir="$WORK/$(basename "$(realpath "$DATA")")${LIMIT:+-limit$LIMIT}"
fi
parser="$(choose_parser)"
limit_option=()
if [[ -n "$LIMIT" ]]; then
    limit_option=(--limit "$LIMIT")
fi
masks_dir="$job_dir/masks-$parser"
shards_dir="$job_dir/shards-$parser-$SIZE"
run_name="$VARIANT-$parser-size$SIZE-crop$CROP-e$EPOCHS-seed$SEED"
run_dir="$job_dir/runs/$run_name"

echo "work directory: $job_dir"
echo "run name:       $run_name"
echo "dataset:        ${DATA:-synthetic demo faces (pipeline/demo_faces.py)} (format $FORMAT${LIMIT:+, limit $LIMIT})"
echo "parser:         $parser"
mkdir -p "$job_dir"

if [[ -z "$DATA" ]]; then
    stage "generate the demo faces"
    generate_demo_data "$dataset_root"
fi

stage "parse-masks"
slfer parse-masks "$dataset_root" --format "$FORMAT" --out "$masks_dir" --parser "$parser" \
    --workers "$WORKERS" "${limit_option[@]}"

stage "build-shards"
slfer build-shards "$dataset_root" --format "$FORMAT" --masks "$masks_dir" --out "$shards_dir" \
    --size "$SIZE" --workers "$WORKERS" "${limit_option[@]}"
splits="$(choose_splits "$shards_dir")"
read -r train_split eval_split <<< "$splits"

stage "train"
# metrics.csv has a header line and one line per finished epoch.
finished_epochs=0
if [[ -f "$run_dir/metrics.csv" ]]; then
    finished_epochs=$(( $(wc -l < "$run_dir/metrics.csv") - 1 ))
fi
resume_option=()
if [[ -f "$run_dir/last.pt" ]]; then
    resume_option=(--resume)
elif [[ -d "$run_dir" ]]; then
    # A run that stopped before its first checkpoint has nothing to resume.
    echo "removing $run_dir: an earlier run stopped before its first checkpoint"
    rm -rf "$run_dir"
fi
if [[ -f "$run_dir/last.pt" && "$finished_epochs" -ge "$EPOCHS" ]]; then
    echo "reusing the finished run in $run_dir ($finished_epochs epochs)"
else
    slfer train --shards "$shards_dir" --out "$run_dir" --variant "$VARIANT" --epochs "$EPOCHS" \
        --batch-size "$BATCH_SIZE" --lr "$LR" --milestones "$(( EPOCHS * 3 / 4 > 0 ? EPOCHS * 3 / 4 : 1 ))" \
        --crop-size "$CROP" --train-split "$train_split" --val-split "$eval_split" --workers 1 --seed "$SEED" \
        "${resume_option[@]}"
fi

stage "evaluate on $eval_split"
eval_dir="$run_dir/eval-$eval_split"
slfer evaluate --shards "$shards_dir" --checkpoint "$run_dir/best.pt" --split "$eval_split" --out "$eval_dir" \
    --workers 1

stage "done"
echo "work directory: $job_dir"
echo "run name:       $run_name"
echo "report:         $eval_dir/report.json"
echo "predictions:    $eval_dir/predictions.csv"
echo "plots:          $eval_dir/confusion.png $run_dir/curves.png"
echo "checkpoint:     $run_dir/best.pt"
