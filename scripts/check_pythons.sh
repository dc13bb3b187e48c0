#!/usr/bin/env bash
# Install mtrec into a fresh virtual environment for each given CPython (default 3.12 and 3.13, found with
# pyenv) and run the test suite there. Dependencies, torch included, come from the package index (torch
# is a large download). Each Python's pytest output goes to $CHECK_DIR/pyX.Y.log (default
# .check-pythons/, git-ignored); the last line of each is the pass/fail count.
#
#   scripts/check_pythons.sh [3.12 3.13] [-- PYTEST_ARGS...]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${CHECK_DIR:-$root/.check-pythons}
versions=()
while [[ $# -gt 0 && $1 != "--" ]]; do versions+=("$1"); shift; done
[[ ${1:-} == "--" ]] && shift
[[ ${#versions[@]} -gt 0 ]] || versions=(3.12 3.13)
mkdir -p "$out"

interpreter() {  # the pyenv-installed CPython X.Y (the newest patch release there)
    local prefix
    prefix=$(pyenv prefix "$1" 2>/dev/null) ||
        prefix=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".* 2>/dev/null | sort -V | tail -n 1)
    [[ -n $prefix && -x $prefix/bin/python$1 ]] || { echo "error: no CPython $1 (pyenv install $1)" >&2; exit 2; }
    echo "$prefix/bin/python$1"
}

status=0
for version in "${versions[@]}"; do
    python=$(interpreter "$version")
    venv=$out/py$version
    echo "== CPython $version ($python): installing into $venv"
    "$python" -m venv --clear "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet "$root[serve,dev]"
    "$venv/bin/python" -c "import sys, torch, mtrec; print('python', sys.version.split()[0], 'torch', torch.__version__, 'mtrec', mtrec.__version__)"
    echo "== CPython $version: test suite"
    (cd "$root" && "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@") > "$out/py$version.log" 2>&1 || status=1
    echo "CPython $version: $(tail -n 1 "$out/py$version.log")"
done
exit $status
