"""The reference ADE20K training augmentations on numpy arrays (fact sheet §1.3, §1.5).

Order (``MaskFormerSemanticDatasetMapper``): ResizeShortestEdge (choice) -> RandomCrop with the
single-category area constraint -> ColorAugSSD -> RandomFlip (horizontal, p=0.5) -> pad bottom/right to
``SIZE_DIVISIBILITY`` (image 128, semantic 255, panoptic id 0).

A sample travels as an :class:`AugSample` holding ``image`` (H, W, 3) uint8 RGB, optional ``sem_seg``
(H, W) uint8 and optional ``pan_seg`` (H, W, 3) uint8 RGB-encoded segment ids. Geometric steps move all
three; the colour step touches only the image. Every random draw comes from the ``numpy.random.Generator``
passed in, so a (seed, sample) pair always gives the same result.

Interpolation as in detectron2: the image is resized with PIL bilinear; the semantic map, which the
reference mapper converts to float64 first, goes through ``torch.nn.functional.interpolate(mode="nearest")``;
the panoptic PNG (uint8 RGB) through PIL nearest. The test-time resize (RS test mapper) uses PIL
bilinear for the image and PIL nearest for the uint8 label map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rankseg_fast.data.image_io import shortest_edge_size

__all__ = [
    "AugSample",
    "ResizeShortestEdge",
    "RandomCropCategoryAreaConstraint",
    "ColorAugSSD",
    "RandomFlip",
    "PadToDivisibility",
    "Compose",
    "build_train_transform",
    "TestResize",
    "build_test_transform",
    "rgb_to_hsv_u8",
    "hsv_to_rgb_u8",
]

IMAGE_PAD_VALUE = 128
PANOPTIC_PAD_VALUE = 0


@dataclass
class AugSample:
    image: np.ndarray
    sem_seg: np.ndarray | None = None
    pan_seg: np.ndarray | None = None
    applied: list = field(default_factory=list)  # names/params of applied steps (debugging, tests)

    def geometric(self, fn) -> None:
        """Applies ``fn(array, kind)`` to every present array; kind in {"image", "sem_seg", "pan_seg"}."""
        self.image = fn(self.image, "image")
        if self.sem_seg is not None:
            self.sem_seg = fn(self.sem_seg, "sem_seg")
        if self.pan_seg is not None:
            self.pan_seg = fn(self.pan_seg, "pan_seg")


# ----------------------------------------------------------------------------------------- resize
def _pil_resize(array: np.ndarray, height: int, width: int, resample) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((width, height), resample))


def _torch_nearest(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """detectron2's float path: F.interpolate(mode="nearest") (src = floor(dst * in / out))."""
    t = torch.from_numpy(np.ascontiguousarray(label)).to(torch.float32)[None, None]
    return F.interpolate(t, size=(height, width), mode="nearest")[0, 0].numpy().astype(label.dtype)


def resize_sample(sample: AugSample, height: int, width: int, label_interp: str = "torch") -> None:
    """Resizes every array of ``sample`` to (height, width)."""
    if sample.image.shape[:2] == (height, width):
        return

    def fn(a, kind):
        if kind == "image":
            return _pil_resize(a, height, width, Image.BILINEAR)
        if kind == "sem_seg" and label_interp == "torch":
            return _torch_nearest(a, height, width)
        return _pil_resize(a, height, width, Image.NEAREST)

    sample.geometric(fn)


class ResizeShortestEdge:
    """Short side drawn uniformly from ``short_edge_lengths`` ("choice"), long side capped at ``max_size``."""

    def __init__(self, short_edge_lengths, max_size: int):
        self.short_edge_lengths = tuple(int(s) for s in short_edge_lengths)
        self.max_size = int(max_size)

    def __call__(self, sample: AugSample, rng: np.random.Generator) -> AugSample:
        short = self.short_edge_lengths[int(rng.integers(len(self.short_edge_lengths)))]
        if short == 0:
            return sample
        h, w = sample.image.shape[:2]
        new_h, new_w = shortest_edge_size(h, w, short, self.max_size)
        resize_sample(sample, new_h, new_w)
        sample.applied.append(("resize", new_h, new_w))
        return sample


