"""`prepare` throughput and peak memory as the raw file grows: memory should stay flat (streaming).

Writes Ali-CCP-shaped CSV files (20 categorical fields with up to 50,000 values, 8 dense fields, one
'|'-separated history of up to 30 items, click and purchase labels) of increasing size, prepares each in a
fresh child process with a fixed chunk size, and prints rows/s and the child's peak memory: anonymous
(the process's own working memory, which streaming keeps flat) and total resident (which also counts the
pages of the memory-mapped output files; those are file-backed, and the kernel writes them back and
evicts them when memory runs short).

    python benchmarks/prepare_scaling.py [--rows 100000 400000] [--chunk-rows 65536] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import yaml

CHILD = """
import sys, threading, time
from mtrec.data.prepare import prepare_dataset

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])  # KiB
    return 0

peak = [0]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], status("RssAnon"))
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
prepare_dataset(sys.argv[1], sys.argv[2], chunk_rows=int(sys.argv[3]), progress=False, log=lambda _: None)
done.set()
print(peak[0], status("VmHWM"))
"""


def write_raw(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {}
    for i in range(20):
        size = int(50_000 ** ((i + 1) / 20))  # vocabularies from 1 to 50,000
        ids = np.minimum(rng.zipf(1.3, rows), size)
        columns[f"c{i}"] = pa.array(ids.astype(str))
    for i in range(8):
        columns[f"d{i}"] = pa.array(np.round(rng.exponential(3.0, rows), 4))
    lengths = rng.integers(0, 31, rows)
    tokens = np.minimum(rng.zipf(1.3, int(lengths.sum())), 50_000).astype(str)
    offsets = np.r_[0, np.cumsum(lengths)]
    columns["hist"] = pa.array(["|".join(tokens[a:b]) for a, b in itertools.pairwise(offsets)])
    click = rng.random(rows) < 0.05
    columns["click"] = pa.array(click.astype(np.int8))
    columns["purchase"] = pa.array((click & (rng.random(rows) < 0.1)).astype(np.int8))
    pa_csv.write_csv(pa.table(columns), str(path))


def config(path: Path) -> dict[str, object]:
    return {
        "name": "scaling",
        "source": {"path": str(path)},
        "features": {"sparse": ["c*"], "dense": [{"pattern": "d*", "log1p": True}],
                     "sequences": [{"name": "hist", "separator": "|", "max_len": 30, "table": "c19"}]},
        "tasks": [{"name": "click"}, {"name": "purchase", "observed_after": "click"}],
        "split": {"kind": "random", "seed": 0, "fractions": [0.8, 0.1, 0.1]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"chunk_rows {args.chunk_rows}; median of {args.repeats} runs, each in a fresh process")
    print(f"{'rows':>10} {'file MB':>9} {'seconds':>9} {'rows/s':>10} {'peak anon MB':>13} {'peak RSS MB':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            raw = Path(tmp) / f"raw_{rows}.csv"
            write_raw(raw, rows)
            cfg = Path(tmp) / f"config_{rows}.yaml"
            cfg.write_text(yaml.safe_dump(config(raw)))
            times, anon, rss = [], [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-c", CHILD, str(cfg), str(Path(tmp) / "out"),
                                       str(args.chunk_rows)], check=True, stdout=subprocess.PIPE, text=True)
                times.append(time.perf_counter() - start)
                anon_kib, rss_kib = done.stdout.split()[-2:]
                anon.append(int(anon_kib) / 1024)
                rss.append(int(rss_kib) / 1024)
            seconds = statistics.median(times)
            print(f"{rows:>10,} {raw.stat().st_size / 2**20:>9.1f} {seconds:>9.2f} {rows / seconds:>10,.0f} "
                  f"{max(anon):>13.0f} {max(rss):>12.0f}")


if __name__ == "__main__":
    main()
