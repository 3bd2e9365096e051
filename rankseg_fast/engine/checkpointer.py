"""Training checkpoints that survive being killed at any moment: written to a temporary file in the same
folder, flushed to disk and renamed over the target (an atomic replace), with a `last_checkpoint` pointer
updated the same way after the file is complete. Keeps the newest N. A checkpoint holds everything needed
to resume exactly: model, optimizer, grad scaler, scheduler, iteration, RNG states, data position."""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

POINTER = "last_checkpoint"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """The states of every random generator a training step draws from."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # numpy's key array as a tensor, so the file loads with torch.load(weights_only=True)
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and finds `model_{iteration:07d}.pth` files in `folder`, keeping the newest `keep`."""

    def __init__(self, folder: str | os.PathLike, keep: int = 3):
        if keep < 1:
            raise ValueError(f"Checkpointer: keep must be >= 1, got {keep}")
        self.folder = Path(folder)
        self.keep = keep

    def path_for(self, iteration: int) -> Path:
        return self.folder / f"model_{iteration:07d}.pth"

    def save(self, iteration: int, state: dict[str, Any]) -> Path:
        """Writes `state` (plus the iteration and RNG states) atomically, then moves the pointer."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path_for(iteration)
        payload = {**state, "iteration": iteration, "rng": rng_state()}
        _atomic_write(path, lambda handle: torch.save(payload, handle))
        _atomic_write(self.folder / POINTER, lambda handle: handle.write(path.name.encode()))
        for old in self.checkpoints()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def checkpoints(self) -> list[Path]:
        """Complete checkpoint files, oldest first (temporary files of an interrupted save are ignored)."""
        return sorted(self.folder.glob("model_[0-9]*.pth"))

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The newest readable checkpoint (pointer first, then the files, newest first), or None when
        there is none. An unreadable file is reported and skipped, never silently used."""
        candidates = []
        pointer = self.folder / POINTER
        if pointer.is_file():
            candidates.append(self.folder / pointer.read_text().strip())
        candidates += [p for p in reversed(self.checkpoints()) if p not in candidates]
        for path in candidates:
            if not path.is_file():
                continue
            try:
                state = torch.load(path, map_location=map_location, weights_only=True)
            except Exception as error:  # a damaged file (disk full, copied half-way): try the previous one
                warnings.warn(f"checkpoint {path} is unreadable ({type(error).__name__}: {error}); trying an older one",
                              RuntimeWarning, stacklevel=2)
                continue
            state["path"] = str(path)
            return state
        return None