# ------------------------------------------------------------------------------------------- crop
class RandomCropCategoryAreaConstraint:
    """Absolute random crop of min(crop_h, H) x min(crop_w, W). With ``single_category_max_area`` < 1,
    up to 10 crops are tried until one has more than one category (``ignore_label`` excluded) and no
    category covering ``single_category_max_area`` or more of the counted pixels (detectron2's rule);
    the last try is kept otherwise."""

    def __init__(self, crop_size, single_category_max_area: float = 1.0, ignore_label: int = 255):
        self.crop_h, self.crop_w = (int(crop_size[0]), int(crop_size[1]))
        self.single_category_max_area = float(single_category_max_area)
        self.ignore_label = ignore_label

    def _draw(self, h: int, w: int, ch: int, cw: int, rng) -> tuple[int, int]:
        y0 = int(rng.integers(h - ch + 1))
        x0 = int(rng.integers(w - cw + 1))
        return y0, x0

    def __call__(self, sample: AugSample, rng: np.random.Generator) -> AugSample:
        h, w = sample.image.shape[:2]
        ch, cw = min(self.crop_h, h), min(self.crop_w, w)
        if self.single_category_max_area >= 1.0 or sample.sem_seg is None:
            y0, x0 = self._draw(h, w, ch, cw, rng)
        else:
            for _ in range(10):
                y0, x0 = self._draw(h, w, ch, cw, rng)
                labels, counts = np.unique(sample.sem_seg[y0:y0 + ch, x0:x0 + cw], return_counts=True)
                if self.ignore_label is not None:
                    counts = counts[labels != self.ignore_label]
                if len(counts) > 1 and counts.max() < counts.sum() * self.single_category_max_area:
                    break
        sample.geometric(lambda a, kind: a[y0:y0 + ch, x0:x0 + cw].copy())
        sample.applied.append(("crop", y0, x0, ch, cw))
        return sample


