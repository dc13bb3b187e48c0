"""float32 against int8 scoring: `mtrec predict` rows/s, and `mtrec serve` p50/p99 and requests/s.

The run (``--run``, else the MMoE run ``benchmarks/serving.py`` makes on its synthetic click/conversion log)
is exported twice with ``mtrec export --inputs INPUTS``: float32, and ``--quantize int8`` (whose test-AUC
parity the export prints). Then, the two model files taking turns ``--repeats`` times:

- ``mtrec predict MODEL`` on a raw CSV of ``--predict-rows`` rows: rows/s as the command reports it
  (reading, encoding, scoring, writing; start-up and model load excluded);
- ``mtrec serve MODEL`` (one process, one scoring thread) under ``--concurrency`` keep-alive connections
  sending requests of ``--candidates`` candidates for ``--duration`` seconds (the load generator of
  ``benchmarks/serving.py``): requests/s, p50 and p99 latency.

Medians are printed with the int8 / float32 ratios, the CPU and the load average: on a shared machine the
figures move with its load, the ratios (taken in the same run, turn by turn) much less.

    python benchmarks/quantized.py [--run RUN] [--inputs ids|raw] [--predict-rows 200000] [--duration 10]
                                   [--concurrency 8] [--candidates 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from serving import (
    Tree,
    bench_http,
    load_average,
    make_run,
    raw_log,
    request_bodies,
    write_csv,
)

ROOT = Path(__file__).resolve().parents[1]
TREE = Tree(ROOT / "src", sys.executable)
_ROWS_PER_S = re.compile(r"\(([\d,]+) rows/s")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def export(run: Path, out: Path, inputs: str, *extra: str) -> None:
    done = subprocess.run(TREE.mtrec("export", str(run), "--out", str(out), "--inputs", inputs, *extra),
                          env=TREE.env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"export failed: {done.stderr}")
    for line in done.stdout.splitlines():
        if "int8" in line or "AUC" in line or line.startswith("parity ok"):
            print(f"  {line}")


def predict_rows_per_s(model: Path, source: Path, out: Path) -> float:
    done = subprocess.run(TREE.mtrec("predict", str(model), "--input", str(source), "--out", str(out)),
                          env=TREE.env, capture_output=True, text=True)
    found = _ROWS_PER_S.search(done.stdout)
    if done.returncode or not found:
        raise SystemExit(f"predict failed: {done.stdout}{done.stderr}")
    return float(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run directory (default: make one)")
    parser.add_argument("--inputs", choices=["ids", "raw"], default="ids")
    parser.add_argument("--predict-rows", type=int, default=200_000)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per serve measurement")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="turns of each model")
    args = parser.parse_args()

    print(f"CPU: {cpu_model()}; Python {platform.python_version()}; {load_average()}")
    with tempfile.TemporaryDirectory(prefix="mtrec-quantized-") as tmp:
        root = Path(tmp)
        run = args.run or make_run(root)
        models = {"fp32": root / "fp32.onnx", "int8": root / "int8.onnx"}
        print(f"exporting {run} ({args.inputs} inputs)")
        export(run, models["fp32"], args.inputs)
        export(run, models["int8"], args.inputs, "--quantize", "int8")
        columns = raw_log(args.predict_rows, seed=3)
        del columns["click"], columns["conversion"]
        source = write_csv(columns, root / "rows.csv")
        bodies = request_bodies(args.candidates)
        results: dict[str, dict[str, list[float]]] = {k: {"rows_per_s": [], "rps": [], "p50": [], "p99": []}
                                                      for k in models}
        for turn in range(args.repeats):
            for kind, model in models.items():
                rate = predict_rows_per_s(model, source, root / f"{kind}.csv")
                http: Any = bench_http(TREE, model, bodies, [args.concurrency], args.candidates, args.duration,
                                       args.max_requests, [])[0]
                kept = results[kind]
                kept["rows_per_s"].append(rate)
                kept["rps"].append(http["requests_per_s"])
                kept["p50"].append(http["p50_ms"])
                kept["p99"].append(http["p99_ms"])
                print(f"turn {turn + 1} {kind}: predict {rate:,.0f} rows/s; serve c={args.concurrency} "
                      f"{http['requests_per_s']:,.0f} req/s, p50 {http['p50_ms']:.2f} ms, p99 {http['p99_ms']:.2f} ms "
                      f"({http['errors']} errors; {load_average()})", flush=True)

    med = {kind: {k: statistics.median(v) for k, v in r.items()} for kind, r in results.items()}
    print(f"\nmedians of {args.repeats} turns ({args.predict_rows:,} predict rows; serve: concurrency "
          f"{args.concurrency}, {args.candidates} candidates; {args.inputs} inputs; {load_average()}):")
    print("| model | predict rows/s | serve req/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for kind, m in med.items():
        print(f"| {kind} | {m['rows_per_s']:,.0f} | {m['rps']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} |")
    print(f"int8 / fp32: predict {med['int8']['rows_per_s'] / med['fp32']['rows_per_s']:.2f}x, "
          f"serve {med['int8']['rps'] / med['fp32']['rps']:.2f}x requests/s")


if __name__ == "__main__":
    main()
