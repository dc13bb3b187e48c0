"""The benchmark: models x datasets x seeds from a bench config, resumable, with a report directory.

A bench config (YAML)::

    name: census
    models: all                      # every registered model at run time, a pattern ("dcrnn*"), or a list:
    # models: [mmoe, "ple*", {name: mmoe, label: mmoe-8, options: {num_experts: 8}},
    #          {name: mmoe, label: mmoe+gradnorm, train: {weighting: gradnorm}}]   # train: per-model overrides
    model_options: {embedding_dim: 16}   # given to every model that takes the option
    datasets:                        # dataset configs (prepared into OUT/data/NAME once), data specs
      - configs/datasets/census_income.yaml      #   (synthetic:PRESET[:ROWS], a prepared dataset dir)
      - {config: configs/datasets/ali_ccp.yaml, raw: /data/ali-ccp, label: ali_ccp}
      - synthetic:conflict
    seeds: [0, 1, 2]
    train: {epochs: 10, batch_size: 1024, lr: 0.001, num_threads: 1}

The report directory holds ``results.json`` (every run's metrics, the settings and the machine),
``results.md`` (mean ± std per task and metric, parameter counts, train samples/s), ``auc.png`` (test AUC,
or R² of a value task, per model and task with error bars) and ``learning_curves_<dataset>.png``; each
run's own directory is ``runs/<dataset>/<model>/seed<k>``, with its TensorBoard curves under
``tensorboard/`` when the ``tensorboard`` package is installed (``train: {log_to: []}`` turns them off):
``tensorboard --logdir OUT`` shows one run per model, dataset and seed. A run whose ``metrics.json`` exists
with the same resolved config is not redone (a setting added to mtrec since counts as unchanged at its
default), and a run interrupted half way continues from its last checkpoint, so an interrupted benchmark
resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import AfterValidator, Field, field_validator, model_validator
from tqdm.auto import tqdm

from mtrec.bench.report import (
    comparison_table,
    hit_the_limit,
    plot_auc_bars,
    plot_learning_curves_by_model,
    scenario_table,
    table_metrics,
)
from mtrec.data.dataset import SPLITS, PreparedDataset
from mtrec.data.source import check_spec, is_synthetic, load_data
from mtrec.io import atomic_write_text, check_output_dir, json_text
from mtrec.locks import locked_directory
from mtrec.models import ModelConfigError, list_models, model_options, runs_on
from mtrec.training.config import ConfigError, RunConfig, TrainConfig, TrainOverrides, read_config_file
from mtrec.training.run import train_run
from mtrec.training.rundir import METRICS, RunDirectory, finished_metrics, started_with
from mtrec.training.tensorboard import available as tensorboard_available
from mtrec.typed import ConfigModel, NonNegative, validate

ALL = "all"
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # one path component, never '.', '..' or a path


def _plain_name(name: str) -> str:
    if not PLAIN_NAME.match(name):
        raise ValueError(f"must be a plain name (letters, digits, '_', '.', '-'; it names the report directory "
                         f"reports/bench/NAME), got {name!r}")
    return name


@dataclass(frozen=True)
class ModelEntry:
    """A registered model, the label it has in the report, its own options and its own train settings
    (overriding the bench's ``train``: e.g. a task weighting, to compare weightings on one model)."""

    name: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetEntry:
    """A data spec (synthetic or a prepared directory) or a dataset config to prepare."""

    label: str
    spec: str | None = None
    config: str | None = None
    raw: str | None = None


@dataclass
class BenchConfig:
    name: str
    models: list[ModelEntry] | str
    datasets: list[DatasetEntry]
    seeds: list[int]
    train: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    origin: str = "bench config"
    tuned: dict[str, TunedModel] = field(default_factory=dict)  # per model label, with tuned: DIR

    def model_entries(self) -> list[ModelEntry]:
        """The models to run (``all``: the registry's models now)."""
        if self.models == ALL:
            return [ModelEntry(name, name) for name in list_models()]
        assert isinstance(self.models, list)
        return self.models

    def train_config(self, seed: int, entry: ModelEntry | None = None) -> TrainConfig:
        """The bench's train settings (TensorBoard curves where available), the model's own, then its tuned
        ones; the seed given."""
        curves = {"log_to": ["tensorboard"]} if tensorboard_available() else {}
        tuned = self.tuned[entry.label].train if entry and entry.label in self.tuned else {}
        return TrainConfig(**{**curves, **self.train, **(entry.train if entry else {}), **tuned, "seed": seed})

    def options_for(self, entry: ModelEntry) -> dict[str, Any]:
        """Shared options the model takes, then its own options, then its tuned ones (checked by the registry)."""
        accepted = model_options(entry.name)
        shared = {k: v for k, v in self.model_options.items() if k in accepted}
        tuned = self.tuned[entry.label].options if entry.label in self.tuned else {}
        return model_options(entry.name, {**shared, **entry.options, **tuned})


@dataclass(frozen=True)
class TunedModel:
    """What a model's study chose: the searched model options and train settings of its best trial, and the
    study's budget (finished trials)."""

    study: str
    options: dict[str, Any]
    train: dict[str, Any]
    trials: int


def _tuned_models(directory: Path, config: BenchConfig, where: str) -> dict[str, TunedModel]:
    """Each model's tuned settings from ``directory/<label>`` (a study of ``mtrec tune``), refusing a model
    without a study, a study of another model and studies of unequal budgets."""
    from mtrec.tune.results import read_study

    if len(config.datasets) != 1:
        raise ConfigError(f"{where}: a bench with tuned models has one dataset (its studies were tuned on it), "
                          f"got {len(config.datasets)}")
    tuned = {}
    for entry in config.model_entries():
        study = directory / _safe(entry.label)
        best, trials = read_study(study, where)
        if best.model != entry.name:
            raise ConfigError(f"{where}: {study} tuned model {best.model!r}, not {entry.name!r} ({entry.label})")
        searched_options, searched_train = best.searched
        tuned[entry.label] = TunedModel(str(study), searched_options, searched_train, trials)
    budgets = {label: t.trials for label, t in tuned.items()}
    if len(set(budgets.values())) > 1:
        shown = ", ".join(f"{k} {v}" for k, v in budgets.items())
        raise ConfigError(f"{where}: the studies have unequal budgets ({shown} finished trials): continue them "
                          f"with the same --trials so every model is tuned alike")
    return tuned


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "x"


class ModelItem(ConfigModel):
    """A ``models:`` entry written as a mapping."""

    name: str
    label: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    train: TrainOverrides = Field(default_factory=dict)  # this model's train settings over the bench's


class DatasetItem(ConfigModel):
    """A ``datasets:`` entry written as a mapping: a dataset config to prepare, or a data spec."""

    config: str | None = None
    raw: str | None = None
    data: str | None = None
    label: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DatasetItem:
        if (self.config is None) == (self.data is None):
            raise ValueError("give either 'config' (a dataset config, with an optional 'raw') or 'data' (a spec)")
        if self.raw is not None and self.config is None:
            raise ValueError("'raw' goes with 'config'")
        if self.data is not None:
            check_spec(self.data)
        return self


def _entries(key: str, mapping: Callable[[str], dict[str, Any]]) -> Any:
    """A before-validator: a list entry (or, for ``models``, the whole value) written as a string becomes
    the mapping it stands for."""

    def convert(value: Any) -> Any:
        items = [value] if isinstance(value, str) and key == "models" else value
        return [mapping(item) if isinstance(item, str) else item for item in items] if isinstance(items, list) \
            else items

    return field_validator(key, mode="before")(convert)


class BenchFile(ConfigModel):
    """A bench config file as written (see the module docstring); :func:`parse_bench_config` resolves it.
    A model written as a string is ``{name: ...}`` (``all`` or an fnmatch pattern expands over the
    registry); a dataset written as a string is ``{config: ...}`` (``.yaml``/``.yml``) or ``{data: ...}``."""

    name: Annotated[str, AfterValidator(_plain_name)] | None = None  # names reports/bench/NAME: no path
    models: Annotated[list[ModelItem], Field(min_length=1)] = Field(default_factory=lambda: [ModelItem(name=ALL)])
    model_options: dict[str, Any] = Field(default_factory=dict)  # given to every model that takes the option
    datasets: Annotated[list[DatasetItem], Field(min_length=1)]
    seeds: Annotated[list[NonNegative], Field(min_length=1)] = Field(default_factory=lambda: [0])
    train: TrainOverrides = Field(default_factory=dict)
    tuned: str | None = None  # a directory of `mtrec tune` studies, one per model label (docs/tune.md)

    _models = _entries("models", lambda name: {"name": name})
    _datasets = _entries("datasets", lambda item: {"config": item} if item.endswith((".yaml", ".yml"))
                         else {"data": item})


def _models(items: list[ModelItem], where: str) -> list[ModelEntry] | str:
    if [item.name for item in items] == [ALL]:
        return ALL
    entries = []
    for i, item in enumerate(items):
        if any(c in item.name for c in "*?[") or item.name == ALL:  # an fnmatch pattern over the registry
            matches = list_models("*" if item.name == ALL else item.name)
            if not matches:
                raise ConfigError(f"{where}: models[{i}] {item.name!r} matches no registered model")
            entries += [ModelEntry(name, name, item.options, item.train) for name in matches]
        else:
            entries.append(ModelEntry(item.name, item.label or item.name, item.options, item.train))
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: model labels must be unique (give 'label:'), got {labels}")
    return entries


def _datasets(items: list[DatasetItem], where: str) -> list[DatasetEntry]:
    entries = []
    for item in items:
        if item.config is not None:
            from mtrec.data.config import load_dataset_config

            label = item.label or load_dataset_config(item.config).name
            entries.append(DatasetEntry(label, config=item.config, raw=item.raw))
        else:
            assert item.data is not None
            label = item.label or (item.data if is_synthetic(item.data) else Path(item.data).name)
            entries.append(DatasetEntry(label, spec=item.data))
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: dataset labels must be unique (give 'label:'), got {labels}")
    return entries


def parse_bench_config(data: Any, origin: str = "bench config") -> BenchConfig:
    """A bench config from a mapping; ConfigError naming ``origin`` and the key if it is not valid."""
    parsed = validate(BenchFile, data, origin, ConfigError)
    config = BenchConfig(
        name=parsed.name or Path(origin).stem,
        models=_models(parsed.models, origin),
        datasets=_datasets(parsed.datasets, origin),
        seeds=list(parsed.seeds),
        train=parsed.train,
        model_options=parsed.model_options,
        origin=origin,
    )
    if parsed.tuned is not None:
        config.tuned = _tuned_models(Path(parsed.tuned), config, f"{origin}: tuned")
    for entry in config.model_entries():  # every model's options, checked now rather than at its turn
        try:
            config.options_for(entry)
        except ModelConfigError as exc:
            raise ConfigError(f"{origin}: {entry.label}: {exc}") from None
    return config


def load_bench_config(path: str | Path) -> BenchConfig:
    return parse_bench_config(read_config_file(path), origin=str(path))


def _check_shared_options(config: BenchConfig, models: list[ModelEntry]) -> None:
    for key in config.model_options:
        if not any(key in model_options(m.name) for m in models):
            raise ConfigError(f"{config.origin}: model_options.{key} is taken by none of the models "
                              f"{[m.name for m in models]}")


def _open_dataset(entry: DatasetEntry, cache: Path, log: Callable[[str], None]) -> tuple[str, PreparedDataset]:
    """The data spec used in run configs and the dataset; dataset configs are prepared into ``cache``
    once (again only when the config or the raw files changed)."""
    opened = _prepared(entry, cache, log)
    if opened is not None:
        return opened
    from mtrec.data.config import load_dataset_config
    from mtrec.data.prepare import prepare_dataset

    assert entry.config is not None
    target = cache / _safe(entry.label)
    log(f"dataset {entry.label}: preparing {entry.config} into {target}")
    return str(target), prepare_dataset(load_dataset_config(entry.config), target, raw=entry.raw, log=log,
                                        overwrite=True)


def _prepared(entry: DatasetEntry, cache: Path, log: Callable[[str], None]) -> tuple[str, PreparedDataset] | None:
    """The data spec and the dataset where nothing needs preparing (a data spec, or a prepared copy in
    ``cache`` that is current); None where the dataset config needs preparing."""
    if entry.spec is not None:
        return entry.spec, load_data(entry.spec)
    from mtrec.data.config import load_dataset_config
    from mtrec.data.prepare import is_current

    assert entry.config is not None
    target = cache / _safe(entry.label)
    if not is_current(target, load_dataset_config(entry.config), entry.raw):
        return None
    log(f"dataset {entry.label}: using the prepared copy in {target}")
    return str(target), PreparedDataset.load(target)


def machine_info() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run_bench(
    config: BenchConfig,
    out_dir: str | Path,
    command: str | None = None,
    log: Callable[[str], None] = tqdm.write,
    max_runs: int | None = None,
    only_models: Collection[str] | None = None,
    only_seeds: Collection[int] | None = None,
    only_datasets: Collection[str] | None = None,
) -> dict[str, Any]:
    """Run every (dataset, model, seed) not already done, then write the report. Returns results.json.

    ``max_runs`` trains at most that many runs now; ``only_models`` (labels), ``only_seeds`` and
    ``only_datasets`` (labels) train only those runs now; a dataset not selected is not prepared either.
    The report then covers every finished run of the config and says how many are pending; run again
    to continue (e.g. seed 0 of every model first, then the other seeds). ``out_dir`` is locked while the
    bench runs (:mod:`mtrec.locks`): a second bench into it is refused."""
    out = check_output_dir(out_dir, "bench report directory")
    with locked_directory(out, "bench report directory"):
        return _run_locked(config, out, command, log, max_runs, only_models, only_seeds, only_datasets)


def _run_locked(config: BenchConfig, out: Path, command: str | None, log: Callable[[str], None],
                max_runs: int | None, only_models: Collection[str] | None, only_seeds: Collection[int] | None,
                only_datasets: Collection[str] | None) -> dict[str, Any]:
    """:func:`run_bench` in the locked report directory ``out``."""
    models = config.model_entries()
    _check_shared_options(config, models)
    _check_selection(config, models, only_models, only_seeds, only_datasets)
    runs: list[dict[str, Any]] = []
    datasets: dict[str, dict[str, Any]] = {}
    total = len(config.datasets) * len(models) * len(config.seeds)
    done = trained = pending = 0
    for entry in config.datasets:
        chosen = only_datasets is None or entry.label in only_datasets
        opened = _open_dataset(entry, out / "data", log) if chosen else _prepared(entry, out / "data", log)
        if opened is None:  # not selected and never prepared here, so none of its runs finished
            pending += len(models) * len(config.seeds)
            done += len(models) * len(config.seeds)
            continue
        spec, dataset = opened
        datasets[entry.label] = {"data": spec, "rows": {s: dataset.split_size(s) for s in SPLITS},
                                 "tasks": dataset.schema.task_names}
        for model in models:
            if not runs_on(model.name, dataset.schema):
                done += len(config.seeds)
                log(f"{entry.label} / {model.label}: skipped, a multi-scenario model and the data has no scenario")
                continue
            for seed in config.seeds:
                done += 1
                run_dir = out / "runs" / _safe(entry.label) / _safe(model.label) / f"seed{seed}"
                run_config = RunConfig(model=model.name, data=spec, model_options=config.options_for(model),
                                       train=config.train_config(seed, model))
                where = f"[{done}/{total}] {entry.label} / {model.label} / seed {seed}"
                metrics = finished_metrics(run_dir, run_config)
                selected = chosen and (only_models is None or model.label in only_models) and \
                    (only_seeds is None or seed in only_seeds)
                if metrics is None and (not selected or (max_runs is not None and trained >= max_runs)):
                    pending += 1
                    continue
                if metrics is None:
                    trained += 1
                    resume = started_with(run_dir, run_config)  # an interrupted run continues
                    log(f"{where}: {'resuming' if resume else 'training'}")
                    start = time.perf_counter()
                    metrics = train_run(run_config, run_dir, dataset=dataset, log=log, resume=resume,
                                        overwrite=True)  # a run of another config is replaced
                    RunDirectory(run_dir).write_timing({"wall_s": time.perf_counter() - start, "resumed": resume})
                else:
                    log(f"{where}: already done ({run_dir / METRICS})")
                timing = RunDirectory(run_dir).timing()
                runs.append({**metrics, "data": entry.label, "model": model.label, "registry_name": model.name,
                             "run_dir": str(run_dir), "wall_s": timing.get("wall_s"),
                             "resumed": bool(timing.get("resumed"))})
    results = {
        "bench": config.name,
        "command": command,
        "machine": machine_info(),
        "settings": {"train": config.train, "seeds": config.seeds, "model_options": config.model_options,
                     "models": {m.label: {"model": m.name, "options": m.options, "train": m.train}
                                for m in models},
                     "tuned": {label: {"study": t.study, "trials": t.trials, "options": t.options, "train": t.train}
                               for label, t in config.tuned.items()}},
        "datasets": datasets,
        "total_run_s": sum(r["wall_s"] or 0.0 for r in runs),
        "pending_runs": pending,
        "runs": runs,
    }
    write_report(results, out)
    return results


def _check_selection(config: BenchConfig, models: list[ModelEntry], only_models: Collection[str] | None,
                     only_seeds: Collection[int] | None, only_datasets: Collection[str] | None) -> None:
    names = [d.label for d in config.datasets]
    for label in only_datasets or ():
        if label not in names:
            raise ConfigError(f"{config.origin}: --datasets: '{label}' is not a dataset of this bench "
                              f"({', '.join(names)})")
    labels = [m.label for m in models]
    for label in only_models or ():
        if label not in labels:
            raise ConfigError(f"{config.origin}: --models: '{label}' is not a model of this bench "
                              f"({', '.join(labels)})")
    for seed in only_seeds or ():
        if seed not in config.seeds:
            raise ConfigError(f"{config.origin}: --seeds: {seed} is not a seed of this bench "
                              f"({', '.join(map(str, config.seeds))})")


def _resumed_note(runs: list[dict[str, Any]]) -> str:
    resumed = sum(1 for r in runs if r.get("resumed"))
    return f"; {resumed} run(s) resumed after an interruption count only their last part" if resumed else ""


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def write_report(results: dict[str, Any], out: Path) -> str:
    """``results.json``, ``results.md`` and the plots; returns the Markdown."""
    runs = results["runs"]
    settings = results["settings"]
    machine = results["machine"]
    train = TrainConfig(**{**settings["train"], "seed": 0})
    threads = train.num_threads or machine["cpu_count"]
    lines = [f"# Benchmark: {results['bench']}", ""]
    if results.get("command"):
        lines += ["Produced by:", "", "```bash", results["command"], "```", ""]
    lines += [
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPU cores"
        f"{', GPU ' + machine['cuda'] if machine.get('cuda') else ''}; Python {machine['python']}, torch "
        f"{machine['torch']}, {threads} thread(s) per run. Total training time "
        f"{_duration(results['total_run_s'])} (sum over runs, evaluation included"
        f"{_resumed_note(runs)}).",
        "",
        f"Same settings for every model: up to {train.epochs} epochs with early stopping on the mean "
        f"validation score (train.select {train.select}, see README.md; patience {train.patience}; the best "
        f"validation epoch is tested), batch "
        f"{train.batch_size}, Adam lr {train.lr} (weight decay {train.weight_decay}), task weighting "
        f"{train.weighting}, seeds {', '.join(map(str, settings['seeds']))}; shared model options "
        f"{settings['model_options'] or 'none'} (model defaults otherwise).",
        "",
        "Test metrics, mean ± standard deviation over the seeds (model selected on validation); train "
        "samples/s is the median over seeds of the training throughput (all epochs after a warm-up, data "
        "loading included, evaluation excluded).",
        "",
    ]
    tuned = settings.get("tuned") or {}
    if tuned:
        budget = sorted({t["trials"] for t in tuned.values()})
        lines += [f"Tuned: each model trains with the best configuration of its own study, the same budget for "
                  f"every model ({', '.join(map(str, budget))} finished trials each; `mtrec tune`, docs/tune.md): "
                  + "; ".join(f"{label}: {t['options']} {t['train']}" for label, t in tuned.items()), ""]
    own = {label: m for label, m in settings["models"].items()
           if m["options"] or m.get("train") or label != m["model"]}
    if own:
        lines += ["Per-model options: " + "; ".join(
            f"{label} ({m['model']}): {m['options'] or 'defaults'}"
            + (f", train {m['train']}" if m.get("train") else "") for label, m in own.items()), ""]
    for label, info in results["datasets"].items():
        rows = info["rows"]
        lines.append(f"- **{label}**: {rows['train']:,} train / {rows['valid']:,} valid / {rows['test']:,} "
                     f"test rows; tasks {', '.join(info['tasks'])}.")
    if results.get("pending_runs"):
        lines += ["", f"**Incomplete: {results['pending_runs']} run(s) pending**; the tables cover the "
                      f"{len(runs)} finished runs. Run the same command again to continue."]
    if not runs:
        markdown = "\n".join(lines) + "\n\nNo run has finished yet.\n"
        atomic_write_text(out / "results.md", markdown)
        atomic_write_text(out / "results.json", json_text(results, indent=2, default=str) + "\n")
        return markdown
    limited = sum(hit_the_limit(r) for r in runs)
    lines += ["", f"Runs ended by the epoch limit (best validation epoch = last, so not converged): {limited} of "
                  f"{len(runs)}" + (" (column 'at limit')." if limited else "."),
              "", comparison_table(runs, table_metrics(runs)), scenario_table(runs),
              "![test AUC (binary) or R² (value) per model and task](auc.png)", ""]
    plot_auc_bars(runs, out / "auc.png")
    for label in results["datasets"]:
        histories: dict[str, list[list[dict[str, Any]]]] = {}
        for run in runs:
            if run["data"] != label:
                continue
            path = Path(run["run_dir"]) / "history.jsonl"
            if path.is_file():
                history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                histories.setdefault(run["model"], []).append(history)
        if histories:
            name = f"learning_curves_{_safe(label)}.png"
            plot_learning_curves_by_model(histories, results["datasets"][label]["tasks"], out / name,
                                          title=label)
            lines += [f"![learning curves: {label}]({name})", ""]
    markdown = "\n".join(lines)
    atomic_write_text(out / "results.md", markdown)
    atomic_write_text(out / "results.json", json_text(results, indent=2, default=str) + "\n")
    return markdown
