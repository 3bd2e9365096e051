"""`python -m rankseg_fast.train RECIPE [KEY=VALUE ...]` — train (and evaluate) a recipe.

  --output-dir DIR   checkpoints, metrics.jsonl, curves.png, overlays (default: OUTPUT_DIR of the recipe)
  --resume           continue from the newest checkpoint in the output folder
  --eval-only        evaluate (the newest checkpoint of the output folder, or MODEL.WEIGHTS) and stop
  --num-gpus N       start N processes on this machine (one per GPU); for several machines use torchrun:
                     torchrun --nnodes M --nproc-per-node N --rdzv-endpoint HOST:PORT -m rankseg_fast.train RECIPE
  --device           cuda or cpu (default: cuda when available)
  --amp / --no-amp   force mixed precision on or off (default: the recipe's on CUDA, off on the CPU)
  --deterministic    deterministic algorithms where PyTorch has them
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rankseg_fast.config import load_recipe


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rankseg_fast.train", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("recipe", help="a recipe name under recipes/ or a YAML path")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--output-dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--device", choices=("cuda", "cpu"))
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--deterministic", action="store_true")
    return parser.parse_args(argv)


def _run(local_rank: int, args: argparse.Namespace, world_size: int) -> dict:
    """One process: set up the process group (when there are several), train or evaluate."""
    from rankseg_fast.engine.trainer import Trainer

    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    device = torch.device(device_type, local_rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    recipe = load_recipe(args.recipe, args.overrides)
    output_dir = args.output_dir or Path(recipe.OUTPUT_DIR)
    output_dir.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", 0)) == 0:
        recipe.dump(output_dir / "recipe.yaml")
    trainer = Trainer(recipe, output_dir, device, resume=args.resume or args.eval_only, amp=args.amp,
                      deterministic=args.deterministic)
    metrics = trainer.evaluate(trainer.start_iter, final=True) if args.eval_only else trainer.train()
    if int(os.environ.get("RANK", 0)) == 0:
        (output_dir / "final_metrics.json").write_text(json.dumps(metrics, indent=1))
        trainer.write_overlays(output_dir / "overlays")
    if dist.is_initialized():
        dist.destroy_process_group()
    return metrics


def _spawned(local_rank: int, args: argparse.Namespace, world_size: int, port: int) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    _run(local_rank, args, world_size)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if "WORLD_SIZE" in os.environ:  # started by torchrun
        _run(int(os.environ.get("LOCAL_RANK", 0)), args, int(os.environ["WORLD_SIZE"]))
    elif args.num_gpus > 1:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_spawned, args=(args, args.num_gpus, port), nprocs=args.num_gpus)
    else:
        metrics = _run(0, args, 1)
        print(json.dumps({k: round(v, 3) for k, v in metrics.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
