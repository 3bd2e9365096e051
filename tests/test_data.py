"""Data layer: synthetic generator, ADE20K readers, train augmentations, targets, loader and sampler."""

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rankseg_fast.data.datasets.ade20k import (
    ADE20KPanoptic,
    ADE20KSemantic,
    DatasetLayoutError,
    read_panoptic_ids,
    read_semantic_label,
)
from rankseg_fast.data.datasets.metadata import metadata_for
from rankseg_fast.data.datasets.synthetic import MANIFEST, generate_synthetic
from rankseg_fast.data.image_io import ImageReadError
from rankseg_fast.data.loader import (
    InfiniteSampler,
    SegmentationDataset,
    build_test_loader,
    build_train_loader,
)
from rankseg_fast.data.targets import build_train_sample
from rankseg_fast.data.transforms import (
    AugSample,
    ColorAugSSD,
    PadToDivisibility,
    RandomCropCategoryAreaConstraint,
    RandomFlip,
    ResizeShortestEdge,
    build_train_transform,
    hsv_to_rgb_u8,
    rgb_to_hsv_u8,
)
from rankseg_fast.testing import needs_cuda


def _recipe(crop=64, sizes=(48, 64, 80), max_size=200, area=1.0, color=True):
    return {
        "INPUT": {
            "FORMAT": "RGB", "MIN_SIZE_TRAIN": list(sizes), "MIN_SIZE_TRAIN_SAMPLING": "choice",
            "MAX_SIZE_TRAIN": max_size, "MIN_SIZE_TEST": 64, "MAX_SIZE_TEST": 256, "RANDOM_FLIP": "horizontal",
            "CROP": {"ENABLED": True, "TYPE": "absolute", "SIZE": [crop, crop], "SINGLE_CATEGORY_MAX_AREA": area},
            "COLOR_AUG_SSD": color, "SIZE_DIVISIBILITY": crop,
        },
        "MODEL": {"SEM_SEG_HEAD": {"IGNORE_VALUE": 255, "NUM_CLASSES": 10}},
        "DATALOADER": {"NUM_WORKERS": 0},
    }


def _hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("syn") / "synthetic", num_train=24, num_val=6, size=80)


# ------------------------------------------------------------------------------------- generator
def test_synthetic_deterministic_and_idempotent(synthetic, tmp_path):
    again = generate_synthetic(tmp_path / "a", num_train=24, num_val=6, size=80)
    assert _hashes(again) == _hashes(synthetic)
    other = generate_synthetic(tmp_path / "b", num_train=24, num_val=6, size=80, seed=1)
    assert _hashes(other) != _hashes(synthetic)
    mtime = (again / MANIFEST).stat().st_mtime_ns
    assert generate_synthetic(again, num_train=24, num_val=6, size=80) == again  # reused
    assert (again / MANIFEST).stat().st_mtime_ns == mtime
    generate_synthetic(again, num_train=4, num_val=2, size=80)  # different params -> rebuilt
    assert len(ADE20KSemantic(again, "train")) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_synthetic_layout_and_statistics(synthetic):
    sem, pan = ADE20KSemantic(synthetic, "train"), ADE20KPanoptic(synthetic, "train")
    assert len(sem) == len(pan) == 24 and len(ADE20KSemantic(synthetic, "val")) == 6
    meta = metadata_for("synthetic_panoptic_train")
    assert len(meta.class_names) == 10 and len(meta.thing_ids) == 6
    assert metadata_for("synthetic_sem_seg_val").thing_ids == ()
    classes_per_image, seen, occluded = [], set(), 0
    for rec_s, rec_p in zip(sem, pan):
        assert rec_s["file_name"] == rec_p["file_name"]
        label = np.asarray(Image.open(rec_s["sem_seg_file_name"]))
        present = set(np.unique(label).tolist()) - {255}
        classes_per_image.append(len(present))
        seen |= present
        segs = rec_p["segments_info"]
        assert any(s["isthing"] for s in segs) and any(not s["isthing"] for s in segs)
        assert {s["category_id"] for s in segs} == present
        ids = read_panoptic_ids(rec_p["pan_seg_file_name"])
        for s in segs:
            assert (ids == s["id"]).sum() == s["area"]
        # occlusion: two thing instances touching (one painted over the other)
        thing = np.isin(ids, [s["id"] for s in segs if s["isthing"]])
        touch = (ids[:, 1:] != ids[:, :-1]) & thing[:, 1:] & thing[:, :-1]
        occluded += bool(touch.any())
    assert np.mean(classes_per_image) >= 3
    assert seen == set(range(10))
    assert occluded >= 5


