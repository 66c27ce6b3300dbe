"""DataLoaders for training whose order and augmentation depend only on (seed, epoch, index).

Each training item is requested as the key (epoch, index), and the dataset draws that
item's random crop and flip from a torch generator seeded by (seed, epoch, index).
The same epoch therefore gets the same batches whatever the number of workers, whether
workers persist between epochs, and whether the run was interrupted and resumed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from slfer_model.distributed import DistributedContext


class EpochSampler(Sampler):
    """Yield (epoch, index) keys from a shuffling sampler that is reseeded each epoch."""

    def __init__(self, dataset: Dataset, seed: int, context: DistributedContext) -> None:
        self.seed = seed
        self.epoch = 0
        self.generator = torch.Generator()
        if context.distributed:
            self.sampler = DistributedSampler(
                dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=seed,
            )
        else:
            self.sampler = RandomSampler(dataset, generator=self.generator)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of `epoch`."""
        self.epoch = epoch
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.sampler:
            yield self.epoch, index

    def __len__(self) -> int:
        return len(self.sampler)


class SeededAugmentation(Dataset):
    """Wrap a training dataset so that item (epoch, index) draws its augmentation from a fixed seed.

    The wrapped dataset must draw its random crop and flip from torch's global generator.
    The generator's previous state is restored after each item.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        item_seed = int(np.random.SeedSequence((self.seed, epoch, index)).generate_state(1, np.uint64)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            return self.dataset[index]


def seed_worker(worker_id: int) -> None:
    """Seed Python's and numpy's generators in a DataLoader worker from its torch seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_train_loader(
    dataset: Dataset, batch_size: int, workers: int, seed: int, context: DistributedContext,
) -> tuple[DataLoader, EpochSampler]:
    """Build the training loader (drop_last, so no batch of one reaches BatchNorm) and its sampler."""
    sampler = EpochSampler(dataset, seed, context)
    loader = DataLoader(
        SeededAugmentation(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        **worker_options(workers, seed, context),
    )
    return loader, sampler


def make_eval_loader(dataset: Dataset, batch_size: int, workers: int, seed: int, context: DistributedContext) -> DataLoader:
    """Build a loader over every sample of `dataset` in stored order."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **worker_options(workers, seed, context))


def worker_options(workers: int, seed: int, context: DistributedContext) -> dict:
    """Return the DataLoader options for `workers` worker processes."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    options = {
        "num_workers": workers,
        "pin_memory": context.device.type == "cuda",
        "worker_init_fn": seed_worker,
        "generator": generator,
    }
    if workers > 0:
        options["persistent_workers"] = True
    return options
