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
trainer's step (``stepping.train_step``). The two alternate for ``--repeats`` epochs each; medians. mtrec runs
in fp32 (the peer's precision) and, where ``train.precision: auto`` picks bf16 on this machine (a CPU with
AMX or AVX512-BF16), also in bf16: both ratios are printed, measured in the same run.

    PYTHONPATH=src python benchmarks/peers.py [--config configs/datasets/census_income.yaml] [--repeats 3]
        [--threads 1]

``--accuracy`` trains instead the peer's MMoE, PLE and Shared-Bottom (:data:`PEER_MODELS`: MMoE in the shape
above; PLE one level of 2 task-specific and 1 shared experts of [64]; Shared-Bottom a bottom of [64]; towers
[32]) with its own ``train_one_epoch`` and ``evaluate`` to their best validation epoch, the budget of the
mtrec bench (up to ``--epochs`` epochs, stopping when ``--patience`` + 1 epochs in a row did not raise the
mean validation AUC), and prints each model's test AUC per task at that epoch (tested once)::

    PYTHONPATH=src python benchmarks/peers.py --accuracy --config configs/datasets/census_income_standard.yaml
        [--epochs 40] [--patience 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
from mtrec.training.precision import FP32, Precision, choose_precision
from stepping import train_step

PEER = "torch-rechub"
PEER_VERSION = "0.9.0"
CACHE = Path.home() / ".cache" / "mtrec-peers" / f"{PEER}-{PEER_VERSION}"
# the peer and what it imports that mtrec's environment lacks; torch, numpy, scikit-learn, tqdm: mtrec's own
PEER_PACKAGES = [f"{PEER}=={PEER_VERSION}", "pandas>=2,<3", "pytz"]
SHAPE = {"embedding_dim": 16, "num_experts": 8, "expert_sizes": [64], "tower_sizes": [32]}
PEER_MODELS = ("mmoe", "ple", "shared_bottom")


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


def peer_arrays(data: PreparedDataset, split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A split as the peer's ``TorchDataset`` takes it: ``{feature: [n]}`` and labels ``[n, T]``."""
    schema, rows = data.schema, np.asarray(data.splits[split])
    sparse = np.asarray(data.sparse[rows]).astype(np.int64)
    dense = np.asarray(data.dense[rows], dtype=np.float32)
    x = {f.name: sparse[:, i] for i, f in enumerate(schema.sparse)}
    x.update({f.name: dense[:, i] for i, f in enumerate(schema.dense)})
    return x, np.asarray(data.labels[rows], dtype=np.float32)


def peer_model(data: PreparedDataset, name: str, seed: int) -> Any:
    """The peer's ``name`` (one of :data:`PEER_MODELS`) built for ``data``'s features and tasks."""
    features, models, _, _ = import_peer()
    schema, tasks = data.schema, len(data.schema.tasks)
    torch.manual_seed(seed)
    inputs = [features.SparseFeature(f.name, vocab_size=f.vocab_size, embed_dim=SHAPE["embedding_dim"])
              for f in schema.sparse] + [features.DenseFeature(f.name) for f in schema.dense]
    kinds, experts, towers = ["classification"] * tasks, {"dims": SHAPE["expert_sizes"]}, [
        {"dims": SHAPE["tower_sizes"]}] * tasks
    if name == "mmoe":
        return models.MMOE(inputs, kinds, n_expert=SHAPE["num_experts"], expert_params=experts,
                           tower_params_list=towers)
    if name == "ple":
        return models.PLE(inputs, kinds, n_level=1, n_expert_specific=2, n_expert_shared=1, expert_params=experts,
                          tower_params_list=towers)
    return models.SharedBottom(inputs, kinds, bottom_params=experts, tower_params_list=towers)


def peer_trainer(model: Any, tasks: int, model_path: str) -> Any:
    """The peer's ``MTLTrainer`` for ``model``: Adam lr 1e-3, no weight decay."""
    _, _, trainers, _ = import_peer()
    return trainers.MTLTrainer(model, ["classification"] * tasks, optimizer_params={"lr": 1e-3, "weight_decay": 0.0},
                               n_epoch=1, model_path=model_path)


def peer_loader(data: PreparedDataset, split: str, batch_size: int, shuffle: bool) -> Any:
    _, _, _, torch_dataset = import_peer()
    x, y = peer_arrays(data, split)
    return torch.utils.data.DataLoader(torch_dataset(x, y), batch_size=batch_size, shuffle=shuffle)


def peer_epoch(data: PreparedDataset, batch_size: int, seed: int) -> float:
    """One torch-rechub MMoE epoch on the train split; samples/s (data loading included)."""
    model = peer_model(data, "mmoe", seed)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = peer_trainer(model, len(data.schema.tasks), tmp)
        loader = peer_loader(data, "train", batch_size, shuffle=True)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            trainer.train_one_epoch(loader)
        return len(data.splits["train"]) / (time.perf_counter() - start)


def peer_accuracy(data: PreparedDataset, name: str, batch_size: int, seed: int, epochs: int, patience: int
                  ) -> tuple[list[float], int, int]:
    """The peer's ``name`` trained to its best validation epoch (mean validation AUC; stop after
    ``patience`` + 1 epochs without a better one, at most ``epochs``): ``(test AUC per task, best epoch,
    epochs run)``, the test split evaluated once, with the best epoch's weights."""
    model = peer_model(data, name, seed)
    tasks = len(data.schema.tasks)
    train = peer_loader(data, "train", batch_size, shuffle=True)
    valid, test = (peer_loader(data, split, batch_size, shuffle=False) for split in ("valid", "test"))
    best, best_epoch, best_state, bad, epoch = -1.0, -1, copy.deepcopy(model.state_dict()), 0, 0
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        trainer = peer_trainer(model, tasks, tmp)
        for epoch in range(epochs):
            trainer.train_one_epoch(train)
            score = float(np.mean(trainer.evaluate(model, valid)))
            if score > best:
                best, best_epoch, best_state, bad = score, epoch, copy.deepcopy(model.state_dict()), 0
            else:
                bad += 1
                if bad > patience:
                    break
        model.load_state_dict(best_state)
        return [float(a) for a in trainer.evaluate(model, test)], best_epoch, epoch + 1


def mtrec_epoch(data: PreparedDataset, batch_size: int, seed: int, precision: Precision = FP32) -> float:
    """One mtrec MMoE epoch on the train split in ``precision``; samples/s (data loading included)."""
    torch.manual_seed(seed)
    step = train_step(create_model("mmoe", data.schema, **SHAPE), precision=precision)
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
    parser.add_argument("--accuracy", action="store_true", help="train the peer's MMoE, PLE, Shared-Bottom to "
                        "their best validation epoch and print test AUC (instead of throughput)")
    parser.add_argument("--epochs", type=int, default=40, help="--accuracy: epoch limit")
    parser.add_argument("--patience", type=int, default=2, help="--accuracy: epochs without improvement allowed")
    parser.add_argument("--seed", type=int, default=0, help="--accuracy: seed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import_peer()
    with tempfile.TemporaryDirectory() as tmp:
        prepare_dataset(args.config, Path(tmp) / "census", progress=False, log=lambda _: None)
        data = PreparedDataset.load(Path(tmp) / "census")
        if args.accuracy:
            report_accuracy(data, args)
            return
        auto = choose_precision("auto", torch.device("cpu"))
        precisions = [FP32] + ([auto] if auto.mixed else [])
        load_before = os.getloadavg()[0]
        peer: list[float] = []
        ours: dict[str, list[float]] = {p.name: [] for p in precisions}
        for r in range(args.repeats):
            peer.append(peer_epoch(data, args.batch_size, seed=r))
            for precision in precisions:
                ours[precision.name].append(mtrec_epoch(data, args.batch_size, seed=r, precision=precision))
        load_after = os.getloadavg()[0]
    p = statistics.median(peer)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s); load average "
          f"{load_before:.2f} before, {load_after:.2f} after")
    print(f"data: {args.config}, train split {len(data.splits['train']):,} rows; MMoE: embedding 16, 8 experts "
          f"of [64], towers [32], batch {args.batch_size}, Adam 1e-3; one epoch each, {args.repeats} alternating "
          f"repeats (medians)")
    print(f"auto precision here: {auto.name} ({auto.reason})")
    print(f"{PEER} {PEER_VERSION} (fp32): {p:,.0f} train samples/s  (each: {', '.join(f'{v:,.0f}' for v in peer)})")
    for name, figures in ours.items():
        m = statistics.median(figures)
        print(f"mtrec ({name}): {m:,.0f} train samples/s  (each: {', '.join(f'{v:,.0f}' for v in figures)}); "
              f"mtrec {name} / {PEER} fp32: {m / p:.2f}x")


def report_accuracy(data: PreparedDataset, args: argparse.Namespace) -> None:
    """Print the peer models' test AUC per task at their best validation epoch (see the module docstring)."""
    tasks = data.schema.task_names
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s); load average "
          f"{os.getloadavg()[0]:.2f} before")
    print(f"data: {args.config}, {len(data.splits['train']):,} train / {len(data.splits['valid']):,} valid / "
          f"{len(data.splits['test']):,} test rows; {PEER} {PEER_VERSION}, embedding 16, batch {args.batch_size}, "
          f"Adam 1e-3, up to {args.epochs} epochs, patience {args.patience}, seed {args.seed}")
    for name in PEER_MODELS:
        start = time.perf_counter()
        auc, best, run = peer_accuracy(data, name, args.batch_size, args.seed, args.epochs, args.patience)
        limit = " (best = last: at the epoch limit)" if best == run - 1 and run == args.epochs else ""
        print(f"{PEER} {name}: test AUC " + ", ".join(f"{t} {a:.4f}" for t, a in zip(tasks, auc, strict=True))
              + f"; best epoch {best} of {run} run{limit}; {time.perf_counter() - start:.0f} s; load average "
              f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
