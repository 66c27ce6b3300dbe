#!/usr/bin/env bash
# Train and evaluate baseline and proposed on FER2013 at a CPU-friendly size,
# two seeds each, four runs in parallel with one thread each.
# Usage: scripts/fer2013_ablation.sh FER2013_ROOT WORK
# FER2013_ROOT contains train/<class>/*.jpg and val/<class>/*.jpg. Every step
# skips work that an earlier run finished.
set -euo pipefail
fer=${1:?usage: $0 FER2013_ROOT WORK}
work=${2:?usage: $0 FER2013_ROOT WORK}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# 3,000 training images evenly spaced over the classes, and all of val, as
# links in folder layout; trainonly/ shows only the training half.
python - "$fer" "$work/data" <<'PYTHON'
import os
import sys
from pathlib import Path

from pipeline.datasets import scan_dataset, subset_evenly

source, target = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
records = scan_dataset(source, "folder").records
train = subset_evenly([r for r in records if r.split == "train"], 3000)
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
slfer build-shards "$work/trainonly" --format folder --masks "$work/masks" --out "$work/train2k48" \
  --size 48 --limit 2000 --workers 2

run() {
  local variant=$1 seed=$2 out="$work/runs/$1-seed$2"
  slfer train --shards "$work/train2k48" --out "$out" --variant "$variant" --seed "$seed" \
    --epochs 3 --batch-size 32 --lr 1e-3 --milestones 2 --crop-size 40 --workers 1 --device cpu
  slfer evaluate --shards "$work/shards48" --split val --checkpoint "$out/last.pt" \
    --out "$out/eval-val" --device cpu --workers 1
}

mkdir -p "$work/runs"
for variant in baseline proposed; do
  for seed in 0 1; do
    run "$variant" "$seed" > "$work/runs/$variant-seed$seed.log" 2>&1 &
  done
done
wait
slfer compare "$work"/runs/*-seed[0-9]
