"""git's smart HTTP protocol with the real `git` and `git-lfs`: clone, fetch, pull and push of public and private
repos, the same objects as the Hub API on both sides, and pushes refused through git's own error channel."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import SESSION_DIR
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

GIT_HOME = SESSION_DIR / "git-home"


@pytest.fixture(scope="module")
def git_env() -> dict[str, str]:
    """git with a home of its own: no user config, git-lfs's filters installed, never a password prompt."""
    GIT_HOME.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(GIT_HOME), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
           "GIT_AUTHOR_NAME": "Alice", "GIT_AUTHOR_EMAIL": "alice@example.com", "GIT_COMMITTER_NAME": "Alice",
           "GIT_COMMITTER_EMAIL": "alice@example.com", "GIT_LFS_SKIP_SMUDGE": "0"}
    subprocess.run(["git", "lfs", "install", "--skip-repo"], env=env, check=True, capture_output=True)
    subprocess.run(["git", "config", "--global", "init.defaultBranch", "main"], env=env, check=True)
    return env


def git(env: dict[str, str], *args: str, cwd: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    if ok and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def with_token(url: str, token: str) -> str:
    return url.replace("http://", f"http://user:{token}@")


def test_clone_pull_and_push_share_objects_with_the_api(server, api: HfApi, alice, repo_id: str, git_env,
                                                        tmp_path: Path) -> None:
    """A repo built through the API clones whole (large files through `git lfs pull`, Xet uploads included), sees
    later API commits, branches and tags on fetch, and what git pushes the API reads byte for byte."""
    weights = os.urandom(300_000)
    api.upload_file(path_or_fileobj=b"# card\n", path_in_repo="README.md", repo_id=repo_id)
    api.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id=repo_id)
    api.create_branch(repo_id, branch="rescue/job-1")
    api.create_tag(repo_id, tag="v1")
    url = f"{server.url}/{repo_id}"

    clone = tmp_path / "clone"
    git(git_env, "clone", url, str(clone))
    assert (clone / "README.md").read_bytes() == b"# card\n"
    assert (clone / "model.safetensors").read_bytes() == weights  # smudged through the LFS batch API
    assert git(git_env, "rev-parse", "HEAD", cwd=clone).stdout.strip() == api.repo_info(repo_id).sha
    tags = git(git_env, "ls-remote", "--tags", "--heads", url).stdout
    assert "refs/heads/rescue/job-1" in tags and "refs/tags/v1" in tags

    shallow = tmp_path / "shallow"
    git({**git_env, "GIT_LFS_SKIP_SMUDGE": "1"}, "clone", "--depth", "1", url, str(shallow))
    assert git(git_env, "rev-list", "--count", "HEAD", cwd=shallow).stdout.strip() == "1"
    assert (shallow / "model.safetensors").read_bytes().startswith(b"version https://git-lfs.github.com/spec/v1")
    git(git_env, "lfs", "pull", cwd=shallow)
    assert (shallow / "model.safetensors").read_bytes() == weights

    api.upload_file(path_or_fileobj=b"later\n", path_in_repo="notes/later.txt", repo_id=repo_id)
    git(git_env, "pull", cwd=clone)
    assert (clone / "notes" / "later.txt").read_bytes() == b"later\n"
    git(git_env, "fetch", "origin", "rescue/job-1", cwd=shallow)

    pushing = tmp_path / "pushing"
    git(git_env, "clone", with_token(url, alice[1]), str(pushing))
    hook = api.create_webhook(url="http://127.0.0.1:9/hook", watched=[{"type": "model", "name": repo_id}],
                              domains=["repo"])
    (pushing / "README.md").write_bytes(b"# fixed card\n\nwith \x00 bytes and all\n")
    checkpoint = os.urandom(200_000)
    (pushing / "ckpt").mkdir()
    (pushing / "ckpt" / "optimizer.pt").write_bytes(checkpoint)  # *.pt is tracked by LFS in every new repo
    git(git_env, "add", "-A", cwd=pushing)
    git(git_env, "commit", "-m", "Fix the card, add a checkpoint", cwd=pushing)
    before_push = api.repo_info(repo_id).sha
    git(git_env, "push", "origin", "main", cwd=pushing)
    head = git(git_env, "rev-parse", "HEAD", cwd=pushing).stdout.strip()
    assert api.list_repo_commits(repo_id)[0].commit_id == head
    assert Path(hf_hub_download(repo_id, "README.md", revision=head)).read_bytes() == \
        (pushing / "README.md").read_bytes()
    assert Path(hf_hub_download(repo_id, "ckpt/optimizer.pt", revision=head)).read_bytes() == checkpoint
    info = api.get_paths_info(repo_id, ["ckpt/optimizer.pt"], revision=head)[0]
    assert info.lfs is not None and info.lfs.sha256 == hashlib.sha256(checkpoint).hexdigest()

    git(git_env, "push", "origin", "HEAD:refs/heads/from-git", cwd=pushing)
    assert "from-git" in [b.name for b in api.list_repo_refs(repo_id).branches]
    log = httpx.get(f"{server.url}/api/settings/webhooks/{hook.id}/deliveries", auth=("user", alice[1])).json()
    pushed_refs = [d["payload"]["updatedRefs"] for d in log if d["payload"]["event"]["scope"] == "repo.content"]
    updated = [ref for refs in pushed_refs for ref in refs]
    assert {"ref": "refs/heads/main", "oldSha": before_push, "newSha": head} in updated
    assert any(ref["ref"] == "refs/heads/from-git" and ref["oldSha"] is None for ref in updated)


