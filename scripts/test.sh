#!/usr/bin/env bash
# The test command: set up on a fresh machine, then run the whole suite against live keephub servers, twice:
#   1. the embedded default (SQLite, blobs in the data directory), hf_xet uploads (what a default
#      `pip install huggingface_hub` sends), jobs on the local executor;
#   2. a throwaway PostgreSQL cluster and SeaweedFS (S3) started by the suite, git-lfs uploads
#      (HF_HUB_DISABLE_XET=1), every job on a throwaway one-machine Slurm cluster.
# So each metadata backend, blob backend, upload path and executor is exercised by the real clients. The tests
# that need both halves at once (several servers on one database and bucket, `keephub migrate`) start what a
# pass lacks, so they run with each upload path. Tests marked `once` (no backend a pass chooses changes their
# outcome: the blob-store contract, the S3- and PostgreSQL-specific checks, the README) run in pass 1 only.
# Both runs always happen; the command fails if either does.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
status=0
echo "== pass 1: SQLite + local blobs, hf_xet, jobs on the local executor =="
KEEPHUB_TEST_DATABASE=sqlite KEEPHUB_TEST_BLOBS=local KEEPHUB_TEST_XET=on KEEPHUB_TEST_EXECUTOR=local \
    .venv/bin/python -m pytest "$@" || status=$?
echo "== pass 2: PostgreSQL + S3 (SeaweedFS), HF_HUB_DISABLE_XET=1 (git-lfs), jobs on Slurm =="
KEEPHUB_TEST_DATABASE=postgres KEEPHUB_TEST_BLOBS=s3 KEEPHUB_TEST_XET=off KEEPHUB_TEST_EXECUTOR=slurm \
    KEEPHUB_TEST_SKIP_ONCE=1 .venv/bin/python -m pytest "$@" || status=$?
exit "$status"
