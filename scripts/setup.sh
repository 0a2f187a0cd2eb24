#!/usr/bin/env bash
# Make this checkout ready to run: the Debian binaries stdd drives, then .venv with stdd and
# its extras. Idempotent: a second run only checks. Usage: scripts/setup.sh [test]
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
# reinstall only when pyproject.toml changed
stamp=.venv/.stdd-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)-$mode
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing stdd into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -U pip
  extras=""; [ "$mode" = test ] && extras="[test]"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras" 2>&1 \
    | grep -v -E "^(WARNING: Location|  )" || true
  .venv/bin/python -c "import stdd, stdpipe" || { echo "setup: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
# stdpipe looks for `swarp`; Debian installs `SWarp`
if command -v SWarp >/dev/null 2>&1 && [ ! -e .venv/bin/swarp ]; then
  ln -s "$(command -v SWarp)" .venv/bin/swarp
fi