def objects_in_packs(env: dict[str, str], clone: Path) -> int:
    counts = dict(line.split(": ") for line in git(env, "count-objects", "-v", cwd=clone).stdout.splitlines())
    return int(counts["in-pack"]) + int(counts["count"])


def test_packs_hold_what_the_client_lacks(server, api: HfApi, repo_id: str, git_env, tmp_path: Path) -> None:
    """Clone and fetch packs, written from the database: a history of nested folders clones whole and passes `git
    fsck`, the same again once its pack entries are cached; a fetch (negotiated over several rounds) receives only
    the objects the new commit added; a shallow clone deepens (--depth) and unshallows; a partial clone's pack
    (dulwich's own upload-pack) leaves the files out."""
    for number in range(20):  # more than git_pack reads one by one before it reads all of a repo's commits at once
        api.create_commit(repo_id, commit_message=f"change {number}", operations=[
            CommitOperationAdd(f"data/part-{number % 2}/file-{number}.txt", f"file {number}\n".encode()),
            CommitOperationAdd("notes.md", f"notes {number}\n".encode())])
    url = f"{server.url}/{repo_id}"
    commits = len(api.list_repo_commits(repo_id))

    for name in ("cold", "cached"):  # the second clone reads its pack entries from the cache the first filled
        clone = tmp_path / name
        git(git_env, "clone", url, str(clone))
        git(git_env, "fsck", "--full", "--strict", cwd=clone)
        assert int(git(git_env, "rev-list", "--count", "HEAD", cwd=clone).stdout) == commits
        assert (clone / "data" / "part-1" / "file-3.txt").read_text() == "file 3\n"

    for number in range(40):  # local commits keephub does not know: git sends its `have` lines over several rounds
        git(git_env, "commit", "-q", "--allow-empty", "-m", f"local {number}", cwd=clone)
    before = objects_in_packs(git_env, clone)
    api.upload_file(path_or_fileobj=b"deep\n", path_in_repo="data/part-0/deep/new.txt", repo_id=repo_id)
    git(git_env, "fetch", cwd=clone)
    git(git_env, "fsck", "--full", "--strict", cwd=clone)
    assert objects_in_packs(git_env, clone) - before == 6  # a commit, 4 trees (root to deep/) and the new file

    shallow = tmp_path / "shallow"
    git(git_env, "clone", "--depth", "1", url, str(shallow))
    assert git(git_env, "rev-list", "--count", "HEAD", cwd=shallow).stdout.strip() == "1"
    git(git_env, "fetch", "--depth", "3", cwd=shallow)
    assert git(git_env, "rev-list", "--count", "HEAD", cwd=shallow).stdout.strip() == "3"
    git(git_env, "fetch", "--unshallow", cwd=shallow)
    assert int(git(git_env, "rev-list", "--count", "HEAD", cwd=shallow).stdout) == commits + 1
    git(git_env, "fsck", "--full", "--strict", cwd=shallow)

    partial = tmp_path / "partial"
    git(git_env, "clone", "--filter=blob:none", "--no-checkout", url, str(partial))
    listed = git(git_env, "rev-list", "--objects", "--missing=print", "HEAD", cwd=partial).stdout.splitlines()
    everything = git(git_env, "rev-list", "--objects", "--all", cwd=clone).stdout.splitlines()
    kinds = subprocess.run(["git", "cat-file", "--batch-check=%(objecttype)"], cwd=clone, env=git_env, check=True,
                           capture_output=True, text=True, input="".join(f"{line[:40]}\n" for line in everything))
    assert sum(line.startswith("?") for line in listed) == kinds.stdout.split().count("blob")  # every file left out


