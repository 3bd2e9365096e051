"""The one way reference ops report bad input: an exception whose message starts with the op's name."""

from __future__ import annotations

from typing import NoReturn


def fail(op: str, message: str, error: type[Exception] = ValueError) -> NoReturn:
    """Raises `error(f"{op}: {message}")` (ValueError for shapes/values/devices, TypeError for dtypes)."""
    raise error(f"{op}: {message}")
