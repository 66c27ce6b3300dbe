#!/usr/bin/env bash
# Train and evaluate baseline and proposed on FER2013 at a CPU-friendly size,
# each variant and seed in parallel with one thread each.
# Usage: scripts/fer2013_ablation.sh FER2013_ROOT WORK
# FER2013_ROOT contains train/<class>/*.jpg and val/<class>/*.jpg. Every step
# skips work that an earlier run finished.
# Settings from the environment (defaults give the 2,000-image record in
# docs/results.md):
#   TRAIN_IMAGES  training images, evenly spaced over the classes (2000)
#   EPOCHS        training epochs (3); the learning rate drops 10x after
#                 MILESTONES (2)
#   SEEDS         seeds to train for each variant ("0 1")
set -euo pipefail
fer=${1:?usage: $0 FER2013_ROOT WORK}
work=${2:?usage: $0 FER2013_ROOT WORK}
TRAIN_IMAGES=${TRAIN_IMAGES:-2000}
EPOCHS=${EPOCHS:-3}
MILESTONES=${MILESTONES:-2}
SEEDS=${SEEDS:-0 1}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# Training images evenly spaced over the classes (at least 3,000), and all of
# val, as links in folder layout; trainonly/ shows only the training half.
python - "$fer" "$work/data" "$TRAIN_IMAGES" <<'PYTHON'
import os
import sys
from pathlib import Path

from pipeline.datasets import scan_dataset, subset_evenly

source, target = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
records = scan_dataset(source, "folder").records
train = subset_evenly([r for r in records if r.split == "train"], max(3000, int(sys.argv[3])))
for record in train + [r for r in records if r.split == "val"]:
    link = target / record.path
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        os.symlink(source / record.path, link)
PYTHON
mkdir -p "$work/trainonly"
ln -sfn ../data/train "$work/trainonly/train"

slfer parse-masks "$work/data" --format folder --parser landmarks --workers 2 --out "$work/masks"
slfer build-shards "$work/data" --format folder --masks "$work/masks" --out "$work/shards48" --size 48 --workers 2
train_shards="$work/train$TRAIN_IMAGES-48"
slfer build-shards "$work/trainonly" --format folder --masks "$work/masks" --out "$train_shards" \
  --size 48 --limit "$TRAIN_IMAGES" --workers 2

run() {
  local variant=$1 seed=$2 out="$work/runs/$1-seed$2"
  slfer train --shards "$train_shards" --out "$out" --variant "$variant" --seed "$seed" \
    --epochs "$EPOCHS" --batch-size 32 --lr 1e-3 --milestones "$MILESTONES" --crop-size 40 --workers 1 --device cpu
  slfer evaluate --shards "$work/shards48" --split val --checkpoint "$out/last.pt" \
    --out "$out/eval-val" --device cpu --workers 1
}

mkdir -p "$work/runs"
for variant in baseline proposed; do
  for seed in $SEEDS; do
    run "$variant" "$seed" > "$work/runs/$variant-seed$seed.log" 2>&1 &
  done
done
wait
slfer compare "$work"/runs/*-seed[0-9]