def test_private_repo_needs_the_token(server, api: HfApi, alice, git_env, tmp_path: Path) -> None:
    """Without a token a private repo is a 401 with git's realm, the same as a repo that does not exist; with the
    token as the password (in the URL or from a credential helper) it clones."""
    repo_id = f"{alice[0]}/private-{uuid.uuid4().hex[:8]}"
    api.create_repo(repo_id, private=True)
    api.upload_file(path_or_fileobj=b"secret\n", path_in_repo="secret.txt", repo_id=repo_id)
    url = f"{server.url}/{repo_id}"
    private = httpx.get(f"{url}/info/refs?service=git-upload-pack")
    missing = httpx.get(f"{server.url}/{alice[0]}/no-such-repo/info/refs?service=git-upload-pack")
    assert private.status_code == missing.status_code == 401
    assert private.headers["www-authenticate"].startswith('Basic realm="keephub"')
    assert private.text == missing.text and "secret" not in private.text
    refused = git(git_env, "clone", url, str(tmp_path / "anonymous"), ok=False)
    assert refused.returncode != 0 and "secret.txt" not in refused.stderr

    git(git_env, "clone", with_token(url, alice[1]), str(tmp_path / "in-url"))
    assert (tmp_path / "in-url" / "secret.txt").read_bytes() == b"secret\n"

    store = tmp_path / "credentials"
    store.write_text(with_token(server.url, alice[1]) + "\n")
    helper = {**git_env, "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "credential.helper",
              "GIT_CONFIG_VALUE_0": f"store --file={store}"}
    git(helper, "clone", url, str(tmp_path / "helper"))
    assert (tmp_path / "helper" / "secret.txt").read_bytes() == b"secret\n"

    reader = server.token(alice[0], role="read")
    (tmp_path / "helper" / "more.txt").write_text("more\n")
    git(git_env, "add", "more.txt", cwd=tmp_path / "helper")
    git(git_env, "commit", "-m", "more", cwd=tmp_path / "helper")
    denied = git(git_env, "push", with_token(url, reader), "main", cwd=tmp_path / "helper", ok=False)
    assert denied.returncode != 0 and "403" in denied.stderr
    git(helper, "push", "origin", "main", cwd=tmp_path / "helper")
    assert api.hf_hub_download(repo_id, "more.txt") and api.list_repo_commits(repo_id)[0].title == "more"

    dataset = f"{alice[0]}/data-{uuid.uuid4().hex[:8]}"
    api.create_repo(dataset, repo_type="dataset", private=True)
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="train.csv", repo_id=dataset, repo_type="dataset")
    git(helper, "clone", f"{server.url}/datasets/{dataset}.git", str(tmp_path / "dataset"))
    assert (tmp_path / "dataset" / "train.csv").read_bytes() == b"a,b\n1,2\n"


