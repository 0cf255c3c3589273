"""`python -m bench` (= `make bench`): every benchmark, one table.

Each benchmark runs in its own process (so one's imports and memory never colour
another's figures) and hands its figures back as JSON. Small scale by default (a few
minutes on 2 cores); `--full` for the full scale; `--only startup,slow_model` for some.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common
from bench.common import Figure

BENCHMARKS = [
    "startup",
    "turn_overhead",
    "ack_latency",
    "memory_users",
    "slow_model",
    "naive_baseline",
    "replicas",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full scale (tens of minutes)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else BENCHMARKS
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    figures: list[Figure] = []
    failed: list[str] = []
    started = time.perf_counter()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for name in chosen:
            out = Path(tmp) / f"{name}.json"
            command = [sys.executable, "-m", f"bench.{name}", "--json-out", str(out)]
            if args.full:
                command.append("--full")
            print(f"--- {name}", flush=True)
            began = time.perf_counter()
            result = subprocess.run(command, cwd=common.ROOT)
            print(f"--- {name}: {time.perf_counter() - began:.0f} s", flush=True)
            if result.returncode != 0 or not out.exists():
                failed.append(name)
                figures.append(common.fig(name, "FAILED", f"exit code {result.returncode}"))
                continue
            figures += [Figure(**item) for item in json.loads(out.read_text())]
    total = time.perf_counter() - started
    scale = "full" if args.full else "small"
    print()
    print(
        common.table(
            figures,
            f"Benchmarks ({scale} scale) — {common.machine()}\n"
            f"load average at start {load:.2f}; total {total:.0f} s; "
            f"command: {'make bench' if not args.full else 'python -m bench --full'}",
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
