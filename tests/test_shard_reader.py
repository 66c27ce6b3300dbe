"""ShardDataset and load_manifest: tensors, crops and flips, and DataLoader workers under fork and spawn."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from shard_fixtures import make_dataset
from torch.utils.data import DataLoader

from pipeline.labels import CLASS_NAMES, PART_NAMES
from pipeline.shard_reader import (
    IMAGENET_MEAN, IMAGENET_STD, ShardDataset, ShardFolderError, default_eval_split, load_manifest,
)
from pipeline.shard_writer import build_shards

SIZE = 32
CROP = 24


def build(tmp_path: Path, codec: str = "raw") -> Path:
    """Shards of a dataset whose image pixels are exactly 30 times the mask value."""
    root, masks_dir = make_dataset(tmp_path, {"train": 4, "val": 2}, shape=(SIZE, SIZE), noise=0)
    out_dir = tmp_path / "shards"
    status = build_shards(root, "folder", label_order=None, skip_unknown=False, masks_dir=masks_dir,
                          out_dir=out_dir, size=SIZE, top_n=4, shard_size=5, codec=codec, workers=0)
    assert status == 0
    return out_dir


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("reader"))


def stored(shards_dir: Path, split: str, name: str) -> np.ndarray:
    """One dataset of all shards of a split, concatenated."""
    manifest = load_manifest(shards_dir)
    parts = []
    for shard in manifest["shards"]:
        if shard["split"] == split:
            with h5py.File(shards_dir / shard["file"], "r") as file:
                parts.append(file[name][:])
    return np.concatenate(parts)


def pixels_of(image: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation: HxWx3 uint8 pixels."""
    values = image.numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.rint(values * 255).astype(np.uint8)


def test_item_fields(shards_dir):
    item = ShardDataset(shards_dir, "train")[3]
    assert item["image"].dtype == torch.float32
    assert item["image"].shape == (3, SIZE, SIZE)
    assert item["mask"].dtype == torch.int64
    assert item["mask"].shape == (SIZE, SIZE)
    assert item["label"].dtype == torch.int64
    assert item["label"].shape == ()
    assert item["parts"].dtype == torch.float32
    assert item["parts"].shape == (len(PART_NAMES),)
    assert item["index"] == 3


def test_item_values_match_shards(shards_dir):
    dataset = ShardDataset(shards_dir, "val")
    images, masks = stored(shards_dir, "val", "images"), stored(shards_dir, "val", "masks")
    parts = stored(shards_dir, "val", "parts")
    for index in range(len(dataset)):
        item = dataset[index]
        assert np.array_equal(pixels_of(item["image"]), images[index])
        assert np.array_equal(item["mask"].numpy(), masks[index])
        assert item["label"].item() == dataset.labels[index]
        assert np.array_equal(item["parts"].numpy(), parts[index])


def test_properties(shards_dir):
    dataset = ShardDataset(shards_dir, "train")
    assert dataset.class_names == CLASS_NAMES
    assert dataset.part_names == PART_NAMES
    assert dataset.size == SIZE
    assert dataset.labels.tolist() == [0] * 4 + [3] * 4 + [5] * 4
    assert dataset.paths[0] == "train/angry/0.png"
    assert len(dataset.paths) == len(dataset)


def test_centre_crop(shards_dir):
    item = ShardDataset(shards_dir, "val", crop_size=CROP)[0]
    offset = (SIZE - CROP) // 2
    expected = stored(shards_dir, "val", "masks")[0][offset:offset + CROP, offset:offset + CROP]
    assert np.array_equal(item["mask"].numpy(), expected)


def find_window(mask: np.ndarray, full: np.ndarray) -> tuple[int, int, bool] | None:
    """The (top, left, flipped) window of `full` that `mask` shows, or None."""
    for flipped in (False, True):
        source = full[:, ::-1] if flipped else full
        for top in range(SIZE - CROP + 1):
            for left in range(SIZE - CROP + 1):
                window = source[top:top + CROP, left:left + CROP]
                if np.array_equal(window, mask):
                    return top, SIZE - CROP - left if flipped else left, flipped
    return None


