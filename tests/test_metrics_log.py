"""JSON-lines training records (resume-safe) and the curve plot."""

from __future__ import annotations

from PIL import Image

from rankseg_fast.engine.metrics_log import MetricsLog, plot_curves, read_records


def test_records_survive_resume_and_a_cut_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for it in range(5):
        log.write({"kind": "train", "iteration": it, "total_loss": 10.0 / (it + 1), "loss_ce": 1.0})
    log.write({"kind": "eval", "iteration": 4, "mIoU": 12.5})
    with open(path, "a") as handle:
        handle.write('{"kind": "train", "itera')  # killed mid-write
    assert len(read_records(path)) == 6
    MetricsLog(path, resume_from=3)  # resuming at iteration 3 drops 3, 4 and the eval at 4
    assert [r["iteration"] for r in read_records(path)] == [0, 1, 2]
    png = plot_curves(path, tmp_path / "curves.png")
    assert Image.open(png).size[0] > 500


def test_a_fresh_log_starts_empty(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"kind": "train", "iteration": 9}\n')
    MetricsLog(path)
    assert read_records(path) == []