# ------------------------------------------------------------------------------------- ADE readers
def _write_ade_tree(root: Path, raw: bool):
    (root / "images" / "training").mkdir(parents=True)
    label_dir = root / ("annotations" if raw else "annotations_detectron2") / "training"
    label_dir.mkdir(parents=True)
    for stem in ("ADE_train_00000002", "ADE_train_00000001"):
        Image.fromarray(np.full((6, 8, 3), 100, np.uint8)).save(root / "images" / "training" / f"{stem}.jpg")
        Image.fromarray(np.array([[0, 1, 2, 150]] * 2, np.uint8)).save(label_dir / f"{stem}.png")


def test_ade_semantic_raw_shift_and_prepared(tmp_path):
    _write_ade_tree(tmp_path / "raw", raw=True)
    ds = ADE20KSemantic(tmp_path / "raw", "train")
    assert [r["image_id"] for r in ds] == ["ADE_train_00000001", "ADE_train_00000002"]
    assert ds[0]["sem_seg_offset"] == 1
    assert read_semantic_label(ds[0]["sem_seg_file_name"], 1)[0].tolist() == [255, 0, 1, 149]
    _write_ade_tree(tmp_path / "prep", raw=False)
    ds = ADE20KSemantic(tmp_path / "prep", "training")
    assert ds[0]["sem_seg_offset"] == 0
    assert read_semantic_label(ds[0]["sem_seg_file_name"], 0)[0].tolist() == [0, 1, 2, 150]


def test_ade_root_from_env(tmp_path, monkeypatch):
    _write_ade_tree(tmp_path / "ADEChallengeData2016", raw=False)
    monkeypatch.delenv("RANKSEG_FAST_DATASETS", raising=False)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert len(ADE20KSemantic(None, "train")) == 2


def test_missing_and_corrupt_files_are_named(tmp_path, synthetic):
    with pytest.raises(DatasetLayoutError, match="nowhere.*expected"):
        ADE20KSemantic(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetLayoutError, match="ade20k_panoptic_train.json"):
        ADE20KPanoptic(tmp_path, "train")
    _write_ade_tree(tmp_path / "t", raw=False)
    label = tmp_path / "t" / "annotations_detectron2" / "training" / "ADE_train_00000001.png"
    label.write_bytes(b"not a png")
    ds = SegmentationDataset(ADE20KSemantic(tmp_path / "t", "train"), build_train_transform(_recipe()), False)
    with pytest.raises(ImageReadError, match="ADE_train_00000001.png"):
        ds[0]


# ------------------------------------------------------------------------------------- transforms
def _square_sample():
    """Grey image with a red square whose label is 3 (rest 1) and a panoptic id map."""
    image = np.full((90, 120, 3), 90, np.uint8)
    sem = np.ones((90, 120), np.uint8)
    image[20:60, 30:80] = (250, 0, 0)
    sem[20:60, 30:80] = 3
    pan = np.zeros((90, 120, 3), np.uint8)
    pan[..., 0] = 7
    pan[20:60, 30:80] = (9, 1, 0)
    return AugSample(image, sem, pan)


def test_geometric_augmentations_keep_alignment():
    tfm = build_train_transform(_recipe(color=False))
    for seed in range(12):
        out = tfm(_square_sample(), np.random.default_rng(seed))
        assert out.image.shape[:2] == out.sem_seg.shape == out.pan_seg.shape[:2] == (64, 64)
        # the reference resizes the float semantic map with torch "nearest", the image with PIL bilinear and
        # the uint8 panoptic PNG with PIL nearest: they may differ by one pixel at region boundaries only
        sem = np.pad(out.sem_seg, 1, mode="edge")
        interior = np.ones_like(out.sem_seg, bool)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                interior &= sem[dy:dy + 64, dx:dx + 64] == out.sem_seg
        red = (out.image[..., 0] > 200) & (out.image[..., 1] < 40) & interior
        grey = np.all(np.abs(out.image.astype(int) - 90) < 8, axis=-1) & interior
        assert (out.sem_seg[red] == 3).all() and (out.sem_seg[grey] == 1).all()
        assert red.sum() > 0.5 * ((out.sem_seg == 3) & interior).sum()
        assert ((out.pan_seg[..., 0] == 9) == (out.sem_seg == 3))[interior].all()
        pad = np.all(out.image == 128, axis=-1)
        assert (out.sem_seg[pad] == 255).all() and (out.pan_seg[pad] == 0).all()


