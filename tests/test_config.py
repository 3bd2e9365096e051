"""Recipe system: loading, the model-zoo rows of the fact sheet §1.3, overrides, validation errors,
and import of reference (detectron2-style) configs."""

import warnings

import pytest

from rankseg_fast.config import DEFAULTS, Recipe, RecipeError, from_reference_config, load_recipe
from rankseg_fast.config.recipe import list_recipes
from rankseg_fast.config.reference import ReferenceConfigWarning

L640 = [320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024, 1088, 1152, 1216, 1280]
L512 = [256, 307, 358, 409, 460, 512, 563, 614, 665, 716, 768, 819, 870, 921, 972, 1024]
TTA640 = ([320, 480, 640, 800, 960, 1120], 4480)
R50 = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
SWB = "pretrained_weights/swin_base_patch4_window12_384_22k.pkl"
SWL = "pretrained_weights/swin_large_patch4_window12_384_22k.pkl"
OFF = (False, False, 0, 0)
RS = (True, False, 150, 10)
GT = (False, True, 0, 0)
SEM, PAN = "ade20k/semantic-segmentation/", "ade20k/panoptic-segmentation/"
SW_S, SW_P = SEM + "swin/maskformer2_swin_", PAN + "swin/maskformer2_swin_"

# Fact sheet §1.3: name, backbone, weights, Q, train list, max train, crop/pad, test short/max,
# TTA (sizes, max), (S, P, I), USE_LAYERNORM, (FLAG, USE_GT, TOPK, LOSS_WEIGHT), MLHEAD, EVAL_PERIOD
ROWS = {
    "S0": (SEM + "maskformer2_R50_bs16_160k", "R50", R50, 100, L512, 2048, 512, (512, 2048),
           ([256, 384, 512, 640, 768, 896], 3584), (True, False, False), False, OFF, 1.0, 5000),
    "S1": (SW_S + "base_IN21k_384_bs16_160k_res640", "B", SWB, 100, L640, 2560, 640, (640, 2560), TTA640,
           (True, False, False), False, OFF, 1.0, 5000),
    "S2": (SW_S + "base_IN21k_384_bs16_160k_res640-rankseg", "B", SWB, 100, L640, 2560, 640, (640, 2560),
           TTA640, (True, False, False), True, RS, 0.1, 5000),
    "S3": (SW_S + "base_IN21k_384_bs16_160k_res640-gt", "B", SWB, 100, L640, 2560, 640, (640, 2560), TTA640,
           (True, False, False), False, GT, 1.0, 5000),
    "S4": (SW_S + "large_IN21k_384_bs16_160k_res640", "L", SWL, 100, L640, 2560, 640, (640, 2560), TTA640,
           (True, False, False), False, OFF, 1.0, 5000),
    "S5": (SW_S + "large_IN21k_384_bs16_160k_res640-rankseg", "L", SWL, 100, L640, 2560, 640, (640, 2560),
           TTA640, (True, False, False), True, RS, 0.1, 5000),
    "S6": (SW_S + "large_IN21k_384_bs16_160k_res640-gt", "L", SWL, 100, L640, 2560, 640, (640, 2560), TTA640,
           (True, False, False), False, GT, 1.0, 5000),
    "P0": (PAN + "maskformer2_R50_bs16_160k", "R50", R50, 100, L640, 2560, 640, (640, 2560), TTA640,
           (True, True, False), False, OFF, 1.0, 5000),
    "P1": (SW_P + "large_IN21k_384_bs16_160k", "L", SWL, 200, L640, 2560, 640, (640, 2560), TTA640,
           (True, True, False), False, OFF, 1.0, 5000),
    "P2": (SW_P + "large_IN21k_384_bs16_160k-rankseg", "L", SWL, 200, L640, 2560, 640, (640, 2560), TTA640,
           (True, True, False), True, RS, 0.1, 10000),
    "P3": (SW_P + "large_IN21k_384_bs16_160k-gt", "L", SWL, 200, L640, 2560, 640, (640, 2560), TTA640,
           (True, True, False), False, GT, 1.0, 5000),
}
SWIN = {"B": (128, [2, 2, 18, 2], [4, 8, 16, 32]), "L": (192, [2, 2, 18, 2], [6, 12, 24, 48])}


