#!/bin/sh
# The TOM Toolkit server the delivery tests run against (tests/tom_server.py) lives in a venv of
# its own: tomtoolkit pins numpy and others differently from stdd. Creates it from PyPI with a
# pinned tomtoolkit; the tests find it at $STDD_TOM_VENV, else .venv-tom in the checkout.
#   scripts/tom_venv.sh [VENV_DIR]
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-${STDD_TOM_VENV:-$here/.venv-tom}}
python=${PYTHON:-python3.11}
TOMTOOLKIT_VERSION=3.1.0
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "tomtoolkit==$TOMTOOLKIT_VERSION"
"$venv/bin/python" -c "import tom_common, django; print('TOM Toolkit venv ready:', '$venv', 'Django', django.__version__)"
