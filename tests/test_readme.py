"""The README's quickstart, run as a newcomer would copy it: every fenced bash and python block, in order, in one
shell, against a live keephub, so that the README cannot drift from what works.

Convention: a block right after the HTML comment `<!-- readme-test: skip (why) -->` is not run (the set-up line,
starting the server, a whole training run); the comment does not show on the rendered page. Python blocks run as
`python - <<'EOF'` in the same shell. The README's address 127.0.0.1:8080 is replaced with the test server's, and
its data directory with the server's (the `keephub` admin commands act on it). The shell starts in a copy of the
repository's top level (links to its files), so what the snippets create stays out of the checkout, and with a
home of its own (no git or hf configuration), git's identity given as a developer's would be.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from huggingface_hub import HfApi

from keephub.devserver import LocalServer as Server

# The quickstart names the embedded default; the other passes' backends are covered by the hub tests themselves.
pytestmark = pytest.mark.once

REPO_ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"(?P<marker><!-- readme-test: skip[^>]*-->\s*\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)```", re.DOTALL)


def runnable_script(readme: str, endpoint: str) -> str:
    """One bash script of the README's runnable blocks, in order."""
    parts = ["set -euo pipefail"]
    for block in _BLOCK.finditer(readme):
        if block["marker"] or block["lang"] not in ("bash", "python"):
            continue
        body = block["body"]
        if block["lang"] == "python":
            body = f"python - <<'PYTHON'\n{body}PYTHON\n"
        parts.append(f"echo '--- README block ---'\n{body}")
    return "\n".join(parts).replace("http://127.0.0.1:8080", endpoint).replace("127.0.0.1:8080",
                                                                              endpoint.removeprefix("http://"))


def test_quickstart_runs_as_written(server: Server, tmp_path: Path) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    script = runnable_script(readme, server.url)
    assert "keephub user create alice" in script and "hf upload alice/my-model" in script
    assert "git clone" in script
    # The shell's checkout links to this one (its .venv included): scripts that install must never run here.
    assert "scripts/" not in script, "mark the set-up and run.sh blocks <!-- readme-test: skip (...) -->"
    work = tmp_path / "checkout"
    work.mkdir()
    for entry in REPO_ROOT.iterdir():
        if entry.name not in (".git", "keephub-data"):
            (work / entry.name).symlink_to(entry)
    if not (work / ".venv").exists():  # a checkout whose tests run from a virtualenv elsewhere (a git worktree)
        (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "KEEPHUB_", "GIT_"))}
    env.update(server.env)
    env.update(HOME=str(home), KEEPHUB_DATA_DIR=str(server.data_dir), GIT_TERMINAL_PROMPT="0",
               HF_HUB_DISABLE_TELEMETRY="1", GIT_AUTHOR_NAME="Alice", GIT_AUTHOR_EMAIL="alice@example.com",
               GIT_COMMITTER_NAME="Alice", GIT_COMMITTER_EMAIL="alice@example.com")
    result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert '"model_type": "bert"' in result.stdout
    files = HfApi(endpoint=server.url).list_repo_files("alice/my-model")
    assert {"config.json", "README.md"} <= set(files), "the git push of the model card landed"
