"""A plain ``torch.utils.data`` loader: map-style dataset, infinite shuffled sampler per rank, list collate.

The batch is a ``list`` of per-sample dicts (format in :mod:`rankseg_fast.data.targets`), so any loader
producing the same dicts can replace this one.

Reproducibility: the training sampler yields ``(index, draw)`` pairs, ``draw`` being the place of the
sample in the global stream that all ranks share; the augmentation generator of a draw is seeded with
``(seed, 0, draw)``, so results depend neither on the number of workers nor on the number of processes
(N processes with batch b see exactly the samples and augmentations of one process with batch N*b), and a
resumed run (``start=position``) continues with exactly the same samples and augmentations.

Failure policy: in training an unreadable sample (missing/corrupt image or label) is logged with its file
name, counted (``SegmentationDataset.num_skipped`` in-process; ``TrainLoader.num_skipped`` across
workers) and replaced by the next index; in evaluation it raises.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rankseg_fast.data.datasets.ade20k import (
    ADE20KPanoptic,
    ADE20KSemantic,
    read_panoptic_png,
    read_semantic_label,
)
from rankseg_fast.data.image_io import ImageReadError, read_image
from rankseg_fast.data.targets import build_test_sample, build_train_sample
from rankseg_fast.data.transforms import AugSample, build_test_transform, build_train_transform, recipe_get

__all__ = [
    "SegmentationDataset",
    "InfiniteSampler",
    "InferenceSampler",
    "TrainLoader",
    "collate_samples",
    "build_dataset",
    "build_train_loader",
    "build_test_loader",
]

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_SKIPS = 100


def collate_samples(batch: list[dict]) -> list[dict]:
    """Keeps the per-sample dicts as they are (images of a test batch may differ in size)."""
    return list(batch)


def _read_arrays(record: dict, with_panoptic: bool):
    image = read_image(record["file_name"])
    sem = None
    if record.get("sem_seg_file_name"):
        sem = read_semantic_label(record["sem_seg_file_name"], record.get("sem_seg_offset", 0))
        if sem.shape != image.shape[:2]:
            raise ImageReadError(f"{record['sem_seg_file_name']}: label map is {sem.shape[1]}x{sem.shape[0]} "
                                 f"but image {record['file_name']} is {image.shape[1]}x{image.shape[0]}")
    pan = None
    if with_panoptic and record.get("pan_seg_file_name"):
        pan = read_panoptic_png(record["pan_seg_file_name"])
        if pan.shape[:2] != image.shape[:2]:
            raise ImageReadError(f"{record['pan_seg_file_name']}: panoptic PNG is {pan.shape[1]}x{pan.shape[0]} "
                                 f"but image {record['file_name']} is {image.shape[1]}x{image.shape[0]}")
    return image, sem, pan


class SegmentationDataset(Dataset):
    """Map-style dataset over records (dicts from the readers) with a transform and the target builder.

    ``training=True``: train transform (seeded per draw), targets, skip-on-unreadable.
    ``training=False``: test resize, image-level GT classes, unreadable files raise.
    Keys are an int index or an ``(index, draw)`` pair from :class:`InfiniteSampler`.
    """

    def __init__(self, records: Sequence[dict], transform, training: bool, seed: int = 0,
                 ignore_label: int = 255, num_classes: int = 150):
        if len(records) == 0:
            raise ValueError("SegmentationDataset: no records")
        self.records, self.transform, self.training = records, transform, training
        self.seed, self.ignore_label, self.num_classes = seed, ignore_label, num_classes
        self.num_skipped = 0
        self.skipped_files: list[str] = []

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int, draw: int | None) -> dict:
        record = dict(self.records[index])
        image, sem, pan = _read_arrays(record, with_panoptic=self.training)
        if record.get("height") is None:
            record["height"], record["width"] = image.shape[:2]
        sample = AugSample(image, sem, pan)
        if not self.training:
            sample = self.transform(sample, None)
            return build_test_sample(record, sample.image, sample.sem_seg, self.num_classes)
        # 0 tags sampler draws, 1 << 20 direct indexing (a dataset used without the sampler).
        key = [self.seed, 0, draw] if draw is not None else [self.seed, 1 << 20, index]
        sample = self.transform(sample, np.random.default_rng(key))
        return build_train_sample(record, sample.image, sample.sem_seg, sample.pan_seg, self.ignore_label)

    def __getitem__(self, key) -> dict:
        index, draw = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), None)
        if not self.training:
            return self._load(index, draw)
        skipped = []
        for _ in range(min(len(self), MAX_CONSECUTIVE_SKIPS)):
            try:
                out = self._load(index, draw)
                out["skipped"] = skipped
                return out
            except ImageReadError as error:
                self.num_skipped += 1
                self.skipped_files.append(self.records[index]["file_name"])
                skipped.append(str(error))
                logger.warning("skipping unreadable training sample %d (%s); %d skipped so far",
                               index, error, self.num_skipped)
                index = (index + 1) % len(self)
        raise RuntimeError(f"{len(skipped)} consecutive unreadable training samples; last: {skipped[-1]}")


class InfiniteSampler(Sampler):
    """detectron2's ``TrainingSampler``: an infinite stream of shuffled epochs (``torch.randperm`` from a
    generator seeded with ``seed``), dealt round-robin to ranks, so rank r gets stream items
    r, r + world_size, ... (disjoint shards, identical on every run). Yields ``(index, draw)`` with
    ``draw`` = rank + position * world_size the item's place in the global stream, ``position`` counting
    this rank's draws from 0; ``start`` (or ``load_state_dict``) resumes at a position. ``state_dict()``
    reports the draws handed out so far in this process (a DataLoader prefetches, so prefer
    ``iteration * batch_size`` as the resume position)."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 start: int = 0):
        if size <= 0:
            raise ValueError(f"InfiniteSampler: size must be positive, got {size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"InfiniteSampler: rank {rank} outside world_size {world_size}")
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, int(seed), rank, world_size, shuffle
        self.start = int(start)
        self.position = self.start

    def _stream(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            if self.shuffle:
                yield from torch.randperm(self.size, generator=g).tolist()
            else:
                yield from range(self.size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        first = self.rank + self.start * self.world_size
        stream = self._stream()
        # skip whole epochs without materialising them as Python ints
        g_epochs = first // self.size
        if self.shuffle and g_epochs:
            g = torch.Generator()
            g.manual_seed(self.seed)
            for _ in range(g_epochs):
                torch.randperm(self.size, generator=g)

            def rest():
                while True:
                    yield from torch.randperm(self.size, generator=g).tolist()

            stream = rest()
        else:
            g_epochs = 0
        first -= g_epochs * self.size
        position = self.start
        for index in itertools.islice(stream, first, None, self.world_size):
            self.position = position + 1
            yield index, self.rank + position * self.world_size
            position += 1

    def state_dict(self) -> dict:
        return {"seed": self.seed, "position": self.position, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"InfiniteSampler: state seed {state['seed']} != sampler seed {self.seed}")
        self.start = self.position = int(state["position"])


class InferenceSampler(Sampler):
    """Contiguous shard of ``range(size)`` for ``rank`` (detectron2's ``InferenceSampler``)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        shard = (size - 1) // world_size + 1 if size else 0
        self.indices = range(min(rank * shard, size), min((rank + 1) * shard, size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class TrainLoader:
    """Iterable over training batches (lists of sample dicts); counts skipped files across workers."""

    def __init__(self, loader: DataLoader, sampler: InfiniteSampler):
        self.loader, self.sampler = loader, sampler
        self.num_skipped = 0

    def __iter__(self):
        for batch in self.loader:
            for sample in batch:
                for message in sample.pop("skipped", ()):
                    self.num_skipped += 1
                    logger.warning("training loader skipped: %s (%d so far)", message, self.num_skipped)
            yield batch


def build_dataset(name: str, root=None):
    """Records of a registered dataset name: ``ade20k_sem_seg_{train,val}``, ``ade20k_panoptic_{train,val}``,
    ``synthetic_sem_seg_{train,val}``, ``synthetic_panoptic_{train,val}`` (generated on first use)."""
    split = name.rsplit("_", 1)[-1]
    if name.startswith("synthetic_"):
        from rankseg_fast.data.datasets.synthetic import generate_synthetic

        root = generate_synthetic(root)
    if name.startswith(("ade20k_sem_seg_", "synthetic_sem_seg_")):
        return ADE20KSemantic(root, split)
    if name.startswith(("ade20k_panoptic_", "synthetic_panoptic_")):
        return ADE20KPanoptic(root, split)
    raise ValueError(f"unknown dataset {name!r}; known: ade20k_sem_seg_*, ade20k_panoptic_*, synthetic_sem_seg_*, "
                     "synthetic_panoptic_*")


def build_train_loader(recipe, dataset: Sequence[dict], batch_size: int, num_workers: int | None = None,
                       seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0,
                       pin_memory: bool = False) -> TrainLoader:
    """Infinite loader of per-rank batches (``batch_size`` images per rank) with the recipe's train
    augmentation. ``start``: this rank's number of samples already consumed (resume). ``pin_memory``:
    batches arrive in page-locked memory (pinned by the loader's thread, off the training loop), so their
    copies to a GPU run asynchronously."""
    ignore = int(recipe_get(recipe, "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", 255))
    num_classes = int(recipe_get(recipe, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 150))
    if num_workers is None:
        num_workers = int(recipe_get(recipe, "DATALOADER.NUM_WORKERS", 0))
    data = SegmentationDataset(dataset, build_train_transform(recipe), True, seed, ignore, num_classes)
    sampler = InfiniteSampler(len(data), seed, rank, world_size, shuffle=True, start=start)
    # Its own generator: creating the iterator must not draw from the global RNG (a resumed run restores
    # that RNG and must continue exactly as the uninterrupted one).
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=collate_samples, persistent_workers=num_workers > 0, pin_memory=pin_memory,
                        prefetch_factor=2 if num_workers > 0 else None,
                        generator=torch.Generator().manual_seed(seed * 1000 + rank))
    return TrainLoader(loader, sampler)


def build_test_loader(recipe, dataset: Sequence[dict], num_workers: int | None = None, rank: int = 0,
                      world_size: int = 1, batch_size: int = 1) -> DataLoader:
    """Finite loader over this rank's contiguous shard, test-time resize; unreadable files raise."""
    num_classes = int(recipe_get(recipe, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 150))
    ignore = int(recipe_get(recipe, "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", 255))
    if num_workers is None:
        num_workers = int(recipe_get(recipe, "DATALOADER.NUM_WORKERS", 0))
    data = SegmentationDataset(dataset, build_test_transform(recipe), False, 0, ignore, num_classes)
    return DataLoader(data, batch_size=batch_size, sampler=InferenceSampler(len(data), rank, world_size),
                      num_workers=num_workers, collate_fn=collate_samples)
