#!/usr/bin/env bash
# Refresh the lock files that scripts/setup.sh installs from (`make lock`):
#
#   requirements/test.lock  stdd's dependencies + the test extra (which holds the Dask extra too)
#   requirements/run.lock   stdd's dependencies alone, at the same versions as test.lock
#
# Both are for CPython 3.11 on Linux x86_64 (manylinux_2_28: glibc >= 2.28, Debian 10 on), pin every
# package with the sha256 of each of its files on PyPI, and include the build backend of
# pyproject.toml's [build-system] (setuptools, wheel) and pip itself, so setup.sh installs stdd with
# no package outside the lock. The resolution reads PyPI only (not a local pip.conf index), with uv
# (a pinned version, installed into .venv-lock/ when no `uv` is on PATH).
#
#   scripts/lock.sh            write both files (latest versions pyproject.toml's ranges allow)
#   scripts/lock.sh --check    resolve again and say whether the committed files are still current
#                              (exit 1 if not); writes nothing
#
# Upper bounds belong in pyproject.toml with their reason, never here: a lock is only a snapshot.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
PY_VERSION=3.11
PLATFORM=x86_64-manylinux_2_28
INDEX=https://pypi.org/simple

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: scripts/lock.sh [--check]" >&2; exit 2 ;;
esac

uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  if [ ! -x .venv-lock/bin/uv ] || [ "$(.venv-lock/bin/uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    echo "lock: installing uv $UV_VERSION into .venv-lock/"
    "${PYTHON:-python3}" -m venv .venv-lock
    .venv-lock/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
  fi
  uv=.venv-lock/bin/uv
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# the build backend, read from pyproject.toml so the two cannot drift apart
"${PYTHON:-python3}" - > "$tmp/build.in" <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as fh:
    print("\n".join(tomllib.load(fh)["build-system"]["requires"]))
EOF

compile() {  # compile OUT [uv pip compile options...]
  local out=$1; shift
  UV_NO_CONFIG=1 "$uv" pip compile pyproject.toml "$tmp/build.in" --quiet --generate-hashes \
    --python-version "$PY_VERSION" --python-platform "$PLATFORM" --index-url "$INDEX" \
    --no-strip-markers --custom-compile-command "make lock" -o "$out" "$@"
  # the temporary input's path is not part of the lock
  sed -i "s|$tmp/build.in|pyproject.toml [build-system]|" "$out"
}

compile "$tmp/test.lock" --extra test
# run.lock: the same versions (test.lock as constraints), without the test extra's packages
compile "$tmp/run.lock" --constraint "$tmp/test.lock"
sed -i "s|$tmp/test.lock|requirements/test.lock|" "$tmp/run.lock"

if [ $check = 1 ]; then
  stale=0
  for f in test run; do
    if ! diff -q <(grep -v '^#' "$tmp/$f.lock") <(grep -v '^#' "requirements/$f.lock" 2>/dev/null) >/dev/null; then
      echo "lock: requirements/$f.lock is not current:"
      diff <(grep -E '^[a-z0-9]' "requirements/$f.lock" 2>/dev/null) <(grep -E '^[a-z0-9]' "$tmp/$f.lock") || true
      stale=1
    fi
  done
  [ $stale = 0 ] && echo "lock: requirements/*.lock are current"
  exit $stale
fi
mkdir -p requirements
mv "$tmp/test.lock" requirements/test.lock
mv "$tmp/run.lock" requirements/run.lock
echo "lock: wrote requirements/test.lock ($(grep -c '==' requirements/test.lock) packages)," \
  "requirements/run.lock ($(grep -c '==' requirements/run.lock) packages)"
