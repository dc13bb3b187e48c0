"""Train speed of every model in fp32 and in bf16 (``train.precision``), measured in one process.

Prints the CPU (model name and its bf16 flags, ``amx_bf16`` / ``avx512_bf16``), what ``auto`` picks on it,
the matrix-product rate of ``[1024, 640] @ [640, 512]`` in fp32 and bf16, then per model: train samples/s
in fp32 and in bf16 (the trainer's step, ``stepping.train_step``, under each precision), each relative to
MMoE at the same precision, and bf16 / fp32; last, the GFLOP/s the model-bound figures achieve (the
matrix products of one step per sample, ``model_speed.step_flops``, times samples/s): a model far below
MMoE's rate is bound by the work around its products, not by them. ``pipeline`` includes the data pipeline
(``BatchIterator``, prefetch), ``model-bound`` steps on batches already in memory. The models and precisions
take turns within every round so that changing machine load hits them alike; figures are medians over the
rounds.

    PYTHONPATH=src python benchmarks/precision.py [--data synthetic:sequences:60000] [--models mmoe,ple,dcrnn,dtrn]
        [--threads 2] [--steps 20] [--repeats 5] [--clock wall|cpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from model_speed import CLOCKS, REFERENCE, step_flops, timed
from mtrec.data.batches import Batch, BatchIterator, gather_batch
from mtrec.data.source import load_data
from mtrec.models import create_model, list_models, runs_on
from mtrec.training.precision import CPU_BF16_FLAGS, choose_precision, cpu_bf16_flags
from stepping import train_step

PRECISIONS = ("fp32", "bf16")
HEADLINE = "mmoe,ple,dcrnn,dtrn"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def gemm_rate(dtype: torch.dtype, repeats: int = 30, clock: Callable[[], float] = time.perf_counter) -> float:
    """FLOP/s of ``[1024, 640] @ [640, 512]`` in ``dtype`` at the current thread count, best of ``repeats``."""
    a, b = torch.randn(1024, 640, dtype=dtype), torch.randn(640, 512, dtype=dtype)
    a @ b  # warm-up (oneDNN picks its kernel)
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        a @ b
        best = min(best, clock() - start)
    return 2 * 1024 * 640 * 512 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic:sequences:60000")
    parser.add_argument("--models", default=HEADLINE, help="comma-separated names or fnmatch patterns, or 'all'")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="steps per model, precision and round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (steadier on a loaded machine)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    names = list_models() if args.models == "all" else list_models(*args.models.split(","))
    names = [REFERENCE, *[n for n in names if n != REFERENCE]]
    data = load_data(args.data)
    names = [n for n in names if runs_on(n, data.schema)]  # multi-scenario models need a scenario
    rows = np.asarray(data.splits["train"][: args.steps * args.batch_size])
    in_memory = [gather_batch(data, rows[i : i + args.batch_size]) for i in range(0, len(rows), args.batch_size)]
    steps: dict[tuple[str, str], Callable[[Batch], None]] = {}
    for name in names:
        for kind in PRECISIONS:
            torch.manual_seed(0)
            chosen = choose_precision(kind, torch.device("cpu"))
            steps[name, kind] = train_step(create_model(name, data.schema), precision=chosen)
            steps[name, kind](in_memory[0])  # warm-up
    flops = {name: step_flops(steps[name, "fp32"], in_memory[0]) for name in names}
    iterator = BatchIterator(data, "train", args.batch_size, shuffle=True, seed=0, prefetch=2)
    pipeline: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    bound: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    gemm: dict[str, list[float]] = {"fp32": [], "bf16": []}
    load_before = os.getloadavg()
    for r in range(args.repeats):
        for key, step in steps.items():
            iterator.set_epoch(r)
            pipeline[key].append(timed(step, iterator, args.steps, clock))
            bound[key].append(timed(step, in_memory, args.steps, clock))
        for kind, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            gemm[kind].append(gemm_rate(dtype, clock=clock))
    load_after = os.getloadavg()
    med = {key: (statistics.median(pipeline[key]), statistics.median(bound[key])) for key in steps}
    rate = {kind: statistics.median(values) / 1e9 for kind, values in gemm.items()}
    auto = choose_precision("auto", torch.device("cpu"))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; bf16 flags: "
          f"{', '.join(cpu_bf16_flags()) or 'none'} (of {', '.join(CPU_BF16_FLAGS)}); auto picks {auto.name}")
    print(f"torch {torch.__version__}, {args.threads} thread(s); load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after; {args.clock} clock")
    print(f"GEMM [1024, 640] @ [640, 512]: fp32 {rate['fp32']:.0f} GFLOP/s, bf16 {rate['bf16']:.0f} GFLOP/s "
          f"({rate['bf16'] / rate['fp32']:.2f}x)")
    print(f"data {args.data}, batch {args.batch_size}, {args.steps} steps x {args.repeats} rounds (medians)\n")
    for column, title in ((0, "pipeline"), (1, "model-bound")):
        print(f"{title}:\n\n| model | fp32 samples/s | x MMoE | bf16 samples/s | x MMoE | bf16 / fp32 |")
        print("|---|---:|---:|---:|---:|---:|")
        ref32, ref16 = med[REFERENCE, "fp32"][column], med[REFERENCE, "bf16"][column]
        for name in names:
            f32, b16 = med[name, "fp32"][column], med[name, "bf16"][column]
            print(f"| {name} | {f32:,.0f} | {f32 / ref32:.2f} | {b16:,.0f} | {b16 / ref16:.2f} | {b16 / f32:.2f} |")
        print()
    print("| model | MFLOP/sample | x MMoE | fp32 GFLOP/s (model-bound) | bf16 GFLOP/s (model-bound) |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        achieved = [flops[name] * med[name, kind][1] / 1e9 for kind in PRECISIONS]
        print(f"| {name} | {flops[name] / 1e6:.2f} | {flops[name] / flops[REFERENCE]:.2f} | {achieved[0]:.1f} | "
              f"{achieved[1]:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": cpu_model(), "bf16_flags": cpu_bf16_flags(), "data": args.data, "threads": args.threads,
            "clock": args.clock, "load": [load_before[0], load_after[0]], "gemm_gflops": rate,
            "flops_per_sample": flops,
            "pipeline": {f"{n}/{k}": v for (n, k), v in pipeline.items()},
            "model_bound": {f"{n}/{k}": v for (n, k), v in bound.items()},
        }, indent=2))


if __name__ == "__main__":
    main()
