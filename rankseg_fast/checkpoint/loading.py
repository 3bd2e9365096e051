"""Load released checkpoints into our models with a clear report of what did and did not match.

`load_model_zoo(model, source)` accepts a file path, an http(s) URL (downloaded into the cache) or `zoo:NAME`
(see `zoo.py`). Key mapping: optional `prefix` prepended, a leading `module.` stripped; `criterion.empty_weight`,
`pixel_mean`/`pixel_std`, `*.num_batches_tracked` and Swin `*.attn_mask` are dropped when the model has no such
key (listed in `LoadReport.dropped`). Optional detectron2-style suffix matching (`matching_heuristics`, on by
default when the file asks for it): a file key that is not a model key is given to the unique model key that
ends with "." + it and has its shape. Values are cast to the dtype of the model tensor.

strict=True: any missing / unexpected / shape-mismatched key raises `CheckpointError` before the model is
touched. strict=False: everything that matches is loaded and the report returned.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from rankseg_fast.checkpoint import zoo
from rankseg_fast.checkpoint.converters import convert_swin
from rankseg_fast.checkpoint.readers import CheckpointError, CheckpointFile, read_checkpoint_file

#: Keys that may appear in released files but carry nothing our model needs.
_DROPPABLE = re.compile(r"^(criterion\.empty_weight|pixel_mean|pixel_std|.*num_batches_tracked|.*\.attn_mask)$")


@dataclass
class LoadReport:
    """Outcome of matching a checkpoint against `model.state_dict()`.

    missing: model keys the file lacks. unexpected: file keys the model lacks. mismatched: (key, file shape,
    model shape). dropped: file keys ignored on purpose (see module docstring). renamed: (file key, model key)
    pairs found by suffix matching. loaded: number of tensors copied into the model.
    """

    source: str = ""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"checkpoint {self.source}: {self.loaded} tensors loaded"
                 + ("" if self.ok else " — does not match the model")]
        if self.missing:
            lines.append(f"missing ({len(self.missing)} model keys not in the file):")
            lines += ["  " + s for s in summarize_keys(self.missing)]
        if self.unexpected:
            lines.append(f"unexpected ({len(self.unexpected)} file keys not in the model):")
            lines += ["  " + s for s in summarize_keys(self.unexpected)]
        if self.mismatched:
            lines.append(f"shape mismatch ({len(self.mismatched)} keys):")
            shown = self.mismatched if len(self.mismatched) <= 12 else self.mismatched[:10]
            lines += [f"  {k}: file {tuple(f)} vs model {tuple(m)}" for k, f, m in shown]
            if len(shown) < len(self.mismatched):
                lines.append(f"  ... and {len(self.mismatched) - len(shown)} more")
        if self.renamed:
            lines.append(f"renamed by suffix matching: {len(self.renamed)} keys (e.g. {self.renamed[0][0]} -> "
                         f"{self.renamed[0][1]})")
        if self.dropped:
            lines.append(f"dropped (not needed by the model): {', '.join(summarize_keys(self.dropped, 4))}")
        return "\n".join(lines)


def summarize_keys(keys: list[str], full_below: int = 8) -> list[str]:
    """Short description of a key list: every key when there are fewer than `full_below`, else one line per
    group of keys sharing their first two dotted components ("312 keys under sem_seg_head.predictor.* (first:
    ...)")."""
    if len(keys) < full_below:
        return list(keys)
    groups: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        parts = key.split(".")
        groups[".".join(parts[:2]) if len(parts) > 2 else parts[0]].append(key)
    out = []
    for prefix, members in groups.items():
        if len(members) == 1:
            out.append(members[0])
        else:
            out.append(f"{len(members)} keys under {prefix}.* (first: {members[0]})")
    return out


# --------------------------------------------------------------------------- resolving a source to a file
def _download(url: str, dst: Path, md5_prefix: str | None) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=True)
    except Exception as err:
        if tmp.exists():
            tmp.unlink()
        raise CheckpointError(
            f"could not download {url} ({type(err).__name__}: {err}).\n"
            f"Without network access, download it elsewhere and put the file at:\n  {dst}") from None
    if not zoo.verify_md5_prefix(tmp, md5_prefix):
        tmp.unlink()
        raise CheckpointError(f"downloaded {url} but its md5 does not start with {md5_prefix} (corrupt download); "
                              f"deleted it, try again or place a good copy at {dst}")
    os.replace(tmp, dst)


