"""The ``mtrec`` command line: thin wrappers over the library.

Start-up stays fast (``mtrec --help``, ``mtrec models`` and a mistyped option answer without loading torch,
the data stack or the serving stack): every command imports what it needs inside its own function, and
this module imports only click, pydantic's error type and :mod:`mtrec.errors`; ``tests/test_cli.py``
checks it.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from mtrec import __version__
from mtrec.errors import CheckFailed, UserError

if TYPE_CHECKING:
    from mtrec.training.config import RunConfig

POSITIVE = click.IntRange(min=1)
PRECISION = click.option(
    "--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    help="train.precision: auto (bf16 on CUDA with bf16 or a CPU with AMX/AVX512-BF16, else fp32), fp32, bf16, "
         "or fp16 (CUDA only)")


@click.group()
@click.version_option(version=__version__, prog_name="mtrec")
def cli() -> None:
    """mtrec: multi-task recommendation models, training, benchmarks, export and serving."""


@cli.command()
def models() -> None:
    """Print the registered models, one per line: name and what it is."""
    from mtrec.models import list_models, model_description

    names = list_models()
    width = max(map(len, names))
    for name in names:
        click.echo(f"{name:<{width}}  {model_description(name)}")


def _run_config(
    model: str | None, data: str | None, config_file: Path | None, overrides: dict[str, Any]
) -> RunConfig:
    from mtrec.training.config import ConfigError, RunConfig, TrainConfig, read_config_file
    from mtrec.typed import first_problem

    raw: dict[str, Any] = read_config_file(config_file) if config_file else {}
    if model:
        raw["model"] = model
    if data is not None:  # --data "" is an empty spec, refused by the config, not the default data
        raw["data"] = data
    if "model" not in raw:
        raise ConfigError("no model given: pass --model NAME or a config file with 'model:'")
    given = {k: v for k, v in overrides.items() if v is not None}
    for key, value in given.items():  # a bad option value is named by its option
        try:
            TrainConfig.model_validate({key: value})
        except ValidationError as exc:
            raise ConfigError(f"--{key.replace('_', '-')}: {first_problem(exc)}") from None
    if isinstance(raw.get("train") or {}, dict):  # anything else is reported by the validation
        raw["train"] = {**(raw.get("train") or {}), **given}
    return RunConfig.from_dict(raw, where=str(config_file) if config_file else "command line")


_DEVICE = click.option("--device", help="auto (CUDA when available), cpu, mps, cuda or cuda:N  [default: the "
                                         "config's train.device, auto]")


def _checked_device(device: str | None) -> str | None:
    """``--device`` if this machine has it (one line saying what to install or use instead if not)."""
    if device is None:
        return None
    from mtrec.devices import check_device

    return check_device(device, "--device")


@cli.command()
@click.option("--model", "model", help="registered model name (see `mtrec models`)")
@click.option("--data", help="synthetic, synthetic:PRESET[:ROWS], or a prepared dataset directory")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="run directory to write")
@click.option("--epochs", type=int)
@click.option("--seed", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML run config")
@PRECISION
@click.option("--resume", is_flag=True,
              help="continue from the run directory's last checkpoint (resume.safetensors); start fresh if none")
@click.option("--overwrite", is_flag=True, help="replace the finished run in --out (refused without it)")
@_DEVICE
def train(
    model: str | None, data: str | None, out: Path, epochs: int | None, seed: int | None,
    batch_size: int | None, lr: float | None, config_file: Path | None, precision: str | None, resume: bool,
    overwrite: bool, device: str | None,
) -> None:
    """Train one model and write its run directory (metrics.json, model.safetensors, plots).

    Runs data-parallel unchanged under `torchrun --nproc_per_node N` (see docs/distributed.md);
    --batch-size is then the global batch over all processes.
    """
    from mtrec.objectives.weighting import WeightingConfigError
    from mtrec.training.run import train_run

    config = _run_config(model, data, config_file,
                         {"epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr,
                          "precision": precision, "device": _checked_device(device)})
    try:
        metrics = train_run(config, out, resume=resume, overwrite=overwrite)
    except WeightingConfigError as exc:  # options checked against the data's tasks, once it is read
        raise WeightingConfigError(f"{config_file or 'command line'}: {exc}") from None
    if not _is_main_process():
        return
    from mtrec.metrics import format_metrics

    for task, m in metrics["test"].items():
        oracle = (metrics.get("oracle") or {}).get(task)
        extra = f"  (oracle {format_metrics(oracle)})" if oracle else ""
        click.echo(f"test {task}: {format_metrics(m)}{extra}")
    click.echo(f"train samples/s {metrics['train_samples_per_s']:,.0f}; run written to {out}")


@cli.command()
@click.argument("config_file", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="prepared dataset directory")
@click.option("--raw", type=click.Path(path_type=Path),
              help="raw file (or, for a 'files' split, directory) instead of the config's source.path")
@click.option("--chunk-rows", type=POSITIVE, help="rows per streamed chunk (default: the config's, 262144)")
@click.option("--overwrite", is_flag=True, help="replace the prepared dataset already in --out")
def prepare(config_file: Path, out: Path, raw: Path | None, chunk_rows: int | None, overwrite: bool) -> None:
    """Turn raw CSV/Parquet files into a prepared dataset, as a dataset config says (docs/datasets.md).

    --out must be a new or empty directory, or (with --overwrite) a dataset prepared before; a directory
    holding anything else is refused, never deleted."""
    from mtrec.data.prepare import prepare_dataset

    dataset = prepare_dataset(config_file, out, raw=raw, chunk_rows=chunk_rows, overwrite=overwrite)
    s = dataset.schema
    click.echo(f"{dataset.num_rows:,} rows, {len(s.sparse)} sparse / {len(s.dense)} dense / "
               f"{len(s.sequences)} sequence features, tasks {s.task_names}; written to {out}")


@cli.command()
@click.argument("config_file", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="report directory [default: reports/bench/NAME]")
@click.option("--max-runs", type=click.IntRange(min=0),
              help="train at most N unfinished runs now, then report (resume later)")
@click.option("--models", "only_models", metavar="LABELS",
              help="train only these models' runs now, comma-separated labels (the report covers all finished)")
@click.option("--seeds", "only_seeds", metavar="SEEDS", help="train only these seeds' runs now, comma-separated")
@click.option("--datasets", "only_datasets", metavar="LABELS",
              help="train only these datasets' runs now, comma-separated labels (others are not prepared)")
@PRECISION
@_DEVICE
def bench(config_file: Path, out: Path | None, max_runs: int | None, only_models: str | None,
          only_seeds: str | None, only_datasets: str | None, precision: str | None, device: str | None) -> None:
    """Train models x datasets x seeds from a bench config and write the report (resumable)."""
    from mtrec.bench.report import comparison_table, table_metrics
    from mtrec.bench.runner import load_bench_config, run_bench

    config = load_bench_config(config_file)
    if precision is not None:  # over the bench's train section (a model's own train: still wins)
        config.train = {**config.train, "precision": precision}
    if device is not None:  # not a setting that decides a result: finished runs still count
        config.train = {**config.train, "device": _checked_device(device)}
    out = out or Path("reports") / "bench" / config.name
    command = shlex.join(["mtrec", "bench", str(config_file), "--out", str(out)])
    results = run_bench(config, out, command=command, max_runs=max_runs, only_models=_labels(only_models),
                        only_seeds=_seeds(only_seeds), only_datasets=_labels(only_datasets))
    if results["runs"]:
        click.echo(comparison_table(results["runs"], table_metrics(results["runs"])))
    if results["pending_runs"]:
        click.echo(f"{results['pending_runs']} run(s) pending: run the same command again to continue")
    click.echo(f"report written to {out}/results.md")


def _labels(text: str | None) -> list[str] | None:
    return None if text is None else [label.strip() for label in text.split(",") if label.strip()]


def _seeds(text: str | None) -> list[int] | None:
    from mtrec.training.config import ConfigError

    labels = _labels(text)
    if labels is None:
        return None
    try:
        return [int(label) for label in labels]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {text!r}") from None


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports/demo"), show_default=True)
@click.option("--data", help="data spec  [default: synthetic:conflict:60000]")
@click.option("--epochs", type=int, help="at most this many epochs (early stopping, patience 0)  [default: 10]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--models", "model_names",
              help="comma-separated models, or 'all' (every registered model)  "
                   "[default: shared_bottom,mmoe,ple,esmm,dcrnn,dtrn]")
@PRECISION
@_DEVICE
def demo(out: Path, data: str | None, epochs: int | None, seed: int, model_names: str | None,
         precision: str | None, device: str | None) -> None:
    """Train the headline models (DCRNN, DTRN) and the key baselines on synthetic data and print the
    comparison with the oracle."""
    from mtrec.bench.demo import DEMO_DATA, DEMO_MODELS, DEMO_TRAIN, run_demo
    from mtrec.bench.runner import ALL
    from mtrec.training.config import TrainConfig

    chosen = DEMO_MODELS if model_names is None else \
        ALL if model_names.strip() == ALL else [m.strip() for m in model_names.split(",")]
    given = {k: v for k, v in {"epochs": epochs, "precision": precision, "device": _checked_device(device)}.items()
             if v is not None}
    train = TrainConfig.parse({**DEMO_TRAIN, **given, "seed": seed}, where="command line")
    result = run_demo(out, data=data or DEMO_DATA, models=chosen, train=train)
    click.echo(result.table)
    click.echo(result.summary)
    click.echo(f"report: {result.report}")
    click.echo(f"plots: {', '.join(map(str, result.plots))}")
    if result.inspect_reports:
        click.echo(f"inside each model (mtrec inspect): {', '.join(map(str, result.inspect_reports))}")
    if result.samples:
        click.echo(f"raw inputs for `mtrec predict` and `mtrec serve`: {', '.join(map(str, result.samples))}")


@cli.command()
@click.argument("config_file", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="study directory (study.db, best.yaml, trials.csv, plots, trials/NNNN run directories)")
@click.option("--trials", type=POSITIVE, help="finished trials the study should hold (default: the config's trials)")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="stop starting trials after S seconds")
@click.option("--storage", help="a database URL shared by several machines (postgresql://...); default: OUT/study.db")
def tune(config_file: Path, out: Path, trials: int | None, timeout: float | None, storage: str | None) -> None:
    """Search a model's hyper-parameters with Optuna (seeded TPE, epoch-level pruning); resumable."""
    from mtrec.tune import tune as run_tune

    study, written = run_tune(str(config_file), out, trials, timeout, storage, log=click.echo)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    best = f"best validation score {study.best_value:.4f} (trial {study.best_trial.number})" \
        if any(t.state.name == "COMPLETE" for t in finished) else "no trial completed"
    click.echo(f"{len(finished)} finished trials, {best}; wrote {', '.join(p.name for p in written)} to {out}")


