"""Readers of the official ADE20K on-disk layouts (fact sheet §7.1, §7.2).

Semantic (``ade20k_sem_seg_*``)::

    ADEChallengeData2016/images/{training,validation}/<stem>.jpg
    ADEChallengeData2016/annotations_detectron2/{training,validation}/<stem>.png   (0..149, 255 ignore)
    ADEChallengeData2016/annotations/{training,validation}/<stem>.png              (raw: 0 other, 1..150)

``annotations_detectron2/`` (written by the reference ``prepare_ade20k_sem_seg.py``) is read when it
exists; otherwise the raw ``annotations/`` are read and shifted on the fly (``label - 1`` in uint8
arithmetic: 0 -> 255, 1..150 -> 0..149).

Panoptic (``ade20k_panoptic_*``, as written by the reference ``prepare_ade20k_pan_seg.py``)::

    ADEChallengeData2016/ade20k_panoptic_{train,val}.json
    ADEChallengeData2016/ade20k_panoptic_{train,val}/<stem>.png   (RGB-encoded segment ids)

plus the semantic PNGs above. A sample is a plain dict: ``file_name``, ``image_id``, ``height``,
``width`` (None for semantic listings; filled when the image is read), ``sem_seg_file_name``,
``sem_seg_offset`` (1 for raw annotations, 0 otherwise) and, for panoptic, ``pan_seg_file_name`` and
``segments_info`` (``id``, ``category_id`` contiguous, ``iscrowd``, ``isthing``, ``area``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from rankseg_fast.data.image_io import ImageReadError
from rankseg_fast.data.prediction_files import rgb_to_id

__all__ = [
    "DatasetLayoutError",
    "ADE20KSemantic",
    "ADE20KPanoptic",
    "ade20k_root",
    "read_semantic_label",
    "read_panoptic_ids",
]

logger = logging.getLogger(__name__)

ADE_DIRNAME = "ADEChallengeData2016"
_SEM_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
_PAN_SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val"}

_SEMANTIC_LAYOUT = (
    "expected <root>/images/{training,validation}/*.jpg with "
    "<root>/annotations_detectron2/{training,validation}/*.png (or raw <root>/annotations/...)"
)
_PANOPTIC_LAYOUT = (
    "expected <root>/ade20k_panoptic_{train,val}.json, <root>/ade20k_panoptic_{train,val}/*.png and "
    "<root>/images/{training,validation}/*.jpg (run the reference prepare_ade20k_pan_seg.py)"
)


class DatasetLayoutError(FileNotFoundError):
    """A dataset root or one of its required files/folders is missing or malformed."""


def ade20k_root(root: str | os.PathLike | None = None) -> Path:
    """The ``ADEChallengeData2016`` folder: ``root`` if given, else ``$RANKSEG_FAST_DATASETS`` or
    ``$DETECTRON2_DATASETS`` (default ``./datasets``) + ``/ADEChallengeData2016``."""
    if root is not None:
        return Path(root)
    base = os.environ.get("RANKSEG_FAST_DATASETS") or os.environ.get("DETECTRON2_DATASETS") or "datasets"
    return Path(base) / ADE_DIRNAME


def _split(split: str, table: dict[str, str]) -> str:
    if split not in table:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(set(table))}")
    return table[split]


def _require_dir(path: Path, layout: str) -> None:
    if not path.is_dir():
        raise DatasetLayoutError(f"{path}: no such directory; {layout}")


def read_semantic_label(path: str | os.PathLike, offset: int = 0) -> np.ndarray:
    """(H, W) uint8 label map; ``offset`` is subtracted with uint8 wrap-around (raw ADE: 1).
    Raises ImageReadError naming the file when it is missing or unreadable."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise ImageReadError(f"{path}: a label map must be single-channel, got PIL mode {image.mode}")
            label = np.asarray(image)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file (semantic label map)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageReadError):
            raise
        raise ImageReadError(f"{path}: cannot be read as a label map ({error})") from None
    label = label.astype(np.uint8) if label.dtype != np.uint8 else label.copy()
    if offset:
        label = (label.astype(np.int16) - offset).astype(np.uint8)  # uint8 wrap: 0 - 1 -> 255
    return label


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB panoptic PNG; ImageReadError names the file otherwise."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB")).copy()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file (panoptic PNG)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{path}: cannot be read as a panoptic PNG ({error})") from None


def read_panoptic_ids(path: str | os.PathLike) -> np.ndarray:
    """(H, W) int32 segment ids of a panoptic PNG."""
    return rgb_to_id(read_panoptic_png(path))