def test_every_recipe_file_loads():
    names = list_recipes()
    assert {row[0] for row in ROWS.values()} <= set(names)
    for name in names:
        r = load_recipe(name)
        assert isinstance(r, Recipe) and r.MODEL.REFERENCE == "rankseg"


@pytest.mark.parametrize("row", sorted(ROWS))
def test_zoo_row_values(row):
    (name, bb, weights, q, train, max_train, crop, test, tta, on, ln, rs, mlhead, eval_period) = ROWS[row]
    r = load_recipe(name)
    m = r.MODEL
    assert m.WEIGHTS == weights
    assert m.META_ARCHITECTURE == "MaskFormer"
    if bb == "R50":
        assert m.BACKBONE.NAME == "build_resnet_backbone" and m.RESNETS.DEPTH == 50
        assert m.RESNETS.STRIDE_IN_1X1 is False and m.RESNETS.NORM == "FrozenBN"
        assert list(m.RESNETS.OUT_FEATURES) == ["res2", "res3", "res4", "res5"]
    else:
        assert m.BACKBONE.NAME == "D2SwinTransformer"
        embed, depths, heads = SWIN[bb]
        assert (m.SWIN.EMBED_DIM, list(m.SWIN.DEPTHS), list(m.SWIN.NUM_HEADS)) == (embed, depths, heads)
        assert (m.SWIN.WINDOW_SIZE, m.SWIN.PRETRAIN_IMG_SIZE, m.SWIN.DROP_PATH_RATE) == (12, 384, 0.3)
        assert m.SWIN.PATCH_NORM is True and m.SWIN.APE is False
    assert m.BACKBONE.FREEZE_AT == 0
    assert m.MASK_FORMER.NUM_OBJECT_QUERIES == q
    assert m.SEM_SEG_HEAD.NUM_CLASSES == 150
    inp = r.INPUT
    assert list(inp.MIN_SIZE_TRAIN) == train and inp.MAX_SIZE_TRAIN == max_train
    assert inp.CROP.ENABLED is True and inp.CROP.TYPE == "absolute" and list(inp.CROP.SIZE) == [crop, crop]
    assert inp.SIZE_DIVISIBILITY == crop
    assert (inp.MIN_SIZE_TEST, inp.MAX_SIZE_TEST) == test
    assert (list(r.TEST.AUG.MIN_SIZES), r.TEST.AUG.MAX_SIZE) == tta
    assert r.TEST.AUG.ENABLED is False and r.TEST.AUG.FLIP is True
    t = m.MASK_FORMER.TEST
    assert (t.SEMANTIC_ON, t.PANOPTIC_ON, t.INSTANCE_ON) == on
    assert m.SEM_SEG_HEAD.USE_LAYERNORM is ln
    k = m.RANKSEG
    assert (k.FLAG, k.USE_GT, k.TOPK, k.LOSS_WEIGHT) == rs
    assert (k.HIDDEN_DIM, k.SHARE_EMBEDDING) == (512, False)
    assert r.SOLVER.MLHEAD_MULTIPLIER == mlhead
    assert r.TEST.EVAL_PERIOD == eval_period
    task = "sem_seg" if row.startswith("S") else "panoptic"
    assert list(r.DATASETS.TRAIN) == [f"ade20k_{task}_train"] and list(r.DATASETS.TEST) == [f"ade20k_{task}_val"]
    assert inp.DATASET_MAPPER_NAME == ("mask_former_semantic" if task == "sem_seg" else "mask_former_panoptic")