def resolve_source(source: str | os.PathLike) -> tuple[Path, zoo.ZooEntry | None]:
    """File path of `source` (path, URL or `zoo:NAME`), downloading into the cache when needed."""
    text = os.fspath(source)
    entry = None
    if text.startswith("zoo:"):
        entry = zoo.get_entry(text)
        if entry.url is None:
            raise CheckpointError(f"model-zoo entry {entry.name!r} ({entry.recipe}) has no released file "
                                  f"({entry.notes})")
        url, dst, md5 = entry.url, zoo.cache_path(entry.name), entry.md5_prefix
    elif urlparse(text).scheme in ("http", "https"):
        url = text
        dst = zoo.cache_dir() / Path(urlparse(text).path).name
        md5 = next((e.md5_prefix for e in zoo.ZOO_ENTRIES if e.url == text), None)
    else:
        return Path(text).expanduser(), None
    if not dst.is_file():
        _download(url, dst, md5)
    return dst, entry


# --------------------------------------------------------------------------- matching keys
def _map_keys(file_state: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor], prefix: str,
              heuristics: bool, report: LoadReport) -> dict[str, torch.Tensor]:
    mapped: dict[str, torch.Tensor] = {}
    for key, value in file_state.items():
        name = key[len("module."):] if key.startswith("module.") else key
        name = prefix + name
        if name not in model_state and _DROPPABLE.match(name):
            report.dropped.append(key)
            continue
        if name in mapped:
            raise CheckpointError(f"{report.source}: two file keys map to {name!r}")
        mapped[name] = value
    if heuristics:
        free = [k for k in model_state if k not in mapped]
        for name in [k for k in mapped if k not in model_state]:
            candidates = [k for k in free if k.endswith("." + name) and
                          tuple(model_state[k].shape) == tuple(mapped[name].shape)]
            if len(candidates) == 1:
                mapped[candidates[0]] = mapped.pop(name)
                free.remove(candidates[0])
                report.renamed.append((name, candidates[0]))
    return mapped


def load_state_into(model: nn.Module, file_state: dict[str, torch.Tensor], strict: bool = True, prefix: str = "",
                    matching_heuristics: bool = False, source: str = "<state dict>") -> LoadReport:
    """Match `file_state` against `model.state_dict()` and copy what fits (see the module docstring)."""
    report = LoadReport(source=source)
    model_state = model.state_dict()
    mapped = _map_keys(file_state, model_state, prefix, matching_heuristics, report)
    report.missing = [k for k in model_state if k not in mapped]
    report.unexpected = [k for k in mapped if k not in model_state]
    to_load = {}
    for key, value in mapped.items():
        if key not in model_state:
            continue
        target = model_state[key]
        if tuple(value.shape) != tuple(target.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(target.shape)))
            continue
        to_load[key] = value.to(dtype=target.dtype)
    if strict and not report.ok:
        raise CheckpointError(str(report))
    result = model.load_state_dict(to_load, strict=False)
    if result.unexpected_keys:  # cannot happen: to_load holds model keys only
        raise CheckpointError(f"{source}: load_state_dict rejected {result.unexpected_keys[:5]}")
    report.loaded = len(to_load)
    return report


def load_model_zoo(model: nn.Module, source: str | os.PathLike, strict: bool = True, prefix: str = "",
                   matching_heuristics: bool | None = None) -> LoadReport:
    """Load a checkpoint (path, http(s) URL, or `zoo:NAME`) into `model`.

    prefix: prepended to every file key (e.g. "backbone." to load a converted ImageNet file into a full model).
    matching_heuristics: detectron2-style suffix matching; None = as the file's `matching_heuristics` says.
    Raises `CheckpointError` (strict) with the grouped report; returns the `LoadReport`.
    """
    path, entry = resolve_source(source)
    ckpt: CheckpointFile = read_checkpoint_file(path)
    state = ckpt.state
    if entry is not None and entry.convert == "swin":
        state = convert_swin(state)
    if matching_heuristics is None:
        matching_heuristics = bool(ckpt.metadata.get("matching_heuristics", False))
    return load_state_into(model, state, strict=strict, prefix=prefix, matching_heuristics=matching_heuristics,
                           source=str(path))


def load_backbone_weights(backbone: nn.Module, source: str | os.PathLike, strict: bool = True) -> LoadReport:
    """Load backbone weights from a converted ImageNet file (keys without `backbone.`) or from a full model
    file (only its `backbone.*` keys are used; the rest are listed as dropped)."""
    path, entry = resolve_source(source)
    ckpt = read_checkpoint_file(path)
    state = ckpt.state
    stripped = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in stripped):
        dropped = [k for k in stripped if not k.startswith("backbone.")]
        state = {k[len("backbone."):]: v for k, v in stripped.items() if k.startswith("backbone.")}
    else:
        dropped, state = [], stripped
    if entry is not None and entry.convert == "swin":
        state = convert_swin(state)
    report = load_state_into(backbone, state, strict=strict, source=str(path))
    report.dropped = dropped + report.dropped
    return report


__all__ = ["LoadReport", "load_backbone_weights", "load_model_zoo", "load_state_into", "resolve_source",
           "summarize_keys"]
