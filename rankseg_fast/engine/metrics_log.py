"""Training records: one JSON object per line (iteration metrics and evaluation results), and a PNG plot
of the loss and evaluation curves drawn from that file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends records to `path` (JSON lines); each write is flushed so a killed run keeps its history.
    On resume, records at or after the resumed iteration are dropped first, so the file never holds two
    versions of an iteration."""

    def __init__(self, path: str | os.PathLike, resume_from: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from is not None and self.path.is_file():
            kept = [r for r in read_records(self.path) if r.get("iteration", -1) < resume_from]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            tmp.replace(self.path)
        elif resume_from is None:
            self.path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a last line cut off by a kill is ignored."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_curves(records_path: str | os.PathLike, png_path: str | os.PathLike) -> Path:
    """Total loss (and its parts) per iteration on the left, evaluation metrics on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_records(records_path)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        its = [r["iteration"] for r in train]
        left.plot(its, [r["total_loss"] for r in train], label="total loss")
        for key in ("loss_ce", "loss_mask", "loss_dice", "loss_ml"):
            if key in train[0]:
                left.plot(its, [r[key] for r in train], label=key, alpha=0.7)
        left.set_yscale("log")
    left.set(title="training loss", xlabel="iteration")
    left.legend(fontsize=8)
    metric_keys = sorted(
        {
            k
            for r in evals
            for k, v in r.items()
            if k not in ("kind", "iteration") and isinstance(v, (int, float)) and math.isfinite(v)
        }
    )
    for key in metric_keys:
        right.plot(
            [r["iteration"] for r in evals if key in r],
            [r[key] for r in evals if key in r],
            marker="o",
            label=key,
        )
    right.set(title="evaluation", xlabel="iteration")
    if metric_keys:
        right.legend(fontsize=8)
    figure.tight_layout()
    png_path = Path(png_path)
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return png_path
