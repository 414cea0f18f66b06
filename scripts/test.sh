#!/usr/bin/env bash
# The test command: set up on a fresh machine, then run the whole suite against live keephub servers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