# ------------------------------------------------------------------------------------ colour (SSD)
def rgb_to_hsv_u8(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> uint8 HSV with OpenCV's 8-bit convention (H in [0, 180), S, V in [0, 255])."""
    c = rgb.astype(np.float32)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    v = c.max(axis=-1)
    diff = v - c.min(axis=-1)
    s = np.where(v > 0, 255.0 * diff / np.maximum(v, 1), 0.0)
    safe = np.maximum(diff, 1e-6)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(diff > 0, h * 30.0, 0.0)  # 60 degrees per sector / 2
    h = np.where(h < 0, h + 180.0, h)
    out = np.stack([np.round(h) % 180, np.round(s), v], axis=-1)
    return np.clip(out, 0, 255).astype(np.uint8)


def hsv_to_rgb_u8(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv_u8` (rounded, clipped to uint8)."""
    c = hsv.astype(np.float32)
    h = (c[..., 0] % 180.0) / 30.0  # sector in [0, 6)
    s, v = c[..., 1] / 255.0, c[..., 2] / 255.0
    i = np.floor(h).astype(np.int32) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(hsv.shape, np.float32)
    for k, (rr, gg, bb) in enumerate(table):
        m = i == k
        out[..., 0][m], out[..., 1][m], out[..., 2][m] = rr[m], gg[m], bb[m]
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class ColorAugSSD:
    """detectron2 PointRend's ``ColorAugSSDTransform``. Works in BGR (RGB input is swapped in and out):
    brightness (p=0.5, + U(-32, 32)); then with p=0.5 contrast -> saturation -> hue, else
    saturation -> hue -> contrast; contrast p=0.5 x U(0.5, 1.5); saturation p=0.5, HSV S x U(0.5, 1.5);
    hue p=0.5, H + randint(-18, 18) mod 180. Every step clips to [0, 255] uint8. Labels are untouched."""

    def __init__(self, img_format: str = "RGB", brightness_delta: float = 32, contrast_low: float = 0.5,
                 contrast_high: float = 1.5, saturation_low: float = 0.5, saturation_high: float = 1.5,
                 hue_delta: int = 18):
        if img_format not in ("RGB", "BGR"):
            raise ValueError(f"ColorAugSSD: image format must be RGB or BGR, got {img_format!r}")
        self.is_rgb = img_format == "RGB"
        self.brightness_delta = brightness_delta
        self.contrast_range = (contrast_low, contrast_high)
        self.saturation_range = (saturation_low, saturation_high)
        self.hue_delta = int(hue_delta)

    def brightness(self, img, rng):
        if rng.integers(2):
            return _convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        return img

    def contrast(self, img, rng):
        if rng.integers(2):
            return _convert(img, alpha=rng.uniform(*self.contrast_range))
        return img

    def saturation(self, img, rng):  # img is BGR
        if rng.integers(2):
            hsv = rgb_to_hsv_u8(img[..., ::-1])
            hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            return hsv_to_rgb_u8(hsv)[..., ::-1]
        return img

    def hue(self, img, rng):  # img is BGR
        if rng.integers(2):
            hsv = rgb_to_hsv_u8(img[..., ::-1])
            delta = int(rng.integers(-self.hue_delta, self.hue_delta + 1))
            hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + delta) % 180).astype(np.uint8)
            return hsv_to_rgb_u8(hsv)[..., ::-1]
        return img

    def apply_image(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.is_rgb:
            img = img[..., ::-1]
        img = self.brightness(img, rng)
        if rng.integers(2):
            img = self.hue(self.saturation(self.contrast(img, rng), rng), rng)
        else:
            img = self.contrast(self.hue(self.saturation(img, rng), rng), rng)
        if self.is_rgb:
            img = img[..., ::-1]
        return np.ascontiguousarray(img)

    def __call__(self, sample: AugSample, rng: np.random.Generator) -> AugSample:
        sample.image = self.apply_image(sample.image, rng)
        sample.applied.append(("color_aug_ssd",))
        return sample


# ------------------------------------------------------------------------------------------- flip
class RandomFlip:
    """Horizontal (or vertical) flip with probability ``prob``."""

    def __init__(self, prob: float = 0.5, horizontal: bool = True):
        self.prob, self.horizontal = prob, horizontal

    def __call__(self, sample: AugSample, rng: np.random.Generator) -> AugSample:
        if rng.uniform() < self.prob:
            axis = 1 if self.horizontal else 0
            sample.geometric(lambda a, kind: np.ascontiguousarray(np.flip(a, axis=axis)))
            sample.applied.append(("flip", "horizontal" if self.horizontal else "vertical"))
        return sample


# -------------------------------------------------------------------------------------------- pad
class PadToDivisibility:
    """Pads bottom/right to ``size`` x ``size`` (the reference pads to exactly SIZE_DIVISIBILITY, which
    equals the crop); an input larger than ``size`` is padded to the next multiple of ``size`` instead
    of being cut as the reference's negative padding would. Image 128, semantic ``ignore_label``, panoptic 0."""

    def __init__(self, size: int, ignore_label: int = 255):
        self.size, self.ignore_label = int(size), ignore_label

    def __call__(self, sample: AugSample, rng: np.random.Generator | None = None) -> AugSample:
        if self.size <= 0:
            return sample
        h, w = sample.image.shape[:2]
        ph = max(self.size, -(-h // self.size) * self.size)
        pw = max(self.size, -(-w // self.size) * self.size)
        if (ph, pw) == (h, w):
            return sample
        values = {"image": IMAGE_PAD_VALUE, "sem_seg": self.ignore_label, "pan_seg": PANOPTIC_PAD_VALUE}

        def fn(a, kind):
            out = np.full((ph, pw) + a.shape[2:], values[kind], dtype=a.dtype)
            out[:h, :w] = a
            return out

        sample.geometric(fn)
        sample.applied.append(("pad", ph, pw))
        return sample


class Compose:
    def __init__(self, steps):
        self.steps = list(steps)

    def __call__(self, sample: AugSample, rng: np.random.Generator) -> AugSample:
        for step in self.steps:
            sample = step(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"Compose({[type(s).__name__ for s in self.steps]})"


def recipe_get(recipe, path: str, default=None):
    """recipe["A"]["B"]... for path "A.B..." (a Recipe or a plain nested dict), `default` when absent."""
    node = recipe
    for part in path.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError):
            return default
    return node


def build_train_transform(recipe) -> Compose:
    """The reference ADE20K train augmentation from a recipe's ``INPUT`` keys (and
    ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``)."""
    ignore = int(recipe_get(recipe, "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", 255))
    sampling = recipe_get(recipe, "INPUT.MIN_SIZE_TRAIN_SAMPLING", "choice")
    if sampling != "choice":
        raise ValueError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING={sampling!r}: only 'choice' is used by the ADE recipes")
    steps = [ResizeShortestEdge(recipe_get(recipe, "INPUT.MIN_SIZE_TRAIN"), recipe_get(recipe, "INPUT.MAX_SIZE_TRAIN"))]
    if recipe_get(recipe, "INPUT.CROP.ENABLED", False):
        crop_type = recipe_get(recipe, "INPUT.CROP.TYPE", "absolute")
        if crop_type != "absolute":
            raise ValueError(f"INPUT.CROP.TYPE={crop_type!r}: only 'absolute' is used by the ADE recipes")
        steps.append(RandomCropCategoryAreaConstraint(
            recipe_get(recipe, "INPUT.CROP.SIZE"), recipe_get(recipe, "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", 1.0), ignore))
    if recipe_get(recipe, "INPUT.COLOR_AUG_SSD", False):
        steps.append(ColorAugSSD(recipe_get(recipe, "INPUT.FORMAT", "RGB")))
    flip = recipe_get(recipe, "INPUT.RANDOM_FLIP", "horizontal")
    if flip != "none":
        steps.append(RandomFlip(0.5, horizontal=flip == "horizontal"))
    steps.append(PadToDivisibility(int(recipe_get(recipe, "INPUT.SIZE_DIVISIBILITY", -1)), ignore))
    return Compose(steps)


class TestResize:
    """Test-time shortest-edge resize (RS test mapper): image PIL bilinear, uint8 label map PIL nearest;
    the panoptic PNG is left at full resolution (the evaluator reads the originals)."""

    def __init__(self, short: int, max_size: int):
        self.short, self.max_size = int(short), int(max_size)

    def __call__(self, sample: AugSample, rng: np.random.Generator | None = None) -> AugSample:
        h, w = sample.image.shape[:2]
        new_h, new_w = shortest_edge_size(h, w, self.short, self.max_size)
        if (new_h, new_w) != (h, w):
            sample.image = _pil_resize(sample.image, new_h, new_w, Image.BILINEAR)
            if sample.sem_seg is not None:
                sample.sem_seg = _pil_resize(sample.sem_seg, new_h, new_w, Image.NEAREST)
        return sample


def build_test_transform(recipe) -> TestResize:
    return TestResize(recipe_get(recipe, "INPUT.MIN_SIZE_TEST"), recipe_get(recipe, "INPUT.MAX_SIZE_TEST"))
