"""The ``mtrec`` command line: thin wrappers over the library."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from mtrec.data.dataset import DatasetError
from mtrec.features.schema import SchemaError
from mtrec.models import ModelConfigError, list_models
from mtrec.objectives.weighting import WeightingConfigError
from mtrec.training.config import ConfigError, RunConfig, read_config_file

USER_ERRORS = (DatasetError, SchemaError, ModelConfigError, ConfigError, WeightingConfigError)


@click.group()
@click.version_option(package_name="mtrec")
def cli() -> None:
    """mtrec: multi-task recommendation models, training, benchmarks, export and serving."""


@cli.command()
def models() -> None:
    """Print the registered model names, one per line."""
    for name in list_models():
        click.echo(name)


def _run_config(
    model: str | None, data: str | None, config_file: Path | None, overrides: dict[str, Any]
) -> RunConfig:
    raw: dict[str, Any] = read_config_file(config_file) if config_file else {}
    if model:
        raw["model"] = model
    if data:
        raw["data"] = data
    if "model" not in raw:
        raise ConfigError("no model given: pass --model NAME or a config file with 'model:'")
    raw["train"] = {**(raw.get("train") or {}), **{k: v for k, v in overrides.items() if v is not None}}
    return RunConfig.from_dict(raw, where=str(config_file) if config_file else "command line")


@cli.command()
@click.option("--model", "model", help="registered model name (see `mtrec models`)")
@click.option("--data", help="synthetic, synthetic:PRESET[:ROWS], or a prepared dataset directory")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="run directory to write")
@click.option("--epochs", type=int)
@click.option("--seed", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML run config")
def train(
    model: str | None, data: str | None, out: Path, epochs: int | None, seed: int | None,
    batch_size: int | None, lr: float | None, config_file: Path | None,
) -> None:
    """Train one model and write its run directory (metrics.json, model.safetensors, plots)."""
    from mtrec.training.run import train_run

    config = _run_config(model, data, config_file,
                         {"epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr})
    metrics = train_run(config, out)
    for task, m in metrics["test"].items():
        oracle = (metrics.get("oracle") or {}).get(task, {}).get("auc")
        extra = f"  (oracle {oracle:.4f})" if oracle is not None else ""
        click.echo(f"test {task}: AUC {m['auc']:.4f}  logloss {m['logloss']:.4f}{extra}")
    click.echo(f"train samples/s {metrics['train_samples_per_s']:,.0f}; run written to {out}")


@cli.command()
@click.argument("config_file", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="prepared dataset directory")
@click.option("--raw", type=click.Path(path_type=Path),
              help="raw file (or, for a 'files' split, directory) instead of the config's source.path")
@click.option("--chunk-rows", type=int, help="rows per streamed chunk (default: the config's, 262144)")
def prepare(config_file: Path, out: Path, raw: Path | None, chunk_rows: int | None) -> None:
    """Turn raw CSV/Parquet files into a prepared dataset, as a dataset config says (docs/datasets.md)."""
    from mtrec.data.prepare import prepare_dataset

    dataset = prepare_dataset(config_file, out, raw=raw, chunk_rows=chunk_rows)
    s = dataset.schema
    click.echo(f"{dataset.num_rows:,} rows, {len(s.sparse)} sparse / {len(s.dense)} dense / "
               f"{len(s.sequences)} sequence features, tasks {s.task_names}; written to {out}")


@cli.command()
@click.argument("config_file", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="report directory [default: reports/bench/NAME]")
@click.option("--max-runs", type=int, help="train at most N unfinished runs now, then report (resume later)")
def bench(config_file: Path, out: Path | None, max_runs: int | None) -> None:
    """Train models x datasets x seeds from a bench config and write the report (resumable)."""
    from mtrec.bench.report import comparison_table, table_metrics
    from mtrec.bench.runner import load_bench_config, run_bench

    config = load_bench_config(config_file)
    out = out or Path("reports") / "bench" / config.name
    command = shlex.join(["mtrec", "bench", str(config_file), "--out", str(out)])
    results = run_bench(config, out, command=command, max_runs=max_runs)
    if results["runs"]:
        click.echo(comparison_table(results["runs"], table_metrics(results["runs"])))
    if results["pending_runs"]:
        click.echo(f"{results['pending_runs']} run(s) pending: run the same command again to continue")
    click.echo(f"report written to {out}/results.md")


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports/demo"), show_default=True)
@click.option("--data", default="synthetic:easy", show_default=True, help="data spec")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--models", "model_names", help="comma-separated subset of models (default: all)")
def demo(out: Path, data: str, epochs: int, seed: int, model_names: str | None) -> None:
    """Train every registered model on synthetic data and print the comparison with the oracle."""
    from mtrec.bench.demo import run_demo
    from mtrec.training.config import TrainConfig

    chosen = [m.strip() for m in model_names.split(",")] if model_names else None
    table = run_demo(out, data=data, models=chosen, train=TrainConfig(epochs=epochs, seed=seed))
    click.echo(table)
    click.echo(f"report written to {out}/results.md (plot: {out}/auc.png)")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one clear line and exit 2, not a traceback."""
    try:
        cli.main(args=argv, prog_name="mtrec", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except USER_ERRORS as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
