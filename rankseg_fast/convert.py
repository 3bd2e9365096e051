"""Convert ImageNet-pretrained backbone files to the detectron2-style `.pkl` our backbones load.

    python -m rankseg_fast.convert torchvision-resnet resnet50.pth R-50.pkl
    python -m rankseg_fast.convert swin swin_base_patch4_window12_384_22k.pth swin_base_patch4_window12_384_22k.pkl
    python -m rankseg_fast.convert d2-resnet R-103.pkl R-103.checked.pkl   # validate an already-D2 file

See `rankseg_fast.checkpoint.converters` for the renaming rules.
"""

from __future__ import annotations

import argparse
import sys

from rankseg_fast.checkpoint.converters import convert_swin, convert_torchvision_resnet, validate_d2_resnet, write_d2_pkl
from rankseg_fast.checkpoint.readers import CheckpointError, read_checkpoint

_CONVERTERS = {
    "torchvision-resnet": (convert_torchvision_resnet, "torchvision"),
    "swin": (convert_swin, "third_party"),
    "d2-resnet": (validate_d2_resnet, "detectron2"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rankseg_fast.convert", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=sorted(_CONVERTERS), help="input layout")
    parser.add_argument("input", help="input checkpoint (.pth / .pkl)")
    parser.add_argument("output", help="output detectron2-style .pkl")
    args = parser.parse_args(argv)
    convert, author = _CONVERTERS[args.kind]
    try:
        state = convert(read_checkpoint(args.input))
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    write_d2_pkl(args.output, state, author=author, matching_heuristics=True)
    print(f"wrote {len(state)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
