"""Multi-scale + horizontal-flip test-time augmentation for semantic segmentation, with the reference
semantics (Mask2Former's `SemanticSegmentorWithTTA` on detectron2's `DatasetMapperTTA`):

- the augmented inputs are made from the ALREADY test-resized uint8 image (not the original file): for
  each size in `TEST.AUG.MIN_SIZES`, ResizeShortestEdge(size, `TEST.AUG.MAX_SIZE`) with PIL bilinear, and
  with `TEST.AUG.FLIP` also that resize followed by a horizontal flip (6 sizes x 2 = 12 inputs for ADE);
- every input goes through the plain model, which resizes its `sem_seg` to the original (H0, W0);
  predictions of flipped inputs are flipped back along the width;
- the score maps are summed in the reference order (size by size, unflipped before flipped) and divided by
  the number of inputs. Only `sem_seg` is produced (no panoptic/instance TTA).

The unflipped and flipped inputs of one size have the same shape, so they run as one batch of two (the
padding is identical; only the batching differs from the reference's one-image calls).

With RankSeg the reference's extra multi-label evaluator would fail on TTA outputs (they carry no
`multilabel` field); here TTA simply produces `sem_seg` for any model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rankseg_fast.data.image_io import resize_shortest_edge, to_tensor


class SemanticTTA:
    """Wraps an eval-mode image model (`inference(images, output_sizes, gt_classes)` -> dicts with
    `sem_seg` (K, H0, W0)).

    Args:
        model: the model (its `inference` is called; it should be in eval mode).
        min_sizes: the short-side sizes (TEST.AUG.MIN_SIZES).
        max_size: the long-side cap (TEST.AUG.MAX_SIZE).
        flip: also run the horizontally flipped input of every size (TEST.AUG.FLIP).
    """

    def __init__(self, model, min_sizes: Sequence[int], max_size: int, flip: bool = True):
        min_sizes = [int(s) for s in min_sizes]
        if not min_sizes or any(s <= 0 for s in min_sizes):
            raise ValueError(f"SemanticTTA: min_sizes must be a non-empty list of positive sizes, got {min_sizes}")
        if int(max_size) <= 0:
            raise ValueError(f"SemanticTTA: max_size must be positive, got {max_size}")
        self.model = model
        self.min_sizes = min_sizes
        self.max_size = int(max_size)
        self.flip = bool(flip)

    @classmethod
    def from_recipe(cls, model, recipe) -> "SemanticTTA":
        """From the recipe's TEST.AUG.{MIN_SIZES, MAX_SIZE, FLIP} (ENABLED is the caller's business)."""
        aug = recipe["TEST"]["AUG"]
        return cls(model, aug["MIN_SIZES"], aug["MAX_SIZE"], aug["FLIP"])

    @property
    def num_inputs(self) -> int:
        return len(self.min_sizes) * (2 if self.flip else 1)

    def augmented_images(self, image: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per size, [resized] or [resized, resized-then-flipped], as (3, h, w) uint8 tensors on the
        image's device."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"SemanticTTA: expected a (3, H, W) image, got shape {tuple(image.shape)}")
        if image.dtype != torch.uint8:
            raise ValueError(f"SemanticTTA: expected a uint8 image (the test-resized input), got {image.dtype}")
        array = image.detach().cpu().permute(1, 2, 0).numpy()
        groups = []
        for size in self.min_sizes:
            resized = to_tensor(resize_shortest_edge(array, size, self.max_size)).to(image.device)
            groups.append([resized, resized.flip(-1)] if self.flip else [resized])
        return groups

    @torch.no_grad()
    def __call__(
        self, image: torch.Tensor, output_size: tuple[int, int], gt_classes: torch.Tensor | None = None
    ) -> dict:
        """image: (3, H, W) uint8, already test-resized; output_size: the original (H0, W0); gt_classes:
        the image's GT class ids (only for the "-gt" oracle). Returns {"sem_seg": (K, H0, W0)}."""
        output_size = (int(output_size[0]), int(output_size[1]))
        total = None
        count = 0
        for group in self.augmented_images(image):
            gts = [gt_classes] * len(group) if gt_classes is not None else None
            results = self.model.inference(group, [output_size] * len(group), gts)
            for index, result in enumerate(results):
                sem_seg = result["sem_seg"]
                if index == 1:  # the flipped input: flip its prediction back
                    sem_seg = sem_seg.flip(-1)
                total = sem_seg.clone() if total is None else total.add_(sem_seg)
                count += 1
        return {"sem_seg": total / count}


def build_tta(model, recipe) -> SemanticTTA | None:
    """The recipe's test-time augmentation around `model`, or None when TEST.AUG.ENABLED is off."""
    return SemanticTTA.from_recipe(model, recipe) if recipe["TEST"]["AUG"]["ENABLED"] else None
