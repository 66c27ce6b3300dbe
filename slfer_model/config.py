"""Training settings: defaults from the SLFER paper, YAML files and command-line overrides."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slfer_model.variants import VARIANTS


class ConfigError(ValueError):
    """Invalid training settings; the message names the setting, its value and the fix."""


@dataclass
class TrainConfig:
    """Settings of one training run.

    The defaults are the schedule of Lv et al. (SLFER): 40 epochs, batch 16, Adam with
    lr 1e-4 and betas (0.5, 0.999), lr multiplied by 0.1 after epochs 10, 18, 25 and 32,
    random 224 crops with horizontal flip, and both auxiliary loss weights 0.5.
    """

    shards_dir: str | None = None
    out_dir: str | None = None
    variant: str = "proposed"
    # Removes the SE blocks from a variant that has them (only "proposed").
    no_se: bool = False
    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    milestones: tuple[int, ...] = (10, 18, 25, 32)
    gamma: float = 0.1
    crop_size: int = 224
    lambda_seg: float = 0.5
    lambda_part: float = 0.5
    pretrained: str = "none"
    train_split: str = "train"
    # None picks "test" when the shards have it, else "val".
    val_split: str | None = None
    device: str = "auto"
    # Up to 4 DataLoader workers, one per core: more would only compete for the cores.
    workers: int = dataclasses.field(default_factory=lambda: min(4, os.cpu_count() or 1))
    seed: int = 0
    deterministic: bool = False
    limit_batches: int | None = None
    resume: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as YAML-friendly values (lists, not tuples)."""
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        values["milestones"] = list(self.milestones)
        return values


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))


def load_config(
    config_file: Path | None,
    overrides: dict[str, Any],
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Resolve the settings of a run: defaults, then `base`, then the YAML file, then `overrides`.

    Args:
        config_file: YAML mapping of setting names to values, or None.
        overrides: settings given on the command line, named as TrainConfig fields.
        base: settings of an earlier run being resumed, or None.

    Raises:
        ConfigError: for an unreadable file, an unknown key or an invalid value.
    """
    values: dict[str, Any] = {}
    for source, layer in (("resumed run", base), (str(config_file), read_yaml(config_file)), ("options", overrides)):
        if layer:
            check_keys(layer, source)
            values.update(layer)

    config = TrainConfig(**{name: convert(name, value) for name, value in values.items()})
    validate(config)
    return config


def read_yaml(config_file: Path | None) -> dict[str, Any]:
    """Read a YAML mapping of settings; an empty file gives no settings."""
    if config_file is None:
        return {}
    try:
        data = yaml.safe_load(Path(config_file).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config file {config_file}: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {config_file} must hold a mapping of settings, not {type(data).__name__}")
    return data


def check_keys(values: dict[str, Any], source: str) -> None:
    """Raise ConfigError for a key that is not a TrainConfig field."""
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(
            f"unknown setting {', '.join(map(repr, unknown))} in {source}; valid settings: {', '.join(FIELD_NAMES)}"
        )


def convert(name: str, value: Any) -> Any:
    """Convert one setting from its YAML or command-line form to the TrainConfig type."""
    if value is None:
        return None
    try:
        if name == "betas":
            return tuple(parse_list(value, float))
        if name == "milestones":
            return tuple(parse_list(value, int))
        if name in ("shards_dir", "out_dir", "pretrained", "variant", "train_split", "val_split", "device"):
            return str(value)
        if name in ("epochs", "batch_size", "crop_size", "workers", "seed", "limit_batches"):
            return parse_int(value)
        if name in ("lr", "gamma", "lambda_seg", "lambda_part"):
            return float(value)
        if name in ("deterministic", "resume", "no_se"):
            return parse_bool(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"setting {name} has invalid value {value!r}: {error}") from error
    return value


def parse_list(value: Any, kind: type) -> list:
    """Parse "a,b,c" or a list into a list of `kind`; an empty string gives an empty list."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError("expected a comma-separated string or a list")
    return [parse_int(item) if kind is int else float(item) for item in items]


def parse_int(value: Any) -> int:
    """Parse an integer, rejecting floats with a fraction and booleans."""
    if isinstance(value, bool):
        raise ValueError("expected an integer, not a boolean")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("expected an integer")
    return int(value)


def parse_bool(value: Any) -> bool:
    """Parse a YAML or command-line boolean."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ValueError("expected true or false")


def validate(config: TrainConfig) -> None:
    """Raise ConfigError for the first invalid setting, naming it with its value."""
    checks = [
        (config.shards_dir is not None, "shards_dir is missing; pass --shards DIR or set shards_dir in the config file"),
        (config.out_dir is not None, "out_dir is missing; pass --out RUN or set out_dir in the config file"),
        (config.variant in VARIANTS, f"variant {config.variant!r} is not one of {', '.join(VARIANTS)}"),
        (config.epochs >= 1, f"epochs must be at least 1, not {config.epochs}"),
        (config.batch_size >= 2, f"batch_size must be at least 2 for batch normalisation, not {config.batch_size}"),
        (config.lr > 0, f"lr must be positive, not {config.lr}"),
        (len(config.betas) == 2 and all(0 <= b < 1 for b in config.betas),
         f"betas must be two numbers in [0, 1), such as 0.5,0.999, not {config.betas}"),
        (all(m >= 1 for m in config.milestones) and list(config.milestones) == sorted(set(config.milestones)),
         f"milestones must be increasing positive epochs, such as 10,18,25,32, not {config.milestones}"),
        (config.gamma > 0, f"gamma must be positive, not {config.gamma}"),
        (config.crop_size >= 32, f"crop_size must be at least 32 pixels (the backbone's stride), not {config.crop_size}"),
        (config.lambda_seg >= 0, f"lambda_seg must not be negative, not {config.lambda_seg}"),
        (config.lambda_part >= 0, f"lambda_part must not be negative, not {config.lambda_part}"),
        (config.workers >= 0, f"workers must not be negative, not {config.workers}"),
        (config.seed >= 0, f"seed must not be negative, not {config.seed}"),
        (config.limit_batches is None or config.limit_batches >= 1,
         f"limit_batches must be at least 1, not {config.limit_batches}"),
    ]
    for passed, message in checks:
        if not passed:
            raise ConfigError(message)


def check_crop_fits(config: TrainConfig, shard_size: int) -> None:
    """Raise ConfigError when the crop is larger than the images stored in the shards."""
    if config.crop_size > shard_size:
        raise ConfigError(
            f"crop_size {config.crop_size} is larger than the {shard_size}-pixel images stored in "
            f"{config.shards_dir}; pass --crop-size {shard_size} or less, or rebuild the shards with --size {config.crop_size}"
        )