def test_resize_crop_flip_pad_details():
    s = ResizeShortestEdge([60], 1000)(_square_sample(), np.random.default_rng(0))
    assert s.image.shape[:2] == (60, 80)
    s = PadToDivisibility(64)(RandomCropCategoryAreaConstraint((64, 64))(s, np.random.default_rng(0)))
    assert s.image.shape[:2] == (64, 64)
    assert (s.image[60:] == 128).all() and (s.sem_seg[60:] == 255).all() and (s.pan_seg[60:] == 0).all()
    flips = sum(bool(RandomFlip()(AugSample(np.zeros((2, 2, 3), np.uint8)), np.random.default_rng(i)).applied)
                for i in range(2000))
    assert 900 < flips < 1100
    img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    s2 = RandomFlip(prob=1.0)(AugSample(img.copy(), np.array([[1, 2], [3, 4]], np.uint8)), np.random.default_rng(0))
    assert s2.sem_seg.tolist() == [[2, 1], [4, 3]] and (s2.image == img[:, ::-1]).all()


def test_crop_single_category_constraint():
    sem = np.zeros((200, 200), np.uint8)
    sem[:, 180:] = 1  # class 0 covers 90 %
    sem[:10, :10] = 255

    def satisfied(crop):
        ok = 0
        for i in range(200):
            out = crop(AugSample(np.zeros((200, 200, 3), np.uint8), sem.copy()), np.random.default_rng(i))
            assert out.sem_seg.shape == (40, 40)
            labels, counts = np.unique(out.sem_seg, return_counts=True)
            counts = counts[labels != 255]
            ok += len(counts) > 1 and counts.max() < 0.75 * counts.sum()
        return ok

    # a random 40x40 crop satisfies it iff x0 in 151..160 (p = 10/161); 10 retries lift that to ~ 0.47
    assert satisfied(RandomCropCategoryAreaConstraint((40, 40), single_category_max_area=0.75)) > 70
    assert satisfied(RandomCropCategoryAreaConstraint((40, 40), single_category_max_area=1.0)) < 30


def test_color_aug_ssd_ranges_and_labels_untouched():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    hsv = rgb_to_hsv_u8(image)
    assert hsv[..., 0].max() < 180
    assert np.abs(hsv_to_rgb_u8(hsv).astype(int) - image).max() <= 5  # 2-degree hue steps
    aug = ColorAugSSD("RGB")
    changed = 0
    for i in range(50):
        sem = rng.integers(0, 5, (16, 16)).astype(np.uint8)
        out = aug(AugSample(image.copy(), sem.copy()), np.random.default_rng(i))
        assert out.image.dtype == np.uint8 and out.image.shape == image.shape
        assert (out.sem_seg == sem).all()
        changed += not np.array_equal(out.image, image)
    assert 35 < changed < 50  # nothing applied with p = 1/16
    # brightness alone: the shift is within +-32
    flat = np.full((4, 4, 3), 100, np.uint8)
    for i in range(200):
        out = aug.brightness(flat, np.random.default_rng(i))
        assert 68 <= out.min() and out.max() <= 132
    # contrast alone within [0.5, 1.5]
    for i in range(200):
        out = aug.contrast(flat, np.random.default_rng(i))
        assert 50 <= out.min() and out.max() <= 150


# ------------------------------------------------------------------------------------- targets
def test_semantic_targets_after_crop():
    sem = np.full((8, 8), 255, np.uint8)
    sem[:4] = 2
    sem[4:, :4] = 5
    rec = {"file_name": "x.jpg", "height": 8, "width": 8}
    out = build_train_sample(rec, np.zeros((8, 8, 3), np.uint8), sem, None)
    assert out["labels"].tolist() == [2, 5] and out["gt_classes"].tolist() == [2, 5]
    assert out["masks"].dtype == torch.bool and out["masks"].shape == (2, 8, 8)
    assert out["masks"][0].sum() == 32 and out["sem_seg"].dtype == torch.int64
    assert out["image"].shape == (3, 8, 8) and out["image"].dtype == torch.uint8


def test_panoptic_targets_include_cropped_away_segments():
    pan = np.zeros((8, 8, 3), np.uint8)
    pan[:4, :, 0] = 11
    pan[4:, :, 0] = 12
    segs = [{"id": 11, "category_id": 0, "iscrowd": 0}, {"id": 12, "category_id": 4, "iscrowd": 0},
            {"id": 13, "category_id": 7, "iscrowd": 0}, {"id": 14, "category_id": 9, "iscrowd": 1}]
    rec = {"file_name": "x.jpg", "segments_info": segs}
    out = build_train_sample(rec, np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8), pan)
    assert out["labels"].tolist() == [0, 4, 7]
    assert out["masks"].sum(dim=(1, 2)).tolist() == [32, 32, 0]
    assert out["gt_classes"].tolist() == [0, 4, 7]


