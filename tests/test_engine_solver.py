"""Optimizer groups, LR schedules, clipping and atomic checkpoints of the engine."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from rankseg_fast.config import load_recipe
from rankseg_fast.engine.checkpointer import Checkpointer
from rankseg_fast.engine.solver import build_optimizer, build_scheduler, clip_full_model, lr_factor, param_groups
from rankseg_fast.testing.model import tiny_mask_former

RANKSEG = "ade20k/semantic-segmentation/swin/maskformer2_swin_base_IN21k_384_bs16_160k_res640-rankseg.yaml"


def group_of(groups, param):
    return next(g for g in groups if any(p is param for p in g["params"]))


def test_param_groups_follow_the_reference_rules():
    model = tiny_mask_former(rankseg_topk=6)
    groups = param_groups(model, 1e-4, 0.05, backbone_multiplier=0.1, mlhead_multiplier=0.5)
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])
    block = model.backbone.layers[0].blocks[0]
    assert group_of(groups, block.attn.qkv.weight) == {**group_of(groups, block.attn.qkv.weight), "lr": 1e-5, "weight_decay": 0.05}
    assert group_of(groups, block.attn.relative_position_bias_table)["weight_decay"] == 0.0
    assert group_of(groups, block.norm1.weight)["weight_decay"] == 0.0 and group_of(groups, block.norm1.weight)["lr"] == 1e-5
    predictor = model.sem_seg_head.predictor
    assert group_of(groups, predictor.query_feat.weight)["weight_decay"] == 0.0  # nn.Embedding
    assert group_of(groups, predictor.decoder_norm.weight)["weight_decay"] == 0.0
    assert group_of(groups, predictor.class_embed.weight) == {**group_of(groups, predictor.class_embed.weight), "lr": 1e-4, "weight_decay": 0.05}
    # The pixel decoder's level_embed is a raw Parameter: decayed, as in the reference.
    assert group_of(groups, model.sem_seg_head.pixel_decoder.transformer.level_embed)["weight_decay"] == 0.05
    ml = group_of(groups, model.ml_head.cls_emb)
    assert ml["lr"] == pytest.approx(5e-5) and ml["weight_decay"] == 0.05  # the cls_emb exemption never fires
    assert group_of(groups, model.ml_norm.weight)["lr"] == 1e-4  # ml_norm is not in the ml_head group


def test_poly_and_multistep_schedules():
    solver = load_recipe(RANKSEG).SOLVER
    assert lr_factor(0, solver) == 1.0
    assert lr_factor(80000, solver) == pytest.approx(0.5**0.9)
    assert lr_factor(160000, solver) == 0.0
    video = load_recipe(RANKSEG, ["SOLVER.LR_SCHEDULER_NAME=WarmupMultiStepLR", "SOLVER.STEPS=[4000]",
                                  "SOLVER.WARMUP_ITERS=10"]).SOLVER
    assert lr_factor(3999, video) == 1.0 and lr_factor(4000, video) == pytest.approx(0.1)
    assert lr_factor(5, video) == 1.0  # warm-up factor 1.0 is a no-op
    with pytest.raises(ValueError, match="LR_SCHEDULER_NAME 'Cosine'"):
        build_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1), load_recipe(RANKSEG, ["SOLVER.LR_SCHEDULER_NAME=Cosine"]).SOLVER)


def test_scheduler_scales_every_group():
    model = tiny_mask_former()
    solver = load_recipe(RANKSEG, ["SOLVER.MAX_ITER=10"]).SOLVER
    optimizer = build_optimizer(model, solver)
    scheduler = build_scheduler(optimizer, solver)
    base = [g["lr"] for g in optimizer.param_groups]
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([b * 0.5**0.9 for b in base])


def test_full_model_clipping_bounds_the_global_norm():
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4))]
    params[0].grad, params[1].grad = torch.full((3,), 3.0), torch.full((4,), 4.0)
    before = clip_full_model(params, 0.01)
    assert before == pytest.approx((27 + 64) ** 0.5)
    assert torch.cat([p.grad for p in params]).norm() == pytest.approx(0.01, rel=1e-4)


def test_checkpoints_are_atomic_keep_last_n_and_restore_rng(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep=2)
    model = nn.Linear(3, 2)
    for iteration in (10, 20, 30):
        random.seed(iteration)
        np.random.seed(iteration)
        torch.manual_seed(iteration)
        checkpointer.save(iteration, {"model": model.state_dict(), "data_position": iteration * 4})
    assert [p.name for p in checkpointer.checkpoints()] == ["model_0000020.pth", "model_0000030.pth"]
    expected = (random.random(), np.random.rand(), torch.rand(1))
    # A save killed half-way leaves only a temporary file: it is ignored.
    (tmp_path / ".model_0000040.pth.tmp123").write_bytes(b"partial")
    state = checkpointer.load_latest()
    assert state["iteration"] == 30 and state["data_position"] == 120
    from rankseg_fast.engine.checkpointer import set_rng_state

    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_a_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep=3)
    checkpointer.save(1, {"x": torch.ones(1)})
    checkpointer.save(2, {"x": torch.ones(2)})
    checkpointer.path_for(2).write_bytes(b"truncated")
    with pytest.warns(RuntimeWarning, match="model_0000002.pth is unreadable"):
        state = checkpointer.load_latest()
    assert state["iteration"] == 1
    assert Checkpointer(tmp_path / "empty").load_latest() is None
