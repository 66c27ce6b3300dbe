"""Pretrained backbone loading and checkpoint files."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torchvision

from slfer_model.checkpoint import (
    IMAGENET_WEIGHTS, CheckpointError, PretrainedWeightsError, load_checkpoint, load_pretrained_backbone,
    save_checkpoint,
)
from slfer_model.network import build_model
from slfer_model.run_files import current_umask

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def resnet18_state_dict() -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision ResNet-18 with 100 classes, in place of MS-Celeb-1M weights."""
    torch.manual_seed(1)
    return torchvision.models.resnet18(num_classes=100).state_dict()


def backbone_matches(model, state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether every non-fc tensor of `state_dict` equals the model's backbone tensor of that name."""
    own = model.backbone.state_dict()
    return all(torch.equal(own[key], value) for key, value in state_dict.items() if not key.startswith("fc."))


@contextmanager
def storages_tagged_cuda():
    """Make torch.save record every storage's location as cuda:0, as on a GPU machine.

    torch.save calls the location taggers of torch.serialization's package registry
    to record each storage's location. A tagger registered ahead of the CPU one makes
    the file record "cuda:0", as a checkpoint saved from GPU tensors does. The
    registry has no public removal, so the tagger is taken out of it afterwards.
    """
    def tag_cuda(storage):
        return "cuda:0" if storage.device.type == "cpu" else None

    def deserialize_nothing(storage, location):
        return None

    torch.serialization.register_package(0, tag_cuda, deserialize_nothing)
    try:
        yield
    finally:
        torch.serialization._package_registry[:] = [
            entry for entry in torch.serialization._package_registry if entry[1] is not tag_cuda
        ]


def test_wrapped_prefixed_state_dict(tmp_path, resnet18_state_dict):
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": {f"module.{key}": value for key, value in resnet18_state_dict.items()}}, path)
    model = build_model("proposed")

    load_pretrained_backbone(model, str(path))

    assert backbone_matches(model, resnet18_state_dict)


def test_plain_state_dict(tmp_path, resnet18_state_dict):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state_dict, path)
    model = build_model("baseline")

    load_pretrained_backbone(model, str(path))

    assert backbone_matches(model, resnet18_state_dict)


def test_load_reports_keys(tmp_path, resnet18_state_dict, caplog):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state_dict, path)

    with caplog.at_level(logging.INFO, logger="slfer_model.checkpoint"):
        load_pretrained_backbone(build_model("proposed"), str(path))

    assert "layer1.0.se.fc1.weight" in caplog.text
    assert "fc.weight" in caplog.text


def test_pretrained_none_keeps_weights():
    model = build_model("baseline")
    before = {key: value.clone() for key, value in model.state_dict().items()}

    load_pretrained_backbone(model, "none")

    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_unmatched_state_dict_rejected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, path)

    with pytest.raises(PretrainedWeightsError, match="no tensor") as error:
        load_pretrained_backbone(build_model("baseline"), str(path))

    assert "encoder.weight, decoder.bias" in str(error.value)


def test_file_without_tensors_lists_keys(tmp_path):
    path = tmp_path / "nested.pth"
    torch.save({"epoch": 3, "weights": {"conv1.weight": torch.zeros(64, 3, 7, 7)}}, path)

    with pytest.raises(PretrainedWeightsError, match="contain no tensors") as error:
        load_pretrained_backbone(build_model("baseline"), str(path))

    assert "top-level keys: epoch, weights" in str(error.value)


def save_slfer_checkpoint(path: Path, model) -> None:
    """Save `model` as `slfer train` saves best.pt (without the optimiser and RNG states)."""
    save_checkpoint(path, {"model": model.state_dict(), "epoch": 1, "config": {"variant": model.variant},
                           "variant": model.variant, "se": model.se, "best_accuracy": 0.5})


def test_slfer_checkpoint_as_pretrained(tmp_path):
    torch.manual_seed(2)
    trained = build_model("proposed")
    path = tmp_path / "best.pt"
    save_slfer_checkpoint(path, trained)
    model = build_model("proposed")

    load_pretrained_backbone(model, str(path))

    assert backbone_matches(model, trained.backbone.state_dict())
    head_pairs = zip(model.expression_head.parameters(), trained.expression_head.parameters())
    assert not all(torch.equal(own, loaded) for own, loaded in head_pairs)


