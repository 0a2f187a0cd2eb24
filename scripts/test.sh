#!/usr/bin/env bash
# The whole test suite, as CI runs it. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" MPLBACKEND=Agg
.venv/bin/python -m pytest -q -ra -p no:cacheprovider "$@"
rc=$?
# pytest's 5 means no test ran: that is a failure for us
[ $rc -eq 5 ] && { echo "no tests ran" >&2; exit 1; }
exit $rc