_UNFINISHED = click.option("--allow-unfinished", is_flag=True,
                           help="use a run whose training did not finish (no metrics.json): its last checkpoint")


@cli.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="ONNX file to write")
@click.option("--exporter", type=click.Choice(["auto", "torchscript", "dynamo"]), default="auto", show_default=True,
              help="auto: tracing (fast), falling back to torch.export when tracing fails or mismatches")
@click.option("--tolerance", type=click.FloatRange(min=0, max=1), default=1e-4, show_default=True,
              help="largest allowed |ONNX Runtime - PyTorch| probability difference")
@click.option("--rows", type=POSITIVE, default=2048, show_default=True,
              help="rows of the run's data to check parity on")
@click.option("--inputs", type=click.Choice(["raw", "ids"]), default="raw", show_default=True,
              help="raw: the model takes raw values by column name, the encoders inside the graph (stands alone); "
                   "ids: it takes the encoded ids and values")
@click.option("--quantize", type=click.Choice(["int8"]),
              help="int8: dynamic quantization of the MatMul/Gemm weights (ONNX Runtime), checked as test AUC")
@click.option("--auc-tolerance", type=click.FloatRange(min=0, max=1), default=0.005, show_default=True,
              help="with --quantize: largest allowed |test AUC difference| from the float32 model, per task")
