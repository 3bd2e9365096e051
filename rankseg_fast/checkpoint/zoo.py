"""The model-zoo table: released Mask2Former / RankSeg models and the init files the recipes start from.

Sources: fact sheet §1.3, §1.4, §3.5, §3.6 (RankSeg and Mask2Former MODEL_ZOO.md). Metrics are the reported
numbers (mIoU / PQ / AP in %); `mIoU_ms_flip` is the multi-scale + flip number. YouTube-VIS Swin-L rows are
reported as "60.4(60.7)" / "61.1(61.4)"; the parenthesised value is stored as `AP_parenthesised` (the zoo does
not say what it is; the RankSeg zoo notes that its YTVIS numbers average 3 models).

Files are cached under `$RANKSEG_FAST_CACHE` (default `~/.cache/rankseg_fast`) by their release file name.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

M2F = "https://dl.fbaipublicfiles.com/maskformer"
RS = "https://github.com/openseg-group/RankSeg/releases/download/v1.0.0"
D2 = "https://dl.fbaipublicfiles.com/detectron2"
# External knowledge (not in the reference repos): where the official Swin IN-21k checkpoints are published.
SWIN = "https://github.com/SwinTransformer/storage/releases/download/v1.0.0"


@dataclass(frozen=True)
class ZooEntry:
    """One downloadable (or reported-only) checkpoint.

    name: our short name (`zoo:NAME`). kind: "model" (a trained model of a recipe row) or "init" (a file a
    recipe's `MODEL.WEIGHTS` points at). recipe: config path relative to `configs/` ("" for init files).
    url: download address, None when no file was released. md5_prefix: the hash fragment in the file name
    (M2F `model_final_XXXXXX.pkl`), None when the name has none. convert: converter to apply after reading
    ("swin" for the official Swin `.pth`), None otherwise.
    """

    name: str
    kind: str
    recipe: str
    url: str | None
    md5_prefix: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    backbone: str = ""
    row: str = ""
    convert: str | None = None
    notes: str = ""

    @property
    def filename(self) -> str | None:
        return None if self.url is None else self.url.rsplit("/", 1)[-1]


def _md5_from_name(url: str) -> str | None:
    stem = url.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    if stem.startswith("model_final_"):
        return stem[len("model_final_"):]
    return None


def _e(name, kind, recipe, url, metrics=None, backbone="", row="", convert=None, notes=""):
    return ZooEntry(name=name, kind=kind, recipe=recipe, url=url, md5_prefix=None if url is None else _md5_from_name(url),
                    metrics=dict(metrics or {}), backbone=backbone, row=row, convert=convert, notes=notes)


_ADE_SEM = "ade20k/semantic-segmentation/swin/"
_ADE_PAN = "ade20k/panoptic-segmentation/swin/"
_YT = "youtubevis_2019/"
_VS = "vspw/"

ZOO_ENTRIES: tuple[ZooEntry, ...] = (
    # --- ADE20K panoptic (§1.3 P1, P2)
    _e("ade20k-pan-swin-l", "model", _ADE_PAN + "maskformer2_swin_large_IN21k_384_bs16_160k.yaml",
       f"{M2F}/mask2former/ade20k/panoptic/maskformer2_swin_large_IN21k_384_bs16_160k/model_final_e0c58e.pkl",
       {"PQ": 48.1, "AP": 34.2, "mIoU": 54.5}, "swin_large", "P1",
       notes="AP only with M2F's INSTANCE_ON (RS recipe has it off); 200 queries"),
    _e("ade20k-pan-swin-l-rankseg", "model", _ADE_PAN + "maskformer2_swin_large_IN21k_384_bs16_160k-rankseg.yaml",
       f"{RS}/ade20k_pan_maskformer2_swin_large_IN21k_384_bs16_160k-rankseg.pth",
       {"PQ": 48.9, "mIoU": 56.2}, "swin_large", "P2", notes="200 queries"),
    # --- ADE20K semantic (§1.3 S1-S5)
    _e("ade20k-sem-swin-b", "model", _ADE_SEM + "maskformer2_swin_base_IN21k_384_bs16_160k_res640.yaml",
       f"{M2F}/mask2former/ade20k/semantic/maskformer2_swin_base_IN21k_384_bs16_160k_res640/model_final_7e47bf.pkl",
       {"mIoU": 53.9, "mIoU_ms_flip": 55.1}, "swin_base", "S1"),
    _e("ade20k-sem-swin-b-rankseg", "model", _ADE_SEM + "maskformer2_swin_base_IN21k_384_bs16_160k_res640-rankseg.yaml",
       f"{RS}/ade20k_maskformer2_swin_base_IN21k_384_bs16_160k_res640-rankseg.pth",
       {"mIoU": 54.9, "mIoU_ms_flip": 55.6}, "swin_base", "S2"),
    _e("ade20k-sem-swin-b-gt", "model", _ADE_SEM + "maskformer2_swin_base_IN21k_384_bs16_160k_res640-gt.yaml",
       f"{RS}/ade20k_maskformer2_swin_base_IN21k_384_bs16_160k_res640-gt.pth",
       {"mIoU": 68.0}, "swin_base", "S3", notes="oracle: uses ground-truth image-level classes"),
    _e("ade20k-sem-swin-l", "model", _ADE_SEM + "maskformer2_swin_large_IN21k_384_bs16_160k_res640.yaml",
       f"{M2F}/mask2former/ade20k/semantic/maskformer2_swin_large_IN21k_384_bs16_160k_res640/model_final_6b4a3a.pkl",
       {"mIoU": 56.1, "mIoU_ms_flip": 57.3}, "swin_large", "S4"),
    _e("ade20k-sem-swin-l-rankseg", "model", _ADE_SEM + "maskformer2_swin_large_IN21k_384_bs16_160k_res640-rankseg.yaml",
       f"{RS}/ade20k_maskformer2_swin_large_IN21k_384_bs16_160k_res640-rankseg.pth",
       {"mIoU": 56.5, "mIoU_ms_flip": 58.0}, "swin_large", "S5"),
    # --- YouTube-VIS 2019 (§1.4 Y1-Y6)
    _e("ytvis2019-r101", "model", _YT + "video_maskformer2_R101_bs16_8ep.yaml",
       f"{M2F}/video_mask2former/ytvis_2019/video_maskformer2_R101_bs16_8ep/model_final_a34dca.pkl",
       {"AP": 49.2}, "R101", "Y1"),
    _e("ytvis2019-r101-rankseg", "model", _YT + "video_maskformer2_R101_bs16_8ep-rankseg.yaml",
       f"{RS}/ytvis2019_video_maskformer2_R101_bs16_8ep-rankseg.pth", {"AP": 50.5}, "R101", "Y2"),
    _e("ytvis2019-swin-b", "model", _YT + "swin/video_maskformer2_swin_base_IN21k_384_bs16_8ep.yaml",
       f"{M2F}/video_mask2former/ytvis_2019/video_maskformer2_swin_base_IN21k_384_bs16_8ep/model_final_221a8a.pkl",
       {"AP": 59.5}, "swin_base", "Y3"),
    _e("ytvis2019-swin-b-rankseg", "model", _YT + "swin/video_maskformer2_swin_base_IN21k_384_bs16_8ep-rankseg.yaml",
       f"{RS}/ytvis2019_video_maskformer2_swin_base_IN21k_384_bs16_8ep.pth", {"AP": 60.3}, "swin_base", "Y4",
       notes="listed as the RankSeg model but the file name lacks '-rankseg'; which model it holds cannot be "
             "determined offline (the key set tells: ml_head.* present = RankSeg)"),
    _e("ytvis2019-swin-l", "model", _YT + "swin/video_maskformer2_swin_large_IN21k_384_bs16_8ep.yaml",
       f"{M2F}/video_mask2former/ytvis_2019/video_maskformer2_swin_large_IN21k_384_bs16_8ep/model_final_c5c739.pkl",
       {"AP": 60.4, "AP_parenthesised": 60.7}, "swin_large", "Y5", notes="200 queries"),
    _e("ytvis2019-swin-l-rankseg", "model", _YT + "swin/video_maskformer2_swin_large_IN21k_384_bs16_8ep-rankseg.yaml",
       f"{RS}/ytvis2019_video_maskformer2_swin_large_IN21k_384_bs16_8ep-rankseg.pth",
       {"AP": 61.1, "AP_parenthesised": 61.4}, "swin_large", "Y6", notes="200 queries"),
    # --- VSPW (§1.4 V1-V5; Swin-B rows were reported but no file was released)
    _e("vspw-r101", "model", _VS + "video_maskformer2_R101_bs16_8ep.yaml",
       f"{RS}/vspw_video_maskformer2_R101_bs16_8ep.pth", {"mIoU": 45.9}, "R101", "V1"),
    _e("vspw-r101-rankseg", "model", _VS + "video_maskformer2_R101_bs16_8ep-rankseg.yaml",
       f"{RS}/vspw_video_maskformer2_R101_bs16_8ep-rankseg.pth", {"mIoU": 47.0}, "R101", "V2"),
    _e("vspw-r101-gt", "model", _VS + "video_maskformer2_R101_bs16_8ep-gt.yaml",
       f"{RS}/vspw_video_maskformer2_R101_bs16_8ep-gt.pth", {"mIoU": 62.3}, "R101", "V3",
       notes="oracle: uses ground-truth image-level classes"),
    _e("vspw-swin-b", "model", _VS + "swin/video_maskformer2_swin_base_IN21k_384_bs16_8ep.yaml", None,
       {"mIoU": 59.4}, "swin_base", "V4", notes="no file released"),
    _e("vspw-swin-b-rankseg", "model", _VS + "swin/video_maskformer2_swin_base_IN21k_384_bs16_8ep-rankseg.yaml", None,
       {"mIoU": 60.1}, "swin_base", "V5", notes="no file released"),
    # --- init files (§3.5)
    _e("R-50", "init", "", f"{D2}/ImageNetPretrained/torchvision/R-50.pkl", backbone="R50",
       notes="torchvision ResNet-50 converted by convert-torchvision-to-d2 (detectron2 names); ADE R50 recipes"),
    _e("R-103", "init", "", f"{D2}/DeepLab/R-103.pkl", backbone="R101c",
       notes="ResNet-101 with the 3x3 deep stem (R101c); detectron2 names; not used by an in-scope recipe"),
    _e("swin-b-in21k-384", "init", "", f"{SWIN}/swin_base_patch4_window12_384_22k.pth", backbone="swin_base",
       convert="swin", notes="official Swin-B IN-21k 384; the recipes use its converted "
                             "pretrained_weights/swin_base_patch4_window12_384_22k.pkl (converted on load here)"),
    _e("swin-l-in21k-384", "init", "", f"{SWIN}/swin_large_patch4_window12_384_22k.pth", backbone="swin_large",
       convert="swin", notes="official Swin-L IN-21k 384; converted on load like swin-b-in21k-384"),
    _e("coco-ins-r50", "init", "", f"{M2F}/mask2former/coco/instance/maskformer2_R50_bs16_50ep/model_final_3c8ec9.pkl",
       backbone="R50", notes="M2F COCO instance model (video R50 recipes)"),
    _e("coco-ins-r101", "init", "", f"{M2F}/mask2former/coco/instance/maskformer2_R101_bs16_50ep/model_final_eba159.pkl",
       backbone="R101", notes="M2F COCO instance model; init of the R101 YTVIS / VSPW recipes"),
    _e("coco-ins-swin-b", "init", "",
       f"{M2F}/mask2former/coco/instance/maskformer2_swin_base_IN21k_384_bs16_50ep/model_final_83d103.pkl",
       backbone="swin_base", notes="M2F COCO instance model; init of the Swin-B YTVIS / VSPW recipes"),
    _e("coco-ins-swin-l", "init", "",
       f"{M2F}/mask2former/coco/instance/maskformer2_swin_large_IN21k_384_bs16_100ep/model_final_e5f453.pkl",
       backbone="swin_large", notes="M2F COCO instance model, 200 queries; init of the Swin-L YTVIS recipes"),
)

ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in ZOO_ENTRIES}


def get_entry(name: str) -> ZooEntry:
    """Entry by name (a leading `zoo:` is accepted)."""
    key = name[4:] if name.startswith("zoo:") else name
    if key not in ZOO:
        raise KeyError(f"unknown model-zoo name {key!r}; known: {', '.join(ZOO)}")
    return ZOO[key]


def find_by_recipe(recipe: str) -> ZooEntry | None:
    """The trained-model entry of a recipe path (relative to configs/, or ending with it)."""
    for entry in ZOO_ENTRIES:
        if entry.kind == "model" and (recipe == entry.recipe or recipe.endswith("/" + entry.recipe)):
            return entry
    return None


def cache_dir() -> Path:
    """`$RANKSEG_FAST_CACHE`, else `~/.cache/rankseg_fast`."""
    root = os.environ.get("RANKSEG_FAST_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "rankseg_fast"


def cache_path(name: str) -> Path:
    """Where the file of zoo entry `name` lives (or must be placed) in the cache."""
    entry = get_entry(name)
    if entry.filename is None:
        raise FileNotFoundError(f"model-zoo entry {entry.name!r} ({entry.recipe}) has no released file: {entry.notes}")
    return cache_dir() / entry.filename


def md5sum(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_md5_prefix(path: str | os.PathLike, prefix: str | None) -> bool:
    """True when the file's md5 starts with `prefix` (always True for `prefix=None`: nothing to check)."""
    if not prefix:
        return True
    return md5sum(path).startswith(prefix.lower())


__all__ = ["ZOO", "ZOO_ENTRIES", "ZooEntry", "cache_dir", "cache_path", "find_by_recipe", "get_entry", "md5sum",
           "verify_md5_prefix"]