def test_bad_pushes_are_refused_and_store_nothing(server, api: HfApi, alice, repo_id: str, git_env,
                                                  tmp_path: Path) -> None:
    """Each bad push is refused through git's report with a reason naming the problem; the branch stays put."""
    url = with_token(f"{server.url}/{repo_id}", alice[1])
    work = tmp_path / "work"
    git(git_env, "clone", url, str(work))
    start = api.repo_info(repo_id).sha

    def refused(*push_args: str) -> str:
        result = git(git_env, "push", *push_args, cwd=work, ok=False)
        assert result.returncode != 0, result.stderr
        assert api.repo_info(repo_id).sha == start
        return result.stderr

    (work / "big.txt").write_bytes(b"x" * (10 * 1024 * 1024 + 1))
    git(git_env, "add", "big.txt", cwd=work)
    git(git_env, "commit", "-m", "too big", cwd=work)
    too_big = refused("origin", "main")
    assert "over the 10485760-byte limit" in too_big and "git lfs track" in too_big

    git(git_env, "reset", "--hard", start, cwd=work)
    oid = hashlib.sha256(b"never uploaded").hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize 14\n"
    (work / "ghost.txt").write_text(pointer)
    git(git_env, "add", "ghost.txt", cwd=work)
    git(git_env, "commit", "-m", "pointer to nothing", cwd=work)
    assert "was never uploaded" in refused("origin", "main")

    git(git_env, "reset", "--hard", start, cwd=work)
    (work / "new.txt").write_text("new\n")
    git(git_env, "add", "new.txt", cwd=work)
    git(git_env, "commit", "-m", "to odd refs", cwd=work)
    assert "pull requests" in refused("origin", "HEAD:refs/pr/1")
    assert "branches (refs/heads/*) and tags" in refused("origin", "HEAD:refs/notes/x")

    git(git_env, "push", "origin", "main", cwd=work)
    pushed = api.repo_info(repo_id).sha
    git(git_env, "reset", "--hard", start, cwd=work)
    (work / "other.txt").write_text("other\n")
    git(git_env, "add", "other.txt", cwd=work)
    git(git_env, "commit", "-m", "rewrites main", cwd=work)
    start = pushed
    assert "non-fast-forward" in refused("--force", "origin", "main")
    assert "cannot be deleted" in refused("origin", ":main")
    settings = f"{server.url}/api/models/{repo_id}/settings"
    assert httpx.put(settings, json={"allowForcePush": "yes"}, auth=("user", alice[1])).status_code == 400
    assert httpx.put(settings, json={"allowForcePush": True}, auth=("user", alice[1])).status_code == 200
    git(git_env, "push", "--force", "origin", "main", cwd=work)
    rewritten = git(git_env, "rev-parse", "HEAD", cwd=work).stdout.strip()
    assert api.repo_info(repo_id).sha == rewritten
    assert rewritten in {commit.commit_id for commit in api.list_repo_commits(repo_id)}
    start = pushed = rewritten

    corrupt = receive_pack(server.url, repo_id, alice[1], f"{pushed} {'1' * 40} refs/heads/main",
                           b"PACK\x00\x00\x00\x02\x00\x00\x00\x01garbage")
    assert b"unpack the pushed pack is corrupt" in corrupt and b"ng refs/heads/main unpacker error" in corrupt
    empty_pack = b"PACK\x00\x00\x00\x02\x00\x00\x00\x00"
    odd_name = receive_pack(server.url, repo_id, alice[1], f"{'0' * 40} {pushed} refs/heads/a..b",
                            empty_pack + hashlib.sha1(empty_pack).digest())
    assert b"ng refs/heads/a..b" in odd_name and b"contains '..'" in odd_name
    assert api.repo_info(repo_id).sha == pushed
    assert [b.name for b in api.list_repo_refs(repo_id).branches] == ["main"]


def receive_pack(endpoint: str, repo_id: str, token: str, command: str, pack: bytes) -> bytes:
    """What git-receive-pack answers to one ref update and a pack, sent as git would but with any bytes."""
    line = f"{command}\0report-status\n".encode()
    answer = httpx.post(f"{endpoint}/{repo_id}/git-receive-pack", auth=("user", token),
                        content=f"{len(line) + 4:04x}".encode() + line + b"0000" + pack,
                        headers={"Content-Type": "application/x-git-receive-pack-request"})
    assert answer.status_code == 200
    return answer.content
