"""`python -m rankseg_fast.predict RECIPE --weights FILE INPUT... --output DIR`

Runs a recipe's model on images (files or folders) at the reference test resolution and writes, per image:
`<stem>_sem.png` (semantic labels), `<stem>_pan.png` (COCO panoptic ids) with `panoptic.json`, instance
results in `instances.json` (COCO format, RLE), and `<stem>_overlay.png`. Unreadable images are reported
by name and skipped; the exit status is 1 if any was.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from rankseg_fast.checkpoint import load_model_zoo
from rankseg_fast.config import load_recipe
from rankseg_fast.data.datasets.metadata import DatasetMetadata, metadata_for
from rankseg_fast.data.image_io import ImageReadError, read_image, resize_shortest_edge, to_tensor
from rankseg_fast.data.prediction_files import (
    instance_records,
    overlay,
    save_panoptic,
    save_semantic_png,
    write_json,
)
from rankseg_fast.modeling.build import build_model

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def find_images(inputs: list[str]) -> list[Path]:
    """The image files named, and those inside named folders (recursively, sorted)."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)  # a missing or non-image file is reported when it is read
    return paths


def gt_classes_from_label_map(path: Path, num_classes: int) -> torch.Tensor:
    """Image-level GT classes of a detectron2-style label PNG (0..K-1, 255 ignored) for the -gt oracle."""
    labels = np.asarray(Image.open(path))
    present = np.unique(labels)
    return torch.from_numpy(present[present < num_classes].astype(np.int64))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rankseg_fast.predict", description=__doc__.splitlines()[2])
    parser.add_argument("recipe", help="a recipe name under recipes/ or a path to a YAML recipe")
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--weights", required=True, help="checkpoint: .pkl / .pth path, URL or zoo:NAME")
    parser.add_argument("--output", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gt", type=Path, help="folder of label PNGs <stem>.png (needed by -gt oracle recipes)")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="recipe overrides, e.g. --set INPUT.MIN_SIZE_TEST=512")
    return parser.parse_args(argv)


def predict_one(model, path: Path, recipe, metadata: DatasetMetadata, args, outputs: dict) -> None:
    image = read_image(path)
    resized = resize_shortest_edge(image, recipe.INPUT.MIN_SIZE_TEST, recipe.INPUT.MAX_SIZE_TEST)
    gt_classes = None
    if model.use_gt_oracle:
        label_path = (args.gt / path.stem).with_suffix(".png") if args.gt else None
        if label_path is None or not label_path.is_file():
            raise ImageReadError(f"{path}: the -gt oracle recipe needs its label map; pass --gt FOLDER with {path.stem}.png")
        gt_classes = [gt_classes_from_label_map(label_path, model.num_classes)]
    result = model([to_tensor(resized).to(args.device)], output_sizes=[image.shape[:2]], gt_classes=gt_classes)[0]
    colors = np.array(metadata.colors, dtype=np.uint8)
    shown = None
    if "sem_seg" in result:
        shown = save_semantic_png(result["sem_seg"], args.output / f"{path.stem}_sem.png")
    if "panoptic_seg" in result:
        panoptic, segments = result["panoptic_seg"]
        entry = save_panoptic(panoptic, segments, args.output / f"{path.stem}_pan.png")
        outputs["panoptic"].append({"image_id": path.stem, **entry})
        ids = panoptic.cpu().numpy()
        shown = np.zeros_like(ids)
        for segment in segments:  # colour panoptic segments by class
            shown[ids == segment["id"]] = segment["category_id"]
    if "instances" in result:
        outputs["instances"] += instance_records(result["instances"], path.stem)
    if shown is not None:
        Image.fromarray(overlay(image, shown, colors)).save(args.output / f"{path.stem}_overlay.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    datasets = list(recipe.DATASETS.TEST) or list(recipe.DATASETS.TRAIN)
    metadata = metadata_for(datasets[0])
    model = build_model(recipe).to(args.device)
    print(load_model_zoo(model, args.weights))
    paths = find_images(args.inputs)
    if not paths:
        print("predict: no images found in " + " ".join(args.inputs), file=sys.stderr)
        return 1
    args.output.mkdir(parents=True, exist_ok=True)
    outputs: dict = {"panoptic": [], "instances": []}
    failed = []
    for path in tqdm(paths, desc="predict", unit="img", disable=len(paths) < 2):
        try:
            predict_one(model, path, recipe, metadata, args, outputs)
        except ImageReadError as error:
            failed.append(str(error))
            tqdm.write(f"predict: skipped {error}", file=sys.stderr)
    if model.panoptic_on:
        write_json({"annotations": outputs["panoptic"]}, args.output / "panoptic.json")
    if model.instance_on:
        write_json(outputs["instances"], args.output / "instances.json")
    print(f"predict: wrote {len(paths) - len(failed)} of {len(paths)} images to {args.output}")
    if failed:
        print("predict: could not read:\n  " + "\n  ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
