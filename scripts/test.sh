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
#
# The passes share nothing (each starts its own servers on free loopback ports in its own temporary
# directories), so they run side by side: most of a test's time is spent waiting on servers and jobs, and two
# passes at once take little longer than one. Each pass's output goes to its own log, printed whole when both
# have ended; KEEPHUB_TEST_SEQUENTIAL=1 runs them one after the other with live output instead.
# Both passes always run; the command fails if either does.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

pass1() {
    KEEPHUB_TEST_DATABASE=sqlite KEEPHUB_TEST_BLOBS=local KEEPHUB_TEST_XET=on KEEPHUB_TEST_EXECUTOR=local \
        .venv/bin/python -m pytest "$@"
}
pass2() {
    KEEPHUB_TEST_DATABASE=postgres KEEPHUB_TEST_BLOBS=s3 KEEPHUB_TEST_XET=off KEEPHUB_TEST_EXECUTOR=slurm \
        KEEPHUB_TEST_SKIP_ONCE=1 .venv/bin/python -m pytest "$@"
}
title1="pass 1: SQLite + local blobs, hf_xet, jobs on the local executor"
title2="pass 2: PostgreSQL + S3 (SeaweedFS), HF_HUB_DISABLE_XET=1 (git-lfs), jobs on Slurm"

status1=0
status2=0
if [[ "${KEEPHUB_TEST_SEQUENTIAL:-}" == 1 ]]; then
    echo "== $title1 =="
    pass1 "$@" || status1=$?
    echo "== $title2 =="
    pass2 "$@" || status2=$?
else
    logs=$(mktemp -d "${TMPDIR:-/tmp}/keephub-test-logs.XXXXXX")
    trap 'rm -rf "$logs"' EXIT
    echo "== running both passes side by side (logs in $logs) =="
    pass1 "$@" >"$logs/pass1.log" 2>&1 &
    pid1=$!
    pass2 "$@" >"$logs/pass2.log" 2>&1 &
    pid2=$!
    wait "$pid1" || status1=$?
    wait "$pid2" || status2=$?
    echo "== $title1 =="
    cat "$logs/pass1.log"
    echo "== $title2 =="
    cat "$logs/pass2.log"
    echo "== summary =="
    echo "$title1: $(tail -n 1 "$logs/pass1.log")"
    echo "$title2: $(tail -n 1 "$logs/pass2.log")"
    grep -h '^FAILED\|^ERROR' "$logs/pass1.log" "$logs/pass2.log" || true
fi
echo "pass 1 exit $status1, pass 2 exit $status2"
((status1 == 0 && status2 == 0))
