"""The training loop: AMP, DDP, resumable checkpoints, periodic evaluation, JSON-lines metrics, curves.

One `Trainer` per process; `python -m rankseg_fast.train` starts one (or torchrun starts many). The step is
forward (`MaskFormer` in training mode) -> `SetCriterion` -> weighted sum -> backward -> full-model
gradient clipping -> AdamW -> per-iteration LR schedule.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from rankseg_fast.checkpoint import load_model_zoo
from rankseg_fast.data.datasets.ade20k import read_semantic_label
from rankseg_fast.data.datasets.metadata import metadata_for
from rankseg_fast.data.image_io import read_image
from rankseg_fast.data.prediction_files import overlay
from rankseg_fast.data.loader import build_dataset, build_test_loader, build_train_loader
from rankseg_fast.engine.checkpointer import Checkpointer, set_rng_state
from rankseg_fast.engine.evaluation import evaluate_model
from rankseg_fast.modeling.test_time_augmentation import build_tta
from rankseg_fast.engine.metrics_log import MetricsLog, plot_curves
from rankseg_fast.engine.solver import build_optimizer, build_scheduler, check_finite, clip_full_model
from rankseg_fast.modeling.build import build_model
from rankseg_fast.modeling.criterion import SetCriterion
from rankseg_fast.ops.host_copy import to_device_async

logger = logging.getLogger("rankseg_fast.train")


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Trains the recipe's model.

    Args:
        recipe: a loaded `rankseg_fast.config.Recipe`.
        output_dir: checkpoints, `metrics.jsonl`, `curves.png`, overlays.
        device: where the model runs (this process's GPU under DDP).
        resume: continue from the newest checkpoint in output_dir (a fresh start if there is none).
        amp: mixed precision; None = the recipe's SOLVER.AMP.ENABLED on CUDA, off on the CPU.
        log_period: iterations between records in metrics.jsonl.
    """

    def __init__(self, recipe, output_dir: str | Path, device: torch.device, resume: bool = False,
                 amp: bool | None = None, log_period: int = 20, deterministic: bool = False):
        self.recipe, self.output_dir, self.device = recipe, Path(output_dir), device
        self.rank, self.world_size = world()
        self.log_period = log_period
        solver = recipe.SOLVER
        if solver.IMS_PER_BATCH % self.world_size:
            raise ValueError(f"SOLVER.IMS_PER_BATCH={solver.IMS_PER_BATCH} is not divisible by the "
                             f"{self.world_size} processes")
        self.batch_per_rank = solver.IMS_PER_BATCH // self.world_size
        self.seed = recipe.SEED if recipe.SEED >= 0 else 0
        seed_everything(self.seed + self.rank)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        self.model = build_model(recipe).to(device).train()
        if recipe.MODEL.WEIGHTS:
            report = load_model_zoo(self.model, recipe.MODEL.WEIGHTS, strict=False)
            if self.rank == 0:
                logger.info("initial weights %s:\n%s", recipe.MODEL.WEIGHTS, report)
        mf = recipe.MODEL.MASK_FORMER
        self.criterion = SetCriterion(
            recipe.MODEL.SEM_SEG_HEAD.NUM_CLASSES, class_weight=mf.CLASS_WEIGHT, mask_weight=mf.MASK_WEIGHT,
            dice_weight=mf.DICE_WEIGHT, no_object_weight=mf.NO_OBJECT_WEIGHT, num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO, importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
            deep_supervision=mf.DEEP_SUPERVISION, multilabel_weight=recipe.MODEL.RANKSEG.LOSS_WEIGHT,
        ).to(device)
        self.optimizer = build_optimizer(self.model, solver)
        self.scheduler = build_scheduler(self.optimizer, solver)
        use_amp = (solver.AMP.ENABLED and device.type == "cuda") if amp is None else amp
        bf16 = device.type == "cpu" or torch.cuda.is_bf16_supported()
        self.amp_dtype = (torch.bfloat16 if bf16 else torch.float16) if use_amp else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.network = self.model
        if self.world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.network = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.checkpointer = Checkpointer(self.output_dir, keep=3)
        self.start_iter = 0
        if resume:
            self._resume()
        self.test_sets = list(recipe.DATASETS.TEST)

    def _resume(self) -> None:
        state = self.checkpointer.load_latest(map_location=self.device)
        if state is None:
            logger.info("no checkpoint in %s: starting from scratch", self.output_dir)
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.start_iter = state["iteration"]
        logger.info("resumed from %s at iteration %d", state["path"], self.start_iter)

    def _save(self, iteration: int) -> None:
        if self.rank == 0:
            self.checkpointer.save(iteration, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "recipe": self.recipe.to_yaml(),
            })
        if self.world_size > 1:
            dist.barrier()

    def _targets(self, batch: list[dict], padded_size: tuple[int, int]) -> list[dict]:
        """Per-image labels and masks zero-padded to the batch's padded size (the reference pads GT masks
        to the image batch, so predictions and targets share one normalised frame)."""
        targets = []
        for sample in batch:
            masks = to_device_async(sample["masks"], self.device)
            h, w = masks.shape[-2:]
            masks = F.pad(masks.float(), (0, padded_size[1] - w, 0, padded_size[0] - h))
            targets.append({"labels": to_device_async(sample["labels"], self.device), "masks": masks})
        return targets

    def step(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        """One optimisation step on a list of sample dicts; returns the (unweighted) loss terms, detached."""
        images, _ = self.model.preprocess([to_device_async(s["image"], self.device) for s in batch])
        targets = self._targets(batch, images.shape[-2:])
        gt_classes = [to_device_async(s["gt_classes"], self.device) for s in batch]
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype
                    else contextlib.nullcontext())
        with autocast:
            outputs = self.network(images, gt_classes=gt_classes)
        # Losses in fp32 (the reference computes them outside autocast's half precision).
        losses = self.criterion(outputs, targets)
        total = self.criterion.weighted_total(losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = clip_full_model(self.model.parameters(), self.recipe.SOLVER.CLIP_GRADIENTS.CLIP_VALUE,
                                    self.recipe.SOLVER.CLIP_GRADIENTS.NORM_TYPE)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"total_loss": total.detach(), "grad_norm": grad_norm.detach(),
                **{k: v.detach() for k, v in losses.items()}}

    def evaluate(self, iteration: int, final: bool = False) -> dict[str, float]:
        """Metrics of every test dataset (rank 0 gets the merged result); with TEST.AUG.ENABLED the final
        evaluation adds the test-time-augmented metrics as `<name>/<metric>_TTA`."""
        self.model.eval()
        tta = build_tta(self.model, self.recipe)
        results: dict[str, float] = {}
        for name in self.test_sets:
            loader = build_test_loader(self.recipe, build_dataset(name), rank=self.rank, world_size=self.world_size)
            metrics = evaluate_model(self.model, loader, metadata_for(name), self.device)
            results.update({f"{name}/{k}": v for k, v in metrics.items()})
            if final and tta is not None:  # as the reference: TTA once, at the end of training
                metrics = evaluate_model(self.model, loader, metadata_for(name), self.device, tta)
                results.update({f"{name}/{k}_TTA": v for k, v in metrics.items()})
        self.model.train()
        return results

    @torch.no_grad()
    def write_overlays(self, folder: Path, count: int = 4) -> None:
        """Pictures of the first `count` images of the first test set: image | prediction | ground truth."""
        if not self.test_sets:
            return
        folder.mkdir(parents=True, exist_ok=True)
        name = self.test_sets[0]
        metadata = metadata_for(name)
        colors = np.array(metadata.colors, dtype=np.uint8)
        loader = build_test_loader(self.recipe, build_dataset(name))
        self.model.eval()
        for index, batch in zip(range(count), loader):
            sample = batch[0]
            result = self.model([sample["image"].to(self.device)], output_sizes=[(sample["height"], sample["width"])],
                                gt_classes=[sample["gt_classes"].to(self.device)] if self.model.use_gt_oracle else None)[0]
            image = read_image(sample["file_name"])
            record = loader.dataset.records[index]
            gt = read_semantic_label(record["sem_seg_file_name"], record.get("sem_seg_offset", 0))
            prediction = overlay(image, result["sem_seg"].argmax(0).cpu().numpy(), colors)
            truth = overlay(image, gt.astype(np.int64), colors)
            truth[gt == metadata.ignore_label] = image[gt == metadata.ignore_label]
            Image.fromarray(np.concatenate([image, prediction, truth], axis=1)).save(
                folder / f"{Path(sample['file_name']).stem}.png")
        self.model.train()

    def train(self) -> dict[str, float]:
        """Runs from the current iteration to SOLVER.MAX_ITER; returns the final evaluation."""
        solver, test = self.recipe.SOLVER, self.recipe.TEST
        is_main = self.rank == 0
        log = MetricsLog(self.output_dir / "metrics.jsonl", resume_from=self.start_iter if self.start_iter else None) \
            if is_main else None
        loader = build_train_loader(self.recipe, build_dataset(self.recipe.DATASETS.TRAIN[0]), self.batch_per_rank,
                                    seed=self.seed, rank=self.rank, world_size=self.world_size,
                                    start=self.start_iter * self.batch_per_rank,
                                    pin_memory=self.device.type == "cuda")
        batches = iter(loader)
        progress = tqdm(range(self.start_iter, solver.MAX_ITER), initial=self.start_iter, total=solver.MAX_ITER,
                        desc="train", disable=not is_main, dynamic_ncols=True)
        final: dict[str, float] = {}
        data_time = compute_time = 0.0
        steps = 0  # in the current logging period
        for iteration in progress:
            start = time.perf_counter()
            batch = next(batches)
            loaded = time.perf_counter()
            terms = self.step(batch)
            number = iteration + 1
            logging_now = number % self.log_period == 0 or number == solver.MAX_ITER or iteration == self.start_iter
            # No synchronisation per step: reading the losses waits for the GPU, so the clock stopped after
            # it on logging steps makes the period's compute time exact (the host runs at most one step ahead
            # of the GPU between them, held back by the criterion's reads).
            values = {k: float(v) for k, v in terms.items()} if logging_now else {}
            data_time += loaded - start
            compute_time += time.perf_counter() - loaded
            steps += 1
            if logging_now:
                check_finite(terms["total_loss"], number)
                if is_main:
                    log.write({"kind": "train", "iteration": number, "lr": self.optimizer.param_groups[0]["lr"],
                               "data_time": data_time / steps, "step_time": compute_time / steps,
                               "skipped_samples": loader.num_skipped, **values})
                    progress.set_postfix(loss=f"{values['total_loss']:.3f}", data=f"{data_time / steps:.3f}s",
                                         step=f"{compute_time / steps:.2f}s")
                data_time = compute_time = 0.0
                steps = 0
            if solver.CHECKPOINT_PERIOD > 0 and number % solver.CHECKPOINT_PERIOD == 0 and number != solver.MAX_ITER:
                self._save(number)
            last = number == solver.MAX_ITER
            if test.EVAL_PERIOD > 0 and (number % test.EVAL_PERIOD == 0 or last) or last:
                final = self.evaluate(number, final=last)
                if is_main:
                    log.write({"kind": "eval", "iteration": number, **final})
                    tqdm.write("eval @ {}: {}".format(number, ", ".join(
                        f"{k}={v:.2f}" for k, v in final.items() if "/IoU-" not in k and "/ACC-" not in k)))
        self._save(solver.MAX_ITER)
        if is_main:
            plot_curves(self.output_dir / "metrics.jsonl", self.output_dir / "curves.png")
        return final
