"""Read checkpoint files into flat `{name: torch.Tensor}` dicts without ever running code from the file.

Formats (fact sheet §3.3, §3.6):
  * detectron2 `.pkl`: a plain pickle of `{"model": {...}, "__author__": ..., ["matching_heuristics": True]}`
    or a bare dict; values numpy arrays (torchvision/MSRA conversions, M2F model-zoo files) or torch tensors
    pickled with plain `pickle` (the reference Swin converter). Read by `RestrictedUnpickler`, whose
    `find_class` resolves only the globals a numpy-array / tensor pickle needs; anything else (e.g.
    `os.system`, `builtins.eval`) raises `CheckpointError` naming the refused global before it is called.
  * `.pth` / `.pt`: `torch.load(weights_only=True, map_location="cpu")`; `{"model": sd}`, `{"state_dict": sd}`
    or a bare state dict.
Nested dicts of arrays are flattened with "." joins. Truncated or corrupt files raise `CheckpointError`
naming the file and the step that failed.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint could not be read, resolved, or does not fit the model (message says which and why)."""


def _numpy_attr(submodule: str, name: str) -> Any:
    """numpy 1.x pickles say `numpy.core.*`, numpy 2.x `numpy._core.*`: resolve either in the installed numpy."""
    for base in ("_core", "core"):
        module = getattr(np, base, None)
        if module is None:
            continue
        target = getattr(getattr(module, submodule, None), name, None)
        if target is not None:
            return target
    raise CheckpointError(f"installed numpy {np.__version__} has no {submodule}.{name}")


def _safe_load_from_bytes(data: bytes) -> Any:
    """Replacement for `torch.storage._load_from_bytes` (which calls torch.load with weights_only=False)."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """Rebuild a plain-pickled tensor; hooks and metadata are ignored (weights only)."""
    del requires_grad, backward_hooks, metadata
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    del requires_grad, backward_hooks
    return data


# (module, name) -> resolver. Resolvers are called lazily so a missing numpy-1-only name never matters.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED_GLOBALS[(_mod, "_reconstruct")] = lambda: _numpy_attr("multiarray", "_reconstruct")
    _ALLOWED_GLOBALS[(_mod, "scalar")] = lambda: _numpy_attr("multiarray", "scalar")
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED_GLOBALS[(_mod, "_frombuffer")] = lambda: _numpy_attr("numeric", "_frombuffer")
_ALLOWED_GLOBALS.update({
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("collections", "OrderedDict"): lambda: OrderedDict,
    ("_codecs", "encode"): lambda: _latin1_encode,  # protocol-2 pickles of bytes
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): lambda: _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): lambda: _safe_load_from_bytes,
})
for _name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes",
              "bytearray", "slice"):
    _ALLOWED_GLOBALS[("builtins", _name)] = (lambda n=_name: getattr(__import__("builtins"), n))
    _ALLOWED_GLOBALS[("__builtin__", _name)] = _ALLOWED_GLOBALS[("builtins", _name)]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding.lower().replace("-", "") not in ("latin1", "latin_1", "iso88591"):
        raise CheckpointError(f"pickle asked for _codecs.encode with encoding {encoding!r}; only latin1 is allowed")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy / tensor reconstruction globals listed in `_ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        resolver = _ALLOWED_GLOBALS.get((module, name))
        if resolver is None:
            raise CheckpointError(
                f"refused global {module}.{name}: a weights pickle may only reference numpy arrays, tensors and "
                "builtin containers (the file may try to run code)")
        return resolver()

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"refused persistent id {pid!r} (not a detectron2 .pkl; try a torch .pth loader)")


@dataclass
class CheckpointFile:
    """Contents of one checkpoint file.

    state: flat {name: tensor} (numpy arrays converted with `torch.from_numpy`, dtype kept).
    metadata: the top-level entries other than the weights (`__author__`, `matching_heuristics`, ...);
      large entries such as optimizer state are replaced by a short description.
    format: "d2-pkl" (pickle with `__author__`), "pkl" (other pickle) or "torch".
    """

    path: str
    state: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = "pkl"


def _to_tensor(key: str, value: Any, path: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise CheckpointError(f"{path}: entry {key!r} is an object array, not numeric weights")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, (np.generic, int, float, bool)):
        return torch.as_tensor(np.asarray(value))
    raise CheckpointError(f"{path}: entry {key!r} has type {type(value).__name__}, expected an array or tensor")


def _flatten(obj: dict, path: str, prefix: str = "", out: dict[str, torch.Tensor] | None = None):
    out = {} if out is None else out
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(value, path, name + ".", out)
        else:
            out[name] = _to_tensor(name, value, path)
    return out


def _describe(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return f"<dict with {len(value)} entries>"
    return f"<{type(value).__name__}>"


def _split_weights(obj: Any, path: str) -> tuple[dict, dict[str, Any]]:
    """Find the weights dict in a loaded object: `model`, `state_dict`, or the object itself."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: top-level object is {type(obj).__name__}, expected a dict of weights")
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            metadata = {k: _describe(v) for k, v in obj.items() if k != key}
            return obj[key], metadata
    return obj, {}


def _read_pickle(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="latin1").load()
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except Exception as err:  # pickle raises many types on truncated/corrupt input
        raise CheckpointError(
            f"{path}: reading the detectron2 pickle failed ({type(err).__name__}: {err}); the file is truncated "
            "or corrupt, delete it and download it again") from None


def _read_torch(path: str) -> Any:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True) failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "the file is truncated, corrupt, or contains objects other than weights") from None


def read_checkpoint_file(path: str | os.PathLike) -> CheckpointFile:
    """Read a detectron2 `.pkl` or a torch `.pth`/`.pt` file; see the module docstring for accepted layouts."""
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: file is empty (interrupted download?)")
    suffix = Path(path).suffix.lower()
    if zipfile.is_zipfile(path):
        obj, fmt = _read_torch(path), "torch"
    elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:  # legacy (non-zip) torch.save format
            obj, fmt = _read_torch(path), "torch"
        except CheckpointError as torch_err:
            try:  # a detectron2 pickle with a .pth name
                obj, fmt = _read_pickle(path), "pkl"
            except CheckpointError:
                raise torch_err from None
    else:
        obj, fmt = _read_pickle(path), "pkl"
    weights, metadata = _split_weights(obj, path)
    if fmt == "pkl" and "__author__" in metadata:
        fmt = "d2-pkl"
    return CheckpointFile(path=path, state=_flatten(weights, path), metadata=metadata, format=fmt)


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Flat `{name: tensor}` of a checkpoint file (use `read_checkpoint_file` for the metadata too)."""
    return read_checkpoint_file(path).state
