"""Counting the places where Python code reads tensor values on the host — on a GPU each one waits for the
stream to drain (a device synchronisation), so the training step keeps them few and named."""

from __future__ import annotations

import collections
import traceback

import torch
from torch.overrides import TorchFunctionMode

# Tensor functions whose result depends on tensor *values* on the host.
_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "masked_select", "numpy",
          "cpu", "unique", "unique_consecutive"}


def _is_read(name: str, args: tuple) -> bool:
    if name in _READS:
        return True
    # boolean-mask indexing sizes its result from the mask's values
    return (name in ("__getitem__", "__setitem__") and len(args) > 1 and isinstance(args[1], torch.Tensor)
            and args[1].dtype == torch.bool)


class HostReads(TorchFunctionMode):
    """Context manager recording every host read that rankseg_fast code makes inside it (reads inside torch
    itself, e.g. the optimiser's CPU step counters, are not ours to count).

    `reads` counts them by (function name, 'module/path.py:line' of the calling line).
    """

    def __init__(self):
        super().__init__()
        self.reads: collections.Counter[tuple[str, str]] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if _is_read(name, args):
            caller = traceback.extract_stack(limit=2)[0]  # the frame that called the tensor function
            if "/rankseg_fast/" in caller.filename and "/testing/" not in caller.filename:
                where = caller.filename.rsplit("/rankseg_fast/", 1)[1]
                self.reads[(name, f"{where}:{caller.lineno}")] += 1
        return func(*args, **(kwargs or {}))

    def by_file(self) -> dict[str, int]:
        """Read counts per source file (stable under edits that move lines)."""
        counts: collections.Counter[str] = collections.Counter()
        for (_, where), n in self.reads.items():
            counts[where.rsplit(":", 1)[0]] += n
        return dict(counts)
