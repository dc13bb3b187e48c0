"""Train throughput of ``mtrec train`` on 1 process and on N data-parallel processes (torchrun, gloo).

Each setting is a real ``mtrec train`` run on a memory-mapped prepared dataset (the Census-shaped data of
``throughput.py``: 40 fields, two tasks), MMoE with its default sizes, embedding 16, global batch 1024,
one epoch; the figure is the run's ``train_samples_per_s`` (rows of all ranks per second of the training
loop, data loading included, evaluation excluded, after 3 warm-up steps). Settings are interleaved over
the repeats so that load from other processes on the machine hits each alike; medians are printed.
Then the cost of one step's communication alone: an all-reduce of the model's gradient size between the
processes (gloo on loopback), timed under torchrun.

    python benchmarks/distributed_throughput.py [--rows 200000] [--repeats 3] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mtrec.models import create_model
from throughput import census_shaped

SRC = Path(__file__).resolve().parents[1] / "src"


# runs a command and prints the peak resident memory (KiB) of its largest process, children included
PEAK_RSS = "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; " \
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"


def mtrec_train(config: dict[str, Any], out: Path, processes: int, threads: int) -> dict[str, Any]:
    """One ``mtrec train`` run of ``config`` (under torchrun when ``processes`` > 1); its ``metrics.json``,
    plus ``peak_rss_mib``: the peak resident memory of its largest process."""
    (out.parent / f"{out.name}.json").write_text(json.dumps(config))
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    cmd = [sys.executable, "-c", PEAK_RSS, *launcher, "-m", "mtrec.cli", "train",
           "--config", str(out.parent / f"{out.name}.json"), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    metrics: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    metrics["peak_rss_mib"] = int(done.stderr.strip().splitlines()[-1]) / 1024
    return metrics


def run(data: Path, out: Path, processes: int, threads: int, batch_size: int) -> float:
    """One ``mtrec train`` run; returns its train samples/s."""
    config = {"model": "mmoe", "data": str(data), "model_options": {"embedding_dim": 16},
              "train": {"epochs": 1, "batch_size": batch_size, "num_threads": threads, "seed": 0}}
    return float(mtrec_train(config, out, processes, threads)["train_samples_per_s"])


def allreduce_ms(numel: int, repeats: int = 30) -> float:
    """Under torchrun: median milliseconds of an all-reduce of ``numel`` float32 (printed by rank 0)."""
    dist.init_process_group("gloo")
    grad = torch.randn(numel)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(grad)
        times.append((time.perf_counter() - start) * 1e3)
    dist.destroy_process_group()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="dataset rows (60%% train)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel setting")
    parser.add_argument("--batch-size", type=int, default=1024, help="global batch")
    parser.add_argument("--allreduce", type=int, default=0, help=argparse.SUPPRESS)  # the torchrun child
    args = parser.parse_args()
    if args.allreduce:
        ms = allreduce_ms(args.allreduce)
        if dist.is_available() and int(os.environ.get("RANK", "0")) == 0:
            print(f"{ms:.2f}")
        return
    cores = os.cpu_count() or 1
    settings = [(1, 1), (1, cores), (args.nproc, max(1, cores // args.nproc))]  # (processes, threads each)
    results: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as tmp:
        census_shaped(args.rows).save(Path(tmp) / "data")
        for r in range(args.repeats):
            for processes, threads in settings:
                out = Path(tmp) / f"run_{processes}x{threads}_{r}"
                results[(processes, threads)].append(run(Path(tmp) / "data", out, processes, threads,
                                                         args.batch_size))
                print(f"  repeat {r}: {processes} process(es) x {threads} thread(s): "
                      f"{results[(processes, threads)][-1]:,.0f} samples/s", flush=True)
        params = sum(p.numel() for p in create_model("mmoe", census_shaped(100).schema, embedding_dim=16).parameters())
        child = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                f"--nproc_per_node={args.nproc}", __file__, "--allreduce", str(params)],
                               env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"},
                               capture_output=True, text=True)
        comm = child.stdout.strip().splitlines()[-1] if child.returncode == 0 else f"failed: {child.stderr[-500:]}"
    load = os.getloadavg()
    print(f"machine: {cores} cores, torch {torch.__version__}, {platform.machine()}, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at the end")
    print(f"mtrec train, MMoE (defaults, embedding 16), Census-shaped {args.rows:,} rows "
          f"({int(0.6 * args.rows):,} train), global batch {args.batch_size}, 1 epoch; "
          f"medians of {args.repeats} runs")
    base = statistics.median(results[settings[0]])
    for (processes, threads), values in results.items():
        median = statistics.median(values)
        print(f"{processes} process(es) x {threads} thread(s): {median:>9,.0f} samples/s  "
              f"(x{median / base:.2f} of 1 x 1; runs {', '.join(f'{v:,.0f}' for v in values)})")
    step_ms = 1e3 * args.batch_size / statistics.median(results[settings[-1]])
    print(f"all-reduce of the gradient ({params:,} float32, {4 * params / 2**20:.1f} MiB) between {args.nproc} "
          f"processes: {comm} ms median; one {args.nproc}-process step took {step_ms:.0f} ms")


if __name__ == "__main__":
    main()
