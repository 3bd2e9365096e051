"""The GPU sessions' tools run and print their tables: benchmarks/profile_kernels.py (one per op),
benchmarks/profile_train_step.py (one per implementation) and benchmarks/speedups.py (the benchmark JSON's
groups side by side)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from rankseg_fast.testing import needs_ops

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "profile_kernels.py"
STEP_SCRIPT = SCRIPT.with_name("profile_train_step.py")
SPEEDUPS_SCRIPT = SCRIPT.with_name("speedups.py")


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


def bench(group: str, impl: str, seconds: float, **extra) -> dict:
    """One benchmark entry of a pytest-benchmark JSON report."""
    return {"name": f"test[{impl}]", "group": group, "extra_info": {"impl": impl, "device": "cpu", **extra},
            "stats": {"min": seconds, "median": seconds * 1.1, "mean": seconds * 1.2}}


def run_speedups(monkeypatch, tmp_path, report) -> None:
    path = tmp_path / "bench.json"
    path.write_text(report if isinstance(report, str) else json.dumps(report))
    monkeypatch.setattr(sys, "argv", [str(SPEEDUPS_SCRIPT), str(path)])
    runpy.run_path(str(SPEEDUPS_SCRIPT), run_name="__main__")


def test_speedups_lay_each_group_side_by_side(monkeypatch, tmp_path, capsys):
    run_speedups(monkeypatch, tmp_path, {"benchmarks": [
        bench("attention fwd", "kernel", 0.002, peak_mib=38), bench("attention fwd", "sdpa", 0.004, peak_mib=111),
        bench("attention fwd", "reference", 0.006, peak_mib=338), bench("solver", "reference", 2e-5),
    ]})
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("devices: cpu;")
    assert rows[-2] == ("| attention fwd | reference 6 ms, sdpa 4 ms, kernel 2 ms "
                        "| 3.00× vs reference, 2.00× vs sdpa | reference 338, sdpa 111, kernel 38 |")
    assert rows[-1] == "| solver | reference 20 µs | — | — |"


@pytest.mark.parametrize("report,message", [
    ("not json", "Expecting value"),
    ({"runs": []}, "not a pytest-benchmark report"),
    ({"benchmarks": [{"name": "x", "extra_info": {}, "stats": {"min": 1.0}}]}, "has no extra_info"),
    ({"benchmarks": [bench("g", "kernel", 1.0), bench("g", "kernel", 2.0)]}, "two 'kernel' runs"),
])
def test_speedups_reject_what_is_not_a_benchmark_report(monkeypatch, tmp_path, report, message):
    with pytest.raises(SystemExit, match=message):
        run_speedups(monkeypatch, tmp_path, report)