@_UNFINISHED
def export_cmd(run_dir: Path, out: Path, exporter: str, tolerance: float, rows: int, inputs: str,
               quantize: str | None, auc_tolerance: float, allow_unfinished: bool) -> None:
    """Export a run's model to ONNX (task predictions as named outputs, dynamic batch, the schema and encoders
    in its metadata), after a parity check against eager PyTorch; exits non-zero and writes nothing if they
    differ by more than --tolerance."""
    from mtrec.export.model_file import check_finished
    from mtrec.export.onnx import export_run
    from mtrec.io import check_output_file

    check_output_file(out, "ONNX file")
    if not allow_unfinished:
        check_finished(run_dir)
    result = export_run(run_dir, out, exporter=exporter, tolerance=tolerance, rows=rows,  # type: ignore[arg-type]
                        log=click.echo, inputs=inputs, quantize=quantize,  # type: ignore[arg-type]
                        auc_tolerance=auc_tolerance)
    kind = f", {quantize}" if quantize else ""
    click.echo(f"parity ok; wrote {result.path} ({result.inputs} inputs{kind}, {result.exporter} exporter, "
               f"{result.size_bytes / 1e6:.2f} MB)")


@cli.command("inspect")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--data", help="data spec or prepared dataset directory  [default: the run's own data]")
@click.option("--split", default="test", show_default=True, help="split whose rows are inspected")
@click.option("--out", type=click.Path(path_type=Path), help="report directory  [default: RUN_DIR/inspect]")
@click.option("--rows", type=POSITIVE, default=20_000, show_default=True, help="rows of the split inspected at most")
@click.option("--repeats", type=POSITIVE, default=3, show_default=True, help="shuffles per field for importance")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def inspect_cmd(run_dir: Path, data: str | None, split: str, out: Path | None, rows: int, repeats: int,
                seed: int) -> None:
    """Look inside a run's model: expert utilization, per-task field weights, cross steps, feature
    importance, calibration and task relations (inspect.md, inspect.json and PNGs)."""
    from mtrec.inspect.report import inspect_run

    out = out or run_dir / "inspect"
    command = shlex.join(["mtrec", "inspect", *sys.argv[2:]]) if sys.argv[1:2] == ["inspect"] else ""
    report = inspect_run(run_dir, out, data=data, split=split, rows=rows, repeats=repeats, seed=seed,
                         command=command, log=click.echo)
    for line in report.summary:
        click.echo(line)
    click.echo(f"report written to {out}/inspect.md")


_BACKEND = click.option("--backend", type=click.Choice(["onnx", "torch"]), default="onnx", show_default=True,
                        help="ONNX Runtime (the run's graph, exported and parity-checked once) or eager PyTorch")
_DEVICE = click.option("--device", default="cpu", show_default=True,
                       help="cpu, cuda, cuda:N or auto (CUDA when the runtime has it)")
_MODEL = click.argument("run_dir", metavar="RUN_DIR|MODEL.onnx", type=click.Path(path_type=Path))
_THREADS = click.option("--threads", type=POSITIVE, default=1, show_default=True, help="CPU threads for inference")


@cli.command()
@_MODEL
@click.option("--input", "input_file", type=click.Path(path_type=Path), required=True,
              help="CSV or Parquet file, one column per feature, raw values")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="output CSV, or Parquet if it ends in .parquet: one column per task (a probability; a value "
                   "task's expected value in its label's units)")
