"""Per-dataset metadata the model and the writers need: class names, thing classes, colours."""

from __future__ import annotations

from dataclasses import dataclass

from rankseg_fast.data.datasets.ade20k_categories import ADE20K_CLASS_NAMES, ADE20K_COLORS, ADE20K_THING_IDS
from rankseg_fast.data.datasets.synthetic_categories import (
    SYNTHETIC_CLASS_NAMES,
    SYNTHETIC_COLORS,
    SYNTHETIC_THING_IDS,
)


@dataclass(frozen=True)
class DatasetMetadata:
    class_names: tuple[str, ...]
    thing_ids: tuple[int, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_label: int = 255


ADE20K_SEMANTIC = DatasetMetadata(ADE20K_CLASS_NAMES, (), ADE20K_COLORS)
ADE20K_PANOPTIC = DatasetMetadata(ADE20K_CLASS_NAMES, ADE20K_THING_IDS, ADE20K_COLORS)
SYNTHETIC_SEMANTIC = DatasetMetadata(SYNTHETIC_CLASS_NAMES, (), SYNTHETIC_COLORS)
SYNTHETIC_PANOPTIC = DatasetMetadata(SYNTHETIC_CLASS_NAMES, SYNTHETIC_THING_IDS, SYNTHETIC_COLORS)


def metadata_for(dataset_name: str) -> DatasetMetadata:
    """Metadata of a registered dataset name (e.g. `ade20k_sem_seg_val`, `ade20k_panoptic_val`)."""
    if dataset_name.startswith("ade20k_panoptic"):
        return ADE20K_PANOPTIC
    if dataset_name.startswith("ade20k_sem_seg"):
        return ADE20K_SEMANTIC
    if dataset_name.startswith("synthetic_panoptic"):
        return SYNTHETIC_PANOPTIC
    if dataset_name.startswith("synthetic_sem_seg"):
        return SYNTHETIC_SEMANTIC
    raise ValueError(f"no metadata for dataset {dataset_name!r}; known: ade20k_sem_seg_*, ade20k_panoptic_*")
