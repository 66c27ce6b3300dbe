"""`slfer train`: train the SLFER network or an ablation variant from HDF5 shards."""

from __future__ import annotations

import logging
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline import __version__
from pipeline.labels import CLASS_NAMES, PART_NAMES
from pipeline.shard_reader import ShardDataset, ShardFolderError, default_eval_split, load_manifest
from pipeline.text import count_noun
from slfer_model.checkpoint import (
    CheckpointError, PretrainedWeightsError, load_checkpoint, load_pretrained_backbone, save_checkpoint,
)
from slfer_model.config import (
    ConfigError, TrainConfig, check_crop_fits, load_resumed_config, merge_settings, validate as validate_config,
)
from slfer_model.distributed import (
    DeviceError, DistributedContext, all_reduce_sum, barrier, init_distributed, shutdown,
)
from slfer_model.loaders import make_eval_loader, make_train_loader
from slfer_model.losses import joint_loss
from slfer_model.metrics import classification_metrics
from slfer_model.network import SLFERNet, build_model
from slfer_model.run_files import plot_curves, read_metrics, write_config, write_metrics
from slfer_model.variants import variant_label

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
# Checkpoint entries that only --resume reads, so best.pt leaves them out.
RESUME_ONLY_KEYS = ("optimizer", "scheduler", "rng")
LOSS_TERMS = ("total", "expression", "segmentation", "parts")


class RunFolderError(ValueError):
    """A run folder that cannot be used as given (not empty, or nothing to resume)."""


# Errors a user can cause by their settings or files; each is reported as one line.
USER_ERRORS = (ConfigError, CheckpointError, PretrainedWeightsError, DeviceError, RunFolderError, ShardFolderError)


def train(config_file: Path | None, overrides: dict[str, Any]) -> int:
    """Run `slfer train`; return the exit status (0 done, 1 invalid settings or inputs).

    Args:
        config_file: optional YAML file of settings named as TrainConfig fields.
        overrides: the command-line options the user gave, named as TrainConfig fields.
    """
    try:
        config, resumed = resolve_config(config_file, overrides)
    except USER_ERRORS as error:
        logger.error("%s", error)
        return 1

    context = None
    try:
        context = init_distributed(config.device)
        run_training(config, resumed, context)
    except USER_ERRORS as error:
        logger.error("%s", error)
        return 1
    finally:
        if context is not None:
            shutdown(context)
    return 0


def resolve_config(config_file: Path | None, overrides: dict[str, Any]) -> tuple[TrainConfig, dict | None]:
    """Resolve the settings; with resume, start from the settings stored in RUN/last.pt.

    Returns:
        The settings and, when resuming, the checkpoint (on the CPU).

    Raises:
        ConfigError: when resuming with a setting that differs from the run's own,
            other than those in RESUME_CHANGEABLE.
    """
    config = merge_settings(config_file, overrides)
    if not config.resume:
        validate_config(config)
        return config, None

    # The run's own settings, --shards among them, come from its checkpoint, so
    # only the run folder is needed before it is read.
    if config.out_dir is None:
        raise ConfigError("out_dir is missing; pass --out RUN with the run folder to resume")
    last = Path(config.out_dir) / LAST_CHECKPOINT
    if not last.is_file():
        raise RunFolderError(f"cannot resume: {last} not found; start the run without --resume")
    checkpoint = load_checkpoint(last, map_location="cpu")

    config = load_resumed_config(config_file, overrides, checkpoint["config"])
    return config, checkpoint


@dataclass
class Data:
    """The datasets and loaders of a run."""

    train_set: ShardDataset
    val_set: ShardDataset | None
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    sampler: Any
    shard_size: int


