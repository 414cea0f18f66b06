"""Repos, commits and downloads through the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def test_whoami_names_user_and_token_role(api: HfApi, alice) -> None:
    me = api.whoami()
    assert me["name"] == alice[0]
    assert me["auth"]["accessToken"]["role"] == "write"


def test_create_repo_twice_conflicts_unless_exist_ok(api: HfApi, alice) -> None:
    repo = f"{alice[0]}/twice"
    url = api.create_repo(repo)
    assert url.repo_id == repo
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo(repo)
    assert info.value.response.status_code == 409
    assert api.create_repo(repo, exist_ok=True).repo_id == repo


def test_upload_and_download_regular_and_lfs_files(api: HfApi, repo_id: str, tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024)
    api.upload_file(path_or_fileobj=b'{"a": 1}', path_in_repo="config.json", repo_id=repo_id)
    info = api.upload_file(path_or_fileobj=big, path_in_repo="weights/model.safetensors", repo_id=repo_id)
    assert len(info.oid) == 40
    files = api.list_repo_files(repo_id)
    assert set(files) == {".gitattributes", "config.json", "weights/model.safetensors"}
    path = hf_hub_download(repo_id, "weights/model.safetensors", cache_dir=tmp_path)
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == hashlib.sha256(big).hexdigest()
    assert Path(hf_hub_download(repo_id, "config.json", cache_dir=tmp_path)).read_bytes() == b'{"a": 1}'
    meta = api.get_paths_info(repo_id, ["weights/model.safetensors"])[0]
    assert meta.lfs is not None and meta.lfs.sha256 == hashlib.sha256(big).hexdigest() and meta.size == len(big)


def test_commit_sha_is_a_real_git_commit_over_a_real_tree(api: HfApi, repo_id: str) -> None:
    from dulwich.objects import Blob

    info = api.upload_file(path_or_fileobj=b"hello\n", path_in_repo="hello.txt", repo_id=repo_id)
    entry = api.get_paths_info(repo_id, ["hello.txt"])[0]
    assert entry.blob_id == Blob.from_string(b"hello\n").id.decode()
    commits = api.list_repo_commits(repo_id)
    assert commits[0].commit_id == info.oid
    assert [c.title for c in commits] == ["Upload hello.txt with huggingface_hub", "initial commit"]


def test_snapshot_download_of_revision_and_tag(api: HfApi, repo_id: str, tmp_path: Path) -> None:
    api.upload_file(path_or_fileobj=b"v1", path_in_repo="f.txt", repo_id=repo_id)
    api.create_tag(repo_id, tag="v1")
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="f.txt", repo_id=repo_id)
    old = snapshot_download(repo_id, revision="v1", cache_dir=tmp_path)
    new = snapshot_download(repo_id, cache_dir=tmp_path)
    assert Path(old, "f.txt").read_bytes() == b"v1"
    assert Path(new, "f.txt").read_bytes() == b"v2"


def test_branches_with_slashes_and_refs(api: HfApi, repo_id: str, tmp_path: Path) -> None:
    api.create_branch(repo_id, branch="rescue/job-1")
    api.upload_file(path_or_fileobj=b"partial", path_in_repo="ckpt.txt", repo_id=repo_id, revision="rescue/job-1")
    refs = api.list_repo_refs(repo_id)
    assert {b.name for b in refs.branches} == {"main", "rescue/job-1"}
    assert "ckpt.txt" not in api.list_repo_files(repo_id)
    assert "ckpt.txt" in api.list_repo_files(repo_id, revision="rescue/job-1")
    path = hf_hub_download(repo_id, "ckpt.txt", revision="rescue/job-1", cache_dir=tmp_path)
    assert Path(path).read_bytes() == b"partial"
    api.delete_branch(repo_id, branch="rescue/job-1")
    assert {b.name for b in api.list_repo_refs(repo_id).branches} == {"main"}


def test_delete_files_and_folders(api: HfApi, repo_id: str) -> None:
    api.create_commit(repo_id, commit_message="add", operations=[
        CommitOperationAdd("a/1.txt", b"1"), CommitOperationAdd("a/2.txt", b"2"), CommitOperationAdd("b.txt", b"b")])
    api.create_commit(repo_id, commit_message="del", operations=[CommitOperationDelete("a/"),
                                                                  CommitOperationDelete("b.txt")])
    assert api.list_repo_files(repo_id) == [".gitattributes"]
    with pytest.raises(EntryNotFoundError):
        api.delete_file("missing.txt", repo_id)


def test_errors_map_to_client_exceptions(api: HfApi, repo_id: str, alice, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(f"{alice[0]}/does-not-exist")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files(repo_id, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "nope.bin", cache_dir=tmp_path)


def test_private_repo_is_invisible_to_others(server, api: HfApi, alice) -> None:
    repo = f"{alice[0]}/secret-{uuid.uuid4().hex[:6]}"
    api.create_repo(repo, private=True)
    api.upload_file(path_or_fileobj=b"s", path_in_repo="s.txt", repo_id=repo)
    _, bob_token = server.user()
    bob = HfApi(endpoint=server.url, token=bob_token)
    anonymous = HfApi(endpoint=server.url, token=False)
    for other in (bob, anonymous):
        with pytest.raises(RepositoryNotFoundError):
            other.model_info(repo)
    assert api.model_info(repo).private is True
    api.update_repo_settings(repo, private=False)
    assert anonymous.model_info(repo).private is False


def test_write_without_access_is_403_naming_namespace(server, api: HfApi, repo_id: str) -> None:
    _, bob_token = server.user()
    bob = HfApi(endpoint=server.url, token=bob_token)
    with pytest.raises(HfHubHTTPError) as info:
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert info.value.response.status_code == 403
    assert repo_id.split("/")[0] in str(info.value)


def test_read_token_cannot_write(server, alice, repo_id: str) -> None:
    reader = HfApi(endpoint=server.url, token=server.token(alice[0], role="read"))
    assert reader.model_info(repo_id).id == repo_id
    with pytest.raises(HfHubHTTPError) as info:
        reader.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert info.value.response.status_code == 403 and "read-only" in str(info.value)


def test_move_and_delete_repo(api: HfApi, repo_id: str, alice) -> None:
    api.upload_file(path_or_fileobj=b"keep", path_in_repo="k.txt", repo_id=repo_id)
    target = f"{alice[0]}/moved-{uuid.uuid4().hex[:6]}"
    api.move_repo(repo_id, target)
    assert "k.txt" in api.list_repo_files(target)
    assert api.model_info(repo_id).id == target  # the old name redirects (tests/test_hub_gaps.py)
    api.delete_repo(target)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(target)


def test_dataset_repo_and_list_models(api: HfApi, alice) -> None:
    ds = f"{alice[0]}/data"
    api.create_repo(ds, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"x,y\n1,2\n", path_in_repo="train.csv", repo_id=ds, repo_type="dataset")
    assert "train.csv" in api.list_repo_files(ds, repo_type="dataset")
    api.create_repo(f"{alice[0]}/m1")
    assert [m.id for m in api.list_models(author=alice[0])] == [f"{alice[0]}/m1"]
