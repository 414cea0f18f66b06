#!/usr/bin/env bash
# The run command: set up on a fresh machine, start an embedded keephub, run the reference's
# production training example against it, and print where the results are.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m keephub.demo.run "$@"
