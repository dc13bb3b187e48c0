"""Run the whole bad-input battery and print counts per family: cases, passed, failed, tracebacks, exits
other than 2, and anything lost (an input changed or deleted, a file written outside the case's output).

The battery is every ``tests/test_bad_input*.py`` file. It runs under pytest with ``$MTREC_BATTERY_LOG``
set, so that each CLI case appends its outcome (:func:`test_bad_input.record_outcome`), and with a JUnit
XML report for the tests that are not CLI cases (HTTP requests, files as tools write them). A family is
the file's suffix (``test_bad_input_data.py``: ``data``; ``test_bad_input.py``: ``core``) and, where a
case's name starts with ``word:``, that word (``data/yaml``, ``core/prepare``).

    python benchmarks/bad_input_battery.py            # the whole battery
    python benchmarks/bad_input_battery.py -k yaml    # a selection (pytest -k)

Exit status 0 when every case passed with no traceback, no other exit status and nothing lost.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("cases", "passed", "failed", "tracebacks", "non-2 exits", "lost")


def family(test_id: str, cli_cases: set[str]) -> str:
    """``tests/test_bad_input_data.py::test_x[yaml: a bomb]`` -> ``data/yaml``; a test that is not a CLI case
    (in ``cli_cases``) -> ``data/checks``."""
    module = re.search(r"test_bad_input(?:_(\w+))?\.py", test_id)
    base = module[1] if module and module[1] else "core"
    param = re.search(r"\[([A-Za-z][\w -]*?): ", test_id)
    return f"{base}/{param[1]}" if param and test_id in cli_cases else f"{base}/checks"


def junit_results(path: Path) -> dict[str, str]:
    """Test id (``tests/x.py::name``) -> ``passed``, ``failed`` or ``skipped``."""
    results = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        test_id = f"{module}.py::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        results[test_id] = outcome
    return results


def count(results: dict[str, str], outcomes: list[dict[str, object]]) -> dict[str, Counter[str]]:
    """Per family: the columns of :data:`COLUMNS`."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    cli_cases = {str(record["test"]) for record in outcomes}
    for test_id, outcome in results.items():
        row = table[family(test_id, cli_cases)]
        row["cases"] += 1
        row[outcome] += 1
    for record in outcomes:
        row = table[family(str(record["test"]), cli_cases)]
        row["tracebacks"] += bool(record["traceback"])
        row["non-2 exits"] += record["status"] != 2
        row["lost"] += bool(record["lost"] or record["stray"])
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", default=None, help="run only the cases pytest -k selects")
    args = parser.parse_args()
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_bad_input*.py"))
    with tempfile.TemporaryDirectory() as tmp:
        log, junit = Path(tmp) / "outcomes.jsonl", Path(tmp) / "junit.xml"
        env = {**os.environ, "MTREC_BATTERY_LOG": str(log),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                   *(["-k", args.k] if args.k else []), *files]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
        if not junit.is_file():
            print(f"pytest did not run: {summary}")
            return 2
        results = junit_results(junit)
        outcomes = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    table = count(results, outcomes)
    total: Counter[str] = sum(table.values(), Counter())
    width = max(len(name) for name in [*table, "family"])
    print(f"bad-input battery: {len(files)} files ({', '.join(Path(f).name for f in files)}); pytest: {summary}")
    print(f"{'family':<{width}}  " + "  ".join(f"{c:>11}" for c in COLUMNS))
    for name in sorted(table):
        print(f"{name:<{width}}  " + "  ".join(f"{table[name][c]:>11}" for c in COLUMNS))
    print(f"{'total':<{width}}  " + "  ".join(f"{total[c]:>11}" for c in COLUMNS))
    print(f"({len(outcomes)} CLI cases recorded their exit status; the other cases are HTTP requests and "
          f"checks of files as tools write them)")
    clean = not (total["failed"] or total["tracebacks"] or total["non-2 exits"] or total["lost"])
    return 0 if clean and done.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
