"""Import of reference (detectron2-style) configs: ``from_reference_config(path)``.

Reads a Mask2Former / RankSeg config with its ``_BASE_`` chain (paths relative to each file), or a
fully resolved dump (the ``config.yaml`` that ``train_net.py`` writes, with every detectron2 key).
As in detectron2 (yacs), string values are decoded with ``ast.literal_eval`` (``(640, 640)`` is a
tuple) and ``!!python/object/apply:eval`` list expressions are evaluated, but only simple arithmetic
list comprehensions are allowed (no names other than ``int``, ``float``, ``round``, ``range``).

Keys not set by the chain start from the detectron2 + DeepLab + Mask2Former + RankSeg defaults
(``REFERENCE_DEFAULTS``), not from this package's defaults tree, so a partial chain resolves to what
detectron2 would resolve it to.

Unknown-key policy:

* keys this package uses are copied and type-checked (a mismatch raises :class:`RecipeError`);
* keys this package does not use are dropped, with ONE :class:`ReferenceConfigWarning` listing them
  (at most 20 names and the total count; ``VERSION`` is dropped silently);
* a few unused keys would change behaviour we do not implement when set to a non-default value; those
  raise :class:`RecipeError` (``UNSUPPORTED``: deformable ResNet stages, precise BN, automatic
  world-size rescaling of the solver, a cosine end LR, keypoints/proposals);
* ``MODEL.BACKBONE.FREEZE_AT`` is a used key: it is copied whatever its value (detectron2 semantics:
  freeze the stem and the first ``FREEZE_AT - 1`` stages); honouring it is the backbone builder's job;
* known reference bugs are repaired with a warning: ``MODEL.MLSEG.*`` → ``MODEL.RANKSEG.*``
  (fact sheet §9.6–9.7).

``MODEL.REFERENCE`` (which reference's behaviour to reproduce) is not inferred from the keys: it is
``"rankseg"`` unless the caller passes ``reference="mask2former"`` (or the file sets it).
"""

from __future__ import annotations

import ast
import copy
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import yaml

from .defaults import DEFAULTS, REFERENCE_CHOICES
from .recipe import Recipe, RecipeError, _leaf_paths, _Loader, _read_yaml, build_tree, validate

__all__ = ["from_reference_config", "ReferenceConfigWarning", "REFERENCE_DEFAULTS", "UNSUPPORTED"]


class ReferenceConfigWarning(UserWarning):
    """A reference config had keys that were dropped or repaired."""


# detectron2 get_cfg() + add_deeplab_config + add_maskformer2_config values that differ from DEFAULTS
_D2_DIFF: dict[str, Any] = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "MODEL.BACKBONE.FREEZE_AT": 2,
    "MODEL.RESNETS.OUT_FEATURES": ["res4"],
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.RESNETS.STEM_TYPE": "deeplab",
    "MODEL.RESNETS.RES5_MULTI_GRID": [1, 2, 4],
    "MODEL.SWIN.PRETRAIN_IMG_SIZE": 224,
    "MODEL.SWIN.WINDOW_SIZE": 7,
    "MODEL.SEM_SEG_HEAD.NAME": "SemSegFPNHead",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES": ["p2", "p3", "p4", "p5"],
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 54,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 128,
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "BasePixelDecoder",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 0,
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "res5",
    "MODEL.MASK_FORMER.CLASS_WEIGHT": 1.0,
    "MODEL.MASK_FORMER.DICE_WEIGHT": 1.0,
    "MODEL.MASK_FORMER.MASK_WEIGHT": 20.0,
    "MODEL.MASK_FORMER.DROPOUT": 0.1,
    "MODEL.MASK_FORMER.DEC_LAYERS": 6,
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.0,
    "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": 0.0,
    "INPUT.FORMAT": "BGR",
    "INPUT.CROP.ENABLED": False,
    "INPUT.CROP.TYPE": "relative_range",
    "INPUT.CROP.SIZE": [0.9, 0.9],
    "INPUT.COLOR_AUG_SSD": False,
    "SOLVER.LR_SCHEDULER_NAME": "WarmupMultiStepLR",
    "SOLVER.MAX_ITER": 40000,
    "SOLVER.BASE_LR": 0.001,
    "SOLVER.WEIGHT_DECAY": 0.0001,
    "SOLVER.WARMUP_FACTOR": 0.001,
    "SOLVER.WARMUP_ITERS": 1000,
    "SOLVER.CLIP_GRADIENTS.ENABLED": False,
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "value",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 1.0,
    "SOLVER.AMP.ENABLED": False,
    "TEST.EVAL_PERIOD": 0,
    "TEST.AUG.MIN_SIZES": [400, 500, 600, 700, 800, 900, 1000, 1100, 1200],
    "TEST.AUG.MAX_SIZE": 4000,
}
REFERENCE_DEFAULTS: dict = build_tree(_D2_DIFF)

# unused keys whose non-default value changes behaviour this package does not implement
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": (lambda v: any(bool(x) for x in v), "deformable ResNet stages"),
    "TEST.PRECISE_BN.ENABLED": (bool, "precise BN"),
    "SOLVER.REFERENCE_WORLD_SIZE": (lambda v: v != 0, "automatic solver rescaling by world size"),
    "SOLVER.BASE_LR_END": (lambda v: v != 0, "a non-zero end LR (WarmupCosineLR)"),
    "MODEL.KEYPOINT_ON": (bool, "keypoint heads"),
    "MODEL.LOAD_PROPOSALS": (bool, "precomputed proposals"),
}
SILENTLY_DROPPED = {"VERSION"}
MAX_LISTED = 20
_KNOWN = set(_leaf_paths(DEFAULTS))


