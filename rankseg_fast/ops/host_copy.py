"""Host data onto a device without synchronising it. A plain `.to("cuda")` of a CPU tensor (or
`torch.tensor(values, device="cuda")`) copies from pageable memory and waits for the stream to drain."""

from __future__ import annotations

import torch


def to_device_async(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device`; a CPU tensor bound for CUDA is staged in pinned memory and copied non_blocking."""
    device = torch.device(device)
    if tensor.device.type == "cpu" and device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def host_ints_to(values: list[int] | list[list[int]], device: torch.device | str) -> torch.Tensor:
    """An int64 tensor of `values` (nested lists give its shape) on `device`, without synchronising it."""
    return to_device_async(torch.tensor(values, dtype=torch.int64), device)
