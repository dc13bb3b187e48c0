"""DCRNN study: accuracy against the oracle, the sharing ablation, the option sweeps, Census-Income.

Every run goes through the library's own path (``train_run``: registry, trainer, early stopping on
validation, test evaluated once) with the same settings for every model: embedding 16, batch 1024, Adam
lr 1e-3, up to ``--epochs`` epochs with patience ``--patience``, one CPU thread. Finished runs are cached
in ``--cache`` (keyed by model, options, data, seed and training settings), so a study can be run in
pieces (``--seeds 0``, then ``--seeds 1``, ...) and the full command then prints the table from the cache.

    PYTHONPATH=src python benchmarks/dcrnn_study.py oracle            # DCRNN vs oracle on easy and esmm
    PYTHONPATH=src python benchmarks/dcrnn_study.py ablation          # sharing ablation vs baselines
    PYTHONPATH=src python benchmarks/dcrnn_study.py sweep             # the sweeps behind the defaults
    PYTHONPATH=src python benchmarks/dcrnn_study.py census --data /tmp/census
    PYTHONPATH=src python benchmarks/dcrnn_study.py speed --data /tmp/census   # model-bound samples/s
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mtrec.bench.report import mean_std
from mtrec.data.batches import gather_batch
from mtrec.data.dataset import PreparedDataset
from mtrec.data.source import load_data
from mtrec.io import atomic_write_text
from mtrec.models import create_model
from mtrec.training.checkpointer import TRAIN_SETTINGS
from mtrec.training.config import RunConfig, TrainConfig
from mtrec.training.run import train_run
from stepping import train_step

Variant = tuple[str, str, dict[str, Any]]  # (label, registered model, options)

ABLATION: list[Variant] = [
    ("dcrnn partial", "dcrnn", {}),  # the default sharing
    ("dcrnn hard", "dcrnn", {"sharing": "hard"}),
    ("dcrnn none", "dcrnn", {"sharing": "none"}),
    ("shared_bottom", "shared_bottom", {}),
    ("mmoe", "mmoe", {}),
]

SWEEP: list[Variant] = [
    ("default: steps 2+1; full W; adapter 4", "dcrnn", {}),
    ("steps 1+1", "dcrnn", {"shared_steps": 1, "task_steps": 1}),
    ("steps 3+2", "dcrnn", {"shared_steps": 3, "task_steps": 2}),
    ("rank 16", "dcrnn", {"rank": 16}),
    ("adapter 0 (gate bias only)", "dcrnn", {"adapter_rank": 0}),
    ("adapter 16", "dcrnn", {"adapter_rank": 16}),
    ("task_norm", "dcrnn", {"task_norm": True}),
    ("cross_axis fields", "dcrnn", {"cross_axis": "fields"}),
    ("no deep task layers", "dcrnn", {"deep_task_sizes": []}),
]


DEFAULTS = TrainConfig().model_dump()  # a run cached before a setting existed had its default


class RunCache:
    """Finished runs' metrics in one JSON file, keyed by everything that decides the result."""

    def __init__(self, path: Path) -> None:
        self.path = path
        stored: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}
        self.runs = {self._normalise(k): v for k, v in stored.items()}

    @staticmethod
    def _make_key(model: str, options: dict[str, Any], data: str, train: dict[str, Any]) -> str:
        settings = {name: train.get(name, DEFAULTS[name]) for name in TRAIN_SETTINGS}
        return json.dumps({"model": model, "options": options, "data": data, "train": settings}, sort_keys=True)

    @classmethod
    def _normalise(cls, key: str) -> str:
        parts = json.loads(key)
        return cls._make_key(parts["model"], parts["options"], parts["data"], parts["train"])

    @classmethod
    def key(cls, model: str, options: dict[str, Any], data: str, train: TrainConfig) -> str:
        return cls._make_key(model, options, data, train.model_dump())

    def get(self, key: str) -> dict[str, Any] | None:
        return self.runs.get(key)

    def put(self, key: str, metrics: dict[str, Any]) -> None:
        """Add a run and write the file, merged with what other study processes wrote since it was read
        (under an exclusive lock, so that two studies run side by side keep each other's runs)."""
        self.runs[key] = metrics
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stored = json.loads(self.path.read_text()) if self.path.exists() else {}
            self.runs = {**{self._normalise(k): v for k, v in stored.items()}, **self.runs}
            atomic_write_text(self.path, json.dumps(self.runs, indent=1) + "\n")


