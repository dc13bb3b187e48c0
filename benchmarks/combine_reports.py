"""One comparison table from several bench reports: the runs of each ``results.json`` given (datasets with
the same label are one table), optionally only some model labels, in the order given.

A study config lists only the variants a main benchmark does not train (e.g.
``configs/bench/dtrn_study_real.yaml`` beside ``configs/bench/taobao_userbehavior.yaml``, same data, options
and budget); this puts both in one table without training any run twice::

    python benchmarks/combine_reports.py reports/bench/taobao_userbehavior/results.json \\
        reports/bench/dtrn_study_real/results.json --models dtrn,dtrn-no-tim,mmoe,mmoe-attention \\
        --out reports/dtrn_taobao.md

Prints the Markdown (mean ± std over seeds, params, samples/s, runs at the epoch limit) and, with ``--out``,
writes it and the AUC bars beside it (``.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mtrec.bench.report import comparison_table, plot_auc_bars, table_metrics
from mtrec.io import atomic_write_text


def combined_runs(reports: list[Path], models: list[str] | None) -> list[dict[str, Any]]:
    """The runs of ``reports``, only ``models`` (labels) if given, ordered as ``models`` lists them."""
    for path in reports:
        if not path.is_file():
            sys.exit(f"error: {path}: no such report (run its mtrec bench first)")
    runs = [run for path in reports for run in json.loads(path.read_text())["runs"]]
    if models is None:
        return runs
    missing = sorted(set(models) - {run["model"] for run in runs})
    if missing:
        sys.exit(f"error: no finished runs of {missing} in {', '.join(map(str, reports))}")
    return sorted((run for run in runs if run["model"] in models), key=lambda run: models.index(run["model"]))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("reports", type=Path, nargs="+", help="results.json of mtrec bench reports")
    parser.add_argument("--models", help="comma-separated model labels, in table order (default: all)")
    parser.add_argument("--out", type=Path, help="write the table here (and the AUC bars as .png beside it)")
    args = parser.parse_args(argv)
    runs = combined_runs(args.reports, args.models.split(",") if args.models else None)
    table = comparison_table(runs, table_metrics(runs))
    print(table)
    if args.out:
        atomic_write_text(args.out, table + "\n")
        plot_auc_bars(runs, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main(sys.argv[1:])
