"""`ShardDataset`, the reader of build-shards output used by training and evaluation.

A forked DataLoader worker would share any HDF5 file handle opened before
the fork, with the library state and chunk caches behind it, and HDF5 does
not support that. So the dataset opens its shard files on the first
`__getitem__` in each process (keyed by process id) and drops them when
pickled for spawned workers.
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

# The manifest loader lives with the writer, which defines the folder layout,
# so that `slfer verify` can use it without importing torch.
from pipeline.shard_writer import ShardFolderError, decode_jpeg, load_manifest

__all__ = ["ShardDataset", "ShardFolderError", "default_eval_split", "load_manifest"]

# ImageNet statistics, which the pretrained backbones were trained with.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# (level / 255 - mean) / std as one multiply and one add per pixel, on a
# 3x1x1 shape that broadcasts over a CxHxW image.
NORMALISE_SCALE = torch.from_numpy(1 / (255 * IMAGENET_STD)).view(3, 1, 1)
NORMALISE_OFFSET = torch.from_numpy(-IMAGENET_MEAN / IMAGENET_STD).view(3, 1, 1)


def default_eval_split(splits: list[str], exclude: str | None = None) -> str | None:
    """Pick the split that train validates on and evaluate scores: "test", else "val", else None.

    `exclude` names a split that must not be picked, the training split.
    """
    for name in ("test", "val"):
        if name in splits and name != exclude:
            return name
    return None


class ShardDataset(Dataset):
    """The samples of one split of a shard folder, as tensors ready for the network.

    Each item is a dict: `image` (float32 3xCxC, normalised with the ImageNet
    mean and std), `mask` (int64 CxC part indices), `label` (int64 scalar),
    `parts` (float32 [8] top-n vector) and `index` (the item's position in the
    split). C is `crop_size`, or the stored size when no crop is asked for.

    Args:
        shards_dir: the --out folder of build-shards.
        split: the split to read, such as "train" or "val".
        crop_size: side of the crop in pixels; None keeps the whole image.
        train: take a random crop, and flip image and mask together with
            probability 0.5. Both draw from torch's RNG, so DataLoader worker
            seeding applies. Without it, take the centre crop.
    """

    def __init__(self, shards_dir: str | os.PathLike, split: str, crop_size: int | None = None,
                 train: bool = False):
        self.shards_dir = Path(shards_dir)
        self.split = split
        self.train = train
        self.manifest = load_manifest(self.shards_dir)
        self.shards = [shard for shard in self.manifest["shards"] if shard["split"] == split]
        if not self.shards:
            available = sorted({shard["split"] for shard in self.manifest["shards"]})
            raise ShardFolderError(f"{self.shards_dir} has no split {split!r}; it has {', '.join(available)}")

        size = self.size
        if crop_size is not None and not 1 <= crop_size <= size:
            raise ValueError(f"crop size {crop_size} does not fit the stored size {size}; "
                             f"pass a crop size of at most {size} or rebuild the shards with a larger --size")
        self.crop_size = crop_size
        self.codec = self.manifest["build"]["settings"]["codec"]
        self.ends = np.cumsum([shard["count"] for shard in self.shards]).tolist()

        self._labels: np.ndarray | None = None
        self._paths: list[str] | None = None
        self._open: dict[int, dict] = {}
        self._inherited: list[dict] = []
        self._pid: int | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["class_names"])

    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["part_names"])

    @property
    def size(self) -> int:
        """Side in pixels of the stored images and masks."""
        return int(self.manifest["build"]["settings"]["size"])

    @property
    def labels(self) -> np.ndarray:
        """Labels of all samples of the split, int64, read once."""
        if self._labels is None:
            self._labels = np.concatenate([self._read_whole(shard, "labels") for shard in self.shards])
        return self._labels

    @property
    def paths(self) -> list[str]:
        """Image paths of all samples relative to the dataset root, read once."""
        if self._paths is None:
            self._paths = [path.decode("utf-8") if isinstance(path, bytes) else path
                           for shard in self.shards for path in self._read_whole(shard, "paths")]
        return self._paths

    def __len__(self) -> int:
        return self.ends[-1]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is outside the {len(self)} samples of split {self.split!r}")
        shard_position = bisect.bisect_right(self.ends, index)
        local = index - (self.ends[shard_position - 1] if shard_position else 0)
        shard = self._open_shard(shard_position)

        image = shard["images"][local]
        if self.codec == "jpeg":
            image = decode_jpeg(image)
        mask = shard["masks"][local]
        image, mask = self._crop_and_flip(image, mask)

        planes = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {
            "image": planes.float().mul_(NORMALISE_SCALE).add_(NORMALISE_OFFSET),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "label": torch.tensor(int(shard["labels"][local]), dtype=torch.int64),
            "parts": torch.from_numpy(shard["parts"][local].astype(np.float32)),
            "index": index,
        }

    def _crop_and_flip(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cut the same window from image and mask, and mirror both together when training."""
        if self.crop_size is not None:
            crop, size = self.crop_size, self.size
            if self.train:
                top = int(torch.randint(0, size - crop + 1, ()).item())
                left = int(torch.randint(0, size - crop + 1, ()).item())
            else:
                top = left = (size - crop) // 2
            image = image[top:top + crop, left:left + crop]
            mask = mask[top:top + crop, left:left + crop]
        if self.train and torch.rand(()).item() < 0.5:
            image = image[:, ::-1]
            mask = mask[:, ::-1]
        return image, mask

    def _open_shard(self, shard_position: int) -> dict:
        """Open a shard in this process on first use; return its image and mask datasets, labels and parts."""
        pid = os.getpid()
        if self._pid != pid:
            # Handles inherited through fork belong to the parent. Keeping a
            # reference stops this process from closing them under the parent.
            self._inherited.append(self._open)
            self._open = {}
            self._pid = pid
        if shard_position not in self._open:
            file = h5py.File(self.shards_dir / self.shards[shard_position]["file"], "r")
            self._open[shard_position] = {
                "file": file,
                "images": file["images"],
                "masks": file["masks"],
                "labels": file["labels"][:],
                "parts": file["parts"][:],
            }
        return self._open[shard_position]

    def _read_whole(self, shard: dict, name: str) -> np.ndarray:
        """Read one small per-sample dataset of a shard through a short-lived handle."""
        with h5py.File(self.shards_dir / shard["file"], "r") as file:
            return file[name][:]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = {}
        state["_inherited"] = []
        state["_pid"] = None
        return state

    def close(self) -> None:
        """Close the shard files this process opened."""
        if self._pid == os.getpid():
            for shard in self._open.values():
                shard["file"].close()
        self._open = {}