def run_training(config: TrainConfig, checkpoint: dict | None, context: DistributedContext) -> None:
    """Train from the first unfinished epoch to config.epochs, writing the run folder on rank 0."""
    out_dir = Path(config.out_dir)
    check_run_folder(out_dir, config.resume)
    barrier(context)

    seed_everything(config.seed, config.deterministic)
    data = load_data(config, context)

    model = build_model(config.variant, num_classes=len(CLASS_NAMES), num_parts=len(PART_NAMES),
                        se=False if config.no_se else None)
    if checkpoint is None:
        load_pretrained_backbone(model, config.pretrained)
    model.to(context.device)
    if context.device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=config.gamma)

    start_epoch, best_accuracy, rows = 0, -1.0, []
    if checkpoint is not None:
        start_epoch, best_accuracy = restore(checkpoint, model, optimizer, scheduler)
        rows = read_metrics(out_dir / "metrics.csv", start_epoch)
        logger.info("resuming %s after epoch %d of %d", out_dir, start_epoch, config.epochs)

    trained = model
    if context.distributed:
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        trained = DistributedDataParallel(model, device_ids=device_ids)

    if context.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_config(out_dir / "config.yaml", config.to_dict())
        log_start(config, data, model, context)
    if start_epoch >= config.epochs:
        logger.warning("run %s already trained %d of %s; pass a larger --epochs to continue it",
                       out_dir, start_epoch, count_noun(config.epochs, "epoch"))

    for epoch in range(start_epoch + 1, config.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        data.sampler.set_epoch(epoch)
        row = train_one_epoch(trained, optimizer, data, config, context, epoch)
        scheduler.step()

        if context.is_main:
            row.update(validate(model, data.val_loader, context))
            row["lr"] = lr
            rows.append(row)
            best_accuracy = save_epoch(out_dir, model, optimizer, scheduler, config, data, rows, best_accuracy)
            log_epoch(row, config.epochs)
        barrier(context)


def check_run_folder(out_dir: Path, resume: bool) -> None:
    """Reject a non-empty run folder unless resuming (resume itself was checked earlier)."""
    if resume:
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"--out {out_dir} is a file; pass a folder for the run")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise RunFolderError(
            f"run folder {out_dir} is not empty; pass --resume to continue its run, or choose a new --out folder"
        )


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch, and with `deterministic` select deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting before its first call to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # NOTE: warn_only, because CUDA has no deterministic backward for bilinear
        # upsampling (used by the segmentation head); on CPU every kernel used here is deterministic.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def load_data(config: TrainConfig, context: DistributedContext) -> Data:
    """Open the training and validation splits and build their loaders."""
    manifest = load_manifest(config.shards_dir)
    shard_size = int(manifest["build"]["settings"]["size"])
    check_crop_fits(config, shard_size)
    check_names(manifest, config.shards_dir)

    splits = sorted({shard["split"] for shard in manifest["shards"]})
    if config.train_split not in splits:
        raise ConfigError(
            f"train split {config.train_split!r} is not in {config.shards_dir}, which has {', '.join(splits)}; "
            f"pass --train-split"
        )
    val_split = choose_val_split(config, splits)

    train_set = ShardDataset(config.shards_dir, config.train_split, config.crop_size, train=True)
    if len(train_set) < config.batch_size * context.world_size:
        raise ConfigError(
            f"split {config.train_split!r} has {count_noun(len(train_set), 'sample')}, fewer than one batch of "
            f"{config.batch_size} per process; lower --batch-size or add samples"
        )
    train_loader, sampler = make_train_loader(train_set, config.batch_size, config.workers, config.seed, context)

    val_set, val_loader = None, None
    if val_split is not None and context.is_main:
        val_set = ShardDataset(config.shards_dir, val_split, config.crop_size, train=False)
        val_loader = make_eval_loader(val_set, config.batch_size, config.workers, config.seed, context)

    return Data(train_set, val_set, train_loader, val_loader, sampler, shard_size)


def check_names(manifest: dict, shards_dir: str) -> None:
    """Reject shards whose class or part names differ from the network's outputs."""
    for key, expected in (("class_names", CLASS_NAMES), ("part_names", PART_NAMES)):
        found = tuple(manifest[key])
        if found != expected:
            raise ConfigError(
                f"shards in {shards_dir} have {key} {', '.join(found)}, but the network predicts "
                f"{', '.join(expected)}; rebuild the shards with this slfer version"
            )


