"""2-process gloo DDP equals one process on the same global batch (CPU).

NO_OBJECT_WEIGHT is 1 here: with the recipe's 0.1 the classification loss is a weighted mean per rank (as
in the reference, whose DDP runs differ from one process the same way), which weights the two halves of
the batch by their own weight sums (measured: 2.8% relative gradient difference, cosine 0.9996). With
uniform weights every term is a plain per-rank mean or is normalised by the all-reduced number of masks,
so the gradients must agree to fp32 rounding (measured: 2e-7 relative).
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from rankseg_fast.testing.ddp import train_step

SETTINGS = ["INPUT.MIN_SIZE_TRAIN=[64,80]", "INPUT.CROP.SIZE=[64,64]", "INPUT.SIZE_DIVISIBILITY=64",
            "MODEL.MASK_FORMER.TRAIN_NUM_POINTS=256", "SOLVER.IMS_PER_BATCH=4", "DATALOADER.NUM_WORKERS=0",
            "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT=1.0"]


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """One step with 1 process x 4 images and with 2 gloo processes x 2 images: (single, [rank0, rank1])."""
    from rankseg_fast.data.datasets.synthetic import generate_synthetic

    tmp = tmp_path_factory.mktemp("ddp")
    generate_synthetic(tmp / "cache" / "synthetic")
    patch = pytest.MonkeyPatch()
    patch.setenv("RANKSEG_FAST_CACHE", str(tmp / "cache"))  # inherited by the spawned workers
    try:
        mp.spawn(train_step, args=(1, SETTINGS, str(tmp)), nprocs=1)
        mp.spawn(train_step, args=(2, SETTINGS, str(tmp)), nprocs=2)
    finally:
        patch.undo()
    load = lambda name: torch.load(tmp / name, weights_only=False)  # noqa: E731
    return load("step_1_0.pt"), [load("step_2_0.pt"), load("step_2_1.pt")]


def test_the_ranks_split_the_global_batch(steps):
    single, ranks = steps
    # Round-robin: rank r holds global samples r, r + 2, with the same augmentation as in one process.
    assert ranks[0]["files"] == single["files"][0::2] and ranks[1]["files"] == single["files"][1::2]
    for r in range(2):
        for image, expected in zip(ranks[r]["images"], single["images"][r::2]):
            assert torch.equal(image, expected)


def test_gradients_equal_the_single_process_ones(steps):
    single, ranks = steps
    assert ranks[0]["grads"].keys() == single["grads"].keys()
    for name, expected in single["grads"].items():
        # DDP averaged the two ranks' gradients: every rank holds the same result...
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name
        # ...which is the one-process gradient up to fp32 summation order.
        scale = single["grads"][name].abs().max().item()
        torch.testing.assert_close(ranks[0]["grads"][name], expected, rtol=1e-4, atol=1e-5 * scale, msg=name)
    flat = lambda grads: torch.cat([g.flatten() for g in grads.values()]).double()  # noqa: E731
    ddp, one = flat(ranks[0]["grads"]), flat(single["grads"])
    assert (ddp - one).norm() / one.norm() < 1e-5


def test_losses_average_to_the_single_process_losses(steps):
    single, ranks = steps
    for term in ("loss_ce", "loss_mask", "loss_dice", "loss_ml"):
        mean = (ranks[0]["losses"][term] + ranks[1]["losses"][term]) / 2
        assert mean == pytest.approx(single["losses"][term], rel=1e-4), term
