"""Turning a list of images into one padded, normalised batch (detectron2's ImageList semantics)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def normalize_and_pad(
    images: list[torch.Tensor], pixel_mean: torch.Tensor, pixel_std: torch.Tensor, size_divisibility: int
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Normalises each image and zero-pads the batch at the bottom/right.

    Args:
        images: list of (3, H_i, W_i) RGB tensors on the 0-255 scale (uint8 or float).
        pixel_mean, pixel_std: (3, 1, 1).
        size_divisibility: the padded size is the batch's largest H, W rounded up to a multiple of it.
    Returns:
        (B, 3, H_pad, W_pad) float batch (padding is 0 after normalisation) and the unpadded (H_i, W_i).
    """
    if not images:
        raise ValueError("normalize_and_pad: got an empty list of images")
    for index, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image {index} must be a (3, H, W) RGB tensor, got {shape}")
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"image {index} is empty: shape {tuple(image.shape)}")
    sizes = [(int(image.shape[1]), int(image.shape[2])) for image in images]
    divisor = max(size_divisibility, 1)
    height = math.ceil(max(h for h, _ in sizes) / divisor) * divisor
    width = math.ceil(max(w for _, w in sizes) / divisor) * divisor
    batch = torch.stack([
        F.pad((image.to(pixel_mean.device, pixel_mean.dtype) - pixel_mean) / pixel_std,
              (0, width - w, 0, height - h))
        for image, (h, w) in zip(images, sizes)
    ])
    return batch, sizes
