#!/usr/bin/env bash
# The test command: set up on a fresh machine, then run the whole suite against live keephub servers, twice:
# with hf_xet (what a default `pip install huggingface_hub` uploads through) and with HF_HUB_DISABLE_XET=1
# (the git-lfs path). Both runs always happen; the command fails if either does.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
status=0
echo "== suite with hf_xet (Xet uploads and downloads) =="
KEEPHUB_TEST_XET=on .venv/bin/python -m pytest "$@" || status=$?
echo "== suite with HF_HUB_DISABLE_XET=1 (git-lfs uploads) =="
KEEPHUB_TEST_XET=off .venv/bin/python -m pytest "$@" || status=$?
exit "$status"