def test_shared_settings():
    """Fact sheet §1.2 (a sample), resolved for one recipe."""
    r = load_recipe(ROWS["S5"][0])
    assert list(r.MODEL.PIXEL_MEAN) == [123.675, 116.280, 103.530]
    assert list(r.MODEL.PIXEL_STD) == [58.395, 57.120, 57.375]
    assert r.INPUT.FORMAT == "RGB" and r.INPUT.COLOR_AUG_SSD is True and r.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice"
    mf = r.MODEL.MASK_FORMER
    assert (mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.NO_OBJECT_WEIGHT) == (2.0, 5.0, 5.0, 0.1)
    assert (mf.HIDDEN_DIM, mf.NHEADS, mf.DIM_FEEDFORWARD, mf.DEC_LAYERS, mf.DROPOUT) == (256, 8, 2048, 10, 0.0)
    assert (mf.TRAIN_NUM_POINTS, mf.OVERSAMPLE_RATIO, mf.IMPORTANCE_SAMPLE_RATIO) == (12544, 3.0, 0.75)
    assert (mf.TEST.OVERLAP_THRESHOLD, mf.TEST.OBJECT_MASK_THRESHOLD) == (0.8, 0.8)
    assert mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE is False and mf.SIZE_DIVISIBILITY == 32
    s = r.SOLVER
    assert (s.OPTIMIZER, s.BASE_LR, s.WEIGHT_DECAY, s.BACKBONE_MULTIPLIER) == ("ADAMW", 1e-4, 0.05, 0.1)
    assert (s.WEIGHT_DECAY_NORM, s.WEIGHT_DECAY_EMBED, s.IMS_PER_BATCH, s.MAX_ITER) == (0.0, 0.0, 16, 160000)
    assert (s.LR_SCHEDULER_NAME, s.POLY_LR_POWER, s.WARMUP_ITERS, s.WARMUP_FACTOR) == ("WarmupPolyLR", 0.9, 0, 1.0)
    assert dict(s.CLIP_GRADIENTS) == {"ENABLED": True, "CLIP_TYPE": "full_model", "CLIP_VALUE": 0.01, "NORM_TYPE": 2.0}
    assert s.AMP.ENABLED is True and r.TEST.DETECTIONS_PER_IMAGE == 100
    assert r.DATALOADER.NUM_WORKERS == 4 and r.DATALOADER.FILTER_EMPTY_ANNOTATIONS is True


def test_recipe_is_immutable_and_has_attribute_access():
    r = load_recipe(ROWS["S0"][0])
    with pytest.raises(AttributeError):
        r.SEED = 3
    with pytest.raises(AttributeError):
        r.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    with pytest.raises(TypeError):
        r.MODEL["WEIGHTS"] = ""  # type: ignore[index]
    with pytest.raises(AttributeError, match="NUM_OBJECT_QUERIES"):
        r.MODEL.MASK_FORMER.NUM_OBJECT_QUERIE
    assert r.select("MODEL.RANKSEG.TOPK") == 0
    d = r.to_dict()
    d["MODEL"]["WEIGHTS"] = "x"  # a copy
    assert r.MODEL.WEIGHTS == R50
    assert isinstance(d["INPUT"]["MIN_SIZE_TRAIN"], list)


def test_overrides_are_applied_and_type_checked():
    name = ROWS["S1"][0]
    r = load_recipe(name, ["SOLVER.BASE_LR=2e-4", "INPUT.MIN_SIZE_TRAIN=[512,640]", "MODEL.RANKSEG.TOPK=150",
                           "MODEL.MASK_FORMER.CLASS_WEIGHT=3", "OUTPUT_DIR=/tmp/x", "MODEL.REFERENCE=mask2former"])
    assert r.SOLVER.BASE_LR == 2e-4 and isinstance(r.SOLVER.BASE_LR, float)
    assert list(r.INPUT.MIN_SIZE_TRAIN) == [512, 640]
    assert r.MODEL.RANKSEG.TOPK == 150 and r.MODEL.MASK_FORMER.CLASS_WEIGHT == 3.0
    assert r.OUTPUT_DIR == "/tmp/x" and r.MODEL.REFERENCE == "mask2former"
    assert r.with_overrides(["SEED=7"]).SEED == 7 and r.SEED == -1
    with pytest.raises(RecipeError, match=r"SOLVER\.BASE_LR.*float"):
        load_recipe(name, ["SOLVER.BASE_LR=fast"])
    with pytest.raises(RecipeError, match=r"MODEL\.RANKSEG\.TOPK"):
        load_recipe(name, ["MODEL.RANKSEG.TOPK=1.5"])
    with pytest.raises(RecipeError, match=r"MODEL\.RANKSEG\.FLAG.*bool"):
        load_recipe(name, ["MODEL.RANKSEG.FLAG=1"])
    with pytest.raises(RecipeError, match=r"INPUT\.MIN_SIZE_TRAIN.*list"):
        load_recipe(name, ["INPUT.MIN_SIZE_TRAIN=640"])
    with pytest.raises(RecipeError, match=r"MODEL\.REFERENCE"):
        load_recipe(name, ["MODEL.REFERENCE=detectron"])
    with pytest.raises(RecipeError, match="KEY.SUB=value"):
        load_recipe(name, ["SOLVER.BASE_LR"])