def test_slfer_checkpoint_into_backbone_without_se(tmp_path, caplog):
    torch.manual_seed(2)
    trained = build_model("proposed")
    path = tmp_path / "best.pt"
    save_slfer_checkpoint(path, trained)
    model = build_model("proposed", se=False)
    plain_keys = {key: value for key, value in trained.backbone.state_dict().items() if ".se." not in key}

    with caplog.at_level(logging.INFO, logger="slfer_model.checkpoint"):
        load_pretrained_backbone(model, str(path))

    assert backbone_matches(model, plain_keys)
    assert "skipped the 32 SE tensors" in caplog.text
    assert "no SE blocks" in caplog.text


@pytest.mark.parametrize("content", [b"garbage\n", b""], ids=["text", "empty"])
def test_pretrained_not_a_torch_file(tmp_path, content):
    path = tmp_path / "fake.pth"
    path.write_bytes(content)

    with pytest.raises(PretrainedWeightsError) as error:
        load_pretrained_backbone(build_model("baseline"), str(path))

    message = str(error.value)
    assert str(path) in message
    assert "not a PyTorch checkpoint" in message
    assert "weights_only=True" in message
    assert "slfer checkpoint" in message
    assert "Please file an issue" not in message
    assert "\n" not in message


def test_missing_weights_file(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="not a file"):
        load_pretrained_backbone(build_model("baseline"), str(tmp_path / "absent.pth"))


def test_imagenet_offline_error(tmp_path):
    # A proxy on a closed local port makes the download fail as it does without network.
    code = (
        "from slfer_model.checkpoint import load_pretrained_backbone, PretrainedWeightsError\n"
        "from slfer_model.network import build_model\n"
        "try:\n"
        "    load_pretrained_backbone(build_model('baseline'), 'imagenet')\n"
        "except PretrainedWeightsError as error:\n"
        "    print(error)\n"
    )
    environment = {"PATH": "/usr/bin:/bin", "TORCH_HOME": str(tmp_path), "HOME": str(tmp_path),
                   "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=environment,
                            capture_output=True, text=True, timeout=300)

    assert IMAGENET_WEIGHTS.url in result.stdout
    assert "--pretrained PATH" in result.stdout


def test_checkpoint_round_trip(tmp_path):
    checkpoint = {"model": {"weight": torch.arange(6.0)}, "epoch": 3, "config": {"lr": 1e-4}}
    path = tmp_path / "last.pt"

    save_checkpoint(path, checkpoint)
    loaded = load_checkpoint(path, map_location="cpu")

    assert torch.equal(loaded["model"]["weight"], checkpoint["model"]["weight"])
    assert loaded["epoch"] == 3
    assert [file.name for file in tmp_path.iterdir()] == ["last.pt"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask()


def test_cuda_checkpoint_loads_on_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA, where a cuda-tagged file cannot load by default")
    path = tmp_path / "gpu.pt"
    with storages_tagged_cuda():
        save_checkpoint(path, {"model": {"weight": torch.arange(4.0)}, "epoch": 1})

    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)
    loaded = load_checkpoint(path, map_location="cpu")

    assert loaded["model"]["weight"].device.type == "cpu"
    assert torch.equal(loaded["model"]["weight"], torch.arange(4.0))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "last.pt", map_location="cpu")


@pytest.mark.parametrize("content, cause", [
    (b"garbage\n", "Unsupported operand"),
    (b"", "the file is empty"),
], ids=["text", "empty"])
def test_checkpoint_not_a_torch_file(tmp_path, content, cause):
    path = tmp_path / "fake.pth"
    path.write_bytes(content)

    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, map_location="cpu")

    message = str(error.value)
    assert str(path) in message
    assert cause in message
    assert "not a PyTorch checkpoint" in message
    assert "last.pt or best.pt" in message
    assert "Please file an issue" not in message
    assert "\n" not in message


def test_checkpoint_with_other_objects(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.1)}, path)

    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, map_location="cpu")

    assert "argparse.Namespace was not an allowed global" in str(error.value)
    assert "contains objects other than tensors" in str(error.value)
