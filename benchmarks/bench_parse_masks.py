"""Benchmark parse-masks: slfer's batched BiSeNet path against facexlib's per-image loop, and the landmark parser.

The facexlib loop is written the way facexlib's `inference/inference_parsing.py`
runs BiSeNet: one image at a time, cv2 resize to 512x512, `img2tensor`,
`normalize`, the model's full forward, then the argmax on the host over the
19x512x512 logits copied back as floats. It then applies the same 19-to-8
lookup and nearest resize to the source size as slfer, so both produce the
same masks. slfer's path is `pipeline.parse_masks.parse_records` (decode
workers, batched device inference, device argmax) without writing PNGs.

Both run on the same real FER2013 images, the same device and the same torch
thread count, in alternating rounds so that load from other processes hits
both alike. Randomly initialised weights are used unless --weights is given;
speed does not depend on the weight values.

    .venv/bin/python benchmarks/bench_parse_masks.py --images 32 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pipeline.datasets import scan_dataset  # noqa: E402
from pipeline.images import decode_image  # noqa: E402
from pipeline.parse_masks import parse_records  # noqa: E402
from pipeline.parsers.bisenet import (  # noqa: E402
    BiSeNetParser, IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE, first_output, load_bisenet,
)
from pipeline.parsers.class_map import load_class_map  # noqa: E402
from pipeline.parsers.landmarks import LandmarkMasker  # noqa: E402

DEFAULT_FER2013 = Path(os.environ.get("SLFER_FER2013", REPO_ROOT.parent / "shared" / "data" / "fer2013"))


def facexlib_loop(model: torch.nn.Module, paths: list[Path], lookup: np.ndarray, device: torch.device) -> list:
    """Parse images one by one as facexlib's inference example does, with the argmax on the host."""
    from facexlib.utils.misc import img2tensor
    from torchvision.transforms.functional import normalize

    masks = []
    for path in paths:
        image = cv2.imread(str(path))
        height, width = image.shape[:2]
        resized = cv2.resize(image, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
        tensor = img2tensor(resized.astype("float32") / 255.0, bgr2rgb=True, float32=True)
        normalize(tensor, IMAGENET_MEAN, IMAGENET_STD, inplace=True)
        tensor = torch.unsqueeze(tensor, 0).to(device)
        with torch.no_grad():
            logits = model(tensor)[0]
        labels = logits.squeeze(0).cpu().numpy().argmax(0)
        parts = lookup[labels]
        masks.append(cv2.resize(parts, (width, height), interpolation=cv2.INTER_NEAREST))
    return masks


def slfer_path(parser: BiSeNetParser, image_root: Path, records: list, batch_size: int, workers: int) -> list:
    """Parse images through slfer's parse-masks loop, without writing PNGs."""
    return [result.parts for _, result, _ in parse_records(image_root, records, parser, batch_size, workers)]


def time_call(function) -> tuple[float, list]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def bench_bisenet(args: argparse.Namespace, image_root: Path, records: list) -> None:
    from facexlib.parsing.bisenet import BiSeNet

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        weights = args.weights
        if weights is None:
            weights = Path(folder) / "parsing_bisenet_random.pth"
            torch.save(BiSeNet(num_class=19).state_dict(), weights)
        class_map = load_class_map()
        parser = BiSeNetParser(weights, class_map, device)
        unfolded_model = load_bisenet(weights, device)
        reference_model = BiSeNet(num_class=19)
        reference_model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        reference_model = reference_model.eval().to(device)

    paths = [image_root / record.path for record in records]
    batch_size = args.batch_size or parser.default_batch_size
    workers = parser.default_workers if args.workers is None else args.workers
    # One warm-up image each, so lazy initialisation is not timed.
    facexlib_loop(reference_model, paths[:1], class_map.lookup, device)
    slfer_path(parser, image_root, records[:1], 1, 0)

    loop_rates, slfer_rates = [], []
    for round_index in range(args.rounds):
        loop_seconds, loop_masks = time_call(lambda: facexlib_loop(reference_model, paths, class_map.lookup, device))
        slfer_seconds, slfer_masks = time_call(
            lambda: slfer_path(parser, image_root, records, batch_size, workers))
        loop_rates.append(len(paths) / loop_seconds)
        slfer_rates.append(len(paths) / slfer_seconds)
        print(f"round {round_index + 1}: facexlib loop {loop_rates[-1]:.2f} images/s, "
              f"slfer {slfer_rates[-1]:.2f} images/s", flush=True)

    agreement = np.mean([np.mean(a == b) for a, b in zip(loop_masks, slfer_masks)])
    loop_rate, slfer_rate = statistics.median(loop_rates), statistics.median(slfer_rates)
    print(f"BiSeNet on {device}, {torch.get_num_threads()} torch threads, {len(paths)} images, "
          f"batch {batch_size}, {workers} decode workers, median of {args.rounds} rounds:")
    print(f"  facexlib per-image loop: {loop_rate:.2f} images/s")
    print(f"  slfer batched path:      {slfer_rate:.2f} images/s")
    print(f"  ratio slfer / loop:      {slfer_rate / loop_rate:.2f}x")
    print(f"  mask pixels equal between the two: {agreement:.4%}")
    bench_forward_passes(reference_model, unfolded_model, parser, args.rounds)


def bench_forward_passes(reference_model: torch.nn.Module, unfolded_model: torch.nn.Module, parser: BiSeNetParser,
                         repeats: int) -> None:
    """Time single 512x512 forward passes of facexlib's model and of slfer's two steps, interleaved."""
    pixels = torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE)
    channels_last = pixels.contiguous(memory_format=torch.channels_last)
    passes = {
        "facexlib's full forward (three outputs), NCHW": lambda: reference_model(pixels),
        "first output only, channels_last": lambda: first_output(unfolded_model, channels_last),
        "first output only, BatchNorm folded": lambda: parser.model(channels_last),
    }
    seconds = {name: [] for name in passes}
    with torch.inference_mode():
        for run in passes.values():
            run()
        for _ in range(repeats):
            for name, run in passes.items():
                elapsed, _ = time_call(run)
                seconds[name].append(elapsed)
    print(f"single forward passes, median of {repeats}:")
    for name, times in seconds.items():
        print(f"  {name}: {1000 * statistics.median(times):.0f} ms")


