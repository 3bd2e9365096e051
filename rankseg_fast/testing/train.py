"""Training-step workloads shared by the step benchmark and the step profiler: the recipes with their
overrides, and random crop-sized batches (a step's cost does not depend on the pixels)."""

from __future__ import annotations

import torch

# name -> (recipe, overrides, devices it is measured on)
TRAIN_WORKLOADS = {
    "synthetic": ("synthetic", [], ("cpu", "cuda")),
    "r50_ade512": ("ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml",
                   ["SOLVER.IMS_PER_BATCH=2", "MODEL.WEIGHTS="], ("cuda",)),
    "swinl_ade640_rankseg": (
        "ade20k/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640-rankseg.yaml",
        ["SOLVER.IMS_PER_BATCH=2", "MODEL.WEIGHTS="], ("cuda",)),
}


def random_batch(recipe, count: int, generator: torch.Generator) -> list[dict]:
    """`count` crop-sized samples with 3-12 random classes each (masks from a coarse random label map)."""
    size = recipe.INPUT.CROP.SIZE[0]
    num_classes = recipe.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    batch = []
    for _ in range(count):
        permutation = torch.randperm(num_classes, generator=generator)
        classes = permutation[: int(torch.randint(3, 13, (1,), generator=generator))]
        coarse = classes[torch.randint(len(classes), (size // 32, size // 32), generator=generator)]
        labels_map = coarse.repeat_interleave(32, 0).repeat_interleave(32, 1)
        labels = labels_map.unique()
        batch.append({"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator),
                      "labels": labels, "masks": labels_map[None] == labels[:, None, None], "gt_classes": labels})
    return batch
