"""`python -m rankseg_fast.predict` end to end on a tiny recipe: output files in the official formats,
overlays, unreadable images reported by name, and the -gt oracle's need for label maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rankseg_fast import predict
from rankseg_fast.config import load_recipe
from rankseg_fast.data.image_io import shortest_edge_size
from rankseg_fast.modeling.build import build_model

TINY = [
    "MODEL.BACKBONE.NAME=D2SwinTransformer", "MODEL.SWIN.EMBED_DIM=32", "MODEL.SWIN.DEPTHS=[1,1,1,1]",
    "MODEL.SWIN.NUM_HEADS=[1,2,4,8]", "MODEL.SWIN.WINDOW_SIZE=7", "MODEL.SEM_SEG_HEAD.CONVS_DIM=32",
    "MODEL.SEM_SEG_HEAD.MASK_DIM=32", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS=1", "MODEL.MASK_FORMER.HIDDEN_DIM=32",
    "MODEL.MASK_FORMER.NHEADS=4", "MODEL.MASK_FORMER.DIM_FEEDFORWARD=64", "MODEL.MASK_FORMER.DEC_LAYERS=4",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES=7", "MODEL.RANKSEG.HIDDEN_DIM=64", "INPUT.MIN_SIZE_TEST=64",
    "INPUT.MAX_SIZE_TEST=96",
]
PANOPTIC_RANKSEG = "ade20k/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k-rankseg.yaml"
SEMANTIC_GT = "ade20k/semantic-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_160k_res640-gt.yaml"


def weights_for(recipe_name, overrides, path):
    torch.manual_seed(0)
    torch.save(build_model(load_recipe(recipe_name, overrides)).state_dict(), path)
    return str(path)


def write_images(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (70, 60, 3), dtype=np.uint8)).save(folder / "b.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def test_predict_writes_panoptic_semantic_and_overlays(tmp_path, capsys):
    overrides = TINY + ["MODEL.MASK_FORMER.TEST.INSTANCE_ON=true"]
    weights = weights_for(PANOPTIC_RANKSEG, overrides, tmp_path / "w.pth")
    images = write_images(tmp_path / "images")
    out = tmp_path / "out"
    status = predict.main([PANOPTIC_RANKSEG, str(images), "--weights", weights, "--output", str(out),
                           "--device", "cpu", "--set", *overrides])
    assert status == 1  # the broken image
    assert "broken.jpg: cannot be read as an image" in capsys.readouterr().err
    for stem, size in (("a", (90, 120)), ("b", (70, 60))):
        sem = np.asarray(Image.open(out / f"{stem}_sem.png"))
        assert sem.shape == size and sem.max() < 150  # at the original size
        assert np.asarray(Image.open(out / f"{stem}_pan.png")).shape == (*size, 3)
        assert np.asarray(Image.open(out / f"{stem}_overlay.png")).shape == (*size, 3)
    panoptic = json.loads((out / "panoptic.json").read_text())
    assert [a["image_id"] for a in panoptic["annotations"]] == ["a", "b"]
    pan = np.asarray(Image.open(out / "a_pan.png")).astype(np.int64)
    ids = set(np.unique(pan[..., 0] + 256 * pan[..., 1] + 65536 * pan[..., 2]).tolist()) - {0}
    assert ids == {s["id"] for s in panoptic["annotations"][0]["segments_info"]}
    instances = json.loads((out / "instances.json").read_text())
    assert instances and {"image_id", "category_id", "score", "segmentation"} <= set(instances[0])


def test_gt_oracle_recipe_needs_label_maps(tmp_path, capsys):
    weights = weights_for(SEMANTIC_GT, TINY, tmp_path / "w.pth")
    images = write_images(tmp_path / "images")
    (images / "broken.jpg").unlink()
    args = [SEMANTIC_GT, str(images), "--weights", weights, "--output", str(tmp_path / "out"), "--device", "cpu",
            "--set", *TINY]
    assert predict.main(args) == 1
    assert "needs its label map; pass --gt FOLDER with a.png" in capsys.readouterr().err
    labels = tmp_path / "labels"
    labels.mkdir()
    for stem, shape in (("a", (90, 120)), ("b", (70, 60))):
        label = np.full(shape, 255, np.uint8)
        label[:10, :10] = 3
        Image.fromarray(label).save(labels / f"{stem}.png")
    assert predict.main(args + ["--gt", str(labels)]) == 0
    # Only class 3 is present in the GT: the oracle leaves it as the only possible label.
    assert set(np.unique(np.asarray(Image.open(tmp_path / "out" / "a_sem.png"))).tolist()) == {3}


def test_shortest_edge_size_follows_the_reference_rule():
    assert shortest_edge_size(480, 640, 640, 2560) == (640, 853)
    assert shortest_edge_size(100, 1000, 640, 2560) == (256, 2560)  # long side capped


def test_wrong_weights_are_reported(tmp_path):
    torch.save({"not.a.key": torch.zeros(1)}, tmp_path / "bad.pth")
    images = write_images(tmp_path / "images")
    with pytest.raises(Exception, match="missing"):
        predict.main([PANOPTIC_RANKSEG, str(images), "--weights", str(tmp_path / "bad.pth"),
                      "--output", str(tmp_path / "out"), "--device", "cpu", "--set", *TINY])