def test_unknown_key_names_key_file_and_close_match(tmp_path):
    with pytest.raises(RecipeError) as e:
        load_recipe(ROWS["S0"][0], ["MODEL.MASK_FORMER.NUM_OBJECT_QUERY=5"])
    msg = str(e.value)
    assert "MODEL.MASK_FORMER.NUM_OBJECT_QUERY" in msg and "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES" in msg
    f = tmp_path / "bad.yaml"
    f.write_text(f"_base_: {load_recipe(ROWS['S0'][0]).source}\nSOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(f)
    assert "SOLVER.BASE_LRR" in str(e.value) and str(f) in str(e.value) and "SOLVER.BASE_LR" in str(e.value)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("ade20k/semantic-segmentation/maskformer2_R5O_bs16_160k")


def test_base_chain_lists_and_cycles(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\nSEED: 1\n")
    (tmp_path / "b.yaml").write_text("_base_: [c.yaml]\nSEED: 2\n")
    (tmp_path / "c.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "d.yaml").write_text("_base_: [e.yaml, f.yaml]\nSEED: 4\n")
    (tmp_path / "e.yaml").write_text("SEED: 5\nOUTPUT_DIR: e\n")
    (tmp_path / "f.yaml").write_text("SEED: 6\nMODEL:\n  WEIGHTS: f.pkl\n")
    r = load_recipe(tmp_path / "d.yaml")
    assert (r.SEED, r.OUTPUT_DIR, r.MODEL.WEIGHTS) == (4, "e", "f.pkl")
    # names without a folder are searched in the recipe roots (RANKSEG_FAST_RECIPES first)
    monkeypatch.setenv("RANKSEG_FAST_RECIPES", str(tmp_path))
    assert load_recipe("d").SEED == 4
    (tmp_path / "g.yaml").write_text("_base_: maskformer2_swin_large_IN21k_384_bs16_160k_res640-rankseg.yaml\nSEED: 3\n")
    g = load_recipe("g.yaml")
    assert g.SEED == 3 and g.MODEL.RANKSEG.FLAG is True


def test_dump_round_trip(tmp_path):
    r = load_recipe(ROWS["P2"][0], ["SOLVER.BASE_LR=3e-5"])
    r.dump(tmp_path / "dump.yaml")
    again = load_recipe(tmp_path / "dump.yaml")
    assert again.to_dict() == r.to_dict() and again == r
    assert set(r.to_dict()) == set(DEFAULTS)


# ------------------------------------------------------------------------------- reference configs
BASE_REF = """\
MODEL:
  BACKBONE:
    FREEZE_AT: 0
    NAME: "build_resnet_backbone"
  WEIGHTS: "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  RESNETS:
    DEPTH: 50
    STRIDE_IN_1X1: False
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
DATASETS:
  TRAIN: ("ade20k_sem_seg_train",)
  TEST: ("ade20k_sem_seg_val",)
SOLVER:
  BASE_LR: 0.0001
  LR_SCHEDULER_NAME: "WarmupPolyLR"
INPUT:
  MIN_SIZE_TRAIN: !!python/object/apply:eval ["[int(x * 0.1 * 640) for x in range(5, 21)]"]
  CROP:
    ENABLED: True
    TYPE: "absolute"
    SIZE: (640, 640)
  FORMAT: "RGB"
VERSION: 2
"""
MID_REF = """\
_BASE_: Base-Test.yaml
MODEL:
  META_ARCHITECTURE: "MaskFormer"
  SEM_SEG_HEAD:
    NAME: "MaskFormerHead"
    NUM_CLASSES: 150
  MASK_FORMER:
    NUM_OBJECT_QUERIES: 100
    DEC_LAYERS: 10
"""
TOP_REF = """\
_BASE_: ../maskformer2_R50_test.yaml
MODEL:
  RANKSEG:
    FLAG: True
    LOSS_WEIGHT: 10
    TOPK: 150
  SEM_SEG_HEAD:
    USE_LAYERNORM: True
SOLVER:
  MLHEAD_MULTIPLIER: 0.1
"""


def _write_ref_chain(tmp_path):
    (tmp_path / "swin").mkdir()
    (tmp_path / "Base-Test.yaml").write_text(BASE_REF)
    (tmp_path / "maskformer2_R50_test.yaml").write_text(MID_REF)
    (tmp_path / "swin" / "top-rankseg.yaml").write_text(TOP_REF)
    return tmp_path / "swin" / "top-rankseg.yaml"


def test_from_reference_chain(tmp_path):
    top = _write_ref_chain(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing unknown in this chain (VERSION is dropped silently)
        r = from_reference_config(top)
    assert list(r.INPUT.MIN_SIZE_TRAIN) == L640 and list(r.INPUT.CROP.SIZE) == [640, 640]
    assert list(r.DATASETS.TRAIN) == ["ade20k_sem_seg_train"]
    assert (r.MODEL.RANKSEG.FLAG, r.MODEL.RANKSEG.TOPK, r.MODEL.RANKSEG.LOSS_WEIGHT) == (True, 150, 10.0)
    assert r.MODEL.SEM_SEG_HEAD.USE_LAYERNORM is True and r.SOLVER.MLHEAD_MULTIPLIER == 0.1
    assert r.MODEL.MASK_FORMER.DEC_LAYERS == 10 and r.MODEL.BACKBONE.FREEZE_AT == 0
    # keys the chain does not set take the detectron2 / Mask2Former defaults, as detectron2 would
    assert r.MODEL.MASK_FORMER.CLASS_WEIGHT == 1.0 and r.MODEL.MASK_FORMER.DROPOUT == 0.1
    assert r.SOLVER.WARMUP_ITERS == 1000 and r.SOLVER.AMP.ENABLED is False
    assert r.MODEL.REFERENCE == "rankseg"
    assert from_reference_config(top, reference="mask2former").MODEL.REFERENCE == "mask2former"


def test_from_reference_resolved_dump_drops_unknown_keys_with_one_warning(tmp_path):
    ours = load_recipe(ROWS["S2"][0]).to_dict()
    del ours["MODEL"]["REFERENCE"]
    ours["MODEL"]["ROI_HEADS"] = {f"KEY{i}": i for i in range(30)}
    ours["MODEL"]["DEVICE"] = "cuda"
    ours["MODEL"]["RESNETS"]["DEFORM_ON_PER_STAGE"] = [False, False, False, False]
    ours["CUDNN_BENCHMARK"] = False
    ours["VERSION"] = 2
    import yaml

    f = tmp_path / "config.yaml"
    f.write_text(yaml.safe_dump(ours))
    with pytest.warns(ReferenceConfigWarning) as rec:
        r = from_reference_config(f)
    msgs = [str(w.message) for w in rec if issubclass(w.category, ReferenceConfigWarning)]
    assert len(msgs) == 1
    assert "32 key(s)" in msgs[0] and "MODEL.ROI_HEADS.KEY0" in msgs[0] and "MODEL.DEVICE" in msgs[0]
    assert "..." in msgs[0] and "VERSION" not in msgs[0]
    expected = load_recipe(ROWS["S2"][0]).to_dict()
    assert r.to_dict() == expected

    ours["MODEL"]["RESNETS"]["DEFORM_ON_PER_STAGE"] = [False, True, True, True]
    f.write_text(yaml.safe_dump(ours))
    with pytest.raises(RecipeError, match="DEFORM_ON_PER_STAGE"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_reference_config(f)

    ours["MODEL"]["RESNETS"]["DEFORM_ON_PER_STAGE"] = [False] * 4
    ours["SOLVER"]["BASE_LR"] = "fast"
    f.write_text(yaml.safe_dump(ours))
    with pytest.raises(RecipeError, match=r"SOLVER\.BASE_LR"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_reference_config(f)


def test_from_reference_repairs_mlseg_bug(tmp_path):
    _write_ref_chain(tmp_path)
    f = tmp_path / "swin" / "top-gt.yaml"
    f.write_text("_BASE_: ../maskformer2_R50_test.yaml\nMODEL:\n  MLSEG:\n    USE_GT: True\n")
    with pytest.warns(ReferenceConfigWarning, match=r"MODEL\.MLSEG\.USE_GT.*MODEL\.RANKSEG\.USE_GT"):
        r = from_reference_config(f)
    assert r.MODEL.RANKSEG.USE_GT is True and r.MODEL.RANKSEG.FLAG is False


def test_reference_eval_is_restricted(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text('INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval ["__import__(\'os\').getcwd()"]\n')
    with pytest.raises(RecipeError, match="not allowed|calls"):
        from_reference_config(f)
