#!/usr/bin/env bash
# The test command: set up on a fresh machine, then run the whole suite against live keephub servers, twice:
# with hf_xet (what a default `pip install huggingface_hub` uploads through) and jobs on the local executor,
# then with HF_HUB_DISABLE_XET=1 (the git-lfs path) and every job on a throwaway one-machine Slurm cluster.
# So each upload path and each executor is exercised by the real clients. Both runs always happen; the command
# fails if either does.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
status=0
echo "== suite with hf_xet (Xet uploads and downloads), jobs on the local executor =="
KEEPHUB_TEST_XET=on KEEPHUB_TEST_EXECUTOR=local .venv/bin/python -m pytest "$@" || status=$?
echo "== suite with HF_HUB_DISABLE_XET=1 (git-lfs uploads), jobs on Slurm =="
KEEPHUB_TEST_XET=off KEEPHUB_TEST_EXECUTOR=slurm .venv/bin/python -m pytest "$@" || status=$?
exit "$status"