@click.option("--keep", multiple=True, help="input column to copy to the output (repeatable), e.g. an id")
@click.option("--chunk-rows", type=POSITIVE, default=65_536, show_default=True, help="rows read and scored at a time")
@click.option("--separator", default=",", show_default=True, help="CSV field separator (without --dataset-config)")
@click.option("--dataset-config", type=click.Path(path_type=Path),
              help="read the input in this dataset config's raw layout (columns, separator, header) instead of "
                   "one column per feature")
@_BACKEND
@_THREADS
@_DEVICE
@_UNFINISHED
def predict(run_dir: Path, input_file: Path, out: Path, keep: tuple[str, ...], chunk_rows: int, separator: str,
            dataset_config: Path | None, backend: str, threads: int, device: str, allow_unfinished: bool) -> None:
    """Score a raw CSV/Parquet file with a run's model, or a model file from `mtrec export` (streamed, with a
    progress bar; written atomically)."""
    from mtrec.export.model_file import check_finished
    from mtrec.serving.batch import check_paths, score_file
    from mtrec.serving.predictor import Predictor

    check_paths(input_file, out)
    if not allow_unfinished:
        check_finished(run_dir)
    predictor = Predictor.load(run_dir, backend=backend, threads=threads, device=device)  # type: ignore[arg-type]
    result = score_file(predictor, input_file, out, keep=keep, chunk_rows=chunk_rows, separator=separator,
                        dataset_config=dataset_config)
    click.echo(f"scored {result.rows:,} rows in {result.seconds:.2f} s ({result.rows_per_s:,.0f} rows/s, "
               f"{predictor.describe()}); wrote {result.out}")


