#!/usr/bin/env bash
# Make this checkout ready to run: the Debian binaries stdd drives, then .venv with stdd and
# its dependencies from the lock file. Idempotent: a second run only checks. Usage: scripts/setup.sh [run|test]
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"

# binary -> Debian package
declare -A NEED=(
  [source-extractor]=source-extractor [scamp]=scamp [psfex]=psfex [SWarp]=swarp
  [solve-field]=astrometry.net [build-astrometry-index]=astrometry.net
)
if [ "$mode" = test ]; then NEED[chromium]=chromium; fi

missing=()
for bin in "${!NEED[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("${NEED[$bin]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian packages: $pkgs"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  else
    echo "setup: missing programs. As root, run:" >&2
    echo "  apt-get install $pkgs" >&2
    exit 2
  fi
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: stdd needs Python >= 3.11 (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: note: requirements/*.lock are resolved for Python 3.11, .venv has $(.venv/bin/python --version 2>&1)" >&2
fi
# Python packages: exactly the versions of the lock file (requirements/test.lock for the tests,
# run.lock otherwise; `make lock` refreshes them), every file checked against its sha256, then stdd
# itself, editable, with no other package. Reinstall only when the lock or pyproject.toml changed:
# the stamp holds the mode and both files' digests. A venv set up for the tests has run.lock's
# versions too (run.lock is test.lock less the test extra), so `make demo` after `make test` only checks.
lock=requirements/$mode.lock
extra=""; [ "$mode" = test ] && extra=test
stamp=.venv/.stdd-installed
digest() { cat "requirements/$1.lock" pyproject.toml | sha256sum | cut -d' ' -f1; }
want="$mode $(digest "$mode")"
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" != "$want" ] && ! { [ "$mode" = run ] && [ "$have" = "test $(digest test)" ]; }; then
  echo "setup: installing the packages of $lock into .venv"
  t0=$(date +%s)
  # pip, quiet; a machine's pip.conf may name local indexes that lack a package: not our concern
  pipq() { .venv/bin/python -m pip -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
  rm -f "$stamp"
  pipq install --require-hashes -r "$lock" || { echo "setup: installing $lock failed" >&2; exit 1; }
  # stdd itself, editable; its build backend (setuptools, wheel) came from the lock
  PYTHONWARNINGS=ignore pipq install --no-deps --no-build-isolation -e . || { echo "setup: installing stdd failed" >&2; exit 1; }
  if ! bad=$(.venv/bin/python scripts/check_install.py $extra); then
    echo "setup: $lock does not satisfy pyproject.toml (refresh it with \`make lock\`):" >&2
    echo "$bad" >&2
    exit 1
  fi
  .venv/bin/python -c "import stdd, stdpipe" || { echo "setup: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
  echo "setup: installed in $(( $(date +%s) - t0 )) s"
fi
# stdpipe looks for `swarp`; Debian installs `SWarp`
if command -v SWarp >/dev/null 2>&1 && [ ! -e .venv/bin/swarp ]; then
  ln -s "$(command -v SWarp)" .venv/bin/swarp
fi
# the tests run a real TOM Toolkit server (delivery) in a venv of its own: tomtoolkit pins numpy
# and others differently from stdd (scripts/tom_venv.sh; made once, about a minute)
if [ "$mode" = test ] && [ ! -x .venv-tom/bin/python ]; then
  echo "setup: creating .venv-tom (TOM Toolkit for the delivery tests)"
  PYTHON="$PY" sh scripts/tom_venv.sh "$PWD/.venv-tom" 2>&1 | { grep -v "^WARNING: Location" || true; } \
    || echo "setup: note: .venv-tom could not be made; the TOM tests will be skipped" >&2
fi