class Study:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cache = RunCache(args.cache)
        self._data: dict[str, PreparedDataset] = {}

    def train_config(self, seed: int) -> TrainConfig:
        a = self.args
        return TrainConfig(epochs=a.epochs, patience=a.patience, batch_size=1024, lr=1e-3, seed=seed,
                           num_threads=1, prefetch=2)

    def dataset(self, spec: str) -> PreparedDataset:
        if spec not in self._data:
            self._data[spec] = load_data(spec)
        return self._data[spec]

    def run(self, model: str, options: dict[str, Any], spec: str, seed: int) -> dict[str, Any] | None:
        """One run's metrics (from the cache, or trained now unless ``--cached-only``). A variant's
        ``objective`` entry is the run's ``train.objective``, the rest its model options."""
        options = dict(options)
        train = self.train_config(seed).model_copy(update={"objective": options.pop("objective", "")})
        key = self.cache.key(model, options, spec, train)
        found = self.cache.get(key)
        if found is not None or self.args.cached_only:
            return found
        print(f"  training {model} {options} on {spec}, seed {seed}", file=sys.stderr, flush=True)
        config = RunConfig(model=model, data=spec, model_options=dict(options), train=train)
        with tempfile.TemporaryDirectory() as tmp:
            metrics = train_run(config, tmp, dataset=self.dataset(spec), log=lambda _: None)
        self.cache.put(key, metrics)
        return metrics

    def table(self, variants: list[Variant], spec: str, seeds: list[int], with_oracle: bool) -> str:
        """A Markdown table: one row per variant, test AUC per task (mean ± std over seeds)."""
        rows: list[tuple[str, list[dict[str, Any]]]] = []
        for label, model, options in variants:
            runs = [r for s in seeds if (r := self.run(model, options, spec, s)) is not None]
            rows.append((label, runs))
        done = [runs for _, runs in rows if runs]
        if not done:
            return f"(no finished runs for {spec})\n"
        tasks: list[str] = done[0][0]["tasks"]
        oracle = done[0][0].get("oracle") if with_oracle else None
        header = ["model", *[f"{t} AUC" for t in tasks]]
        if oracle:
            header += [f"{t} gap to oracle" for t in tasks]
        header += ["params", "epochs (best)", "seeds"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        if oracle:
            lines.append("| **oracle** | " + " | ".join(f"{oracle[t]['auc']:.4f}" for t in tasks)
                         + " |" * (len(tasks) + 4))
        for label, runs in rows:
            if not runs:
                lines.append(f"| {label} | " + " | ".join("pending" for _ in header[1:]) + " |")
                continue
            cells = [mean_std([r["test"][t]["auc"] for r in runs]) for t in tasks]
            if oracle:
                cells += [f"{_mean([r['test'][t]['auc'] for r in runs]) - oracle[t]['auc']:+.4f}" for t in tasks]
            best = "/".join(str(r["best_epoch"] + 1) for r in runs)
            cells += [f"{runs[0]['params']:,}", best, ",".join(str(r["seed"]) for r in runs)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def speed_table(variants: list[Variant], dataset: PreparedDataset, steps: int = 10, repeats: int = 3) -> str:
    """Model-bound train throughput (one thread, batch 1024 already in memory, Adam): median of
    ``repeats`` timings of ``steps`` steps each, after two warm-up steps."""
    torch.set_num_threads(1)
    batch = gather_batch(dataset, dataset.splits["train"][:1024])
    lines = ["| model | params | train samples/s (model-bound) |", "|---|---|---|"]
    for label, model_name, options in variants:
        torch.manual_seed(0)
        model = create_model(model_name, dataset.schema, **options)
        step = train_step(model)
        for _ in range(2):  # warm-up
            step(batch)
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                step(batch)
            timings.append(time.perf_counter() - start)
        rate = steps * len(batch) / statistics.median(timings)
        lines.append(f"| {label} | {sum(p.numel() for p in model.parameters()):,} | {rate:,.0f} |")
    return "\n".join(lines) + "\n"


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def synthetic_spec(preset: str, rows: int) -> str:
    return f"synthetic:{preset}:{rows}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["oracle", "ablation", "sweep", "census", "speed"])
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic rows")
    parser.add_argument("--presets", help="comma-separated synthetic presets (default: per study)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--variants", help="comma-separated subset of row labels to run")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--patience", type=int, default=1)
    parser.add_argument("--data", help="census: the prepared dataset directory; speed: any data spec")
    parser.add_argument("--cache", type=Path, default=Path("reports/dcrnn_study/runs.json"))
    parser.add_argument("--out", type=Path, help="also write the tables (Markdown) to this file")
    parser.add_argument("--cached-only", action="store_true", help="print tables from the cache, train nothing")
    args = parser.parse_args(argv)
    study = Study(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    command = "PYTHONPATH=src python benchmarks/dcrnn_study.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    def pick(variants: list[Variant]) -> list[Variant]:
        if not args.variants:
            return variants
        wanted = {v.strip() for v in args.variants.split(",")}
        unknown = wanted - {label for label, _, _ in variants}
        if unknown:
            parser.error(f"unknown variant(s) {sorted(unknown)}; known: {[label for label, _, _ in variants]}")
        return [v for v in variants if v[0] in wanted]

    sections: list[tuple[str, str]] = []  # (title, table)
    if args.study == "speed":
        spec = args.data or synthetic_spec("conflict", args.rows)
        variants = pick([*ABLATION, ("dcrnn rank 64", "dcrnn", {"rank": 64}),
                         ("dcrnn cross_axis fields", "dcrnn", {"cross_axis": "fields"})])
        sections.append((f"model-bound speed on {spec}", speed_table(variants, study.dataset(spec))))
    elif args.study == "census":
        if not args.data:
            parser.error("census needs --data, the prepared Census-Income directory (mtrec prepare ... --out DIR)")
        variants = pick([("dcrnn partial", "dcrnn", {}), ("dcrnn hard", "dcrnn", {"sharing": "hard"}),
                         ("shared_bottom", "shared_bottom", {}), ("mmoe", "mmoe", {})])
        sections.append((f"Census-Income ({args.data})", study.table(variants, args.data, seeds, False)))
    else:
        default_presets = {"oracle": "easy,esmm", "ablation": "conflict,easy", "sweep": "conflict"}
        presets = (args.presets or default_presets[args.study]).split(",")
        for preset in presets:
            spec = synthetic_spec(preset, args.rows)
            if args.study == "oracle":
                variants = [("dcrnn (masked)", "dcrnn", {})]
                if preset == "esmm":
                    variants += [("dcrnn (entire_space)", "dcrnn", {"objective": "entire_space"}),
                                 ("esmm (reference)", "esmm", {}), ("mmoe (reference)", "mmoe", {})]
            else:
                variants = ABLATION if args.study == "ablation" else SWEEP
            title = f"synthetic `{preset}`, {args.rows:,} rows"
            sections.append((title, study.table(pick(variants), spec, seeds, True)))
    text = "\n".join(f"### {title}\n\n```\n{command}\n```\n\n{table}" for title, table in sections)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
