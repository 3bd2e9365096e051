"""A deterministic synthetic segmentation dataset written in the ADE20K layouts (the embedded default).

``generate_synthetic(root)`` writes, under ``root`` (an ``ADEChallengeData2016``-like folder)::

    images/{training,validation}/SYN_{train,val}_%08d.jpg
    annotations_detectron2/{training,validation}/<stem>.png     (0..9, 255 = unlabeled clutter)
    ade20k_panoptic_{train,val}/<stem>.png                       (RGB-encoded segment ids)
    ade20k_panoptic_{train,val}.json                             (images, annotations, categories)
    synthetic_manifest.json                                      (version, parameters, sha256 of every file)

so :class:`~rankseg_fast.data.datasets.ade20k.ADE20KSemantic` / ``ADE20KPanoptic`` read it unchanged.

Scenes (10 classes, :mod:`synthetic_categories`): 1-3 horizontal "stuff" bands with wavy borders drawn
from sky / wall / grass / water, then 1-6 "thing" instances (ball = ellipse, box = rotated rectangle,
roof = triangle, star = 5-point star, ring = annulus, kite = rhombus) of random size, aspect, rotation
and position, painted in order so later ones occlude earlier ones; sometimes an unlabeled clutter blob
(label 255, panoptic id 0) on top. Each class has a colour family and a texture (gradient, bricks, grain,
ripples, shading, stripes, ...), jittered per instance, plus a per-image illumination change, pixel noise
and JPEG compression. Learnable: appearance and shape identify the class. Not trivial: sky/water share
colours (told apart by texture and position), ball/roof and ring/kite share colours (told apart by shape),
instances occlude each other and sizes span an order of magnitude.

Deterministic: every image comes from ``numpy.random.default_rng([seed, split, index])``; identical
parameters give byte-identical files. Idempotent: an existing tree whose manifest matches the version
and parameters is reused; otherwise it is rebuilt in a temporary sibling folder and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from rankseg_fast.data.datasets.synthetic_categories import SYNTHETIC_CATEGORIES, SYNTHETIC_STUFF_IDS

__all__ = ["generate_synthetic", "default_synthetic_root", "render_scene", "SYNTHETIC_VERSION", "MANIFEST"]

SYNTHETIC_VERSION = 1
MANIFEST = "synthetic_manifest.json"
SKY, WALL, GRASS, WATER, BALL, BOX, ROOF, STAR, RING, KITE = range(10)
THINGS = (BALL, BOX, ROOF, STAR, RING, KITE)
# band stacks (top to bottom)
_SCENES = ((SKY, GRASS), (SKY, WATER, GRASS), (SKY, WALL, GRASS), (WALL, GRASS), (SKY, WATER), (WALL,),
           (WALL, WATER), (SKY, WALL))
# base RGB appearance per class (sky/water, ball/roof, ring/kite deliberately close)
_BASE = {
    SKY: (90, 150, 225), WATER: (60, 120, 210), WALL: (165, 155, 135), GRASS: (70, 150, 55),
    BALL: (205, 50, 45), ROOF: (195, 60, 50), BOX: (185, 125, 60), STAR: (235, 205, 40),
    RING: (150, 70, 185), KITE: (140, 80, 190),
}


def default_synthetic_root() -> Path:
    """``$RANKSEG_FAST_CACHE/synthetic`` or ``~/.cache/rankseg_fast/synthetic``."""
    cache = os.environ.get("RANKSEG_FAST_CACHE")
    base = Path(cache) if cache else Path.home() / ".cache" / "rankseg_fast"
    return base / "synthetic"


# ----------------------------------------------------------------------------------------- texture
def _smooth_noise(rng, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise in [-1, 1]: a random (cells x cells) grid upsampled bilinearly."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    up = np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR), np.float32)
    return up / 127.5 - 1.0


def _texture(cls: int, rng, h: int, w: int, yy, xx) -> np.ndarray:
    """(h, w) multiplicative-ish intensity pattern (about -1..1) characteristic of ``cls``."""
    if cls == SKY:  # smooth vertical gradient + soft clouds
        return (yy / h) * 1.2 - 0.6 + 0.25 * _smooth_noise(rng, h, w, 4)
    if cls == WATER:  # horizontal ripples
        f = rng.uniform(0.35, 0.6)
        return 0.5 * np.sin(yy * f + 2.0 * np.sin(xx * 0.08 + rng.uniform(0, 6))) + 0.2 * _smooth_noise(rng, h, w, 8)
    if cls == WALL:  # bricks: mortar lines
        bh = rng.integers(6, 11)
        bw = 2 * bh
        row = (yy // bh).astype(np.int64)
        mortar = ((yy % bh) < 1.5) | (((xx + (row % 2) * bw // 2) % bw) < 1.5)
        return np.where(mortar, -0.9, 0.1 * _smooth_noise(rng, h, w, 6))
    if cls == GRASS:  # fine grain with vertical streaks
        return 0.6 * (rng.random((h, w)) - 0.5) + 0.3 * np.sin(xx * 1.3 + rng.uniform(0, 6)) * (rng.random((1, w)) - 0.2)
    if cls in (BALL, ROOF):  # shading from one side
        ang = rng.uniform(0, 2 * np.pi)
        return 0.5 * np.tanh(((xx - w / 2) * np.cos(ang) + (yy - h / 2) * np.sin(ang)) / max(h, w) * 4)
    if cls == BOX:  # diagonal stripes
        return 0.35 * np.sign(np.sin((xx + yy) * rng.uniform(0.4, 0.7)))
    if cls == STAR:  # flat, slightly grainy
        return 0.15 * (rng.random((h, w)) - 0.5)
    # RING, KITE: checker-like dots
    p = rng.integers(4, 7)
    return 0.3 * np.where(((xx // p) + (yy // p)) % 2 == 0, 1.0, -1.0)


def _paint(canvas: np.ndarray, mask: np.ndarray, cls: int, rng, yy, xx) -> None:
    h, w = mask.shape
    base = np.array(_BASE[cls], np.float32) + rng.normal(0, 12, 3)  # per-instance colour jitter
    tex = _texture(cls, rng, h, w, yy, xx)[..., None]
    colour = base[None, None] * (1.0 + 0.35 * tex)
    canvas[mask] = colour[mask]


# ------------------------------------------------------------------------------------------ shapes
def _shape_mask(cls: int, rng, h: int, w: int, yy, xx) -> np.ndarray:
    side = min(h, w)
    r = rng.uniform(0.06, 0.3) * side  # size spans ~5x
    cy, cx = rng.uniform(-0.1 * h, 1.1 * h), rng.uniform(-0.1 * w, 1.1 * w)  # may be partly out of view
    ang = rng.uniform(0, np.pi)
    aspect = rng.uniform(0.55, 1.0)
    u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
    v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
    if cls == BALL:
        return (u / r) ** 2 + (v / (r * aspect)) ** 2 <= 1.0
    if cls == BOX:
        return (np.abs(u) <= r) & (np.abs(v) <= r * aspect)
    if cls == ROOF:  # triangle pointing "up" in its frame
        t = (v + r * 0.6) / (1.6 * r)  # 0 at apex, 1 at base
        return (t >= 0) & (t <= 1) & (np.abs(u) <= t * r)
    if cls == STAR:
        theta = np.arctan2(v, u)
        rad = np.hypot(u, v)
        return rad <= r * (0.55 + 0.45 * np.cos(5 * theta) ** 2 * (np.cos(5 * theta) > 0))
    if cls == RING:
        q = (u / r) ** 2 + (v / (r * aspect)) ** 2
        return (q <= 1.0) & (q >= rng.uniform(0.2, 0.45))
    # KITE: rhombus
    return np.abs(u) / r + np.abs(v) / (r * aspect * 0.8) <= 1.0


def render_scene(rng: np.random.Generator, height: int, width: int):
    """One scene: (image (H, W, 3) uint8, semantic (H, W) uint8, instances [(class, mask)] in paint order,
    void mask). Instances are final visible masks (after occlusion), possibly empty."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    canvas = np.zeros((height, width, 3), np.float32)
    sem = np.full((height, width), 255, np.uint8)
    bands = _SCENES[int(rng.integers(len(_SCENES)))]
    cuts = np.sort(rng.uniform(0.2, 0.8, len(bands) - 1)) * height
    top = np.zeros(width, np.float32)
    for i, cls in enumerate(bands):
        if i < len(bands) - 1:
            bottom = cuts[i] + rng.uniform(2, 0.06 * height) * np.sin(xx[0] * rng.uniform(0.03, 0.12) + rng.uniform(0, 6))
        else:
            bottom = np.full(width, height + 1, np.float32)
        mask = (yy >= top[None]) & (yy < bottom[None])
        _paint(canvas, mask, cls, rng, yy, xx)
        sem[mask] = cls
        top = bottom
    owner = np.full((height, width), -1, np.int32)
    classes = []
    for k in range(int(rng.integers(1, 7))):
        cls = THINGS[int(rng.integers(len(THINGS)))]
        mask = _shape_mask(cls, rng, height, width, yy, xx)
        _paint(canvas, mask, cls, rng, yy, xx)
        sem[mask] = cls
        owner[mask] = k
        classes.append(cls)
    void = np.zeros((height, width), bool)
    if rng.random() < 0.3:  # unlabeled clutter blob
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.04, 0.12) * min(height, width)
        void = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (_smooth_noise(rng, height, width, 6) > -0.3)
        canvas[void] = rng.uniform(0, 255, (int(void.sum()), 3))
        sem[void] = 255
        owner[void] = -1
    instances = [(cls, owner == k) for k, cls in enumerate(classes)]
    canvas = canvas * rng.uniform(0.7, 1.2) + rng.uniform(-15, 15)  # illumination
    canvas += rng.normal(0, 6, canvas.shape)  # sensor noise
    return np.clip(canvas, 0, 255).astype(np.uint8), sem, instances, void