def test_train_crop_and_flip_keep_image_on_mask(shards_dir):
    dataset = ShardDataset(shards_dir, "train", crop_size=CROP, train=True)
    full = stored(shards_dir, "train", "masks")[5]
    torch.manual_seed(0)
    windows = set()
    for _ in range(30):
        item = dataset[5]
        mask = item["mask"].numpy().astype(np.uint8)
        assert np.array_equal(pixels_of(item["image"])[:, :, 0], mask * 30)
        window = find_window(mask, full)
        assert window is not None
        windows.add(window)
    assert {flipped for _, _, flipped in windows} == {False, True}
    assert len({(top, left) for top, left, _ in windows}) > 5


def test_train_crops_follow_torch_seed(shards_dir):
    dataset = ShardDataset(shards_dir, "train", crop_size=CROP, train=True)
    torch.manual_seed(7)
    first = dataset[2]["mask"]
    torch.manual_seed(7)
    assert torch.equal(dataset[2]["mask"], first)


def test_jpeg_shards_read(tmp_path):
    dataset = ShardDataset(build(tmp_path, codec="jpeg"), "val", crop_size=CROP)
    item = dataset[1]
    assert item["image"].shape == (3, CROP, CROP)
    assert np.abs(pixels_of(item["image"])[:, :, 0].astype(int) - item["mask"].numpy() * 30).mean() < 3


def collect(loader: DataLoader) -> tuple[list[int], list[int]]:
    indices, labels = [], []
    for batch in loader:
        indices += batch["index"].tolist()
        labels += batch["label"].tolist()
    return indices, labels


@pytest.mark.parametrize("workers, context", [(0, None), (2, "fork"), pytest.param(2, "spawn", marks=pytest.mark.slow)])
def test_data_loader_workers(shards_dir, workers, context):
    dataset = ShardDataset(shards_dir, "train", crop_size=CROP, train=True)
    loader = DataLoader(dataset, batch_size=4, shuffle=True, num_workers=workers,
                        multiprocessing_context=context, generator=torch.Generator().manual_seed(0))
    indices, labels = collect(loader)
    assert sorted(indices) == list(range(len(dataset)))
    assert labels == dataset.labels[indices].tolist()


def test_fork_after_parent_read(shards_dir):
    dataset = ShardDataset(shards_dir, "train")
    parent_item = dataset[0]
    loader = DataLoader(dataset, batch_size=12, num_workers=2, multiprocessing_context="fork")
    batch = next(iter(loader))
    assert torch.equal(batch["image"][0], parent_item["image"])
    assert torch.equal(dataset[11]["mask"], batch["mask"][11])


def test_no_handle_open_before_first_item(shards_dir):
    dataset = ShardDataset(shards_dir, "train")
    dataset.labels, dataset.paths
    assert dataset._open == {}


def test_crop_larger_than_size_is_rejected(shards_dir):
    with pytest.raises(ValueError, match="crop size 40"):
        ShardDataset(shards_dir, "train", crop_size=40)


def test_unknown_split_is_rejected(shards_dir):
    with pytest.raises(ShardFolderError, match="has no split 'test'"):
        ShardDataset(shards_dir, "test")


def test_manifest_of_unfinished_folder(tmp_path):
    (tmp_path / "progress.json").write_text(json.dumps({"shards": []}))
    with pytest.raises(ShardFolderError, match="did not finish"):
        load_manifest(tmp_path)


def test_manifest_of_missing_folder(tmp_path):
    with pytest.raises(ShardFolderError, match="not found"):
        load_manifest(tmp_path / "absent")


def test_manifest_of_empty_folder(tmp_path):
    with pytest.raises(ShardFolderError, match="no manifest.json and no shards"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("splits, exclude, expected", [
    (["train", "val", "test"], None, "test"),
    (["train", "val"], None, "val"),
    (["train"], None, None),
    (["test", "val"], "test", "val"),
    (["test"], "test", None),
])
def test_default_eval_split(splits, exclude, expected):
    assert default_eval_split(splits, exclude) == expected
