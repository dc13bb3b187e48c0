"""MMoE train throughput against torch-rechub 0.9.0 on the same Census-Income split and model shape, in one run.

torch-rechub is installed on first use into its own cache directory (``pip install --no-deps --target
~/.cache/mtrec-peers/torch-rechub-0.9.0``, with the two packages it imports that mtrec does not use: pandas,
pytz): never a dependency of mtrec, and torch stays the pinned one; it is imported from there. The Census
dataset is prepared once by mtrec (``mtrec prepare`` of ``--config``) and both libraries train on its train
split with its vocabularies, in the peer's shape: embedding 16 for each categorical field, 8 experts of [64],
towers [32], batch 1024, Adam lr 1e-3. The peer reads each continuous field as one raw value (its
``DenseFeature``), mtrec projects it to width 16 (its own input layer); everything else is the same.

Each library's figure is train samples/s over one whole epoch with its own data pipeline and training
loop: torch-rechub's ``TorchDataset`` + ``DataLoader`` (per-row ``__getitem__``, default collate) and
``MTLTrainer.train_one_epoch``; mtrec's ``BatchIterator`` (one gather per column block, prefetch) and the
trainer's step (``stepping.train_step``). The two alternate for ``--repeats`` epochs each; medians.

    PYTHONPATH=src python benchmarks/peers.py [--config configs/datasets/census_income.yaml] [--repeats 3]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtrec.data.batches import BatchIterator
from mtrec.data.dataset import PreparedDataset
from mtrec.data.prepare import prepare_dataset
from mtrec.models import create_model
from stepping import train_step

PEER = "torch-rechub"
PEER_VERSION = "0.9.0"
CACHE = Path.home() / ".cache" / "mtrec-peers" / f"{PEER}-{PEER_VERSION}"
# the peer and what it imports that mtrec's environment lacks; torch, numpy, scikit-learn, tqdm: mtrec's own
PEER_PACKAGES = [f"{PEER}=={PEER_VERSION}", "pandas>=2,<3", "pytz"]
SHAPE = {"embedding_dim": 16, "num_experts": 8, "expert_sizes": [64], "tower_sizes": [32]}


def import_peer() -> Any:
    """torch-rechub's modules, installed into :data:`CACHE` if they are not there yet."""
    if not (CACHE / "torch_rechub").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(CACHE),
                        *PEER_PACKAGES], check=True)
    sys.path.insert(0, str(CACHE))
    import torch_rechub.basic.features as features
    import torch_rechub.models.multi_task as models
    import torch_rechub.trainers as trainers
    from torch_rechub.utils.data import TorchDataset

    return features, models, trainers, TorchDataset


def peer_epoch(data: PreparedDataset, batch_size: int, seed: int) -> float:
    """One torch-rechub MMoE epoch on the train split; samples/s (data loading included)."""
    features, models, trainers, torch_dataset = import_peer()
    schema, rows = data.schema, np.asarray(data.splits["train"])
    sparse = np.asarray(data.sparse[rows]).astype(np.int64)
    dense = np.asarray(data.dense[rows], dtype=np.float32)
    x = {f.name: sparse[:, i] for i, f in enumerate(schema.sparse)}
    x.update({f.name: dense[:, i] for i, f in enumerate(schema.dense)})
    y = np.asarray(data.labels[rows], dtype=np.float32)
    torch.manual_seed(seed)
    inputs = [features.SparseFeature(f.name, vocab_size=f.vocab_size, embed_dim=SHAPE["embedding_dim"])
              for f in schema.sparse] + [features.DenseFeature(f.name) for f in schema.dense]
    model = models.MMOE(inputs, ["classification"] * len(schema.tasks), n_expert=SHAPE["num_experts"],
                        expert_params={"dims": SHAPE["expert_sizes"]},
                        tower_params_list=[{"dims": SHAPE["tower_sizes"]}] * len(schema.tasks))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainers.MTLTrainer(model, ["classification"] * len(schema.tasks),
                                      optimizer_params={"lr": 1e-3, "weight_decay": 0.0}, n_epoch=1,
                                      model_path=tmp)
        loader = torch.utils.data.DataLoader(torch_dataset(x, y), batch_size=batch_size, shuffle=True)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            trainer.train_one_epoch(loader)
        return len(rows) / (time.perf_counter() - start)


def mtrec_epoch(data: PreparedDataset, batch_size: int, seed: int) -> float:
    """One mtrec MMoE epoch on the train split; samples/s (data loading included)."""
    torch.manual_seed(seed)
    step = train_step(create_model("mmoe", data.schema, **SHAPE))
    iterator = BatchIterator(data, "train", batch_size, shuffle=True, seed=seed, prefetch=2)
    samples, start = 0, time.perf_counter()
    for batch in iterator:
        step(batch)
        samples += len(batch)
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/datasets/census_income.yaml", help="Census dataset config")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a loaded machine)")
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import_peer()
    with tempfile.TemporaryDirectory() as tmp:
        prepare_dataset(args.config, Path(tmp) / "census", progress=False, log=lambda _: None)
        data = PreparedDataset.load(Path(tmp) / "census")
        load_before = os.getloadavg()[0]
        peer, ours = [], []
        for r in range(args.repeats):
            peer.append(peer_epoch(data, args.batch_size, seed=r))
            ours.append(mtrec_epoch(data, args.batch_size, seed=r))
        load_after = os.getloadavg()[0]
    p, m = statistics.median(peer), statistics.median(ours)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s); load average "
          f"{load_before:.2f} before, {load_after:.2f} after")
    print(f"data: {args.config}, train split {len(data.splits['train']):,} rows; MMoE: embedding 16, 8 experts "
          f"of [64], towers [32], batch {args.batch_size}, Adam 1e-3; one epoch each, {args.repeats} alternating "
          f"repeats (medians)")
    print(f"{PEER} {PEER_VERSION}: {p:,.0f} train samples/s  (each: {', '.join(f'{v:,.0f}' for v in peer)})")
    print(f"mtrec:              {m:,.0f} train samples/s  (each: {', '.join(f'{v:,.0f}' for v in ours)})")
    print(f"ratio mtrec / {PEER}: {m / p:.2f}x")


if __name__ == "__main__":
    main()
