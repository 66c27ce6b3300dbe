"""Benchmark build-shards and the shard reader on real images with parse-masks masks.

Measures, each in a fresh process:
  - write speed (images/s) and bytes per sample of each codec;
  - peak RSS of build-shards at two dataset sizes, to show that memory stays flat;
  - read speed (images/s) of ShardDataset against a torchvision-style folder
    loader over the same images stored as JPEG and as PNG files, one DataLoader
    worker each, both doing a random crop and a horizontal flip of image and mask.

Example (the commands behind docs/benchmarks.md):
    slfer parse-masks SMALL --format folder --out SMALL_MASKS --parser landmarks
    slfer parse-masks FER2013 --format folder --out BIG_MASKS --parser landmarks --limit 20000
    python benchmarks/bench_shards.py --root SMALL --masks SMALL_MASKS \\
        --big-root FER2013 --big-masks BIG_MASKS --work /tmp/bench-shards
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.datasets.folder import find_classes, make_dataset
from torchvision.transforms import v2

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pipeline.shard_reader import IMAGENET_MEAN, IMAGENET_STD, ShardDataset, load_manifest  # noqa: E402

CODECS = ("raw", "gzip", "jpeg")
CROP = 224


def slfer_command() -> list[str]:
    console_script = Path(sys.executable).parent / "slfer"
    return [str(console_script)] if console_script.exists() else [sys.executable, str(REPO_ROOT / "cli.py")]


# Runs a command as a child and prints its wall time and the peak RSS of the
# largest process among it and its own children (ru_maxrss is in KiB on Linux).
MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
status = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"status": status, "seconds": time.perf_counter() - start, "peak_rss_kib": usage.ru_maxrss}))
"""


def measure_build(root: Path, masks: Path, out_dir: Path, *options: str) -> dict:
    """Run one build-shards in a fresh process; return its time, peak RSS, samples and bytes."""
    command = [*slfer_command(), "build-shards", str(root), "--format", "folder", "--masks", str(masks),
               "--out", str(out_dir), "--overwrite", *options]
    load = os.getloadavg()[0]
    result = json.loads(subprocess.run([sys.executable, "-c", MEASURE, *command],
                                       capture_output=True, text=True, check=True).stdout)
    if result["status"] != 0:
        raise RuntimeError(f"build-shards failed with status {result['status']}: {' '.join(command)}")
    manifest = load_manifest(out_dir)
    samples = sum(shard["count"] for shard in manifest["shards"])
    shard_bytes = sum((out_dir / shard["file"]).stat().st_size for shard in manifest["shards"])
    return {
        "command": " ".join(command[1:]),
        "samples": samples,
        "seconds": round(result["seconds"], 1),
        "images_per_s": round(samples / result["seconds"], 1),
        "bytes_per_sample": round(shard_bytes / samples),
        "peak_rss_mib": round(result["peak_rss_kib"] / 1024, 1),
        "load_average_before": round(load, 1),
    }


# ---------------------------------------------------------------- folder baseline

class FolderPairs(Dataset):
    """ImageFolder-style pairs: ROOT/<class>/<name>.<ext> images and MASKS/<class>/<name>.png masks.

    Images open with PIL as torchvision's default loader does; one transforms.v2
    pipeline crops and flips image and mask together, then scales and
    normalises the image.
    """

    def __init__(self, image_root: Path, mask_root: Path, extension: str):
        self.class_to_index = find_classes(str(image_root))[1]
        self.samples = make_dataset(str(image_root), self.class_to_index, extensions=(extension,))
        self.image_root, self.mask_root = image_root, mask_root
        self.transform = v2.Compose([
            v2.RandomCrop(CROP),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist()),
        ])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        relative = Path(path).relative_to(self.image_root)
        with Image.open(path) as image:
            pixels = tv_tensors.Image(v2.functional.pil_to_tensor(image.convert("RGB")))
        with Image.open(self.mask_root / relative.with_suffix(".png")) as mask:
            mask = tv_tensors.Mask(torch.from_numpy(np.array(mask)))
        pixels, mask = self.transform(pixels, mask)
        return {"image": pixels.as_subclass(torch.Tensor), "mask": mask.as_subclass(torch.Tensor).long(),
                "label": torch.tensor(label), "index": index}


