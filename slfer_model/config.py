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
    # Whether to build a variant that has SE blocks (only "proposed") without them.
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
    # Up to 4 DataLoader workers, one per core, because more would only compete for the cores.
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
# Command-line option names of `slfer train` that differ from their field's name
# (after dashes become underscores). A config file may use either name.
OPTION_FIELDS = {"shards": "shards_dir", "out": "out_dir"}
# Settings that `--resume` may change. Workers and the folder paths cannot change the
# weights, and epochs (extending a run) and device (moving it to another machine) are
# meant to change. Every other setting must equal the one stored in the checkpoint.
# NOTE: moving a run between CPU and CUDA changes its arithmetic, because CUDA trains
# under bf16 autocast, so such a run does not continue bit for bit.
RESUME_CHANGEABLE = ("epochs", "workers", "device", "shards_dir", "out_dir", "resume")


def load_config(
    config_file: Path | None,
    overrides: dict[str, Any],
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Resolve and validate the settings of a run: defaults, then `base`, then the YAML file, then `overrides`.

    Args:
        config_file: YAML mapping of settings, keyed by field names (crop_size) or by
            option names (crop-size, shards), or None.
        overrides: settings given on the command line, named as TrainConfig fields.
        base: settings of an earlier run being resumed, or None.

    Raises:
        ConfigError: for an unreadable file, an unknown or repeated key or an invalid value.
    """
    config = merge_settings(config_file, overrides, base)
    validate(config)
    return config


def load_resumed_config(config_file: Path | None, overrides: dict[str, Any], stored: dict[str, Any]) -> TrainConfig:
    """Resolve and validate the settings of a resumed run from the settings `stored` in its checkpoint.

    Raises:
        ConfigError: when the config file or an option changes a setting of the run
            other than those in RESUME_CHANGEABLE, or for any error of load_config.
    """
    stored = stored_settings(stored)
    config = merge_settings(config_file, overrides, base=stored)
    check_resume_settings(config, merge_settings(None, {}, base=stored))
    validate(config)
    return config


def merge_settings(
    config_file: Path | None,
    overrides: dict[str, Any],
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Resolve the settings like load_config, converting each value but not validating the result."""
    values: dict[str, Any] = {}
    for source, layer in (("resumed run", base), (str(config_file), read_yaml(config_file)), ("options", overrides)):
        if layer:
            check_keys(layer, source)
            values.update(layer)

    return TrainConfig(**{name: convert(name, value) for name, value in values.items()})


def read_yaml(config_file: Path | None) -> dict[str, Any]:
    """Read a YAML mapping of settings, keyed by field names; an empty file gives no settings."""
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
    return rename_option_keys(data, str(config_file))


def rename_option_keys(data: dict[Any, Any], source: str) -> dict[str, Any]:
    """Rename config-file keys given as option names (crop-size, shards) to field names (crop_size, shards_dir).

    Raises:
        ConfigError: for a key that names no setting, or two keys that name the same setting.
    """
    values: dict[str, Any] = {}
    spellings: dict[str, str] = {}
    unknown = []
    for key, value in data.items():
        name = field_name(str(key))
        if name not in FIELD_NAMES:
            unknown.append(str(key))
        elif name in spellings:
            raise ConfigError(
                f"config file {source} sets {name} twice, as {spellings[name]!r} and {str(key)!r}; "
                f"remove one of the two keys"
            )
        else:
            spellings[name] = str(key)
            values[name] = value

    if unknown:
        raise unknown_keys_error(unknown, source)
    return values


def field_name(key: str) -> str:
    """Return the field name for a config-file key: dashes become underscores, and option names map to fields."""
    name = key.replace("-", "_")
    return OPTION_FIELDS.get(name, name)


def option_name(field: str) -> str:
    """Return the command-line option of a field, such as --shards for shards_dir."""
    names = {value: key for key, value in OPTION_FIELDS.items()}
    return "--" + names.get(field, field).replace("_", "-")


def check_keys(values: dict[str, Any], source: str) -> None:
    """Raise ConfigError for a key that is not a TrainConfig field."""
    unknown = [key for key in values if key not in FIELD_NAMES]
    if unknown:
        raise unknown_keys_error(unknown, source)


def unknown_keys_error(unknown: list[str], source: str) -> ConfigError:
    """Build the error for keys that name no setting, listing the valid names."""
    aliases = ", ".join(f"{option} for {field}" for option, field in OPTION_FIELDS.items())
    return ConfigError(
        f"unknown setting {', '.join(map(repr, sorted(unknown)))} in {source}; valid settings: "
        f"{', '.join(FIELD_NAMES)}. A config file may also spell them as the options do, with dashes, "
        f"and use {aliases}"
    )


def convert(name: str, value: Any) -> Any:
    """Convert one setting from its YAML or command-line form to the TrainConfig type."""
    parse, expected = PARSERS[name]
    if value is None:
        if name in NULLABLE_FIELDS:
            return None
        raise ConfigError(f"setting {name} has no value; give {expected}, or remove the key")

    try:
        return parse(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"setting {name} has invalid value {format_value(value)}: {error}; give {expected}"
        ) from error


def parse_list(value: Any, parse_item) -> tuple:
    """Parse "a,b,c" or a list with `parse_item`; an empty string gives an empty tuple."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError("it is neither a comma-separated string nor a list")
    return tuple(parse_item(item) for item in items)


def parse_int(value: Any) -> int:
    """Parse an integer, rejecting floats with a fraction and booleans."""
    if isinstance(value, bool):
        raise ValueError(f"{format_value(value)} is a boolean, not an integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{format_value(value)} is not an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{format_value(value)!r} is not an integer") from None


def parse_float(value: Any) -> float:
    """Parse a number, rejecting booleans."""
    if isinstance(value, bool):
        raise ValueError(f"{format_value(value)} is a boolean, not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{format_value(value)!r} is not a number") from None


def parse_bool(value: Any) -> bool:
    """Parse a YAML or command-line boolean."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ValueError("it is not true or false")


def format_value(value: Any) -> str:
    """Write a setting as a user types it: lists comma-separated, booleans as true and false."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(format_value, value)) if value else "an empty list"
    return str(value)


# The parser of each setting and the form it expects, for the error message.
PARSERS: dict[str, tuple[Any, str]] = {
    "shards_dir": (str, "a folder"),
    "out_dir": (str, "a folder"),
    "variant": (str, f"one of {', '.join(VARIANTS)}"),
    "no_se": (parse_bool, "true or false"),
    "epochs": (parse_int, "an integer"),
    "batch_size": (parse_int, "an integer"),
    "lr": (parse_float, "a number"),
    "betas": (lambda value: parse_list(value, parse_float), "two comma-separated numbers, such as 0.5,0.999"),
    "milestones": (lambda value: parse_list(value, parse_int), "comma-separated epochs, such as 10,18,25,32"),
    "gamma": (parse_float, "a number"),
    "crop_size": (parse_int, "an integer"),
    "lambda_seg": (parse_float, "a number"),
    "lambda_part": (parse_float, "a number"),
    "pretrained": (str, "none, imagenet or a file path"),
    "train_split": (str, "a split name"),
    "val_split": (str, "a split name"),
    "device": (str, "auto, cpu, cuda or cuda:N"),
    "workers": (parse_int, "an integer"),
    "seed": (parse_int, "an integer"),
    "deterministic": (parse_bool, "true or false"),
    "limit_batches": (parse_int, "an integer"),
    "resume": (parse_bool, "true or false"),
}
# Settings whose value may be None (YAML null): None means "not set" for each.
NULLABLE_FIELDS = ("shards_dir", "out_dir", "val_split", "limit_batches")


def validate(config: TrainConfig) -> None:
    """Raise ConfigError for the first invalid setting, naming it with its value."""
    checks = [
        (config.shards_dir is not None, "shards_dir is missing; pass --shards DIR or set shards_dir in the config file"),
        (config.out_dir is not None, "out_dir is missing; pass --out RUN or set out_dir in the config file"),
        (config.variant in VARIANTS, f"variant {config.variant!r} is not one of {', '.join(VARIANTS)}"),
        (not config.no_se or config.variant not in VARIANTS or VARIANTS[config.variant].se,
         f"no_se is set, but variant {config.variant!r} has no SE blocks to remove (variants with SE blocks: "
         f"{', '.join(name for name, variant in VARIANTS.items() if variant.se)}); drop --no-se or no_se "
         f"from the config file"),
        (config.epochs >= 1, f"epochs must be at least 1, not {config.epochs}"),
        (config.batch_size >= 2, f"batch_size must be at least 2 for batch normalisation, not {config.batch_size}"),
        (config.lr > 0, f"lr must be positive, not {config.lr}"),
        (len(config.betas) == 2 and all(0 <= b < 1 for b in config.betas),
         f"betas must be two numbers in [0, 1), such as 0.5,0.999, not {format_value(config.betas)}"),
        (all(m >= 1 for m in config.milestones) and list(config.milestones) == sorted(set(config.milestones)),
         f"milestones must be increasing positive epochs, such as 10,18,25,32, "
         f"not {format_value(config.milestones)}"),
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


def stored_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Return the settings stored in a checkpoint, as this version reads them.

    Settings missing from an older checkpoint keep their defaults. Older slfer versions
    accepted no_se true for variants without SE blocks, where it changed nothing, so it
    is read as false there to keep those runs resumable.
    """
    values = dict(values)
    variant = VARIANTS.get(values.get("variant", TrainConfig.variant))
    if values.get("no_se") and variant is not None and not variant.se:
        values["no_se"] = False
    return values


def check_resume_settings(config: TrainConfig, stored: TrainConfig) -> None:
    """Raise ConfigError when a resumed run would continue with settings other than its own.

    Args:
        config: the settings requested for the resumed run.
        stored: the settings the run was started with, from its checkpoint.
    """
    changed = [name for name in FIELD_NAMES
               if name not in RESUME_CHANGEABLE and getattr(config, name) != getattr(stored, name)]
    if not changed:
        return

    differences = ", ".join(
        f"{name} {format_value(getattr(config, name))} (the run has {format_value(getattr(stored, name))})"
        for name in changed
    )
    options = " and ".join(option_name(name) for name in changed)
    changeable = [name for name in RESUME_CHANGEABLE if name != "resume"]
    raise ConfigError(
        f"cannot resume run {config.out_dir} with changed settings: {differences}. A resumed run continues "
        f"with the settings it was started with, so drop {options} (or their keys in the config file), or "
        f"start a new run in another --out folder. Only {', '.join(changeable[:-1])} and {changeable[-1]} "
        f"may change on resume"
    )


def check_crop_fits(config: TrainConfig, shard_size: int) -> None:
    """Raise ConfigError when the crop is larger than the images stored in the shards."""
    if config.crop_size > shard_size:
        raise ConfigError(
            f"crop_size {config.crop_size} is larger than the {shard_size}-pixel images stored in "
            f"{config.shards_dir}; pass --crop-size {shard_size} or less, "
            f"or rebuild the shards with --size {config.crop_size}"
        )