def bench_landmarks(args: argparse.Namespace, image_root: Path, records: list) -> None:
    masker = LandmarkMasker("whole")
    images = [decode_image(image_root / record.path) for record in records[:args.landmark_images]]
    masker(images[0])
    for side in (48, 256):
        resized = [cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC) for image in images]
        start = time.perf_counter()
        for image in resized:
            try:
                masker(image)
            except ValueError:
                pass
        rate = len(resized) / (time.perf_counter() - start)
        print(f"landmark parser, {side}x{side}, one process: {rate:.1f} images/s ({len(resized)} images)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fer2013", type=Path, default=DEFAULT_FER2013, help="FER2013 folder root")
    parser.add_argument("--images", type=int, default=32, help="BiSeNet images per round")
    parser.add_argument("--landmark-images", type=int, default=200, help="images for the landmark parser")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both BiSeNet paths")
    parser.add_argument("--batch-size", type=int, default=None, help="default: parse-masks' default for the device")
    parser.add_argument("--workers", type=int, default=None,
                        help="slfer decode worker processes (default: parse-masks' default for the device)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", type=Path, default=None, help="BiSeNet weights (default: random)")
    parser.add_argument("--skip-bisenet", action="store_true")
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} at start")

    scan = scan_dataset(args.fer2013, "folder")
    # Every 97th record spreads the sample over all classes.
    records = scan.records[::97]
    if not args.skip_bisenet:
        bench_bisenet(args, scan.image_root, records[:args.images])
    bench_landmarks(args, scan.image_root, records)
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
