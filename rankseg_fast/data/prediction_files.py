"""Writing predictions in the official formats: semantic PNGs, COCO panoptic PNG + JSON, instance JSON
(COCO results with RLE masks), and overlay pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def save_semantic_png(sem_seg: torch.Tensor, path: Path) -> np.ndarray:
    """sem_seg (K, H, W) scores -> argmax label PNG (uint8 for K <= 256, else uint16). Returns the labels."""
    labels = sem_seg.argmax(0).cpu().numpy()
    labels = labels.astype(np.uint8 if sem_seg.shape[0] <= 256 else np.uint16)
    Image.fromarray(labels).save(path)
    return labels


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """COCO panoptic colour code: id = R + 256 G + 256^2 B."""
    ids = ids.astype(np.uint32)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colours (H, W, 3) -> segment ids (H, W) int64: id = R + 256 G + 256^2 B."""
    rgb = np.asarray(rgb).astype(np.int64)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def save_panoptic(panoptic_seg: torch.Tensor, segments_info: list[dict], path: Path) -> dict:
    """Writes the (H, W) segment-id map as a COCO panoptic PNG; returns its annotation entry (without
    image_id) with segments_info as the COCO panoptic prediction format wants it."""
    Image.fromarray(id_to_rgb(panoptic_seg.cpu().numpy())).save(path)
    segments = [{"id": int(s["id"]), "category_id": int(s["category_id"]), "isthing": bool(s["isthing"])}
                for s in segments_info]
    return {"file_name": path.name, "segments_info": segments}


def instance_records(instances: dict, image_id: str) -> list[dict]:
    """COCO instance results (RLE masks) of one image."""
    from pycocotools import mask as mask_utils  # optional: only the instance output needs it

    masks = instances["pred_masks"].cpu().numpy().astype(np.uint8)
    records = []
    for mask, score, label in zip(masks, instances["scores"].tolist(), instances["pred_classes"].tolist()):
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("utf-8")
        records.append({"image_id": image_id, "category_id": int(label), "score": float(score), "segmentation": rle})
    return records


def overlay(image: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends a colour per label over an (H, W, 3) uint8 image; colors (N, 3) uint8 indexed by label."""
    painted = colors[labels % len(colors)]
    return (image * (1 - alpha) + painted * alpha).round().astype(np.uint8)


def write_json(obj, path: Path) -> None:
    """Writes JSON atomically (temporary file + rename), so an interrupted run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)
