"""Evaluation metrics: semantic (detectron2 SemSegEvaluator), panoptic (panopticapi pq_compute), instance
(pycocotools), and the `python -m rankseg_fast.evaluate metrics` command line — on hand-made cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from rankseg_fast.data.prediction_files import id_to_rgb
from rankseg_fast.engine.metrics import PanopticEvaluator, SemSegEvaluator
from rankseg_fast.evaluate import main

# -- semantic ----------------------------------------------------------------------------------------------

# 3 classes; one GT pixel ignored (255). Valid (pred, gt) pairs: class 0 has 4 GT pixels, 2 predicted
# right, 1 predicted as 1, 1 predicted as 2; class 1 has 3 GT pixels, all right, plus 1 extra prediction;
# class 2 has no GT pixel but one prediction (a predicted-only class); the ignored pixel is predicted 2.
SEM_GT = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
SEM_PRED = np.array([[0, 1, 1, 1], [0, 2, 1, 2]])


def test_sem_seg_both_miou_rules_and_other_metrics_by_hand():
    # IoU0 = 2 / (4 + 2 - 2) = 0.5, IoU1 = 3 / (3 + 4 - 3) = 0.75, class 2 has no GT -> no IoU.
    for rule, miou in (("gt_only", (0.5 + 0.75) / 2), ("gt_or_pred", (0.5 + 0.75) / 3)):
        ev = SemSegEvaluator(3, miou_rule=rule, class_names=["a", "b", "c"])
        ev.process(SEM_PRED, SEM_GT)
        r = ev.evaluate()
        assert r["mIoU"] == pytest.approx(100 * miou)
        assert r["fwIoU"] == pytest.approx(100 * (4 / 7 * 0.5 + 3 / 7 * 0.75))
        assert r["mACC"] == pytest.approx(100 * (0.5 + 1.0) / 2)
        assert r["pACC"] == pytest.approx(100 * 5 / 7)
        assert r["IoU-a"] == pytest.approx(50.0) and r["IoU-b"] == pytest.approx(75.0)
        assert math.isnan(r["IoU-c"]) and math.isnan(r["ACC-c"])


def test_sem_seg_predictions_on_ignore_pixels_do_not_count():
    pred = SEM_PRED.copy()
    pred[1, 1] = 0  # now class 2 is predicted only on the ignored pixel
    results = {}
    for rule in ("gt_only", "gt_or_pred"):
        ev = SemSegEvaluator(3, miou_rule=rule)
        ev.process(pred, SEM_GT)
        results[rule] = ev.evaluate()
    # IoU0 = 3 / 4, IoU1 = 3 / 4; the ignored pixel's class-2 prediction is neither FP nor "present"
    assert results["gt_only"]["mIoU"] == pytest.approx(75.0)
    assert results["gt_or_pred"]["mIoU"] == pytest.approx(75.0)
    assert results["gt_only"]["pACC"] == pytest.approx(100 * 6 / 7)
    ev = SemSegEvaluator(3)
    ev.process(pred, SEM_GT)
    assert ev.confusion.shape == (4, 4) and ev.confusion[2, 3] == 1  # counted in the dropped column only


def test_sem_seg_accumulates_over_images_torch_numpy_and_merge():
    a = SemSegEvaluator(3)
    a.process(torch.from_numpy(SEM_PRED), torch.from_numpy(SEM_GT))
    a.process(SEM_GT.clip(0, 2), SEM_GT)
    b1, b2 = SemSegEvaluator(3), SemSegEvaluator(3)
    b1.process(SEM_PRED, SEM_GT)
    b2.process(SEM_GT.clip(0, 2), SEM_GT)
    b1.merge(b2)
    np.testing.assert_array_equal(a.confusion, b1.confusion)
    assert a.confusion.dtype == np.int64 and a.confusion.sum() == 16
    assert a.evaluate() == pytest.approx(b1.evaluate(), nan_ok=True)
    a.reset()
    assert a.confusion.sum() == 0


def test_sem_seg_rejects_bad_inputs():
    ev = SemSegEvaluator(3)
    with pytest.raises(ValueError, match="equal size"):
        ev.process(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match=r"pred_labels has values \[3\]"):
        ev.process(np.full((2, 2), 3), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match=r"gt has values \[7\]"):
        ev.process(np.zeros((2, 2), int), np.full((2, 2), 7))
    with pytest.raises(ValueError, match="miou_rule"):
        SemSegEvaluator(3, miou_rule="mean")


# -- panoptic ----------------------------------------------------------------------------------------------

CATS = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "wall", "isthing": 0},
    {"id": 3, "name": "car", "isthing": 1},
]


def pq_of(pred, pred_segs, gt, gt_segs, categories=CATS):
    ev = PanopticEvaluator(categories)
    ev.process(np.asarray(pred), pred_segs, np.asarray(gt), gt_segs)
    return ev.evaluate(), ev


def test_pq_perfect_match_and_things_stuff_split():
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    segs = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 2}]
    r, _ = pq_of(gt, segs, gt, segs)
    for group, n in (("All", 2), ("Things", 1), ("Stuff", 1)):
        assert r[group] == {"PQ": 100.0, "SQ": 100.0, "RQ": 100.0, "N": n}
    # category 3 has no TP/FP/FN: left out of the averages, 0 in per_class
    assert r["per_class"][3] == {"PQ": 0.0, "SQ": 0.0, "RQ": 0.0}


def test_pq_iou_exactly_half_is_not_a_match():
    gt = np.array([[1, 1, 1, 1], [2, 2, 2, 2]])
    gt_segs = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 2}]
    pred = np.array([[7, 7, 8, 8], [8, 8, 8, 8]])  # person covers 2 of 4 person pixels: IoU 2/4
    pred_segs = [{"id": 7, "category_id": 1}, {"id": 8, "category_id": 2}]
    r, ev = pq_of(pred, pred_segs, gt, gt_segs)
    assert (ev.tp.tolist(), ev.fp.tolist(), ev.fn.tolist()) == ([0, 1, 0], [1, 0, 0], [1, 0, 0])
    assert r["Things"]["PQ"] == 0.0 and r["Things"]["N"] == 1
    assert r["Stuff"]["PQ"] == pytest.approx(100 * 4 / 6)  # wall: IoU 4/6, one TP
    pred[0, 2] = 7  # IoU 3/4 -> match
    r, _ = pq_of(pred, pred_segs, gt, gt_segs)
    assert r["Things"]["PQ"] == pytest.approx(75.0)


def test_pq_void_pixels_removed_from_union():
    gt = np.array([[1, 1, 0, 0], [1, 1, 0, 0]])
    pred = np.full((2, 4), 5)  # 4 pixels on the person, 4 on VOID: IoU 4/8 without the VOID removal
    r, ev = pq_of(pred, [{"id": 5, "category_id": 1}], gt, [{"id": 1, "category_id": 1}])
    assert ev.tp[0] == 1 and r["All"]["PQ"] == pytest.approx(100.0)


def test_pq_gt_area_from_segments_info():
    gt = np.array([[1, 1, 2, 2]])
    pred = np.array([[1, 1, 2, 2]])
    segs = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 2}]
    gt_segs = [{"id": 1, "category_id": 1, "area": 3}, {"id": 2, "category_id": 2}]
    r, _ = pq_of(pred, segs, gt, gt_segs)  # person IoU = 2 / (2 + 3 - 2)
    assert r["per_class"][1]["PQ"] == pytest.approx(100 * 2 / 3)


def test_pq_crowd_regions():
    # GT: a person crowd (id 9) on the left half, a wall (id 2) on the right half
    gt = np.array([[9, 9, 9, 9, 2, 2, 2, 2]] * 2)
    gt_segs = [{"id": 9, "category_id": 1, "iscrowd": 1}, {"id": 2, "category_id": 2, "iscrowd": 0}]
    # a person prediction 3/4 on the crowd: not an FP; the crowd itself: never an FN, never matched
    pred = np.array([[5, 5, 5, 2, 2, 2, 2, 2], [0, 0, 0, 5, 2, 2, 2, 2]])
    pred_segs = [{"id": 5, "category_id": 1}, {"id": 2, "category_id": 2}]
    r, ev = pq_of(pred, pred_segs, gt, gt_segs)
    assert (ev.tp[0], ev.fp[0], ev.fn[0]) == (0, 0, 0)
    assert r["Things"]["N"] == 0 and math.isnan(r["Things"]["PQ"])
    # a prediction of the crowd region exactly is not a TP either (and not an FP)
    pred2 = np.where(gt == 9, 5, 2)
    _, ev = pq_of(pred2, pred_segs, gt, gt_segs)
    assert (ev.tp[0], ev.fp[0], ev.fn[0]) == (0, 0, 0)
    # a car prediction on the person crowd is an FP (the crowd test uses the prediction's own category)
    _, ev = pq_of(pred2, [{"id": 5, "category_id": 3}, {"id": 2, "category_id": 2}], gt, gt_segs)
    assert ev.fp[2] == 1
    # exactly half on the crowd is an FP (strict > 0.5)
    pred3 = np.array([[5, 5, 5, 5, 5, 5, 5, 5], [2, 2, 2, 2, 2, 2, 2, 2]])
    _, ev = pq_of(pred3, pred_segs, gt, gt_segs)
    assert ev.fp[0] == 1


def test_pq_only_the_last_crowd_segment_of_a_category_counts():
    gt = np.array([[8, 8, 9, 9]])
    crowds = [{"id": 8, "category_id": 1, "iscrowd": 1}, {"id": 9, "category_id": 1, "iscrowd": 1}]
    on_first = np.array([[5, 5, 0, 0]])
    _, ev = pq_of(on_first, [{"id": 5, "category_id": 1}], gt, crowds)
    assert ev.fp[0] == 1 and ev.fn[0] == 0
    _, ev = pq_of(on_first, [{"id": 5, "category_id": 1}], gt, crowds[::-1])
    assert ev.fp[0] == 0


def test_pq_input_checks():
    gt = np.array([[1, 1]])
    segs = [{"id": 1, "category_id": 1}]
    with pytest.raises(KeyError, match="not in pred_segments"):
        pq_of(np.array([[1, 4]]), segs, gt, segs)
    with pytest.raises(KeyError, match="not in the prediction map"):
        pq_of(np.array([[1, 1]]), segs + [{"id": 4, "category_id": 1}], gt, segs)
    with pytest.raises(KeyError, match="unknown category_id 42"):
        pq_of(gt, [{"id": 1, "category_id": 42}], gt, segs)
    with pytest.raises(ValueError, match="differ in size"):
        pq_of(np.array([[1]]), segs, gt, segs)


def independent_pq(images, categories):
    """The panopticapi rules written out with boolean masks, one segment pair at a time."""
    stats = {c["id"]: [0.0, 0, 0, 0] for c in categories}  # iou, tp, fp, fn
    for pred, pred_segs, gt, gt_segs in images:
        gt_area = {s["id"]: int((gt == s["id"]).sum()) for s in gt_segs}
        matched_gt, matched_pred = set(), set()
        for g in gt_segs:
            for p in pred_segs:
                if g.get("iscrowd", 0) or g["category_id"] != p["category_id"]:
                    continue
                pm, gm = pred == p["id"], gt == g["id"]
                inter = int((pm & gm).sum())
                if inter == 0:
                    continue
                union = int(pm.sum()) + gt_area[g["id"]] - inter - int((pm & (gt == 0)).sum())
                if inter / union > 0.5:
                    stats[g["category_id"]][0] += inter / union
                    stats[g["category_id"]][1] += 1
                    matched_gt.add(g["id"])
                    matched_pred.add(p["id"])
        crowd = {}
        for g in gt_segs:
            if g["id"] in matched_gt:
                continue
            if g.get("iscrowd", 0):
                crowd[g["category_id"]] = g["id"]
            else:
                stats[g["category_id"]][3] += 1
        for p in pred_segs:
            if p["id"] in matched_pred:
                continue
            pm = pred == p["id"]
            ignored = (pm & (gt == 0)).sum() + (pm & (gt == crowd.get(p["category_id"], -1))).sum()
            if ignored / pm.sum() <= 0.5:
                stats[p["category_id"]][2] += 1
    out = {}
    for name, want in (("All", None), ("Things", True), ("Stuff", False)):
        vals = []
        for c in categories:
            if want is not None and bool(c["isthing"]) != want:
                continue
            iou, tp, fp, fn = stats[c["id"]]
            if tp + fp + fn == 0:
                continue
            d = tp + 0.5 * fp + 0.5 * fn
            vals.append((iou / d, iou / tp if tp else 0.0, tp / d))
        out[name] = {k: 100 * sum(v[i] for v in vals) / len(vals) for i, k in enumerate(("PQ", "SQ", "RQ"))}
        out[name]["N"] = len(vals)
    return out


def random_panoptic_image(rng, size=12):
    """GT: a few random rectangles painted in order over VOID (random categories, some crowd); prediction:
    the GT ids with random rectangles repainted (new segments or other existing ones), random relabelling."""
    gt = np.zeros((size, size), dtype=np.int64)
    gt_segs = []
    for seg_id in range(1, rng.integers(3, 7)):
        y, x = rng.integers(0, size - 2, 2)
        h, w = rng.integers(2, size // 2 + 2, 2)
        gt[y : y + h, x : x + w] = seg_id
        gt_segs.append(
            {"id": seg_id, "category_id": int(rng.integers(1, 4)), "iscrowd": int(rng.random() < 0.2)}
        )
    gt_segs = [s for s in gt_segs if (gt == s["id"]).any()]
    pred = gt.copy()
    for _ in range(rng.integers(1, 4)):
        y, x = rng.integers(0, size - 2, 2)
        h, w = rng.integers(1, size // 2, 2)
        pred[y : y + h, x : x + w] = rng.integers(0, 12)
    cat = {s["id"]: s["category_id"] for s in gt_segs}
    pred_segs = [
        {"id": int(i), "category_id": cat.get(int(i), 1) if rng.random() < 0.8 else int(rng.integers(1, 4))}
        for i in np.unique(pred)
        if i != 0
    ]
    return pred, pred_segs, gt, gt_segs


def test_pq_matches_an_independent_implementation_on_random_maps():
    rng = np.random.default_rng(0)
    images = [random_panoptic_image(rng) for _ in range(40)]
    ev = PanopticEvaluator(CATS)
    for pred, pred_segs, gt, gt_segs in images:
        ev.process(torch.from_numpy(pred), pred_segs, gt, gt_segs)
    ours = ev.evaluate()
    ref = independent_pq(images, CATS)
    assert ev.tp.sum() > 10 and ev.fp.sum() > 5 and ev.fn.sum() > 5
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["N"] == ref[group]["N"]
        for k in ("PQ", "SQ", "RQ"):
            assert ours[group][k] == pytest.approx(ref[group][k], abs=1e-9)
    # merge of per-half evaluators equals one evaluator
    a, b = PanopticEvaluator(CATS), PanopticEvaluator(CATS)
    for i, img in enumerate(images):
        (a if i % 2 else b).process(*img)
    a.merge(b)
    assert a.evaluate()["All"] == pytest.approx(ours["All"])


# -- instance ----------------------------------------------------------------------------------------------


def test_instance_ap_of_one_perfect_detection():
    pytest.importorskip("pycocotools")
    from rankseg_fast.data.prediction_files import instance_records
    from rankseg_fast.engine.metrics import InstanceEvaluator

    mask = np.zeros((1, 20, 30), dtype=bool)
    mask[0, 4:15, 5:20] = True
    instances = {
        "pred_masks": torch.from_numpy(mask),
        "scores": torch.tensor([0.9]),
        "pred_classes": torch.tensor([1]),
    }
    records = instance_records(instances, "img0")
    gt = {
        "images": [{"id": "img0", "height": 20, "width": 30}],
        "annotations": [{"image_id": "img0", "category_id": 1, "segmentation": records[0]["segmentation"]}],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
    }
    ev = InstanceEvaluator(gt)
    ev.process(records)
    r = ev.evaluate()
    assert (
        r["AP"] == pytest.approx(100.0)
        and r["AP50"] == pytest.approx(100.0)
        and r["APs"] == pytest.approx(100.0)
    )
    assert r["AP-person"] == pytest.approx(100.0) and math.isnan(r["APl"])
    ev.reset()
    assert math.isnan(ev.evaluate()["AP"])


# -- command line ------------------------------------------------------------------------------------------


def write_png(path, array):
    Image.fromarray(array).save(path)


def test_cli_sem_seg_end_to_end_and_errors(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    write_png(gt_dir / "a.png", SEM_GT.astype(np.uint8))
    write_png(gt_dir / "b.png", np.array([[2, 2], [2, 255]], np.uint8))
    write_png(pred_dir / "a_sem.png", SEM_PRED.astype(np.uint8))  # predict's naming
    write_png(pred_dir / "b.png", np.array([[2, 2], [0, 0]], np.uint8))  # plain naming
    out = tmp_path / "m" / "metrics.json"
    args = ["metrics", "sem_seg", "--gt", str(gt_dir), "--pred", str(pred_dir), "--num-classes", "3"]
    assert main(args + ["--miou-rule", "gt_only", "--output", str(out), "--per-class"]) == 0
    # class 0: TP 2, GT 4, pred 3 -> 2/5; class 1: 3/4; class 2: TP 2, GT 3, pred 3 -> 2/4
    expected = (2 / 5 + 3 / 4 + 2 / 4) / 3
    assert json.loads(out.read_text())["sem_seg"]["mIoU"] == pytest.approx(100 * expected)
    assert "mIoU" in capsys.readouterr().out

    (pred_dir / "b.png").unlink()
    assert main(args) == 2
    assert "no prediction for GT b.png" in capsys.readouterr().err
    write_png(pred_dir / "b_sem.png", np.zeros((3, 2), np.uint8))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "b_sem.png" in err and "b.png" in err and "2x3" in err


def panoptic_fixture(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt_pan", tmp_path / "pred_pan"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 2, 2]])
    pred = np.array([[300, 300, 70000, 70000], [300, 300, 70000, 70000], [300, 0, 70000, 70000]])
    write_png(gt_dir / "img0.png", id_to_rgb(gt))
    write_png(pred_dir / "img0_pan.png", id_to_rgb(pred))
    gt_json = {
        "images": [{"id": "img0", "file_name": "img0.jpg", "height": 3, "width": 4}],
        "annotations": [
            {
                "image_id": "img0",
                "file_name": "img0.png",
                "segments_info": [
                    {"id": 1, "category_id": 1, "iscrowd": 0, "area": 4},
                    {"id": 2, "category_id": 2, "iscrowd": 0, "area": 6},
                ],
            }
        ],
        "categories": CATS,
    }
    pred_json = {  # rankseg_fast.predict's panoptic.json: no categories, an isthing flag per segment
        "annotations": [
            {
                "image_id": "img0",
                "file_name": "img0_pan.png",
                "segments_info": [
                    {"id": 300, "category_id": 1, "isthing": True},
                    {"id": 70000, "category_id": 2, "isthing": False},
                ],
            }
        ]
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    (tmp_path / "pred.json").write_text(json.dumps(pred_json))
    return [
        "metrics", "panoptic",
        "--gt-json", str(tmp_path / "gt.json"), "--gt-dir", str(gt_dir),
        "--pred-json", str(tmp_path / "pred.json"), "--pred-dir", str(pred_dir),
    ]  # fmt: skip


def test_cli_panoptic_end_to_end_and_errors(tmp_path, capsys):
    args = panoptic_fixture(tmp_path)
    out = tmp_path / "pq.json"
    assert main(args + ["--output", str(out)]) == 0
    r = json.loads(out.read_text())["panoptic"]
    # person: 4 of 5 predicted pixels on GT, 1 on VOID -> IoU 4 / (5 + 4 - 4 - 1) = 1; wall: IoU 1
    assert r["All"] == {"PQ": 100.0, "SQ": 100.0, "RQ": 100.0, "N": 2}
    assert r["Things"]["N"] == 1 and r["Stuff"]["N"] == 1
    assert "Things" in capsys.readouterr().out

    pred_json = json.loads((tmp_path / "pred.json").read_text())
    pred_json["annotations"][0]["image_id"] = "other"
    (tmp_path / "pred.json").write_text(json.dumps(pred_json))
    assert main(args) == 2
    assert "no prediction for the image with id 'img0'" in capsys.readouterr().err

    pred_json["annotations"][0]["image_id"] = "img0"
    (tmp_path / "pred.json").write_text(json.dumps(pred_json))
    write_png(tmp_path / "pred_pan" / "img0_pan.png", id_to_rgb(np.full((2, 4), 300)))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "img0_pan.png" in err and "img0.png" in err


def test_cli_help_lists_both_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "metrics" in text and "RECIPE --weights FILE" in text