def choose_val_split(config: TrainConfig, splits: list[str]) -> str | None:
    """Return the requested validation split, else "test", else "val", else None."""
    if config.val_split is not None:
        if config.val_split not in splits:
            raise ConfigError(
                f"validation split {config.val_split!r} is not in {config.shards_dir}, which has "
                f"{', '.join(splits)}; pass --val-split"
            )
        return config.val_split
    name = default_eval_split(splits, exclude=config.train_split)
    if name is None:
        logger.warning("no test or val split in %s; training without validation", config.shards_dir)
    return name


def restore(checkpoint: dict, model: SLFERNet, optimizer, scheduler) -> tuple[int, float]:
    """Load the model, optimiser, scheduler and RNG states; return the epoch done and the best accuracy."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"])
    return int(checkpoint["epoch"]), float(checkpoint["best_accuracy"])


def train_one_epoch(
    model: nn.Module, optimizer, data: Data, config: TrainConfig, context: DistributedContext, epoch: int,
) -> dict[str, Any]:
    """Run one epoch of training and return its metrics row (losses averaged over images)."""
    model.train()
    device = context.device
    batches = len(data.train_loader)
    if config.limit_batches is not None:
        batches = min(batches, config.limit_batches)

    loss_sums = dict.fromkeys(LOSS_TERMS, 0.0)
    present = set()
    correct = images = 0
    wait_seconds = 0.0
    start = last = time.perf_counter()

    # Only rank 0 draws a bar, and only on a terminal (None lets tqdm check).
    progress = tqdm(total=batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch",
                    disable=None if context.is_main else True, leave=False)
    for step, batch in enumerate(data.train_loader):
        if step >= batches:
            break
        batch = move_batch(batch, device)
        wait_seconds += time.perf_counter() - last

        with autocast(device):
            output = model(batch["image"])
        terms = joint_loss(output, batch["label"], batch["mask"], batch["parts"], config.lambda_seg, config.lambda_part)

        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()

        size = batch["label"].shape[0]
        for name, value in terms.as_dict().items():
            term = name.removeprefix("loss_")
            present.add(term)
            loss_sums[term] += value * size
        correct += int((output.expression.argmax(1) == batch["label"]).sum())
        images += size
        progress.update()
        last = time.perf_counter()
    progress.close()

    seconds = time.perf_counter() - start
    totals = all_reduce_sum(context, [*loss_sums.values(), correct, images, wait_seconds, seconds])
    loss_totals, (correct, images, wait_seconds, seconds) = totals[:len(LOSS_TERMS)], totals[len(LOSS_TERMS):]
    seconds /= context.world_size
    wait_seconds /= context.world_size

    row: dict[str, Any] = {"epoch": epoch}
    for term, loss_total in zip(LOSS_TERMS, loss_totals):
        if term in present:
            row[f"loss_{term}"] = loss_total / images
    row["train_accuracy"] = correct / images
    row["images_per_second"] = images / seconds
    row["data_wait_share"] = wait_seconds / seconds
    row["seconds"] = seconds
    return row


def move_batch(batch: dict, device: torch.device) -> dict:
    """Move a batch to `device`; on CUDA, images become channels_last."""
    moved = {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
             for key, value in batch.items()}
    if device.type == "cuda":
        moved["image"] = moved["image"].contiguous(memory_format=torch.channels_last)
    return moved


def autocast(device: torch.device):
    """bf16 autocast on CUDA; float32 (no autocast) on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def validate(model: SLFERNet, loader, context: DistributedContext) -> dict[str, float]:
    """Return accuracy and mean class accuracy of the backbone and expression head on the validation split."""
    if loader is None:
        return {}
    inference = model.inference_model().eval()
    labels, predictions = [], []
    for batch in loader:
        batch = move_batch(batch, context.device)
        with autocast(context.device):
            logits = inference(batch["image"])
        labels.append(batch["label"].cpu())
        predictions.append(logits.argmax(1).cpu())
    model.train()

    metrics = classification_metrics(torch.cat(labels).numpy(), torch.cat(predictions).numpy(), CLASS_NAMES)
    return {"val_accuracy": metrics.accuracy, "val_mean_class_accuracy": metrics.mean_class_accuracy}


