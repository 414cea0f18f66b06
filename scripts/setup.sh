#!/usr/bin/env bash
# Set up everything keephub needs on a fresh Debian machine: system packages (bubblewrap, Slurm, munge,
# PostgreSQL, git, git-lfs, Chromium, nginx),
# a virtualenv with the pinned CPU torch first (so nothing pulls CUDA builds), then keephub and the training
# stack.
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${KEEPHUB_VENV:-.venv}"

need_apt=()
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
# Slurm (controller, node daemon, client commands) and munge: the Slurm executor's tests start a throwaway
# one-machine cluster with them.
for cmd in slurmctld slurmd sbatch; do
    command -v "$cmd" >/dev/null 2>&1 || { need_apt+=(slurm-wlm); break; }
done
command -v munged >/dev/null 2>&1 || need_apt+=(munge)
# Chromium: the browser tests drive it with Playwright (tests/test_pages_browser.py).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# git and git-lfs: the git smart HTTP tests clone, pull and push with the real commands.
command -v git >/dev/null 2>&1 || need_apt+=(git)
command -v git-lfs >/dev/null 2>&1 || need_apt+=(git-lfs)
# PostgreSQL: the tests' PostgreSQL pass (and tests/test_postgres.py) initdb a throwaway cluster with it.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)
# nginx: benchmarks/peers_bench.py measures downloads against it serving the same bytes from a plain file.
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing ${need_apt[*]} with apt-get"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: please install ${need_apt[*]} (sudo apt-get install ${need_apt[*]})" >&2
        exit 1
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
stamp="$VENV/.keephub-setup"
fingerprint="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ]; then
    exit 0
fi
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing torch==2.13.0 (CPU build)"
    "${PIP[@]}" install "torch==2.13.0"
fi
echo "setup: installing keephub with the training and test extras"
"${PIP[@]}" install -e ".[train,test]" 2>&1 | grep -v -e "^WARNING: Location" -e "^ *$" || true
"$VENV/bin/python" -c "import keephub, huggingface_hub, transformers, trl, torch" 
echo "$fingerprint" > "$stamp"
echo "setup: done ($("$VENV/bin/python" -c 'import torch, transformers, trl, huggingface_hub as h; print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, huggingface_hub {h.__version__}")'))"