def export_folders(shards_dir: Path, folder: Path) -> None:
    """Write the train images of raw shards as JPEG (quality 95) and PNG files, and their masks as PNG."""
    dataset = ShardDataset(shards_dir, "train")
    for index, path in enumerate(dataset.paths):
        shard_item = dataset[index]
        image = np.rint((shard_item["image"].numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN) * 255)
        image = cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_RGB2BGR)
        stem = Path(path).with_suffix("")
        for subfolder, extension, parameters in (("jpeg", ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
                                                 ("png", ".png", [])):
            target = folder / subfolder / stem.parent.name / (stem.name + extension)
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), image, parameters)
        mask_file = folder / "masks" / stem.parent.name / (stem.name + ".png")
        mask_file.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(mask_file), shard_item["mask"].numpy().astype(np.uint8))


def measure_read(dataset: Dataset, images: int, batch_size: int = 32) -> float:
    """Read `images` random samples with one DataLoader worker; return images/s from the first batch on."""
    sampler = torch.utils.data.RandomSampler(dataset, num_samples=images + batch_size,
                                             generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=1)
    batches = iter(loader)
    next(batches)
    start = time.perf_counter()
    count = sum(batch["image"].shape[0] for batch in batches)
    return count / (time.perf_counter() - start)


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="small folder-format dataset (about 2,000 images)")
    parser.add_argument("--masks", type=Path, required=True, help="parse-masks output of --root")
    parser.add_argument("--big-root", type=Path, help="folder-format dataset with at least 20,000 masked images")
    parser.add_argument("--big-masks", type=Path, help="parse-masks output of --big-root")
    parser.add_argument("--rss-size", type=int, default=112, help="--size of the peak RSS runs")
    parser.add_argument("--workers", type=int, default=2, help="build-shards --workers")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for shards and image folders")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results (default WORK/results.json)")
    parser.add_argument("--sections", default="write,rss,read", help="comma-separated parts to run: write, rss, read")
    options = parser.parse_args()
    sections = set(options.sections.split(","))

    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                          f"torch {torch.__version__}", "write": {}, "rss": {}, "read": {}}
    if "write" in sections:
        for codec in CODECS:
            results["write"][codec] = measure_build(options.root, options.masks, options.work / codec,
                                                    "--codec", codec, "--workers", str(options.workers))
            print(codec, results["write"][codec], flush=True)

    if "rss" in sections and options.big_root is not None:
        for limit in (2000, 20000):
            results["rss"][limit] = measure_build(
                options.big_root, options.big_masks, options.work / f"rss-{limit}", "--limit", str(limit),
                "--size", str(options.rss_size), "--workers", str(options.workers))
            print(limit, results["rss"][limit], flush=True)
        results["rss"]["ratio"] = round(results["rss"][20000]["peak_rss_mib"] / results["rss"][2000]["peak_rss_mib"], 3)

    if "read" in sections:
        read_all(options.work, results)

    out = options.out or options.work / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def read_all(work: Path, results: dict, rounds: int = 3, images: int = 640) -> None:
    """Measure the read speed of the shards of each codec and of the exported JPEG and PNG folders.

    The loaders take turns, round after round, and each reports its median,
    so that a change in the load of a shared machine affects all of them alike.
    """
    folder = work / "folders"
    if not folder.exists():
        export_folders(work / "raw", folder)
    datasets = {f"shards {codec}": ShardDataset(work / codec, "train", crop_size=CROP, train=True)
                for codec in CODECS}
    for extension, suffix in (("jpeg", ".jpg"), ("png", ".png")):
        datasets[f"folder {extension}"] = FolderPairs(folder / extension, folder / "masks", suffix)

    speeds = {name: [] for name in datasets}
    loads = []
    for _ in range(rounds):
        loads.append(os.getloadavg()[0])
        for name, dataset in datasets.items():
            speeds[name].append(measure_read(dataset, images))
            print(name, round(speeds[name][-1], 1), flush=True)
    for name, values in speeds.items():
        results["read"][name] = {"images_per_s": round(float(np.median(values)), 1),
                                 "rounds": [round(value, 1) for value in values]}
    results["read"]["load_average_per_round"] = [round(load, 1) for load in loads]


if __name__ == "__main__":
    main()