def save_epoch(out_dir: Path, model: SLFERNet, optimizer, scheduler, config: TrainConfig, data: Data,
               rows: list[dict], best_accuracy: float) -> float:
    """Write last.pt, best.pt when the epoch is the best so far, metrics.csv and curves.png.

    The best epoch is the one of highest validation accuracy, or of highest training
    accuracy in a run without a validation split. Returns the best accuracy so far.
    """
    row = rows[-1]
    accuracy = row.get("val_accuracy", row["train_accuracy"])
    is_best = accuracy > best_accuracy
    best_accuracy = max(best_accuracy, accuracy)

    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": row["epoch"],
        "rng": get_rng_state(),
        "config": config.to_dict() | {"resume": False},
        "class_names": list(CLASS_NAMES),
        "part_names": list(PART_NAMES),
        "shard_size": data.shard_size,
        "crop_size": config.crop_size,
        "variant": config.variant,
        "se": model.se,
        "best_accuracy": best_accuracy,
        "slfer_version": __version__,
    }
    save_checkpoint(out_dir / LAST_CHECKPOINT, checkpoint)
    if is_best:
        # Runs resume from last.pt only, so best.pt leaves out the optimiser
        # state, which is twice the size of the weights with Adam.
        weights_only = {key: value for key, value in checkpoint.items() if key not in RESUME_ONLY_KEYS}
        save_checkpoint(out_dir / BEST_CHECKPOINT, weights_only)

    write_metrics(out_dir / "metrics.csv", rows)
    plot_curves(out_dir / "curves.png", rows)
    return best_accuracy


def get_rng_state() -> dict[str, Any]:
    """Return the Python, numpy, torch and CUDA generator states in a weights_only-loadable form."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states saved by get_rng_state (CUDA states only when CUDA is available)."""
    random.setstate(tuple(value if not isinstance(value, list) else tuple(value) for value in state["python"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["key"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def log_start(config: TrainConfig, data: Data, model: SLFERNet, context: DistributedContext) -> None:
    """Log what the run trains, on what data and device."""
    parameters = sum(p.numel() for p in model.parameters())
    validation = "nothing"
    if data.val_set is not None:
        validation = count_noun(len(data.val_set), f"{data.val_set.split} image")
    logger.info(
        "training %s (%.1fM parameters) on %s x %d for %s: %s (%s of %d), validation on %s",
        variant_label(config.variant, model.se), parameters / 1e6,
        context.device, context.world_size, count_noun(config.epochs, "epoch"),
        count_noun(len(data.train_set), f"{config.train_split} image"),
        count_noun(len(data.train_loader), "batch", "batches"), config.batch_size, validation,
    )


def log_epoch(row: dict[str, Any], epochs: int) -> None:
    """Log the metrics of one epoch as one line."""
    terms = ", ".join(f"{term} {row[f'loss_{term}']:.4f}" for term in LOSS_TERMS[1:] if f"loss_{term}" in row)
    validation = ""
    if "val_accuracy" in row:
        validation = f", val accuracy {row['val_accuracy']:.4f} (mean class {row['val_mean_class_accuracy']:.4f})"
    logger.info(
        "epoch %d/%d: loss %.4f (%s), train accuracy %.4f%s, lr %.2g, %.1f images/s, data wait %.1f%%, %.0f s",
        row["epoch"], epochs, row["loss_total"], terms, row["train_accuracy"], validation, row["lr"],
        row["images_per_second"], 100 * row["data_wait_share"], row["seconds"],
    )
