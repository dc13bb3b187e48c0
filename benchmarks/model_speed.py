"""Train speed of every registered model against MMoE's, measured in one process.

For each model: train samples/s with the data pipeline (``BatchIterator``: seeded shuffle, one gather per
column block, background prefetch) and model-bound (the same step on batches already in memory), both
relative to MMoE's; the FLOPs of one training step per sample (forward + backward, counted by
``torch.utils.flop_counter``) and the share of this machine's measured fp32 GEMM rate that the
model-bound figure reaches. The models take turns within every round (pipeline, then model-bound), so
that changing machine load hits them alike; figures are medians over the rounds. The step is the
trainer's (``stepping.train_step``: the model's default objective, fixed weights, Adam).

``--clock cpu`` times with the process's CPU time instead of the wall clock: on a machine shared with
other jobs a one-thread run's CPU time barely depends on their load, while its wall time does (the
pipeline's prefetch thread counts in the CPU time too, so there the figure is samples per CPU-second).

``--compile`` also times every model with its training step compiled (``train.compile``: the loss through
``torch.compile``, inductor), as a row ``<model>+compile`` taking its turn with the others; its FLOPs are
the eager model's (the same maths), its compile time (wall clock of the first step, compilation included)
is printed in a second table with each model's compiled / eager ratio and its ratio to compiled MMoE.

``--profile N`` also prints, per model, the N operators with the most self CPU time of the training step
(``torch.profiler``), grouped by operator and input shapes, as a Markdown table.

    PYTHONPATH=src python benchmarks/model_speed.py [--data synthetic:sequences:60000] [--models all]
        [--threads 1] [--steps 20] [--repeats 5] [--clock wall|cpu] [--compile] [--profile 0] [--json FILE]
        [--option sequence_pooling=attention]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from mtrec.data.batches import Batch, BatchIterator, gather_batch
from mtrec.data.source import load_data
from mtrec.models import create_model, list_models, runs_on
from stepping import train_step

REFERENCE = "mmoe"
COMPILED = "+compile"  # the suffix of a compiled model's row
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def gemm_rate(size: int = 1024, inner: int = 512, repeats: int = 20,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """This machine's fp32 matrix-product rate at the current thread count: FLOP/s of ``[size, inner] @
    [inner, inner]`` (the shape class of a batch-1024 MLP layer), best of ``repeats``."""
    a, b = torch.randn(size, inner), torch.randn(inner, inner)
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        a @ b
        best = min(best, clock() - start)
    return 2 * size * inner * inner / best


def step_flops(step: Callable[[Batch], None], batch: Batch) -> float:
    """FLOPs of one training step (forward, backward, optimizer) per sample."""
    with FlopCounterMode(display=False) as counter:
        step(batch)
    return counter.get_total_flops() / len(batch)


def timed(step: Callable[[Batch], None], batches: Iterable[Batch], steps: int,
          clock: Callable[[], float] = time.perf_counter) -> float:
    """Samples per second (of ``clock``) of ``steps`` training steps over ``batches``."""
    samples, start = 0, clock()
    for i, batch in enumerate(batches):
        if i == steps:
            break
        step(batch)
        samples += len(batch)
    return samples / (clock() - start)


def profile_table(step: Callable[[Batch], None], batches: list[Batch], rows: int) -> str:
    """Markdown table of the operators with the most self CPU time over ``batches``' steps."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for batch in batches:
            step(batch)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    lines = ["| operator | input shapes | calls/step | ms/step | share |", "|---|---|---:|---:|---:|"]
    for e in top:
        shapes = ", ".join(str(list(s)) for s in e.input_shapes if s)[:80]
        lines.append(f"| `{e.key}` | {shapes} | {e.count / len(batches):.0f} | "
                     f"{e.self_cpu_time_total / 1e3 / len(batches):.1f} | {e.self_cpu_time_total / total:.1%} |")
    lines.append(f"| all operators | | | {total / 1e3 / len(batches):.1f} | 100% |")
    return "\n".join(lines)


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"error: --option: expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic:sequences:60000")
    parser.add_argument("--models", default="all", help="comma-separated names or fnmatch patterns, or 'all'")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a loaded machine)")
    parser.add_argument("--steps", type=int, default=20, help="steps per model per round and measurement")
    parser.add_argument("--repeats", type=int, default=5, help="rounds")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (steadier on a loaded machine)")
    parser.add_argument("--compile", action="store_true", help="also time each model's compiled training step")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the top N operators per model")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a model option for every model (repeatable; VALUE read as YAML), "
                             "e.g. sequence_pooling=attention")
    args = parser.parse_args()
    options = dict(_option(text) for text in args.option)
    torch.set_num_threads(args.threads)
    names = list_models() if args.models == "all" else list_models(*args.models.split(","))
    names = [REFERENCE, *[n for n in names if n != REFERENCE]]
    data = load_data(args.data)
    names = [n for n in names if runs_on(n, data.schema)]  # multi-scenario models need a scenario
    rows = np.asarray(data.splits["train"][: args.steps * args.batch_size])
    in_memory = [gather_batch(data, rows[i : i + args.batch_size]) for i in range(0, len(rows), args.batch_size)]
    steps: dict[str, Callable[[Batch], None]] = {}
    flops: dict[str, float] = {}
    compile_s: dict[str, float] = {}
    # every compiled step is LossStep.forward, one code object: TorchDynamo would stop compiling it after 8
    # models (recompile_limit) and run the rest eagerly
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(names))
    for name in names:
        torch.manual_seed(0)
        steps[name] = train_step(create_model(name, data.schema, **options))
        steps[name](in_memory[0])  # warm-up
        flops[name] = step_flops(steps[name], in_memory[0])
        if args.compile:
            torch.manual_seed(0)
            steps[name + COMPILED] = train_step(create_model(name, data.schema, **options), compile_step=True)
            start = time.perf_counter()
            steps[name + COMPILED](in_memory[0])  # compiles
            compile_s[name] = time.perf_counter() - start
            flops[name + COMPILED] = flops[name]
    rows_of = list(steps)
    iterator = BatchIterator(data, "train", args.batch_size, shuffle=True, seed=0, prefetch=2)
    pipeline: dict[str, list[float]] = {n: [] for n in rows_of}
    bound: dict[str, list[float]] = {n: [] for n in rows_of}
    rates = [gemm_rate(clock=CLOCKS[args.clock])]
    load_before = os.getloadavg()
    for r in range(args.repeats):
        for name, step in steps.items():
            iterator.set_epoch(r)
            pipeline[name].append(timed(step, iterator, args.steps, CLOCKS[args.clock]))
            bound[name].append(timed(step, in_memory, args.steps, CLOCKS[args.clock]))
        rates.append(gemm_rate(clock=CLOCKS[args.clock]))
    load_after = os.getloadavg()
    gemm = statistics.median(rates)
    med = {n: (statistics.median(pipeline[n]), statistics.median(bound[n])) for n in rows_of}
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s), "
          f"{platform.machine()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"data {args.data}, model options {options or 'defaults'}, batch {args.batch_size}, "
          f"{args.steps} steps x {args.repeats} rounds (medians), "
          f"{args.clock} clock; "
          f"measured GEMM rate {gemm / 1e9:.1f} GFLOP/s")
    print()
    print("| model | pipeline samples/s | x MMoE | model-bound samples/s | x MMoE | MFLOP/sample (train step) "
          "| % of GEMM rate |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ref_p, ref_b = med[REFERENCE]
    for name in rows_of:
        p, b = med[name]
        print(f"| {name} | {p:,.0f} | {p / ref_p:.2f} | {b:,.0f} | {b / ref_b:.2f} | {flops[name] / 1e6:.2f} | "
              f"{flops[name] * b / gemm:.0%} |")
    if args.compile:
        print("\n| model | compile s (first step) | pipeline compiled / eager | model-bound compiled / eager "
              "| pipeline x compiled MMoE | model-bound x compiled MMoE |")
        print("|---|---:|---:|---:|---:|---:|")
        cref_p, cref_b = med[REFERENCE + COMPILED]
        for name in names:
            (p, b), (cp, cb) = med[name], med[name + COMPILED]
            print(f"| {name} | {compile_s[name]:.1f} | {cp / p:.2f} | {cb / b:.2f} | {cp / cref_p:.2f} | "
                  f"{cb / cref_b:.2f} |")
    if args.profile:
        for name in names:
            print(f"\n{name}: where one training step's time goes (top {args.profile} operators, "
                  f"{len(in_memory[:5])} steps profiled)\n")
            print(profile_table(steps[name], in_memory[:5], args.profile))
    if args.json:
        args.json.write_text(json.dumps({
            "data": args.data, "threads": args.threads, "clock": args.clock, "load": [load_before[0], load_after[0]],
            "gemm_flops_per_s": gemm, "flops_per_sample": flops, "pipeline": pipeline, "model_bound": bound,
            "compile_s": compile_s,
        }, indent=2))


if __name__ == "__main__":
    main()
