"""`python -m rankseg_fast.evaluate RECIPE --weights FILE` and `python -m rankseg_fast.evaluate metrics ...`

``RECIPE --weights FILE [--set KEY=VALUE ...] [--device cuda|cpu] [--output FILE]``: loads the checkpoint
(strictly) into the recipe's model and evaluates it on the recipe's test datasets (mIoU/fwIoU/mACC/pACC,
PQ for panoptic recipes); with ``--set TEST.AUG.ENABLED=True`` also the multi-scale + flip metrics as
``<metric>_TTA``.

``metrics`` scores prediction files already on disk against ground truth in the official formats:

- ``metrics sem_seg --gt GT_DIR --pred PRED_DIR``: label PNGs (0..K-1, ignore 255; detectron2's
  ``annotations_detectron2`` layout) paired by file stem; a prediction may be named ``<stem>.png`` or
  ``<stem>_sem.png`` (what ``rankseg_fast.predict`` writes). Reports mIoU, fwIoU, mACC, pACC.
- ``metrics panoptic --gt-json --gt-dir --pred-json --pred-dir``: COCO panoptic PNG + JSON (panopticapi's
  ``pq_compute`` inputs), paired by ``image_id``; categories always come from the GT JSON, so a prediction
  JSON without ``categories`` (``rankseg_fast.predict``'s ``panoptic.json``) is accepted. Reports PQ/SQ/RQ.

Prints a table; ``--output FILE`` also writes the metrics as JSON. Input problems (missing prediction,
size mismatch, unreadable file) are reported by file name with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from rankseg_fast.engine.metrics import MIOU_RULES, PanopticEvaluator, SemSegEvaluator, rgb_to_id


class EvaluationInputError(ValueError):
    """A ground-truth or prediction file is missing, unreadable or inconsistent."""


# -- file reading ------------------------------------------------------------------------------------------


def _read_png(path: Path, what: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except (OSError, ValueError) as e:
        raise EvaluationInputError(f"cannot read {what} {path}: {e}") from e


def _read_label_png(path: Path, what: str) -> np.ndarray:
    labels = _read_png(path, what)
    if labels.ndim != 2:
        raise EvaluationInputError(
            f"{what} {path} is not a single-channel label image (shape {labels.shape})"
        )
    return labels


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise EvaluationInputError(f"cannot read {what} {path}: {e}") from e


# -- sem_seg ---------------------------------------------------------------------------------------------


def find_semantic_prediction(pred_dir: Path, stem: str) -> Path | None:
    """``<stem>.png`` or ``<stem>_sem.png`` in pred_dir (the first that exists), else None."""
    for name in (f"{stem}.png", f"{stem}_sem.png"):
        if (pred_dir / name).is_file():
            return pred_dir / name
    return None


def sem_seg_metrics(
    gt_dir: Path, pred_dir: Path, num_classes: int, ignore_label: int = 255, miou_rule: str = "gt_or_pred"
) -> dict[str, float]:
    """Scores every ``*.png`` of gt_dir against its prediction in pred_dir."""
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for d, what in ((gt_dir, "GT folder"), (pred_dir, "prediction folder")):
        if not d.is_dir():
            raise EvaluationInputError(f"{what} {d} does not exist")
    gt_files = sorted(gt_dir.glob("*.png"))
    if not gt_files:
        raise EvaluationInputError(f"GT folder {gt_dir} has no .png files")
    evaluator = SemSegEvaluator(num_classes, ignore_label, miou_rule, _class_names(num_classes))
    for gt_path in gt_files:
        pred_path = find_semantic_prediction(pred_dir, gt_path.stem)
        if pred_path is None:
            raise EvaluationInputError(
                f"no prediction for GT {gt_path.name}: expected {gt_path.stem}.png or {gt_path.stem}_sem.png "
                f"in {pred_dir}"
            )
        gt = _read_label_png(gt_path, "GT")
        pred = _read_label_png(pred_path, "prediction")
        if gt.shape != pred.shape:
            raise EvaluationInputError(
                f"prediction {pred_path.name} is {pred.shape[1]}x{pred.shape[0]} (WxH) "
                f"but GT {gt_path.name} is {gt.shape[1]}x{gt.shape[0]}"
            )
        try:
            evaluator.process(pred, gt)
        except ValueError as e:
            raise EvaluationInputError(f"{pred_path.name} / {gt_path.name}: {e}") from e
    return evaluator.evaluate()


def _class_names(num_classes: int) -> list[str] | None:
    from rankseg_fast.data.datasets.ade20k_categories import ADE20K_CATEGORIES

    if num_classes == len(ADE20K_CATEGORIES):
        return [c.name for c in ADE20K_CATEGORIES]
    return None


# -- panoptic ----------------------------------------------------------------------------------------------


def panoptic_metrics(gt_json: Path, gt_dir: Path, pred_json: Path, pred_dir: Path) -> dict:
    """panopticapi ``pq_compute`` over the GT JSON's annotations (every GT image needs a prediction)."""
    gt_data = _read_json(gt_json, "GT JSON")
    pred_data = _read_json(pred_json, "prediction JSON")
    for data, path, keys in (
        (gt_data, gt_json, ("annotations", "categories")),
        (pred_data, pred_json, ("annotations",)),
    ):
        missing = [k for k in keys if k not in data]
        if missing:
            raise EvaluationInputError(f"{path} has no {', '.join(repr(k) for k in missing)}")
    for d, what in ((gt_dir, "GT folder"), (pred_dir, "prediction folder")):
        if not Path(d).is_dir():
            raise EvaluationInputError(f"{what} {d} does not exist")
    evaluator = PanopticEvaluator(gt_data["categories"])
    predictions = {ann["image_id"]: ann for ann in pred_data["annotations"]}
    for gt_ann in gt_data["annotations"]:
        image_id = gt_ann["image_id"]
        if image_id not in predictions:
            raise EvaluationInputError(f"no prediction for the image with id {image_id!r} in {pred_json}")
        pred_ann = predictions[image_id]
        gt_ids = _read_panoptic_png(Path(gt_dir) / gt_ann["file_name"], "GT")
        pred_path = Path(pred_dir) / pred_ann["file_name"]
        pred_ids = _read_panoptic_png(pred_path, "prediction")
        if gt_ids.shape != pred_ids.shape:
            raise EvaluationInputError(
                f"prediction {pred_path.name} is {pred_ids.shape[1]}x{pred_ids.shape[0]} (WxH) but GT "
                f"{gt_ann['file_name']} is {gt_ids.shape[1]}x{gt_ids.shape[0]}"
            )
        try:
            evaluator.process(pred_ids, pred_ann["segments_info"], gt_ids, gt_ann["segments_info"], image_id)
        except (KeyError, ValueError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise EvaluationInputError(f"{pred_path.name}: {message}") from e
    return evaluator.evaluate()


def _read_panoptic_png(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise EvaluationInputError(f"{what} panoptic PNG {path} does not exist")
    rgb = _read_png(path, what)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise EvaluationInputError(f"{what} {path} is not an RGB panoptic PNG (shape {rgb.shape})")
    return rgb_to_id(rgb[..., :3])


# -- printing ----------------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return "  nan" if isinstance(v, float) and math.isnan(v) else f"{v:5.2f}"


def format_sem_seg(results: dict[str, float], per_class: bool) -> str:
    lines = [
        "  mIoU   fwIoU   mACC   pACC",
        "  ".join(_fmt(results[k]) for k in ("mIoU", "fwIoU", "mACC", "pACC")),
    ]
    if per_class:
        names = [k[len("IoU-") :] for k in results if k.startswith("IoU-")]
        width = max(len(n) for n in names)
        lines += ["", f"{'class':{width}s}    IoU    ACC"]
        lines += [f"{n:{width}s}  {_fmt(results['IoU-' + n])}  {_fmt(results['ACC-' + n])}" for n in names]
    return "\n".join(lines)


def format_panoptic(results: dict) -> str:
    lines = [f"{'':10s}|    PQ     SQ     RQ     N", "-" * 38]
    for name in ("All", "Things", "Stuff"):
        r = results[name]
        lines.append(f"{name:10s}| {_fmt(r['PQ'])}  {_fmt(r['SQ'])}  {_fmt(r['RQ'])}  {r['N']:4d}")
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rankseg_fast.evaluate", description=__doc__.splitlines()[2]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     description="or: RECIPE --weights FILE (see the module docstring)")

    metrics = commands.add_parser("metrics", help="score prediction files on disk against ground truth")
    tasks = metrics.add_subparsers(dest="task", required=True, metavar="TASK")

    sem = tasks.add_parser("sem_seg", help="mIoU / fwIoU / mACC / pACC of label PNGs")
    sem.add_argument("--gt", required=True, type=Path, help="folder of GT label PNGs (0..K-1, ignore 255)")
    sem.add_argument(
        "--pred", required=True, type=Path, help="folder of <stem>.png or <stem>_sem.png predictions"
    )
    sem.add_argument("--num-classes", type=int, default=150, help="K (default 150, ADE20K)")
    sem.add_argument("--ignore-label", type=int, default=255)
    sem.add_argument(
        "--miou-rule",
        choices=MIOU_RULES,
        default="gt_or_pred",
        help="gt_or_pred: detectron2 v0.6 (Mask2Former's numbers, default); "
        "gt_only: detectron2 after 2022-07",
    )
    sem.add_argument("--per-class", action="store_true", help="also print per-class IoU and accuracy")
    sem.add_argument("--output", type=Path, help="write the metrics to this JSON file")

    pan = tasks.add_parser("panoptic", help="PQ / SQ / RQ of COCO panoptic PNG + JSON predictions")
    pan.add_argument("--gt-json", required=True, type=Path, help="COCO panoptic GT JSON (with categories)")
    pan.add_argument("--gt-dir", required=True, type=Path, help="folder of GT panoptic PNGs")
    pan.add_argument(
        "--pred-json", required=True, type=Path, help="prediction JSON (e.g. predict's panoptic.json)"
    )
    pan.add_argument("--pred-dir", required=True, type=Path, help="folder of predicted panoptic PNGs")
    pan.add_argument("--output", type=Path, help="write the metrics to this JSON file")
    return parser


def run_metrics(args: argparse.Namespace) -> dict:
    if args.task == "sem_seg":
        results = sem_seg_metrics(args.gt, args.pred, args.num_classes, args.ignore_label, args.miou_rule)
        print(format_sem_seg(results, args.per_class))
    else:
        results = panoptic_metrics(args.gt_json, args.gt_dir, args.pred_json, args.pred_dir)
        print(format_panoptic(results))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({args.task: results}, indent=1))
    return results


def evaluate_recipe(argv: list[str]) -> dict:
    """`RECIPE --weights FILE`: the recipe's model with the checkpoint, on the recipe's test datasets."""
    import torch

    from rankseg_fast.checkpoint import load_model_zoo
    from rankseg_fast.config import load_recipe
    from rankseg_fast.data.datasets.metadata import metadata_for
    from rankseg_fast.data.loader import build_dataset, build_test_loader
    from rankseg_fast.engine.evaluation import evaluate_model
    from rankseg_fast.modeling.build import build_model
    from rankseg_fast.modeling.test_time_augmentation import build_tta

    parser = argparse.ArgumentParser(prog="python -m rankseg_fast.evaluate RECIPE")
    parser.add_argument("recipe", help="a recipe name under recipes/ or a YAML path")
    parser.add_argument("--weights", required=True, help="checkpoint: .pkl / .pth path, URL or zoo:NAME")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, help="write the metrics to this JSON file")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    model = build_model(recipe).to(args.device)
    print(load_model_zoo(model, args.weights))
    results = {}
    for name in recipe.DATASETS.TEST:
        loader = build_test_loader(recipe, build_dataset(name))
        metrics = evaluate_model(model, loader, metadata_for(name), torch.device(args.device))
        tta = build_tta(model, recipe)
        if tta is not None:
            augmented = evaluate_model(model, loader, metadata_for(name), torch.device(args.device), tta)
            metrics.update({f"{k}_TTA": v for k, v in augmented.items()})
        results[name] = metrics
        print(name + ": " + ", ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=1))
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in ("metrics", "-h", "--help"):
        evaluate_recipe(argv)
        return 0
    args = build_parser().parse_args(argv)
    try:
        if args.command == "metrics":
            run_metrics(args)
    except EvaluationInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
