"""Recipes: YAML files with ``_base_`` inheritance, validated against the defaults tree.

``load_recipe(name_or_path, overrides)`` merges, in order: the defaults tree (``defaults.py``) ← the
``_base_`` chain ← the file ← ``KEY.SUB=value`` overrides. Every key is checked against the defaults
tree (unknown keys and type mismatches raise :class:`RecipeError`), and the result is an immutable
:class:`Recipe` with attribute access.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .defaults import DEFAULTS, REFERENCE_CHOICES

__all__ = ["Recipe", "RecipeError", "load_recipe", "recipe_roots", "find_recipe", "list_recipes"]

RECIPES_ENV = "RANKSEG_FAST_RECIPES"
BASE_KEY = "_base_"


class RecipeError(ValueError):
    """A recipe (or reference config) cannot be loaded: unknown key, wrong type, bad ``_base_``."""


# --------------------------------------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, as Python and yacs do."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
for _ch in "-+0123456789.":
    _Loader.yaml_implicit_resolvers[_ch] = [
        r for r in _Loader.yaml_implicit_resolvers.get(_ch, []) if r[0] != "tag:yaml.org,2002:float"
    ]
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def _read_yaml(path: Path, loader=_Loader) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=loader)  # noqa: S506 - loader is a SafeLoader subclass
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping at the top level, got {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------------ schema
def _leaf_paths(tree: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out.extend(_leaf_paths(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"])
    return out


_ALL_KEYS = _leaf_paths(DEFAULTS)


def _close_matches(key: str) -> list[str]:
    """Known keys that look like ``key``: by full dotted path, then by last component."""
    found = difflib.get_close_matches(key, _ALL_KEYS, n=3, cutoff=0.6)
    last = key.rsplit(".", 1)[-1]
    by_last: dict[str, list[str]] = {}
    for k in _ALL_KEYS:
        by_last.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    for name in difflib.get_close_matches(last, list(by_last), n=3, cutoff=0.7):
        for k in by_last[name]:
            if k not in found:
                found.append(k)
    return found[:5]


def unknown_key_message(key: str, source: str) -> str:
    hint = _close_matches(key)
    msg = f"unknown recipe key '{key}' (from {source})"
    return msg + (f"; did you mean: {', '.join(hint)}?" if hint else "")


def _type_name(v: Any) -> str:
    return type(v).__name__


def _coerce(value: Any, default: Any, key: str, source: str) -> Any:
    """``value`` checked against (and converted to) the type of ``default``."""

    def bad(expected: str):
        return RecipeError(
            f"recipe key '{key}' (from {source}) expects {expected}, got {_type_name(value)} {value!r}"
        )

    if default is None:  # free-typed key
        return list(value) if isinstance(value, tuple) else value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("a bool")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an int")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a float")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        if key == "MODEL.REFERENCE" and value not in REFERENCE_CHOICES:
            raise RecipeError(f"recipe key '{key}' (from {source}) must be one of {REFERENCE_CHOICES}, got {value!r}")
        return value
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        if not default:
            return list(value)
        proto = default[0]
        out = []
        for i, item in enumerate(value):
            if isinstance(proto, (int, float)) and not isinstance(proto, bool):
                # numeric lists: ints and floats both accepted (a crop SIZE is absolute ints or
                # relative floats); float lists are converted to float
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    raise RecipeError(f"recipe key '{key}[{i}]' (from {source}) expects a number, got {item!r}")
                out.append(float(item) if isinstance(proto, float) else item)
            else:
                out.append(_coerce(item, proto, f"{key}[{i}]", source))
        return out
    raise bad(_type_name(default))  # pragma: no cover - the defaults tree only holds the types above


def validate(tree: Mapping, source: str, prefix: str = "", schema: Mapping = DEFAULTS) -> dict[str, Any]:
    """Flatten ``tree`` to ``{dotted.key: checked value}``; raise on unknown keys and wrong types."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if not isinstance(k, str) or k not in schema:
            raise RecipeError(unknown_key_message(key, source))
        default = schema[k]
        if isinstance(default, dict):
            if not isinstance(v, Mapping):
                raise RecipeError(f"recipe key '{key}' (from {source}) is a section; got {_type_name(v)} {v!r}")
            flat.update(validate(v, source, key + ".", default))
        else:
            flat[key] = _coerce(v, default, key, source)
    return flat


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        tree = tree[p]
    tree[last] = value


