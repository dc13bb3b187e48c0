"""Wall time of the commands a new user runs first, each in a fresh process as from a shell.

- ``mtrec --help``, ``mtrec models`` and an argument error (``mtrec train --epochs ten``): start-up only
  (target <= 0.5 s each);
- ``mtrec predict`` of ``--predict-rows`` raw rows (CSV, one column per feature) with a run's model, all in:
  start-up, loading the run, reading, encoding, scoring, writing (target <= 2 s for 1,000 rows).

The run predicted with is trained first (MMoE, ``synthetic:easy:10000``, one epoch; not timed). Each command
runs ``--repeats`` times; the median and the range are printed, with the load average (the figures move
with the machine's load).

    python benchmarks/startup.py [--repeats 5] [--predict-rows 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MTREC = [sys.executable, "-m", "mtrec"]


def wall_seconds(args: list[str], expect_status: int) -> float:
    """Seconds one ``mtrec`` invocation takes, start to exit; fails if it exits otherwise than expected."""
    start = time.perf_counter()
    result = subprocess.run([*MTREC, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != expect_status:
        raise SystemExit(f"mtrec {' '.join(args)}: exit {result.returncode}, expected {expect_status}\n"
                         f"{result.stderr}")
    return seconds


def prepare_run(root: Path, rows: int) -> tuple[Path, Path]:
    """A trained run directory and a raw CSV of ``rows`` of its test rows."""
    from mtrec.data.source import load_data
    from mtrec.serving.samples import SAMPLE_CSV, write_samples

    data = "synthetic:easy:10000"
    run = root / "run"
    wall_seconds(["train", "--model", "mmoe", "--data", data, "--epochs", "1", "--out", str(run)], 0)
    write_samples(load_data(data), root, rows=rows)
    return run, root / SAMPLE_CSV


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--predict-rows", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run, sample = prepare_run(root, args.predict_rows)
        rows = sum(1 for _ in sample.open()) - 1
        commands = {
            "mtrec --help": (["--help"], 0),
            "mtrec models": (["models"], 0),
            "argument error": (["train", "--epochs", "ten"], 2),
            f"predict {rows:,} rows": (["predict", str(run), "--input", str(sample), "--out",
                                        str(root / "scores.csv")], 0),
        }
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f} at start")
        for label, (command, status) in commands.items():
            times = []
            for _ in range(args.repeats):
                (root / "scores.csv").unlink(missing_ok=True)
                times.append(wall_seconds(command, status))
            print(f"{label:<22} median {statistics.median(times):.2f} s  "
                  f"(min {min(times):.2f}, max {max(times):.2f}, {args.repeats} runs)")
        print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
