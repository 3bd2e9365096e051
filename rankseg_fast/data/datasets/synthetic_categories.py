"""Categories of the synthetic dataset (``synthetic_sem_seg_*``, ``synthetic_panoptic_*``): contiguous id =
position. Colour is the palette colour used for visualisation, not the rendered appearance (see
:mod:`rankseg_fast.data.datasets.synthetic`)."""

from __future__ import annotations

from rankseg_fast.data.datasets.ade20k_categories import Category

# fmt: off
SYNTHETIC_CATEGORIES: tuple[Category, ...] = (
    Category("sky", False, (70, 130, 230)),
    Category("wall", False, (160, 150, 130)),
    Category("grass", False, (60, 170, 50)),
    Category("water", False, (30, 90, 200)),
    Category("ball", True, (220, 40, 40)),
    Category("box", True, (200, 120, 40)),
    Category("roof", True, (180, 30, 60)),
    Category("star", True, (240, 220, 30)),
    Category("ring", True, (140, 50, 180)),
    Category("kite", True, (170, 70, 200)),
)
# fmt: on

SYNTHETIC_CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in SYNTHETIC_CATEGORIES)
SYNTHETIC_COLORS: tuple[tuple[int, int, int], ...] = tuple(c.color for c in SYNTHETIC_CATEGORIES)
SYNTHETIC_THING_IDS: tuple[int, ...] = tuple(i for i, c in enumerate(SYNTHETIC_CATEGORIES) if c.isthing)
SYNTHETIC_STUFF_IDS: tuple[int, ...] = tuple(i for i, c in enumerate(SYNTHETIC_CATEGORIES) if not c.isthing)