# -------------------------------------------------------------------------------------------- write
def _panoptic(rng, sem: np.ndarray, instances, used_ids: set) -> tuple[np.ndarray, list[dict]]:
    ids = np.zeros(sem.shape, np.int32)
    segments = []

    def new_id():
        while True:
            i = int(rng.integers(1, 1 << 24))
            if i not in used_ids:
                used_ids.add(i)
                return i

    thing_pixels = np.zeros(sem.shape, bool)
    for _, m in instances:
        thing_pixels |= m
    regions = [(int(c), (sem == c) & ~thing_pixels) for c in SYNTHETIC_STUFF_IDS]
    regions += [(int(c), m) for c, m in instances]
    for cls, mask in regions:
        area = int(mask.sum())
        if area == 0:
            continue
        sid = new_id()
        ids[mask] = sid
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        segments.append({"id": sid, "category_id": cls, "area": area,
                         "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1], "iscrowd": 0})
    rgb = np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)
    return rgb, segments


def _write_split(root: Path, split: str, count: int, size: int, seed: int) -> None:
    sub, short = ("training", "train") if split == "train" else ("validation", "val")
    image_dir, sem_dir = root / "images" / sub, root / "annotations_detectron2" / sub
    pan_dir = root / f"ade20k_panoptic_{short}"
    for d in (image_dir, sem_dir, pan_dir):
        d.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
        h = int(round(size * rng.uniform(0.75, 1.25)))
        w = int(round(size * rng.uniform(0.75, 1.4)))
        image, sem, instances, _ = render_scene(rng, h, w)
        rgb, segments = _panoptic(rng, sem, instances, set())
        stem = f"SYN_{short}_{i + 1:08d}"
        Image.fromarray(image).save(image_dir / f"{stem}.jpg", quality=90)
        Image.fromarray(sem).save(sem_dir / f"{stem}.png")
        Image.fromarray(rgb).save(pan_dir / f"{stem}.png")
        images.append({"id": stem, "file_name": f"{stem}.jpg", "width": w, "height": h})
        annotations.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": segments})
    categories = [{"id": i, "name": c.name, "isthing": int(c.isthing), "color": list(c.color)}
                  for i, c in enumerate(SYNTHETIC_CATEGORIES)]
    with open(root / f"ade20k_panoptic_{short}.json", "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest_matches(root: Path, params: dict) -> bool:
    try:
        with open(root / MANIFEST, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    return manifest.get("version") == SYNTHETIC_VERSION and manifest.get("params") == params


def generate_synthetic(root: str | os.PathLike | None = None, num_train: int = 256, num_val: int = 64,
                       size: int = 192, seed: int = 0) -> Path:
    """Writes (or reuses) the synthetic dataset at ``root`` (default :func:`default_synthetic_root`) and
    returns ``root``. ``size`` is the nominal image side (heights 0.75-1.25x, widths 0.75-1.4x)."""
    root = Path(root) if root is not None else default_synthetic_root()
    params = {"num_train": int(num_train), "num_val": int(num_val), "size": int(size), "seed": int(seed)}
    if _manifest_matches(root, params):
        return root
    if root.exists() and any(root.iterdir()) and not (root / MANIFEST).exists():
        raise FileExistsError(f"{root}: exists and is not a synthetic dataset (no {MANIFEST}); refusing to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_split(tmp, "train", params["num_train"], params["size"], params["seed"])
        _write_split(tmp, "val", params["num_val"], params["size"], params["seed"])
        files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump({"version": SYNTHETIC_VERSION, "params": params, "files": files}, f, indent=1, sort_keys=True)
        if root.exists():
            if _manifest_matches(root, params):  # another process finished first
                return root
            old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(root, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if not _manifest_matches(root, params):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