@cli.command()
@_MODEL
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-candidates", type=click.IntRange(min=1), default=1000, show_default=True,
              help="largest candidate list one request may hold")
@_BACKEND
@_THREADS
@_DEVICE
@click.option("--inference-workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="scoring threads per process (each scores the requests waiting at that moment in one call)")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="serving processes, each loading the run (for machines with more cores)")
@click.option("--access-log/--no-access-log", default=False, show_default=True)
@_UNFINISHED
def serve(run_dir: Path, host: str, port: int, max_candidates: int, backend: str, threads: int, device: str,
          inference_workers: int, workers: int, access_log: bool, allow_unfinished: bool) -> None:
    """Serve a run's model, or a model file from `mtrec export`, over HTTP: POST /v1/score, GET /healthz,
    GET /metrics, OpenAPI at /docs and /openapi.json."""
    from mtrec.export.model_file import check_finished
    from mtrec.serving.app import ServeSettings
    from mtrec.serving.app import serve as run_server

    if not allow_unfinished:
        check_finished(run_dir)

    settings = ServeSettings(str(run_dir), backend=backend, threads=threads, max_candidates=max_candidates,
                             inference_workers=inference_workers, device=device)
    run_server(settings, host=host, port=port, workers=workers, access_log=access_log, echo=click.echo)


def _is_main_process() -> bool:
    from mtrec.training.distributed import launch_env

    return launch_env().is_main


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one clear line and exit 2, not a traceback."""
    try:
        cli.main(args=argv, prog_name="mtrec", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as exc:  # one line, like every other error; --help shows the usage
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"error: {_one_line(Exception(exc.format_message()))}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {_one_line(Exception(exc.format_message()))}", err=True)
        sys.exit(exc.exit_code)
    except UserError as exc:
        click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(2)
    except ValidationError as exc:  # a value a library call validated (the CLI's own checks name the option)
        from mtrec.typed import error_line

        click.echo(f"error: {error_line(exc)}", err=True)
        sys.exit(2)
    except OSError as exc:  # a path the system refused (no space, no permission), whatever wrote it
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(2)
    except CheckFailed as exc:
        click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(1)


def _one_line(exc: Exception) -> str:
    """An error message on one line (a quoted raw value may hold line breaks)."""
    return " ".join(str(exc).splitlines())


if __name__ == "__main__":
    main()