# ------------------------------------------------------------------------------------- loader
def test_train_loader_batches_and_skips_corrupt(synthetic, tmp_path, caplog):
    records = [dict(r) for r in ADE20KPanoptic(synthetic, "train")]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    records[3]["file_name"] = str(bad)
    loader = build_train_loader(_recipe(), records, batch_size=4, num_workers=0, seed=0)
    it = iter(loader)
    with caplog.at_level(logging.WARNING):
        batches = [next(it) for _ in range(8)]  # 32 draws > 24 samples: index 3 is drawn
    assert loader.num_skipped >= 1
    assert "broken.jpg" in caplog.text
    for batch in batches:
        assert len(batch) == 4
        for s in batch:
            assert s["image"].shape == (3, 64, 64) and s["sem_seg"].shape == (64, 64)
            assert s["masks"].shape[1:] == (64, 64) and len(s["labels"]) == len(s["masks"])
            assert s["file_name"] != str(bad)
    ds = SegmentationDataset(records, build_train_transform(_recipe()), True)
    ds[3]
    assert ds.num_skipped == 1 and ds.skipped_files == [str(bad)]


def test_test_loader_raises_and_gives_gt_classes(synthetic, tmp_path):
    records = list(ADE20KSemantic(synthetic, "val"))
    batch = next(iter(build_test_loader(_recipe(), records, num_workers=0)))
    s = batch[0]
    assert min(s["image"].shape[1:]) == 64 and s["sem_seg"].shape == s["image"].shape[1:]
    present = sorted(set(np.unique(s["sem_seg"].numpy()).tolist()) - {255})
    assert s["gt_classes"].tolist() == present and s["labels"] is None
    assert (s["height"], s["width"]) == np.asarray(Image.open(records[0]["file_name"])).shape[:2]
    records[0] = dict(records[0], file_name=str(tmp_path / "missing.jpg"))
    with pytest.raises(ImageReadError, match="missing.jpg"):
        next(iter(build_test_loader(_recipe(), records, num_workers=0)))


def test_infinite_sampler_shards_and_resume():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    size, ws = 10, 3
    shards = [take(InfiniteSampler(size, seed=5, rank=r, world_size=ws), 10) for r in range(ws)]
    # rank r gets stream items r, r + ws, ...: interleaving the shards gives whole permutations
    stream = [shards[i % ws][i // ws][0] for i in range(30)]
    for e in range(3):
        assert sorted(stream[e * size:(e + 1) * size]) == list(range(size))
    # each item carries its place in the global stream: rank + position * world_size
    assert [d for _, d in shards[1]] == [1 + 3 * p for p in range(10)]
    assert take(InfiniteSampler(size, seed=5, rank=1, world_size=ws), 10) == shards[1]
    assert take(InfiniteSampler(size, seed=6, rank=1, world_size=ws), 10) != shards[1]
    resumed = take(InfiniteSampler(size, seed=5, rank=1, world_size=ws, start=4), 6)
    assert resumed == shards[1][4:]
    s = InfiniteSampler(size, seed=5, rank=2, world_size=ws)
    take(s, 7)
    state = s.state_dict()
    s2 = InfiniteSampler(size, seed=5, rank=2, world_size=ws)
    s2.load_state_dict(state)
    assert take(s2, 3) == shards[2][7:10]


def test_train_loader_deterministic_and_resumable(synthetic):
    records = list(ADE20KSemantic(synthetic, "train"))

    def files_and_pixels(start, n):
        it = iter(build_train_loader(_recipe(), records, batch_size=2, num_workers=0, seed=3, start=start))
        out = []
        for _ in range(n):
            out += [(s["file_name"], s["image"].sum().item()) for s in next(it)]
        return out

    full = files_and_pixels(0, 3)
    assert files_and_pixels(2, 2) == full[2:]


def test_manifest_lists_all_files(synthetic):
    manifest = json.loads((synthetic / MANIFEST).read_text())
    assert manifest["params"]["seed"] == 0
    assert set(manifest["files"]) == set(_hashes(synthetic)) - {MANIFEST}


def test_train_loader_with_workers_matches_in_process(synthetic):
    from rankseg_fast.config.recipe import Recipe

    records = list(ADE20KPanoptic(synthetic, "train"))
    recipe = Recipe(_recipe())

    def first(num_workers):
        it = iter(build_train_loader(recipe, records, batch_size=2, num_workers=num_workers, seed=1, rank=1,
                                     world_size=2))
        return [(s["file_name"], s["image"].sum().item(), s["labels"].tolist()) for _ in range(2) for s in next(it)]

    assert first(2) == first(0)


@pytest.mark.cuda
@needs_cuda
def test_train_loader_pins_batches_for_the_gpu(synthetic):
    records = list(ADE20KSemantic(synthetic, "train"))
    batch = next(iter(build_train_loader(_recipe(), records, batch_size=2, num_workers=0, seed=0, pin_memory=True)))
    assert all(s[key].is_pinned() for s in batch for key in ("image", "labels", "masks", "gt_classes"))
