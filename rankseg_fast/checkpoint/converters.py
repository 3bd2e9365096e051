"""Converters for the ImageNet-pretrained files the recipes start from (fact sheet §3.4), and a D2 `.pkl` writer.

* torchvision ResNet state dict -> detectron2 names (the rules of the reference `convert-torchvision-to-d2.py`):
  keys without "layer" get "stem."; layer1..4 -> res2..5; bn1/bn2/bn3 -> conv1.norm/conv2.norm/conv3.norm;
  downsample.0 -> shortcut; downsample.1 -> shortcut.norm. Deviation: the reference keeps `stem.fc.*` and
  `*.num_batches_tracked` (unused by the model); we drop them so the result loads strictly into `ResNet`.
* official Swin `.pth` -> backbone names. The reference converter passes the `"model"` dict through unchanged
  and lets detectron2's suffix matching ignore the extras. We drop the extras explicitly (`head.*`, the final
  `norm.*`, per-block `attn_mask` buffers, which our blocks recompute), keep `relative_position_index` (the
  reference loads it: same name and shape) and add the per-output LayerNorms `norm{i}` as ones/zeros — exactly
  the fresh LayerNorm init the reference model keeps because the file has no such keys.
* detectron2 ResNet files (R-103.pkl, R-50.pkl) are already in detectron2 names: `validate_d2_resnet` checks that.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from rankseg_fast.checkpoint.readers import CheckpointError

_LAYER = re.compile(r"^layer(\d)\.")


def _rename_torchvision_key(key: str) -> str:
    if "layer" not in key:
        key = "stem." + key
    key = _LAYER.sub(lambda m: f"res{int(m.group(1)) + 1}.", key)
    for i in (1, 2, 3):
        key = key.replace(f"bn{i}", f"conv{i}.norm")
    key = key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
    return key


def convert_torchvision_resnet(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """torchvision ResNet state dict (`conv1.weight`, `bn1.*`, `layer1.0.downsample.0.weight`, `fc.*`) ->
    detectron2 names (`stem.conv1.weight`, `stem.conv1.norm.*`, `res2.0.shortcut.weight`); `fc.*` and
    `num_batches_tracked` are dropped."""
    if "conv1.weight" not in state or not any(k.startswith("layer1.") for k in state):
        raise CheckpointError("not a torchvision ResNet state dict: expected conv1.weight and layer1.* keys, got "
                              f"{', '.join(list(state)[:5])}...")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        out[_rename_torchvision_key(key)] = value
    return out


_D2_RESNET_KEY = re.compile(r"^(stem\.(conv\d|fc)|res[2-5]\.\d+\.(conv\d|shortcut))(\.norm)?\."
                            r"(weight|bias|running_mean|running_var|num_batches_tracked)$")


def validate_d2_resnet(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Check a detectron2-named ResNet dict (R-50.pkl, R-103.pkl); drop `stem.fc.*`/`num_batches_tracked`."""
    bad = [k for k in state if not _D2_RESNET_KEY.match(k)]
    if bad:
        raise CheckpointError(f"not a detectron2 ResNet file: {len(bad)} keys do not look like stem.*/res*.* "
                              f"(first: {', '.join(bad[:5])})")
    return OrderedDict((k, v) for k, v in state.items()
                       if not (k.startswith("stem.fc.") or k.endswith("num_batches_tracked")))


_SWIN_DROP = re.compile(r"^(head\.|norm\.|.*\.attn_mask$)")


def convert_swin(state: dict[str, torch.Tensor], add_output_norms: bool = True) -> OrderedDict[str, torch.Tensor]:
    """Official Swin checkpoint weights (`patch_embed.*`, `layers.{i}.blocks.{j}.*`, `layers.{i}.downsample.*`,
    `norm.*`, `head.*`) -> `SwinTransformer` backbone names. Accepts the `"model"` dict (or a state with a
    leading `backbone.`, e.g. a file converted by the reference tool and re-read)."""
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if "patch_embed.proj.weight" not in state:
        raise CheckpointError("not a Swin checkpoint: no patch_embed.proj.weight (keys: "
                              f"{', '.join(list(state)[:5])}...)")
    out: OrderedDict[str, torch.Tensor] = OrderedDict(
        (k, v) for k, v in state.items() if not _SWIN_DROP.match(k))
    if add_output_norms:
        embed_dim = state["patch_embed.proj.weight"].shape[0]
        stages = 1 + max(int(k.split(".")[1]) for k in out if k.startswith("layers."))
        for i in range(stages):
            if f"norm{i}.weight" not in out:
                dtype = state["patch_embed.proj.weight"].dtype
                out[f"norm{i}.weight"] = torch.ones(embed_dim * 2**i, dtype=dtype)
                out[f"norm{i}.bias"] = torch.zeros(embed_dim * 2**i, dtype=dtype)
    return out


def to_numpy_state(state: dict[str, Any]) -> OrderedDict[str, np.ndarray]:
    """Tensors -> numpy arrays (the storage type of detectron2 `.pkl` files)."""
    return OrderedDict((k, v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                       for k, v in state.items())


def write_d2_pkl(path: str | os.PathLike, state: dict[str, Any], author: str,
                 matching_heuristics: bool = True) -> None:
    """Write `{"model": numpy arrays, "__author__": author, "matching_heuristics": ...}` as a plain pickle,
    atomically (temporary file + rename)."""
    payload = {"model": to_numpy_state(state), "__author__": author, "matching_heuristics": matching_heuristics}
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=4)
    os.replace(tmp, path)


__all__ = ["convert_swin", "convert_torchvision_resnet", "to_numpy_state", "validate_d2_resnet", "write_d2_pkl"]
