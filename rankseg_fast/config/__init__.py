"""Recipe (config) system: detectron2/Mask2Former/RankSeg key names, ``_base_`` inheritance,
``KEY=value`` overrides, validation against the defaults tree, and import of reference configs."""

from .defaults import DEFAULTS
from .recipe import Recipe, RecipeError, find_recipe, list_recipes, load_recipe
from .reference import ReferenceConfigWarning, from_reference_config

__all__ = [
    "DEFAULTS",
    "Recipe",
    "RecipeError",
    "ReferenceConfigWarning",
    "find_recipe",
    "from_reference_config",
    "list_recipes",
    "load_recipe",
]
