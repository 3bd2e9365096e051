"""Speed-up table of a pytest-benchmark JSON report: one markdown row per benchmark group (an op or step on
one device, shape, dtype and pass), with each implementation's time (`extra_info["impl"]`: reference,
sdpa, original, kernel), the kernel's speed-up over every other implementation, and the peak memory the
benchmark recorded. The benchmark groups hold the numbers; this lays them side by side for
benchmarks/README.md.

Run: python benchmarks/speedups.py BENCH.json [--stat min|median|mean]
     (BENCH.json from `pytest benchmarks --benchmark-only --benchmark-json=BENCH.json`)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

IMPL_ORDER = ("original", "reference", "sdpa", "kernel")
MEMORY_KEYS = ("peak_mib", "peak_cuda_mib", "process_peak_rss_mib")


def _time(seconds: float) -> str:
    """Seconds in the unit that keeps 3 significant digits readable (µs, ms or s)."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-6:.3g} µs"


def _impl_key(impl: str) -> tuple[int, str]:
    return (IMPL_ORDER.index(impl) if impl in IMPL_ORDER else len(IMPL_ORDER), impl)


def speedup_rows(report: dict, stat: str = "min") -> list[str]:
    """Markdown table lines for a pytest-benchmark report (the parsed JSON): group | times | speed-ups |
    peak memory. Groups without a `kernel` run list their times only."""
    if not isinstance(report.get("benchmarks"), list):
        raise ValueError("not a pytest-benchmark report: no 'benchmarks' list")
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench in report["benchmarks"]:
        impl = bench.get("extra_info", {}).get("impl")
        if impl is None:
            raise ValueError(f"benchmark {bench.get('fullname', bench.get('name'))!r} has no extra_info['impl']")
        group = bench.get("group") or bench["name"]
        if impl in groups[group]:
            raise ValueError(f"benchmark group {group!r} has two '{impl}' runs")
        if stat not in bench.get("stats", {}):
            raise ValueError(f"benchmark {bench.get('name')!r} has no '{stat}' statistic")
        groups[group][impl] = bench
    lines = [f"| benchmark group | {stat} time | kernel speed-up | peak memory (MiB) |", "|---|---|---|---|"]
    for group in sorted(groups):
        runs = dict(sorted(groups[group].items(), key=lambda item: _impl_key(item[0])))
        times = {impl: bench["stats"][stat] for impl, bench in runs.items()}
        kernel = times.get("kernel")
        speedups = ", ".join(f"{times[impl] / kernel:.2f}× vs {impl}" for impl in times
                             if impl != "kernel" and kernel)
        memory = ", ".join(f"{impl} {bench['extra_info'][key]}" for impl, bench in runs.items()
                           for key in MEMORY_KEYS if key in bench["extra_info"])
        time_cell = ", ".join(f"{impl} {_time(t)}" for impl, t in times.items())
        lines.append(f"| {group} | {time_cell} | {speedups or '—'} | {memory or '—'} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--stat", default="min", choices=("min", "median", "mean"))
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
        lines = speedup_rows(report, args.stat)
    except (OSError, json.JSONDecodeError, ValueError) as error:
        sys.exit(f"speedups: {args.report}: {error}")
    devices = sorted({str(b["extra_info"].get("device") or b["extra_info"].get("gpu") or "?")
                      for b in report["benchmarks"]})
    cpu = report.get("machine_info", {}).get("cpu", {}).get("brand_raw", "?")
    print(f"devices: {', '.join(devices)}; host CPU: {cpu}; {report.get('datetime', '?')}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
