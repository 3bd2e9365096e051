"""benchmarks/profile_kernels.py (the GPU sessions' profiling tool) runs and prints one table per op."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from rankseg_fast.testing import needs_ops

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "profile_kernels.py"


@needs_ops
def test_profile_script_prints_a_table_per_op(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--device", "cpu", "--iters", "1", "--rows", "5"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    printed = capsys.readouterr().out
    for op in ("masked_attention", "rank_logits", "mask_match"):
        assert f"=== {op} cpu float32:" in printed
    assert printed.count("Self CPU time total") == 3


def test_profile_script_rejects_unknown_op(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--ops", "no_such_op"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(SCRIPT), run_name="__main__")
