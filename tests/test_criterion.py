"""Training losses: point sampling, the Hungarian matcher op (`ops.mask_match`), the set criterion and
RankSeg's rank-space variant and multi-label loss (fact sheet §4.4, §5)."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from rankseg_fast import ops
from rankseg_fast.modeling.criterion import SetCriterion, rankseg_loss
from rankseg_fast.modeling.criterion import set_criterion as set_criterion_module
from rankseg_fast.modeling.rankseg import AsymmetricLoss
from rankseg_fast.ops.reference import match_costs, point_sample, uncertain_point_coords
from rankseg_fast.testing import needs_cuda, needs_ops


# ---------------------------------------------------------------------------------------------- helpers
def _bilinear(img: torch.Tensor, x: float, y: float) -> float:
    """Explicit bilinear sample (align_corners=False, zero padding) of a (H, W) map at normalised (x, y)."""
    H, W = img.shape
    px, py = x * W - 0.5, y * H - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = 0.0
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < H and 0 <= xx < W:
                total += wy * wx * float(img[yy, xx])
    return total


def _direct_costs(prob, x, t, labels):
    """Per-element matcher cost: prob (Q, C), x (Q, P) logits, t (T, P), labels (T,) -> (Q, T) float64."""
    Q, P = x.shape
    T = t.shape[0]
    out = np.zeros((Q, T))
    for q in range(Q):
        for j in range(T):
            xs, ts = x[q].double(), t[j].double()
            ce = (ts * F.softplus(-xs) + (1 - ts) * F.softplus(xs)).sum() / P
            s = xs.sigmoid()
            dice = 1 - (2 * (s * ts).sum() + 1) / (s.sum() + ts.sum() + 1)
            out[q, j] = 5 * ce + 2 * (-prob[q, labels[j]].double()) + 5 * dice
    return out


def _brute_force(cost: np.ndarray) -> float:
    """Minimum total of a (Q, T) rectangular assignment by enumerating permutations."""
    Q, T = cost.shape
    if T <= Q:
        return min(sum(cost[p[j], j] for j in range(T)) for p in itertools.permutations(range(Q), T))
    return min(sum(cost[q, p[q]] for q in range(Q)) for p in itertools.permutations(range(T), Q))


def _problem(L=2, B=2, Q=5, C=4, T=3, h=6, w=6, H=12, W=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(L, B, Q, C, generator=g) * 2
    masks = torch.randn(L, B, Q, h, w, generator=g) * 3
    labels = torch.randint(0, C - 1, (B, T), generator=g)
    tmasks = (torch.rand(B, T, H, W, generator=g) > 0.5).float()
    valid = torch.ones(B, T, dtype=torch.bool)
    return logits, masks, labels, tmasks, valid


def _costs_at_seed(logits, masks, labels, tmasks, num_points, seed):
    """The (L, B, Q, T) cost matrices mask_match sees for a generator seeded with `seed`, computed directly."""
    L, B, Q, _ = logits.shape
    coords = torch.rand(L, B, num_points, 2, generator=torch.Generator().manual_seed(seed))
    out = np.zeros((L, B, Q, labels.shape[1]))
    for layer in range(L):
        for b in range(B):
            x = point_sample(masks[layer, b][None], coords[layer, b][None])[0]
            t = point_sample(tmasks[b][None], coords[layer, b][None])[0]
            out[layer, b] = _direct_costs(logits[layer, b].softmax(-1), x, t, labels[b])
    return out


# ---------------------------------------------------------------------------------------------- sampling
def test_point_sample_matches_explicit_bilinear():
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    coords = torch.rand(2, 11, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1  # some points outside
    out = point_sample(inputs, coords)
    assert out.shape == (2, 3, 11)
    for n in range(2):
        for c in range(3):
            for p in range(11):
                expected = _bilinear(inputs[n, c], float(coords[n, p, 0]), float(coords[n, p, 1]))
                assert out[n, c, p].item() == pytest.approx(expected, abs=1e-10)
    assert ops.point_sample is point_sample


def test_uncertain_point_coords_picks_the_most_uncertain():
    # Logit = 10·(x − 0.5): the zero crossing (most uncertain) is the vertical line x = 0.5.
    w = 32
    ramp = (torch.arange(w, dtype=torch.float64) + 0.5) / w - 0.5
    logits = (10 * ramp).expand(8, w).reshape(1, 1, 8, w).repeat(2, 1, 1, 1)
    num_points, oversample, importance = 40, 3.0, 0.75
    coords = uncertain_point_coords(logits, num_points, oversample, importance, torch.Generator().manual_seed(3))
    assert coords.shape == (2, num_points, 2) and coords.dtype == torch.float32
    g = torch.Generator().manual_seed(3)
    candidates = torch.rand(2, int(num_points * oversample), 2, generator=g)
    fresh = torch.rand(2, num_points - int(importance * num_points), 2, generator=g)
    n_unc = int(importance * num_points)
    for r in range(2):
        uncertainty = -point_sample(logits[r:r + 1], candidates[r:r + 1].double())[0, 0].abs()
        best = candidates[r][uncertainty.argsort(descending=True)[:n_unc]]
        assert torch.equal(coords[r, :n_unc], best)
        # the kept points crowd the zero crossing (zero padding also pulls the border samples towards 0)
        assert (coords[r, :n_unc, 0] - 0.5).abs().mean() < 0.5 * (candidates[r, :, 0] - 0.5).abs().mean()
    assert torch.equal(coords[:, n_unc:], fresh)


# ---------------------------------------------------------------------------------------------- matcher
def test_match_costs_equal_direct_formulas():
    g = torch.Generator().manual_seed(2)
    Q, C, T, P = 4, 5, 3, 17
    prob = torch.randn(Q, C, generator=g, dtype=torch.float64).softmax(-1)
    x = torch.randn(Q, P, generator=g, dtype=torch.float64) * 3
    t = torch.rand(T, P, generator=g, dtype=torch.float64)  # fractional targets (edges)
    labels = torch.tensor([4, 0, 2])
    np.testing.assert_allclose(match_costs(prob, x, t, labels).numpy(), _direct_costs(prob, x, t, labels),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("Q,T", [(5, 4), (4, 4), (3, 1), (2, 4)])
def test_mask_match_equals_brute_force(Q, T):
    logits, masks, labels, tmasks, valid = _problem(Q=Q, T=T, seed=Q * 10 + T)
    P = 64
    q_idx, t_idx, matched = ops.mask_match(logits, masks, labels, tmasks, valid, num_points=P,
                                           generator=torch.Generator().manual_seed(7))
    L, B = logits.shape[:2]
    assert q_idx.shape == t_idx.shape == matched.shape == (L, B, T)
    assert q_idx.dtype == t_idx.dtype == torch.int64 and matched.dtype == torch.bool
    costs = _costs_at_seed(logits, masks, labels, tmasks, P, seed=7)
    for layer in range(L):
        for b in range(B):
            n = int(matched[layer, b].sum())
            assert n == min(Q, T) and bool(matched[layer, b, :n].all())
            qs, ts = q_idx[layer, b, :n].tolist(), t_idx[layer, b, :n].tolist()
            assert len(set(qs)) == n and len(set(ts)) == n and qs == sorted(qs)
            assert (q_idx[layer, b, n:] == -1).all()
            total = sum(costs[layer, b, q, j] for q, j in zip(qs, ts))
            assert total == pytest.approx(_brute_force(costs[layer, b]), abs=1e-4)


def test_mask_match_same_optimum_as_scipy_on_random_problems():
    for seed in range(3):
        logits, masks, labels, tmasks, valid = _problem(L=3, B=2, Q=12, T=7, C=6, seed=100 + seed)
        q_idx, t_idx, matched = ops.mask_match(logits, masks, labels, tmasks, valid, num_points=50,
                                               generator=torch.Generator().manual_seed(seed))
        costs = _costs_at_seed(logits, masks, labels, tmasks, 50, seed)
        for layer in range(3):
            for b in range(2):
                rows, cols = linear_sum_assignment(costs[layer, b])
                m = matched[layer, b]
                ours = costs[layer, b, q_idx[layer, b][m].numpy(), t_idx[layer, b][m].numpy()].sum()
                assert ours == pytest.approx(costs[layer, b, rows, cols].sum(), abs=1e-4)


def test_mask_match_ignores_invalid_rows_and_autocast():
    logits, masks, labels, tmasks, valid = _problem(L=2, B=2, Q=6, T=3, seed=5)
    base = ops.mask_match(logits, masks, labels, tmasks, valid, num_points=40,
                          generator=torch.Generator().manual_seed(1))
    # pad image 1 with two garbage rows (out-of-range labels, full masks) and image 0 with one
    labels_p = torch.cat([labels, torch.full((2, 2), 99)], 1)
    tmasks_p = torch.cat([tmasks, torch.ones(2, 2, *tmasks.shape[2:])], 1)
    valid_p = torch.cat([valid, torch.zeros(2, 2, dtype=torch.bool)], 1)
    padded = ops.mask_match(logits, masks, labels_p, tmasks_p, valid_p, num_points=40,
                            generator=torch.Generator().manual_seed(1))
    for a, p in zip(base, padded):
        assert p.shape[-1] == 5 and torch.equal(a, p[..., :3])
    assert (padded[0][..., 3:] == -1).all() and (padded[1][..., 3:] == -1).all() and not padded[2][..., 3:].any()
    # a padded row in the middle: valid targets keep their original indices
    valid_mid = valid.clone()
    valid_mid[0, 1] = False
    q_idx, t_idx, matched = ops.mask_match(logits, masks, labels, tmasks, valid_mid, num_points=40,
                                           generator=torch.Generator().manual_seed(1))
    assert (matched[:, 0].sum(-1) == 2).all() and not (t_idx[:, 0] == 1).any()
    assert set(t_idx[:, 0][matched[:, 0]].tolist()) == {0, 2}
    # costs run in fp32 with autocast off: same matches under a bf16 autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = ops.mask_match(logits, masks, labels, tmasks, valid, num_points=40,
                              generator=torch.Generator().manual_seed(1))
    for a, p in zip(base, auto):
        assert torch.equal(a, p)


def test_mask_match_empty_targets_and_pad_targets():
    logits, masks, _, _, _ = _problem(L=2, B=2, Q=4, T=1)
    labels, tmasks, valid = ops.pad_targets([torch.zeros(0, dtype=torch.int64)] * 2, [torch.zeros(0, 12, 12)] * 2)
    assert labels.shape == (2, 0) and tmasks.shape == (2, 0, 12, 12) and valid.shape == (2, 0)
    q_idx, t_idx, matched = ops.mask_match(logits, masks, labels, tmasks, valid, num_points=16)
    assert q_idx.shape == (2, 2, 0) and matched.shape == (2, 2, 0)
    labels, tmasks, valid = ops.pad_targets(
        [torch.tensor([3, 1]), torch.zeros(0, dtype=torch.int64)],
        [torch.ones(2, 4, 6, dtype=torch.bool), torch.zeros(0, 5, 3)],
    )
    assert labels.tolist() == [[3, 1], [0, 0]] and valid.tolist() == [[True, True], [False, False]]
    assert tmasks.shape == (2, 2, 5, 6) and tmasks.dtype == torch.float32
    assert tmasks[0, :, :4].all() and not tmasks[0, :, 4].any() and not tmasks[1].any()
    with pytest.raises(ValueError, match="mask_match"):
        ops.mask_match(logits, masks[:, :1], labels, tmasks, valid)
    with pytest.raises(ValueError, match="target_labels"):
        ops.mask_match(logits, masks, torch.tensor([[9, 0], [0, 0]]), tmasks, valid)


# ---------------------------------------------------------------------------------------------- criterion
def _fixed_match(pairs_per_layer, T):
    """A mask_match stand-in returning the given {layer: {b: [(q, t), ...]}} pairs."""
    def fake(pred_logits, pred_masks, target_labels, target_masks, target_valid, *args, **kwargs):
        L, B = pred_logits.shape[:2]
        q = torch.full((L, B, T), -1, dtype=torch.int64)
        t = torch.full((L, B, T), -1, dtype=torch.int64)
        for layer, per_image in pairs_per_layer.items():
            for b, pairs in per_image.items():
                for k, (qq, tt) in enumerate(pairs):
                    q[layer, b, k], t[layer, b, k] = qq, tt
        fake.seen = (target_labels.clone(), target_valid.clone())
        return q, t, q >= 0
    return fake


def _outputs(B=2, Q=4, C=4, h=4, w=4, aux=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda: {"pred_logits": torch.randn(B, Q, C, generator=g, dtype=torch.float64),  # noqa: E731
                    "pred_masks": torch.randn(B, Q, h, w, generator=g, dtype=torch.float64)}
    out = make()
    out["aux_outputs"] = [make() for _ in range(aux)]
    return out


def test_loss_ce_hand_computation(monkeypatch):
    K = 3
    out = _outputs(B=2, Q=4, C=K + 1)
    targets = [{"labels": torch.tensor([2, 0]), "masks": torch.zeros(2, 8, 8)},
               {"labels": torch.tensor([1]), "masks": torch.zeros(1, 8, 8)}]
    monkeypatch.setattr(set_criterion_module.ops, "mask_match",
                        _fixed_match({0: {0: [(1, 0), (3, 1)], 1: [(0, 0)]}}, T=2))
    losses = SetCriterion(K, num_points=8, deep_supervision=False)(out, targets)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    target = [[K, 2, K, 0], [1, K, K, K]]
    num, den = 0.0, 0.0
    for b in range(2):
        for q in range(4):
            c = target[b][q]
            wt = 0.1 if c == K else 1.0
            num += -wt * out["pred_logits"][b, q].log_softmax(-1)[c].item()
            den += wt
    assert losses["loss_ce"].item() == pytest.approx(num / den, rel=1e-6)


def test_loss_mask_and_dice_direct_formulas(monkeypatch):
    # predictions at 4×4, GT at 8×8 = the 4×4 masks upsampled ×2: at the 4×4 pixel centres both samples are exact.
    h = 4
    out = _outputs(B=2, Q=1, C=3, h=h, w=h, seed=4)  # one query, two targets per image: one stays unmatched
    g = torch.Generator().manual_seed(9)
    small = (torch.rand(2, 2, h, h, generator=g) > 0.5).float()
    big = small.repeat_interleave(2, -1).repeat_interleave(2, -2)
    targets = [{"labels": torch.tensor([0, 1]), "masks": big[0] > 0}, {"labels": torch.tensor([1, 0]), "masks": big[1]}]
    centres = (torch.stack(torch.meshgrid(torch.arange(h), torch.arange(h), indexing="xy"), -1).reshape(-1, 2) + 0.5) / h
    monkeypatch.setattr(set_criterion_module.ops, "uncertain_point_coords",
                        lambda logits, *a, **k: centres.to(logits.dtype).expand(logits.shape[0], -1, -1))
    pairs = {0: [(0, 1)], 1: [(0, 0)]}
    monkeypatch.setattr(set_criterion_module.ops, "mask_match", _fixed_match({0: pairs}, T=2))
    losses = SetCriterion(2, num_points=h * h, deep_supervision=False)(out, targets)
    num_masks = 4  # all targets count, matched or not
    bce, dice = 0.0, 0.0
    for b, pb in pairs.items():
        for q, j in pb:
            x = out["pred_masks"][b, q].reshape(-1)  # row-major = the (x fastest) centre order
            t = small[b, j].reshape(-1).double()
            bce += (t * F.softplus(-x) + (1 - t) * F.softplus(x)).mean().item()
            s = x.sigmoid()
            dice += 1 - (2 * (s * t).sum().item() + 1) / (s.sum().item() + t.sum().item() + 1)
    assert losses["loss_mask"].item() == pytest.approx(bce / num_masks, rel=1e-6)
    assert losses["loss_dice"].item() == pytest.approx(dice / num_masks, rel=1e-6)


def test_deep_supervision_keys_weights_and_empty_targets():
    out = _outputs(B=2, Q=4, C=4, aux=3)
    out["pred_masks"].requires_grad_(True)
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)}] * 2
    criterion = SetCriterion(3, num_points=16)
    losses = criterion(out, empty)
    expected = {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("", "_0", "_1", "_2")}
    assert set(losses) == expected
    for name, value in losses.items():
        assert (value.item() == 0) == (not name.startswith("loss_ce")), name
    # all queries -> no-object: loss_ce is the plain mean NLL of the last class (uniform weights 0.1)
    assert losses["loss_ce"].item() == pytest.approx(-out["pred_logits"].log_softmax(-1)[..., 3].mean().item())
    total = criterion.weighted_total(losses)
    assert total.item() == pytest.approx(2 * sum(v.item() for k, v in losses.items() if "ce" in k))
    total.backward()  # the zero mask losses keep the graph connected
    weights = criterion.weighted_total({"loss_ce_4": torch.tensor(1.0), "loss_mask": torch.tensor(1.0),
                                        "loss_dice_0": torch.tensor(1.0), "loss_ml": torch.tensor(1.0)})
    assert weights.item() == 2 + 5 + 5 + 1
    with pytest.raises(KeyError):
        criterion.weighted_total({"loss_bbox": torch.tensor(1.0)})
    assert "empty_weight" in criterion.state_dict()
    assert criterion.empty_weight.tolist() == pytest.approx([1, 1, 1, 0.1])
    no_deep = SetCriterion(3, num_points=16, deep_supervision=False)(out, empty)
    assert set(no_deep) == {"loss_ce", "loss_mask", "loss_dice"}


def test_num_masks_all_reduced_over_ranks(tmp_path):
    import torch.distributed as dist
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert set_criterion_module._reduce_num_masks(5, torch.device("cpu")) == 5.0
        assert set_criterion_module._reduce_num_masks(0, torch.device("cpu")) == 1.0  # clamp >= 1
    finally:
        dist.destroy_process_group()
    assert set_criterion_module._reduce_num_masks(0, torch.device("cpu")) == 1.0


def test_rank_space_relabelling_and_class_weights(monkeypatch):
    K, S = 5, 2
    out = _outputs(B=2, Q=3, C=S + 1, seed=6)
    rank_index = torch.tensor([[3, 1, K], [0, 4, K]])
    targets = [{"labels": torch.tensor([1, 2, 3]), "masks": torch.zeros(3, 8, 8)},   # class 2 outside the top-2
               {"labels": torch.tensor([2]), "masks": torch.zeros(1, 8, 8)}]         # everything dropped
    fake = _fixed_match({0: {0: [(0, 1), (2, 0)]}}, T=2)
    monkeypatch.setattr(set_criterion_module.ops, "mask_match", fake)
    criterion = SetCriterion(K, num_points=8, deep_supervision=False)
    losses = criterion(out, targets, rank_index=rank_index)
    labels, valid = fake.seen
    assert labels[0].tolist() == [1, 0] and valid.tolist() == [[True, True], [False, False]]
    # rank 0 <- slot 1 (label rank 0), rank 1 <- slot 0; default target S; weights = last S+1 of empty_weight
    target = [[0, S, 1], [S, S, S]]
    num = den = 0.0
    for b in range(2):
        for q in range(3):
            wt = 0.1 if target[b][q] == S else 1.0
            num += -wt * out["pred_logits"][b, q].log_softmax(-1)[target[b][q]].item()
            den += wt
    assert losses["loss_ce"].item() == pytest.approx(num / den, rel=1e-6)
    # the rank index is read from the outputs when not passed; K+1 logits with a rank index are an error
    out["rank_index"] = rank_index
    assert criterion(out, targets)["loss_ce"].item() == pytest.approx(num / den, rel=1e-6)
    with pytest.raises(ValueError, match="rank"):
        criterion(_outputs(B=2, Q=3, C=K + 1), targets, rank_index=rank_index)


def test_rankseg_multilabel_loss():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]])
    gt = [torch.tensor([0, 0, 2]), torch.tensor([3])]  # class 3 = the video dummy K: ignored
    y = torch.tensor([[1.0, 0, 1], [0, 0, 0]])
    p = logits.sigmoid()
    p_neg = (1 - p + 0.05).clamp(max=1)
    per = y * p.clamp(min=1e-5).log() + (1 - y) * p_neg.clamp(min=1e-5).log() * (1 - p_neg) ** 2
    expected = -per.sum() / 6 * 10
    assert rankseg_loss(logits, gt).item() == pytest.approx(expected.item(), rel=1e-6)
    assert rankseg_loss(logits, gt, weight=1.0).item() == pytest.approx(
        AsymmetricLoss()(logits, y).item(), rel=1e-6)
    # the criterion adds it (already scaled) when the outputs carry multilabel logits
    out = _outputs(B=2, Q=3, C=4)
    out["multilabel_logits"] = logits
    targets = [{"labels": g, "masks": torch.zeros(len(g), 8, 8)} for g in (torch.tensor([0, 2]), torch.tensor([1]))]
    losses = SetCriterion(3, num_points=8, deep_supervision=False)(out, targets)
    assert losses["loss_ml"].item() == pytest.approx(
        10 * AsymmetricLoss()(logits, torch.tensor([[1.0, 0, 1], [0, 1, 0]])).item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------- end to end
def test_end_to_end_rankseg_training_steps_decrease_loss():
    from rankseg_fast.testing.model import tiny_mask_former

    torch.manual_seed(0)
    model = tiny_mask_former(num_classes=6, rankseg_topk=4).train()
    batch = torch.randn(2, 3, 64, 64)
    g = torch.Generator().manual_seed(0)
    targets = [{"labels": torch.tensor([0, 3]), "masks": torch.rand(2, 64, 64, generator=g) > 0.5},
               {"labels": torch.tensor([5]), "masks": torch.rand(1, 64, 64, generator=g) > 0.5}]
    criterion = SetCriterion(6, num_points=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    totals = []
    for _ in range(4):
        torch.manual_seed(1)  # same dropout and points every step: a fixed objective
        outputs = model.forward_logits(batch, [t["labels"] for t in targets])
        losses = criterion(outputs, targets, generator=torch.Generator().manual_seed(2))
        assert "loss_ml" in losses and "loss_dice_2" in losses and outputs["pred_logits"].shape[-1] == 5
        total = criterion.weighted_total(losses)
        optimizer.zero_grad()
        total.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        totals.append(total.item())
    assert totals[-1] < totals[0], totals


@pytest.mark.cuda
@needs_cuda
@needs_ops
def test_rankseg_training_step_synchronises_the_gpu_three_times():
    """CUDA's own count of the synchronising calls of a forward + criterion + backward (the CPU test
    `test_a_training_step_reads_the_device_three_times` counts the Python reads; this also sees copies and
    syncs inside torch): RankSeg's relabelling, the multi-label target's check and the matcher's status."""
    from rankseg_fast.testing.model import tiny_mask_former

    device = torch.device("cuda")
    model = tiny_mask_former(num_classes=6, rankseg_topk=4).to(device).train()
    batch = torch.randn(2, 3, 64, 64, device=device)
    g = torch.Generator().manual_seed(0)
    targets = [{"labels": torch.tensor(labels, device=device),
                "masks": (torch.rand(len(labels), 64, 64, generator=g) > 0.5).to(device)} for labels in ([0, 3], [5])]
    criterion = SetCriterion(6, num_points=64).to(device)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            outputs = model.forward_logits(batch, [t["labels"] for t in targets])
            criterion.weighted_total(criterion(outputs, targets)).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sorted(f"{w.filename.rsplit('/rankseg_fast/', 1)[-1]}:{w.lineno}" for w in caught
                   if "synchroniz" in str(w.message))
    assert [s.rsplit(":", 1)[0] for s in syncs] == ["modeling/rankseg/gt_oracle.py", "ops/mask_match.py",
                                                    "ops/rank_logits.py"], syncs
