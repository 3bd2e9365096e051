"""The GPU sessions' profiling tools run and print their tables: benchmarks/profile_kernels.py (one per op)
and benchmarks/profile_train_step.py (one per implementation)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from rankseg_fast.testing import needs_ops

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "profile_kernels.py"
STEP_SCRIPT = SCRIPT.with_name("profile_train_step.py")


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


def test_step_profile_prints_a_table_per_implementation(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(STEP_SCRIPT), "--recipe", "synthetic", "--device", "cpu", "--iters", "1",
                                      "--rows", "5"])
    runpy.run_path(str(STEP_SCRIPT), run_name="__main__")
    printed = capsys.readouterr().out
    for impl in ("reference", "kernel"):
        assert f"=== train step synthetic cpu {impl}:" in printed
    assert printed.count("Self CPU time total") == 2
