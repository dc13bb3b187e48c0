"""Training on a prepared dataset larger than the memory the process may use (memory-mapped columns).

The child process runs under ``RLIMIT_DATA``, which caps its private memory (heap, anonymous mappings:
where an eagerly loaded dataset would have to live) but not the read-only file mappings that
``np.load(mmap_mode="r")`` creates; their pages are the kernel's page cache, which it can drop and reread.
Measured here (torch 2.13 CPU, one thread, ``prlimit --data``): ``mtrec train`` on a 0.8 GB dataset ran a
full 800k-row epoch under limits down to 460 MiB and failed at 400 MiB (while importing), so the limit
here is 640 MiB, with room to spare, and the dataset on disk is larger than it. The negative control
shows the limit binds: loading the same columns into memory fails under it.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fakes import tiny_dataset, tiny_schema
from mtrec.data.dataset import DatasetWriter
from procs import child_env

LIMIT = 640 * 2**20  # bytes of private memory the child may map
ROWS, SEQ_LEN = 1_100_000, 100  # about 0.9 GB on disk, mostly the two behaviour histories
TRAIN_EVERY = 32  # train rows are every 32nd row: spread over the whole file, and quick to train on


def write_large(path: Path, rows: int, seq_len: int, chunk: int = 20_000) -> None:
    """A prepared dataset of ``rows`` rows written chunk by chunk (one random chunk, tiled)."""
    schema = tiny_schema(seq_len=seq_len)
    block = tiny_dataset(rows=chunk, seed=0)
    sequences = {s.name: np.resize(block.sequences[s.name], (chunk, seq_len)).astype(np.int32)
                 for s in schema.sequences}  # longer histories made of the block's ids
    idx = np.arange(rows)
    splits = {"train": idx[idx % TRAIN_EVERY == 0], "valid": idx[idx % TRAIN_EVERY == 1][::8],
              "test": idx[idx % TRAIN_EVERY == 2][::8]}
    path.mkdir(parents=True)
    writer = DatasetWriter(path, schema, rows, {split: len(rows_) for split, rows_ in splits.items()})
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        writer.write_rows(start, block.sparse[:n], block.dense[:n], {k: v[:n] for k, v in sequences.items()},
                          block.labels[:n])
    for split, rows_ in splits.items():
        writer.add_split_rows(split, rows_)
    writer.finish()  # complete: loadable


def limited(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (LIMIT, LIMIT))

    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=240, preexec_fn=cap)


@pytest.fixture
def large(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "large"
    write_large(path, ROWS, SEQ_LEN)
    yield path
    shutil.rmtree(path)  # do not leave a GB behind in pytest's kept temporary directories


def test_training_on_data_larger_than_the_memory_limit(large: Path, tmp_path: Path) -> None:
    on_disk = sum(f.stat().st_size for f in large.rglob("*.npy"))
    assert on_disk > 1.3 * LIMIT

    eager = limited([sys.executable, "-c", "import sys; from mtrec.data.dataset import PreparedDataset; "
                     "PreparedDataset.load(sys.argv[1], mmap=False)", str(large)])
    assert eager.returncode != 0 and "MemoryError" in eager.stderr, eager.stderr[-2000:]

    config = {"model": "shared_bottom", "model_options": {"embedding_dim": 4, "bottom_sizes": [16],
                                                          "tower_sizes": [8]},
              "train": {"epochs": 1, "batch_size": 4096, "eval_batch_size": 4096, "num_threads": 1}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    run = limited([sys.executable, "-m", "mtrec.cli", "train", "--config", str(tmp_path / "run.json"),
                   "--data", str(large), "--out", str(tmp_path / "run")])
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    train = np.load(large / "splits" / "train.npy")
    assert metrics["samples_seen"] == len(train) and train.max() > 0.99 * ROWS