def _stems(folder: Path, ext: str) -> dict[str, Path]:
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() == ext and p.is_file()}


class ADE20KSemantic:
    """(image, label) pairs of ``ADEChallengeData2016`` for one split, paired by file stem, sorted."""

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train"):
        self.root = ade20k_root(root)
        sub = _split(split, _SEM_SPLITS)
        self.split = sub
        _require_dir(self.root, _SEMANTIC_LAYOUT)
        image_dir = self.root / "images" / sub
        _require_dir(image_dir, _SEMANTIC_LAYOUT)
        prepared, raw = self.root / "annotations_detectron2" / sub, self.root / "annotations" / sub
        if prepared.is_dir():
            label_dir, offset = prepared, 0
        elif raw.is_dir():
            label_dir, offset = raw, 1
        else:
            raise DatasetLayoutError(f"{prepared}: no such directory (nor {raw}); {_SEMANTIC_LAYOUT}")
        self.label_dir, self.label_offset = label_dir, offset
        images, labels = _stems(image_dir, ".jpg"), _stems(label_dir, ".png")
        common = sorted(images.keys() & labels.keys())
        for name, missing, where in (("labels", images.keys() - labels.keys(), label_dir),
                                     ("images", labels.keys() - images.keys(), image_dir)):
            if missing:
                shown = ", ".join(sorted(missing)[:5])
                logger.warning("%d %s missing in %s (e.g. %s); those samples are left out", len(missing), name,
                               where, shown)
        if not common:
            raise DatasetLayoutError(f"{image_dir} and {label_dir}: no (image .jpg, label .png) pairs; "
                                     f"{_SEMANTIC_LAYOUT}")
        self.samples = [
            {
                "file_name": str(images[s]),
                "image_id": s,
                "height": None,
                "width": None,
                "sem_seg_file_name": str(labels[s]),
                "sem_seg_offset": offset,
            }
            for s in common
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


class ADE20KPanoptic:
    """ADE20K panoptic records (JSON + RGB-id PNGs + semantic PNGs) for one split, in JSON order."""

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train"):
        self.root = ade20k_root(root)
        pan = _split(split, _PAN_SPLITS)
        sem = _split(split, _SEM_SPLITS)
        self.split = sem
        _require_dir(self.root, _PANOPTIC_LAYOUT)
        json_file = self.root / f"ade20k_panoptic_{pan}.json"
        pan_dir = self.root / f"ade20k_panoptic_{pan}"
        image_dir = self.root / "images" / sem
        if not json_file.is_file():
            raise DatasetLayoutError(f"{json_file}: no such file; {_PANOPTIC_LAYOUT}")
        _require_dir(pan_dir, _PANOPTIC_LAYOUT)
        _require_dir(image_dir, _PANOPTIC_LAYOUT)
        prepared, raw = self.root / "annotations_detectron2" / sem, self.root / "annotations" / sem
        sem_dir, offset = (prepared, 0) if prepared.is_dir() else (raw, 1) if raw.is_dir() else (None, 0)
        try:
            with open(json_file, encoding="utf-8") as f:
                data = json.load(f)
            categories = sorted(data["categories"], key=lambda c: c["id"])
            annotations = data["annotations"]
            images = {img["id"]: img for img in data.get("images", [])}
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DatasetLayoutError(f"{json_file}: not an ADE20K panoptic JSON ({error!r}); "
                                     f"{_PANOPTIC_LAYOUT}") from None
        self.contiguous_id = {c["id"]: i for i, c in enumerate(categories)}
        isthing = {c["id"]: bool(c.get("isthing", 0)) for c in categories}
        self.categories = categories
        self.samples = []
        for ann in annotations:
            stem = os.path.splitext(ann["file_name"])[0]
            info = images.get(ann["image_id"], {})
            self.samples.append({
                "file_name": str(image_dir / f"{stem}.jpg"),
                "image_id": ann["image_id"],
                "height": info.get("height"),
                "width": info.get("width"),
                "sem_seg_file_name": str(sem_dir / ann["file_name"]) if sem_dir is not None else None,
                "sem_seg_offset": offset,
                "pan_seg_file_name": str(pan_dir / ann["file_name"]),
                "segments_info": [
                    {
                        "id": int(s["id"]),
                        "category_id": self.contiguous_id[s["category_id"]],
                        "iscrowd": int(s.get("iscrowd", 0)),
                        "isthing": isthing[s["category_id"]],
                        "area": int(s.get("area", 0)),
                    }
                    for s in ann["segments_info"]
                ],
            })
        if not self.samples:
            raise DatasetLayoutError(f"{json_file}: no annotations; {_PANOPTIC_LAYOUT}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]
