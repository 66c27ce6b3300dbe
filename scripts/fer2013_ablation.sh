#!/usr/bin/env bash
# Train and evaluate baseline and proposed on FER2013 at a CPU-friendly size,
# two seeds each, four runs in parallel with one thread each.
# Usage: scripts/fer2013_ablation.sh WORK  (WORK holds train2k48/ and shards48/)
set -euo pipefail
work=${1:?usage: $0 WORK}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

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
slfer compare "$work"/runs/*-seed*
