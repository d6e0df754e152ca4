#!/usr/bin/env bash
# Set up (without starting a node), lint, then run the test suite.
#
#   scripts/test.sh [pytest options...]
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

bash scripts/setup.sh --no-start
.venv/bin/ruff check .

status=0
.venv/bin/pytest "$@" || status=$?
if ((status == 5)); then
    # pytest's "no tests collected": a suite that tests nothing must not pass.
    echo "test: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
