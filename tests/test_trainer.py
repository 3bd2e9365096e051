"""The trainer on the embedded synthetic dataset: a few CPU iterations lower the loss, a resumed run
equals an uninterrupted one, and the outputs (metrics, curves, checkpoints) are written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rankseg_fast.config import load_recipe
from rankseg_fast.engine.checkpointer import POINTER
from rankseg_fast.engine.metrics_log import read_records
from rankseg_fast.engine.trainer import Trainer

RECIPE = "synthetic/maskformer2_swin_micro_synthetic-rankseg.yaml"
TINY = ["INPUT.MIN_SIZE_TRAIN=[64,80]", "INPUT.CROP.SIZE=[64,64]", "INPUT.SIZE_DIVISIBILITY=64",
        "INPUT.MIN_SIZE_TEST=64", "INPUT.MAX_SIZE_TEST=96", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS=256",
        "SOLVER.IMS_PER_BATCH=4", "DATALOADER.NUM_WORKERS=0", "TEST.EVAL_PERIOD=0"]


@pytest.fixture(scope="module", autouse=True)
def synthetic_cache(tmp_path_factory):
    """A small synthetic dataset in a private cache (generated once for this module)."""
    from rankseg_fast.data.datasets import synthetic

    root = tmp_path_factory.mktemp("cache") / "synthetic"
    synthetic.generate_synthetic(root)  # the default parameters, as build_dataset asks for them
    patch = pytest.MonkeyPatch()
    patch.setattr(synthetic, "default_synthetic_root", lambda: root)
    yield root
    patch.undo()


def make_trainer(tmp_path, iterations, *extra, resume=False):
    recipe = load_recipe(RECIPE, TINY + [f"SOLVER.MAX_ITER={iterations}", *extra])
    return Trainer(recipe, tmp_path, torch.device("cpu"), resume=resume, log_period=1)


def test_a_few_iterations_lower_the_loss_and_write_the_outputs(tmp_path):
    trainer = make_trainer(tmp_path, 12, "SOLVER.BASE_LR=0.001")
    metrics = trainer.train()
    records = [r for r in read_records(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    losses = [r["total_loss"] for r in records]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    assert all(r["data_time"] >= 0 and r["step_time"] > 0 for r in records)
    assert "synthetic_sem_seg_val/mIoU" in metrics and 0 <= metrics["synthetic_sem_seg_val/mIoU"] <= 100
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "model_0000012.pth").is_file()
    trainer.write_overlays(tmp_path / "overlays", count=2)
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 2


def test_resume_equals_an_uninterrupted_run(tmp_path):
    straight = make_trainer(tmp_path / "a", 6, "SOLVER.CHECKPOINT_PERIOD=3")
    straight.train()
    # A run "killed" after its checkpoint at iteration 3: only that checkpoint survives.
    resumed_dir = tmp_path / "b"
    resumed_dir.mkdir()
    shutil.copy(tmp_path / "a" / "model_0000003.pth", resumed_dir)
    (resumed_dir / POINTER).write_text("model_0000003.pth")
    resumed = make_trainer(resumed_dir, 6, "SOLVER.CHECKPOINT_PERIOD=3", resume=True)
    assert resumed.start_iter == 3
    resumed.train()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    losses_a = [r["total_loss"] for r in read_records(tmp_path / "a" / "metrics.jsonl") if r["kind"] == "train"]
    losses_b = [r["total_loss"] for r in read_records(resumed_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert losses_b == losses_a[3:]


def test_train_cli_writes_final_metrics(tmp_path):
    from rankseg_fast import train

    tta = ["TEST.AUG.ENABLED=True", "TEST.AUG.MIN_SIZES=[48,64]", "TEST.AUG.MAX_SIZE=128"]
    assert train.main([RECIPE, *TINY, *tta, "SOLVER.MAX_ITER=2", "--output-dir", str(tmp_path), "--device", "cpu"]) == 0
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert "synthetic_sem_seg_val/mIoU" in final and (tmp_path / "recipe.yaml").is_file()
    assert "synthetic_sem_seg_val/mIoU_TTA" in final  # TTA once, at the end of training


def test_evaluate_a_trained_checkpoint(tmp_path, capsys):
    from rankseg_fast import evaluate, train

    assert train.main([RECIPE, *TINY, "SOLVER.MAX_ITER=1", "--output-dir", str(tmp_path), "--device", "cpu"]) == 0
    capsys.readouterr()
    tta = ["TEST.AUG.ENABLED=True", "TEST.AUG.MIN_SIZES=[48,64]", "TEST.AUG.MAX_SIZE=128"]
    evaluate.main([RECIPE, "--weights", str(tmp_path / "model_0000001.pth"), "--set", *TINY, *tta,
                   "--device", "cpu", "--output", str(tmp_path / "eval.json")])
    out = capsys.readouterr().out
    assert "tensors loaded" in out and "synthetic_sem_seg_val: mIoU=" in out
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    scored = json.loads((tmp_path / "eval.json").read_text())["synthetic_sem_seg_val"]
    assert scored["mIoU"] == pytest.approx(final["synthetic_sem_seg_val/mIoU"])
    assert 0 <= scored["mIoU_TTA"] <= 100 and "PQ_TTA" not in scored  # TTA scores semantic output only


def test_bad_recipe_key_is_named(tmp_path):
    from rankseg_fast import train
    from rankseg_fast.config import RecipeError

    with pytest.raises(RecipeError, match="SOLVER.MAX_ITERS"):
        train.main([RECIPE, "SOLVER.MAX_ITERS=3", "--output-dir", str(tmp_path)])


def test_a_training_step_reads_the_device_three_times(tmp_path):
    """On a GPU every host read of tensor values drains the stream. The step makes three, each to validate
    or size something (RankSeg's target relabelling, the multi-label target's class ids, the matcher's
    status); the per-layer and per-image reads it used to make are gone."""
    from rankseg_fast.data.loader import build_dataset, build_train_loader
    from rankseg_fast.testing.host_reads import HostReads

    trainer = make_trainer(tmp_path, 1)
    loader = build_train_loader(trainer.recipe, build_dataset(trainer.recipe.DATASETS.TRAIN[0]),
                                trainer.batch_per_rank, seed=0)
    batch = next(iter(loader))
    with HostReads() as counter:
        trainer.step(batch)
    assert counter.by_file() == {"ops/rank_logits.py": 1, "modeling/rankseg/gt_oracle.py": 1,
                                 "ops/mask_match.py": 1}, counter.reads
