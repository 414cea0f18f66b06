"""Storage a repo holds, and getting it back (issue 19, item 3): list_lfs_files, permanently_delete_lfs_files,
super_squash_history, and `keephub gc` freeing the bytes, through the real client, in both Xet modes."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import own_server, stored_blobs
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import BadRequestError, EntryNotFoundError, HfHubHTTPError, RevisionNotFoundError

from keephub.devserver import LocalServer, keephub_cli


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A server of the module's own whose gc has no grace period, so what these tests free is freed at once."""
    yield from own_server(tmp_path_factory, "storage", {"KEEPHUB_XET_GC_GRACE_SECONDS": "0"})


@pytest.fixture(scope="module")
def owner(hub: LocalServer) -> tuple[str, str]:
    return hub.user()


@pytest.fixture(scope="module")
def api(hub: LocalServer, owner: tuple[str, str]) -> HfApi:
    return HfApi(endpoint=hub.url, token=owner[1])


@pytest.fixture
def repo(api: HfApi, owner: tuple[str, str]) -> str:
    repo_id = f"{owner[0]}/ckpts-{uuid.uuid4().hex[:8]}"
    api.create_repo(repo_id)
    return repo_id


def stored_bytes(hub: LocalServer) -> int:
    """What the blob stores hold: git-lfs objects and xorbs."""
    return sum(stored_blobs(hub, "lfs").values()) + sum(stored_blobs(hub, "xorbs").values())


def gc(hub: LocalServer) -> str:
    return keephub_cli(hub.data_dir, "gc")


def test_permanently_deleted_lfs_files_are_gone_and_gc_frees_their_bytes(hub: LocalServer, api: HfApi, owner,
                                                                         repo: str, tmp_path: Path) -> None:
    kept, dropped, shared = os.urandom(400_000), os.urandom(600_000), os.urandom(300_000)
    api.upload_file(path_or_fileobj=kept, path_in_repo="kept.bin", repo_id=repo)
    api.upload_file(path_or_fileobj=dropped, path_in_repo="ckpt/dropped.bin", repo_id=repo)
    api.upload_file(path_or_fileobj=shared, path_in_repo="shared.bin", repo_id=repo)
    other = f"{owner[0]}/other-{uuid.uuid4().hex[:6]}"
    api.create_repo(other)
    api.upload_file(path_or_fileobj=shared, path_in_repo="shared.bin", repo_id=other)

    files = {f.filename: f for f in api.list_lfs_files(repo)}
    assert set(files) == {"kept.bin", "ckpt/dropped.bin", "shared.bin"}
    assert files["ckpt/dropped.bin"].size == len(dropped) and files["ckpt/dropped.bin"].ref == "main"
    assert files["kept.bin"].oid == api.get_paths_info(repo, ["kept.bin"])[0].blob_id

    before = stored_bytes(hub)
    api.permanently_delete_lfs_files(repo, [files["ckpt/dropped.bin"], files["shared.bin"]])
    assert {f.filename for f in api.list_lfs_files(repo)} == {"kept.bin"}
    with pytest.raises(EntryNotFoundError, match="permanently deleted"):
        hf_hub_download(repo, "ckpt/dropped.bin", cache_dir=tmp_path / "a", token=owner[1], endpoint=hub.url)

    assert "removed" in gc(hub)
    freed = before - stored_bytes(hub)
    assert len(dropped) <= freed < len(dropped) + len(shared)  # the other repo still holds `shared`
    for repo_id, path, content in ((repo, "kept.bin", kept), (other, "shared.bin", shared)):
        got = hf_hub_download(repo_id, path, cache_dir=tmp_path / "b", token=owner[1], endpoint=hub.url)
        assert Path(got).read_bytes() == content


def test_super_squash_history_then_gc_frees_old_checkpoints(hub: LocalServer, api: HfApi, owner, repo: str,
                                                            tmp_path: Path) -> None:
    first = api.upload_file(path_or_fileobj=os.urandom(500_000), path_in_repo="model.safetensors", repo_id=repo)
    latest = os.urandom(500_000)
    api.upload_file(path_or_fileobj=latest, path_in_repo="model.safetensors", repo_id=repo)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo)
    assert len(api.list_repo_commits(repo)) == 4

    before = stored_bytes(hub)
    api.super_squash_history(repo, commit_message="one commit")
    commits = api.list_repo_commits(repo)
    assert [c.title for c in commits] == ["one commit"]
    assert set(api.list_repo_files(repo)) == {".gitattributes", "model.safetensors", "config.json"}
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo, revision=first.oid)

    gc(hub)
    assert before - stored_bytes(hub) >= 500_000
    assert {f.filename for f in api.list_lfs_files(repo)} == {"model.safetensors"}
    got = hf_hub_download(repo, "model.safetensors", cache_dir=tmp_path, token=owner[1], endpoint=hub.url)
    assert Path(got).read_bytes() == latest


def test_squash_keeps_what_other_refs_reach(hub: LocalServer, api: HfApi, owner, repo: str, tmp_path: Path) -> None:
    old = os.urandom(200_000)
    first = api.upload_file(path_or_fileobj=old, path_in_repo="w.bin", repo_id=repo)
    api.create_tag(repo, tag="v1", revision=first.oid)
    api.upload_file(path_or_fileobj=os.urandom(200_000), path_in_repo="w.bin", repo_id=repo)
    api.super_squash_history(repo)
    gc(hub)
    got = hf_hub_download(repo, "w.bin", revision="v1", cache_dir=tmp_path, token=owner[1], endpoint=hub.url)
    assert Path(got).read_bytes() == old
    assert api.model_info(repo, revision=first.oid).sha == first.oid


def test_bad_requests_change_nothing(hub: LocalServer, api: HfApi, owner, repo: str) -> None:
    api.upload_file(path_or_fileobj=os.urandom(100_000), path_in_repo="a.bin", repo_id=repo)
    files = list(api.list_lfs_files(repo))
    url = f"{hub.url}/api/models/{repo}/lfs-files/batch"
    auth = {"authorization": f"Bearer {owner[1]}"}
    for body, status, text in (
        ({}, 400, "deletions"),
        ({"deletions": {"sha": ["nope"]}}, 400, "not a sha256"),
        ({"deletions": {"sha": [files[0].file_oid, "0" * 64]}}, 404, "nothing was deleted"),
        ({"deletions": {"sha": [files[0].file_oid], "rewriteHistory": "yes"}}, 400, "rewriteHistory"),
    ):
        answer = httpx.post(url, json=body, headers=auth)
        assert answer.status_code == status and text in answer.json()["error"], answer.text
    assert [f.file_oid for f in api.list_lfs_files(repo)] == [files[0].file_oid]

    with pytest.raises(RevisionNotFoundError):
        api.super_squash_history(repo, branch="no-such-branch")
    api.create_tag(repo, tag="v1")
    with pytest.raises(BadRequestError, match="not a branch"):
        api.super_squash_history(repo, branch="v1")
    reader = HfApi(endpoint=hub.url, token=hub.token(owner[0], role="read"))
    with pytest.raises(HfHubHTTPError) as refused:
        reader.super_squash_history(repo)
    assert refused.value.response.status_code == 403
    assert len(api.list_repo_commits(repo)) == 2
