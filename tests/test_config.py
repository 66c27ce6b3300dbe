"""Training settings: config-file keys, value errors, the no_se check and what --resume may change."""

from __future__ import annotations

import pytest
import yaml

from slfer_model.config import (
    FIELD_NAMES, PARSERS, ConfigError, TrainConfig, field_name, load_config, load_resumed_config,
)

PATHS = {"shards_dir": "shards", "out_dir": "run"}


def write_yaml(path, text: str):
    path.write_text(text)
    return path


def stored_run(**changes) -> dict:
    """The config of a finished run, as its checkpoint stores it."""
    return TrainConfig(**PATHS).to_dict() | {"resume": False} | changes


def test_yaml_accepts_option_names(tmp_path):
    config_file = write_yaml(tmp_path / "run.yaml", "shards: s\nout: r\ncrop-size: 48\nlambda-seg: 0.2\nno-se: true\n")

    config = load_config(config_file, {})

    assert config.shards_dir == "s"
    assert config.out_dir == "r"
    assert config.crop_size == 48
    assert config.lambda_seg == 0.2
    assert config.no_se is True


def test_yaml_accepts_dashed_field_names(tmp_path):
    config_file = write_yaml(tmp_path / "run.yaml", "shards-dir: s\nout-dir: r\nbatch-size: 8\n")

    config = load_config(config_file, {})

    assert (config.shards_dir, config.out_dir, config.batch_size) == ("s", "r", 8)


@pytest.mark.parametrize("first, second", [("crop-size", "crop_size"), ("shards", "shards_dir")])
def test_yaml_key_given_twice(tmp_path, first, second):
    config_file = write_yaml(tmp_path / "run.yaml", f"{first}: 32\n{second}: 40\nout: r\n")

    with pytest.raises(ConfigError, match="twice") as error:
        load_config(config_file, {})

    assert repr(first) in str(error.value)
    assert repr(second) in str(error.value)


def test_yaml_unknown_dashed_key(tmp_path):
    config_file = write_yaml(tmp_path / "run.yaml", "shards: s\nout: r\nlearning-rate: 0.1\n")

    with pytest.raises(ConfigError, match="unknown setting 'learning-rate'") as error:
        load_config(config_file, {})

    assert "crop_size" in str(error.value)
    assert "shards for shards_dir" in str(error.value)


def test_every_train_option_names_its_field():
    from cli import train_command

    for parameter in train_command.params:
        if parameter.name == "config_file":
            continue
        for option in parameter.opts:
            assert field_name(option.removeprefix("--")) == parameter.name, option


def test_every_field_has_a_parser():
    assert set(PARSERS) == set(FIELD_NAMES)


def test_betas_error_shows_typed_value():
    with pytest.raises(ConfigError) as error:
        load_config(None, PATHS | {"betas": "0.5"})

    assert str(error.value).endswith("not 0.5")
    assert "(0.5,)" not in str(error.value)


def test_milestones_error_is_plain():
    with pytest.raises(ConfigError) as error:
        load_config(None, PATHS | {"milestones": "a,b"})

    message = str(error.value)
    assert "invalid value a,b" in message
    assert "'a' is not an integer" in message
    assert "10,18,25,32" in message
    assert "invalid literal" not in message


def test_yaml_null_epochs_rejected(tmp_path):
    config_file = write_yaml(tmp_path / "run.yaml", "epochs: null\n")

    with pytest.raises(ConfigError, match="setting epochs has no value"):
        load_config(config_file, PATHS)


@pytest.mark.parametrize("variant", ["baseline", "ct", "st", "ct+st"])
def test_no_se_needs_se_blocks(variant):
    with pytest.raises(ConfigError) as error:
        load_config(None, PATHS | {"variant": variant, "no_se": True})

    assert f"variant {variant!r} has no SE blocks" in str(error.value)
    assert "--no-se" in str(error.value)


def test_no_se_with_proposed():
    assert load_config(None, PATHS | {"no_se": True}).no_se is True


def test_resume_rejects_changed_settings():
    with pytest.raises(ConfigError) as error:
        load_resumed_config(None, PATHS | {"resume": True, "lr": 0.5, "batch_size": 8}, stored_run())

    message = str(error.value)
    assert "lr 0.5 (the run has 0.0001)" in message
    assert "batch_size 8 (the run has 16)" in message
    assert "drop --batch-size and --lr" in message
    assert "start a new run" in message
    assert "Only epochs, workers, device, shards_dir and out_dir may change" in message


def test_resume_rejects_changed_yaml_setting(tmp_path):
    config_file = write_yaml(tmp_path / "run.yaml", "betas: 0.9,0.99\n")

    with pytest.raises(ConfigError, match=r"betas 0.9,0.99 \(the run has 0.5,0.999\)"):
        load_resumed_config(config_file, PATHS | {"resume": True}, stored_run())


@pytest.mark.parametrize("option, value", [("variant", "ct"), ("no_se", True)])
def test_resume_rejects_changed_network(option, value):
    with pytest.raises(ConfigError, match=f"{option} "):
        load_resumed_config(None, PATHS | {"resume": True, option: value}, stored_run())


def test_resume_allows_run_extensions():
    changes = {"epochs": 60, "workers": 0, "device": "cpu", "shards_dir": "moved", "out_dir": "run", "resume": True}

    config = load_resumed_config(None, changes, stored_run())

    assert (config.epochs, config.workers, config.device, config.shards_dir) == (60, 0, "cpu", "moved")


def test_resume_allows_same_settings():
    config = load_resumed_config(None, PATHS | {"resume": True, "lr": 1e-4, "variant": "proposed"}, stored_run())

    assert config.lr == 1e-4


def test_resume_missing_key_is_default():
    stored = stored_run()
    del stored["no_se"]

    assert load_resumed_config(None, PATHS | {"resume": True}, stored).no_se is False
    with pytest.raises(ConfigError, match="no_se true"):
        load_resumed_config(None, PATHS | {"resume": True, "no_se": True}, stored)


def test_resume_of_no_se_run_without_se_blocks():
    # Older versions stored no_se true for a ct run although ct has no SE blocks.
    stored = stored_run(variant="ct", no_se=True)

    config = load_resumed_config(None, PATHS | {"resume": True}, stored)

    assert (config.variant, config.no_se) == ("ct", False)


def test_resume_config_round_trips_yaml(tmp_path):
    stored = stored_run(lr=0.01, milestones=[2, 4])
    config_file = write_yaml(tmp_path / "config.yaml", yaml.safe_dump(stored))

    config = load_resumed_config(config_file, {"resume": True}, stored)

    assert config.milestones == (2, 4)
