"""Checkpoint reading (restricted pickle / weights-only torch.load), loading with key reports, the model-zoo
table, and converters for the ImageNet-pretrained init files."""

from rankseg_fast.checkpoint.converters import (
    convert_swin,
    convert_torchvision_resnet,
    to_numpy_state,
    validate_d2_resnet,
    write_d2_pkl,
)
from rankseg_fast.checkpoint.loading import (
    LoadReport,
    load_backbone_weights,
    load_model_zoo,
    load_state_into,
    resolve_source,
    summarize_keys,
)
from rankseg_fast.checkpoint.readers import CheckpointError, CheckpointFile, read_checkpoint, read_checkpoint_file
from rankseg_fast.checkpoint.zoo import ZOO, ZOO_ENTRIES, ZooEntry, cache_dir, cache_path, get_entry, verify_md5_prefix

__all__ = [
    "CheckpointError",
    "CheckpointFile",
    "LoadReport",
    "ZOO",
    "ZOO_ENTRIES",
    "ZooEntry",
    "cache_dir",
    "cache_path",
    "convert_swin",
    "convert_torchvision_resnet",
    "get_entry",
    "load_backbone_weights",
    "load_model_zoo",
    "load_state_into",
    "read_checkpoint",
    "read_checkpoint_file",
    "resolve_source",
    "summarize_keys",
    "to_numpy_state",
    "validate_d2_resnet",
    "verify_md5_prefix",
    "write_d2_pkl",
]