# -------------------------------------------------------------------------------------------- YAML
_EVAL_NODES = (
    ast.Expression, ast.ListComp, ast.comprehension, ast.Call, ast.BinOp, ast.UnaryOp, ast.Constant,
    ast.Name, ast.Load, ast.Store, ast.List, ast.Tuple, ast.Add, ast.Sub, ast.Mult, ast.Div,
    ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd,
)
_EVAL_FUNCS = {"int": int, "float": float, "round": round, "range": range}


def _safe_eval(expr: str) -> Any:
    """Evaluate a config list expression such as ``[int(x * 0.1 * 640) for x in range(5, 21)]``."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise RecipeError(f"cannot evaluate config expression {expr!r}: {e}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _EVAL_NODES):
            raise RecipeError(f"config expression {expr!r} uses {type(node).__name__}, which is not allowed")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _EVAL_FUNCS):
            raise RecipeError(f"config expression {expr!r} calls something other than {sorted(_EVAL_FUNCS)}")
    return eval(compile(tree, "<config>", "eval"), {"__builtins__": {}, **_EVAL_FUNCS})  # noqa: S307


class _RefLoader(_Loader):
    pass


def _construct_eval(loader, node):
    args = loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode) else [
        loader.construct_scalar(node)
    ]
    if len(args) != 1 or not isinstance(args[0], str):
        raise RecipeError(f"unsupported !!python/object/apply:eval arguments {args!r}")
    return _safe_eval(args[0])


_RefLoader.add_constructor("tag:yaml.org,2002:python/object/apply:eval", _construct_eval)
_RefLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node, deep=True))
)


def _decode(v: Any) -> Any:
    """yacs' value decoding: strings that are Python literals become those literals."""
    if isinstance(v, dict):
        return {k: _decode(x) for k, x in v.items()}
    if isinstance(v, str):
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return v
    if isinstance(v, tuple):
        return list(v)
    return v


def _merge(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)
    return dst


def _load_chain(path: Path, stack: tuple[Path, ...]) -> dict:
    if path in stack:
        raise RecipeError("cycle in _BASE_: " + " -> ".join(str(p) for p in (*stack, path)))
    if not path.is_file():
        raise RecipeError(f"reference config {path} not found" + (f" (a _BASE_ of {stack[-1]})" if stack else ""))
    data = _read_yaml(path, loader=_RefLoader)
    merged: dict = {}
    for key in ("_BASE_", "_base_"):
        base = data.pop(key, None)
        for b in [base] if isinstance(base, str) else (base or []):
            b = os.path.expanduser(b)
            bpath = Path(b) if os.path.isabs(b) else path.parent / b
            _merge(merged, _load_chain(bpath.resolve(), (*stack, path)))
    return _merge(merged, _decode(data))


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in _KNOWN:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------------------------------------- API
def from_reference_config(path: str | os.PathLike, reference: str | None = None) -> Recipe:
    """A :class:`Recipe` from a detectron2-style Mask2Former/RankSeg config (``_BASE_`` chain or a
    fully resolved dump). See the module docstring for the unknown-key policy.

    ``reference`` sets ``MODEL.REFERENCE`` (``"rankseg"`` by default, or ``"mask2former"``).
    """
    path = Path(path).expanduser().resolve()
    if reference is not None and reference not in REFERENCE_CHOICES:
        raise RecipeError(f"reference must be one of {REFERENCE_CHOICES}, got {reference!r}")
    raw = _flatten(_load_chain(path, ()))

    kept: dict[str, Any] = {}
    dropped: list[str] = []
    unsupported: list[str] = []
    for key, value in raw.items():
        if key.startswith("MODEL.MLSEG."):
            fixed = "MODEL.RANKSEG." + key[len("MODEL.MLSEG."):]
            warnings.warn(
                f"{path}: reference bug repaired: '{key}' does not exist in the reference code; "
                f"read as '{fixed}'",
                ReferenceConfigWarning,
                stacklevel=2,
            )
            key = fixed
        if key in _KNOWN:
            kept[key] = value
        elif key in UNSUPPORTED:
            check, what = UNSUPPORTED[key]
            if check(value):
                unsupported.append(f"{key}={value!r} ({what})")
        elif key not in SILENTLY_DROPPED and not (isinstance(value, dict) and not value):
            dropped.append(key)
    if unsupported:
        raise RecipeError(f"{path}: settings not supported by rankseg_fast: {'; '.join(unsupported)}")
    if dropped:
        listed = ", ".join(dropped[:MAX_LISTED]) + (", ..." if len(dropped) > MAX_LISTED else "")
        warnings.warn(
            f"{path}: {len(dropped)} key(s) not used by rankseg_fast were dropped: {listed}",
            ReferenceConfigWarning,
            stacklevel=2,
        )
    nested: dict = {}
    for key, value in kept.items():
        node = nested
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    flat = validate(nested, str(path))
    if reference is not None:
        flat["MODEL.REFERENCE"] = reference
    return Recipe(build_tree(flat, REFERENCE_DEFAULTS), str(path))
