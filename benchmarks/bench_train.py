"""Training speed of `slfer train` on this machine: images/s and the share of time spent waiting for data.

For baseline and proposed at 224 and 96 input, the script trains a few batches through
the same loader and epoch loop as `slfer train`, after one warm-up batch that starts the
DataLoader workers, and reports what train_one_epoch measured.

The shards are built from real FER2013 faces with landmark masks, by the real commands:
`slfer parse-masks --parser landmarks`, then `slfer build-shards` at 256 (224 crops) and
112 (96 crops) pixels.

    python benchmarks/bench_train.py --fer2013 ../shared/data/fer2013 --work /tmp/bench-train
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from slfer_model.config import TrainConfig, load_config  # noqa: E402
from slfer_model.distributed import init_distributed  # noqa: E402
from slfer_model.network import build_model  # noqa: E402
from slfer_model.train import load_data, seed_everything, train_one_epoch  # noqa: E402

# Stored shard size for each crop size measured.
SHARD_SIZES = {224: 256, 96: 112}
VARIANTS = ("baseline", "proposed")


def copy_faces(fer2013_root: Path, root: Path, count: int) -> None:
    """Copy `count` training faces, cycling through the classes, into ROOT/train/<class>/."""
    classes = sorted(folder.name for folder in (fer2013_root / "train").iterdir())
    for number in range(count):
        class_name = classes[number % len(classes)]
        source = sorted((fer2013_root / "train" / class_name).glob("*.jpg"))[number // len(classes)]
        target = root / "train" / class_name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)


def slfer(*args: str) -> None:
    """Run one slfer command and stop on failure."""
    subprocess.run([sys.executable, str(REPO_ROOT / "cli.py"), *map(str, args)], check=True)


def prepare_shards(fer2013_root: Path, work: Path, count: int) -> dict[int, Path]:
    """Build the shards for each crop size once; return their folders by crop size."""
    root, parsed = work / "faces", work / "parsed"
    if not root.is_dir():
        copy_faces(fer2013_root, root, count)
    slfer("parse-masks", root, "--format", "folder", "--parser", "landmarks", "--out", parsed, "--workers", "2")

    shards = {}
    for crop, size in SHARD_SIZES.items():
        shards[crop] = work / f"shards-{size}"
        if not (shards[crop] / "manifest.json").is_file():
            slfer("build-shards", root, "--format", "folder", "--masks", parsed, "--out", shards[crop],
                  "--size", size, "--workers", "2")
    return shards


def measure(shards_dir: Path, variant: str, crop: int, batches: int, workers: int, batch_size: int) -> dict:
    """Train one warm-up batch, then `batches` batches; return train_one_epoch's metrics row."""
    config = load_config(None, {
        "shards_dir": str(shards_dir), "out_dir": "unused", "variant": variant, "crop_size": crop,
        "batch_size": batch_size, "workers": workers, "device": "cpu", "limit_batches": batches,
    })
    context = init_distributed(config.device)
    seed_everything(config.seed, deterministic=False)
    data = load_data(config, context)
    model = build_model(variant)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)

    warm_up = dataclasses.replace(config, limit_batches=1)
    data.sampler.set_epoch(1)
    train_one_epoch(model, optimizer, data, warm_up, context, epoch=1)
    data.sampler.set_epoch(2)
    return train_one_epoch(model, optimizer, data, config, context, epoch=2)


def profile_step(variant: str, crop: int, batch_size: int) -> None:
    """Print the operators that take the most CPU time in one training step on random tensors."""
    from torch.profiler import ProfilerActivity, profile

    model = build_model(variant).train()
    optimizer = torch.optim.Adam(model.parameters())
    images = torch.randn(batch_size, 3, crop, crop)
    labels = torch.randint(0, 7, (batch_size,))
    masks = torch.randint(0, 8, (batch_size, crop, crop))

    def step() -> None:
        output = model(images)
        loss = torch.nn.functional.cross_entropy(output.expression, labels)
        if output.segmentation is not None:
            loss = loss + torch.nn.functional.cross_entropy(output.segmentation, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    print(f"one {variant} training step at {crop}, batch {batch_size}, operators by CPU time:")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fer2013", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "fer2013")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-train"))
    parser.add_argument("--batches", type=int, default=6, help="measured batches per configuration")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=TrainConfig().workers,
                        help="DataLoader workers (default: slfer train's default, up to 4, one per core)")
    parser.add_argument("--profile", metavar="VARIANT", choices=VARIANTS, default=None,
                        help="only profile one training step of VARIANT at 224 instead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.profile:
        profile_step(args.profile, 224, args.batch_size)
        return

    count = (args.batches + 1) * args.batch_size
    shards = prepare_shards(args.fer2013, args.work, count)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, batch {args.batch_size}, {args.batches} batches, "
          f"{args.workers} workers")
    print("| variant | input | images/s | data wait share |")
    print("| --- | --- | --- | --- |")
    for crop in SHARD_SIZES:
        for variant in VARIANTS:
            row = measure(shards[crop], variant, crop, args.batches, args.workers, args.batch_size)
            print(f"| {variant} | {crop} | {row['images_per_second']:.1f} | {100 * row['data_wait_share']:.1f}% |",
                  flush=True)


if __name__ == "__main__":
    main()