def build_tree(flat: Mapping[str, Any], base: Mapping | None = None) -> dict:
    """A full nested tree: ``base`` (default: the defaults tree) with the flat values applied."""
    tree = copy.deepcopy(dict(DEFAULTS if base is None else base))
    for k, v in flat.items():
        _set_dotted(tree, k, copy.deepcopy(v))
    return tree


# ------------------------------------------------------------------------------------------ Recipe
def _freeze(v: Any) -> Any:
    if isinstance(v, Mapping):
        return Recipe(v)
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v: Any) -> Any:
    if isinstance(v, Recipe):
        return {k: _thaw(x) for k, x in v._data.items()}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


class Recipe(Mapping):
    """An immutable, attribute-accessible config tree (lists are stored as tuples).

    ``recipe.MODEL.SEM_SEG_HEAD.NUM_CLASSES``, ``recipe["SOLVER"]["BASE_LR"]``,
    ``recipe.select("SOLVER.BASE_LR")``; ``to_dict()`` gives plain dicts and lists; ``dump(path)``
    writes YAML that :func:`load_recipe` reads back to the same tree.
    """

    __slots__ = ("_data", "_source")

    def __init__(self, data: Mapping, source: str | None = None):
        object.__setattr__(self, "_data", {str(k): _freeze(v) for k, v in data.items()})
        object.__setattr__(self, "_source", source)

    @property
    def source(self) -> str | None:
        """The file this recipe was loaded from (None for sub-trees and in-memory recipes)."""
        return self._source

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            hint = difflib.get_close_matches(name, list(self._data), n=3)
            raise AttributeError(
                f"recipe has no key {name!r}" + (f"; did you mean: {', '.join(hint)}?" if hint else "")
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Recipe is immutable (cannot set {name!r}); use overrides when loading it")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Recipe is immutable (cannot delete {name!r})")

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Recipe):
            return self.to_dict() == other.to_dict()
        if isinstance(other, Mapping):
            return self.to_dict() == _thaw(_freeze(other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Recipe({self.to_dict()!r})"

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return (Recipe, (self.to_dict(), self._source))

    def select(self, key: str) -> Any:
        """The value at a dotted key, e.g. ``select("MODEL.RANKSEG.TOPK")``."""
        node: Any = self
        for part in key.split("."):
            node = node[part]
        return node

    def to_dict(self) -> dict:
        """A deep, mutable copy as plain dicts and lists."""
        return _thaw(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def dump(self, path: str | os.PathLike) -> None:
        """Write the fully resolved recipe as YAML (loadable with :func:`load_recipe`)."""
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

    def with_overrides(self, overrides: Iterable[str]) -> "Recipe":
        """A new recipe with ``KEY.SUB=value`` overrides applied (validated like :func:`load_recipe`)."""
        flat = _parse_overrides(overrides)
        return Recipe(build_tree(flat, self.to_dict()), self._source)


# ----------------------------------------------------------------------------------------- loading
def recipe_roots() -> list[Path]:
    """Folders searched for recipe names: ``$RANKSEG_FAST_RECIPES`` (os.pathsep-separated), then
    the project's ``recipes/`` folder next to the package."""
    roots = [Path(p) for p in os.environ.get(RECIPES_ENV, "").split(os.pathsep) if p]
    roots.append(Path(__file__).resolve().parents[2] / "recipes")
    return [r for r in roots if r.is_dir()]


def list_recipes() -> list[str]:
    """Every recipe name (path relative to its root, without ``.yaml``) found in :func:`recipe_roots`."""
    names = []
    for root in recipe_roots():
        for p in sorted(root.rglob("*.yaml")):
            name = p.relative_to(root).with_suffix("").as_posix()
            if name not in names:
                names.append(name)
    return names


def find_recipe(name: str | os.PathLike, relative_to: Path | None = None) -> Path:
    """Resolve a recipe name or path to a file.

    Tried in order: the path itself (relative to ``relative_to`` when given, else to the working
    directory), with ``.yaml`` appended; then each recipe root (``root/name[.yaml]``); then, for a
    bare file name without a folder, a unique match anywhere under the roots.
    """
    name = os.fspath(name)
    expanded = Path(os.path.expanduser(name))
    candidates = [expanded] if expanded.is_absolute() else [(relative_to or Path.cwd()) / expanded]
    for root in recipe_roots():
        candidates.append(root / expanded)
    for c in candidates:
        for p in (c, c.with_name(c.name + ".yaml")):
            if p.is_file():
                return p.resolve()
    if "/" not in name and os.sep not in name:
        stem = name[:-5] if name.endswith(".yaml") else name
        hits = sorted({p.resolve() for root in recipe_roots() for p in root.rglob(stem + ".yaml")})
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise RecipeError(f"recipe name {name!r} is ambiguous: {', '.join(map(str, hits))}; give its folder")
    hint = difflib.get_close_matches(name.removesuffix(".yaml"), list_recipes(), n=3, cutoff=0.5)
    where = f" (relative to {relative_to})" if relative_to else ""
    raise RecipeError(
        f"recipe {name!r} not found{where}; searched {[str(r) for r in recipe_roots()]}"
        + (f"; did you mean: {', '.join(hint)}?" if hint else "")
    )


def _bases(data: dict, path: Path, key: str) -> list[str]:
    base = data.pop(key, None)
    if base is None:
        return []
    if isinstance(base, str):
        return [base]
    if isinstance(base, list) and all(isinstance(b, str) for b in base):
        return base
    raise RecipeError(f"{path}: {key} must be a file name or a list of file names, got {base!r}")


def _load_flat(path: Path, stack: tuple[Path, ...]) -> dict[str, Any]:
    """The flat, validated values of ``path`` with its ``_base_`` chain merged underneath."""
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise RecipeError(f"cycle in {BASE_KEY}: {chain}")
    data = _read_yaml(path)
    flat: dict[str, Any] = {}
    for base in _bases(data, path, BASE_KEY):
        flat.update(_load_flat(find_recipe(base, relative_to=path.parent), (*stack, path)))
    flat.update(validate(data, str(path)))
    return flat


def _parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    if isinstance(overrides, str):
        overrides = [overrides]
    flat: dict[str, Any] = {}
    for item in overrides:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise RecipeError(f"override {item!r} is not of the form KEY.SUB=value")
        try:
            value = yaml.load(text, Loader=_Loader) if text.strip() else ""  # noqa: S506
        except yaml.YAMLError as e:
            raise RecipeError(f"override {item!r}: value is not valid YAML: {e}") from None
        nested: dict = {}
        node = nested
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
        flat.update(validate(nested, f"override {item!r}"))
    return flat


def load_recipe(name_or_path: str | os.PathLike, overrides: Iterable[str] = ()) -> Recipe:
    """Load a recipe: defaults ← ``_base_`` chain ← file ← ``overrides`` (``"KEY.SUB=value"``).

    ``name_or_path`` is a file path or a name under the recipe roots, with or without ``.yaml``
    (``"ade20k/semantic-segmentation/maskformer2_R50_bs16_160k"``), or a bare unique file name.
    Raises :class:`RecipeError` on unknown keys (with close matches), wrong types, ``_base_`` cycles.
    """
    path = find_recipe(name_or_path)
    flat = _load_flat(path, ())
    flat.update(_parse_overrides(overrides))
    return Recipe(build_tree(flat), str(path))
