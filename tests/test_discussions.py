"""Pull requests and discussions through the real huggingface_hub client: `create_pr=True` commits read back at
`refs/pr/N` (resolve, tree, snapshot_download, HfFileSystem), merges (fast-forward, merge commit, conflicts),
the discussion events, who may do what, and bad input refused with nothing changed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest
from conftest import Server
from huggingface_hub import CommitOperationAdd, HfApi, HfFileSystem, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError


def status_of(call, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(HfHubHTTPError) as info:
        call(*args, **kwargs)
    return info.value.response.status_code


def commit_file(api: HfApi, repo: str, path: str, content: bytes, **kwargs):  # type: ignore[no-untyped-def]
    return api.create_commit(repo, [CommitOperationAdd(path, content)], commit_message=f"write {path}", **kwargs)


def test_pull_request_from_create_pr_is_readable_at_its_ref_and_merges(api: HfApi, repo_id: str,
                                                                       tmp_path: Path) -> None:
    weights = os.urandom(2 * 1024 * 1024)
    info = api.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id=repo_id,
                           create_pr=True, commit_message="New weights", commit_description="From step 100")
    assert info.pr_revision == "refs/pr/1" and info.pr_num == 1 and info.pr_url.endswith("/discussions/1")
    assert "model.safetensors" not in api.list_repo_files(repo_id)
    assert "model.safetensors" in api.list_repo_files(repo_id, revision="refs/pr/1")
    path = hf_hub_download(repo_id, "model.safetensors", revision="refs/pr/1", cache_dir=tmp_path)
    assert hashlib.sha256(Path(path).read_bytes()).digest() == hashlib.sha256(weights).digest()
    snapshot = snapshot_download(repo_id, revision="refs/pr/1", cache_dir=tmp_path / "snap")
    assert Path(snapshot, "model.safetensors").read_bytes() == weights
    assert HfFileSystem(token=api.token).cat_file(f"{repo_id}@refs/pr/1/model.safetensors") == weights
    refs = api.list_repo_refs(repo_id, include_pull_requests=True)
    assert [r.ref for r in refs.pull_requests] == ["refs/pr/1"] and [b.name for b in refs.branches] == ["main"]

    pr = api.get_discussion_details(repo_id, 1)
    assert (pr.is_pull_request, pr.status, pr.title, pr.target_branch) == (True, "open", "New weights",
                                                                           "refs/heads/main")
    assert [e.type for e in pr.events] == ["comment", "commit"] and pr.events[0].content == "From step 100"
    assert pr.events[1].oid == info.oid and "model.safetensors" in pr.diff and pr.conflicting_files == []
    assert [d.num for d in api.get_repo_discussions(repo_id, discussion_type="pull_request")] == [1]

    api.merge_pull_request(repo_id, 1, comment="Ship it")
    assert api.list_repo_commits(repo_id)[0].commit_id == info.oid  # a fast-forward
    merged = api.get_discussion_details(repo_id, 1)
    assert merged.status == "merged" and merged.merge_commit_oid == info.oid
    assert [e.type for e in merged.events][-2:] == ["comment", "status-change"]
    assert status_of(api.merge_pull_request, repo_id, 1) == 409
    assert status_of(api.change_discussion_status, repo_id, 1, new_status="closed") == 409


def test_merge_makes_a_merge_commit_or_refuses_files_changed_on_both_sides(api: HfApi, repo_id: str) -> None:
    commit_file(api, repo_id, "shared.txt", b"base\n")
    pr = commit_file(api, repo_id, "from-pr.txt", b"pr\n", create_pr=True)
    main = commit_file(api, repo_id, "from-main.txt", b"main\n")
    api.merge_pull_request(repo_id, pr.pr_num)
    head = api.list_repo_commits(repo_id)[0]
    assert head.commit_id not in (pr.oid, main.oid) and head.title.startswith("Merge refs/pr/1")
    assert {"from-pr.txt", "from-main.txt", "shared.txt"} <= set(api.list_repo_files(repo_id))

    clash = commit_file(api, repo_id, "shared.txt", b"pr side\n", create_pr=True)
    commit_file(api, repo_id, "shared.txt", b"main side\n")
    before = api.list_repo_commits(repo_id)[0].commit_id
    with pytest.raises(HfHubHTTPError) as info:
        api.merge_pull_request(repo_id, clash.pr_num)
    assert info.value.response.status_code == 409 and "shared.txt" in str(info.value)
    assert api.get_discussion_details(repo_id, clash.pr_num).conflicting_files == ["shared.txt"]
    assert api.list_repo_commits(repo_id)[0].commit_id == before
    # The author resolves on the PR's own ref; then it merges.
    commit_file(api, repo_id, "shared.txt", b"main side\n", revision=clash.pr_revision)
    commit_file(api, repo_id, "extra.txt", b"more\n", revision=clash.pr_revision)
    assert [e.type for e in api.get_discussion_details(repo_id, clash.pr_num).events].count("commit") == 3
    api.merge_pull_request(repo_id, clash.pr_num)
    assert "extra.txt" in api.list_repo_files(repo_id)


def test_discussions_comments_and_who_may_do_what(server: Server, api: HfApi, repo_id: str, alice) -> None:
    bob_name, bob_token = server.user()
    bob = HfApi(endpoint=server.url, token=bob_token)
    opened = bob.create_discussion(repo_id, "Typo in the card", description="Line 3")
    assert (opened.num, opened.is_pull_request, opened.status, opened.author) == (1, False, "open", bob_name)
    comment = bob.comment_discussion(repo_id, 1, "Also line 4")
    edited = bob.edit_discussion_comment(repo_id, 1, comment.id, "Also line 5")
    assert edited.edited and edited.content == "Also line 5"
    assert status_of(api.edit_discussion_comment, repo_id, 1, comment.id, "mine now") == 403
    hidden = api.hide_discussion_comment(repo_id, 1, comment.id)  # a writer of the repo moderates
    assert hidden.hidden and hidden.content == ""
    assert bob.rename_discussion(repo_id, 1, "Typos in the card").new_title == "Typos in the card"
    assert api.change_discussion_status(repo_id, 1, "closed", comment="Fixed").new_status == "closed"
    assert bob.change_discussion_status(repo_id, 1, "open").new_status == "open"
    details = api.get_discussion_details(repo_id, 1)
    assert [e.type for e in details.events] == ["comment", "comment", "title-change", "comment", "status-change",
                                                "status-change"]
    assert details.title == "Typos in the card" and details.events[1].hidden

    draft = bob.create_pull_request(repo_id, "Better defaults")
    assert (draft.num, draft.status, draft.git_reference) == (2, "draft", "refs/pr/2")
    assert status_of(bob.merge_pull_request, repo_id, 2) == 403  # merging needs write access
    assert status_of(api.merge_pull_request, repo_id, 2) == 400  # refs/pr/2 holds nothing new yet
    assert [d.num for d in api.get_repo_discussions(repo_id, author=bob_name)] == [2, 1]
    assert [d.num for d in api.get_repo_discussions(repo_id, discussion_type="discussion")] == [1]

    reader = HfApi(endpoint=server.url, token=server.token(bob_name, role="read"))
    assert status_of(reader.create_discussion, repo_id, "read-only") == 403
    assert reader.get_discussion_details(repo_id, 1).num == 1
    assert status_of(HfApi(endpoint=server.url, token=False).create_discussion, repo_id, "anonymous") == 401
    api.update_repo_settings(repo_id, private=True)
    with pytest.raises(RepositoryNotFoundError):
        bob.get_discussion_details(repo_id, 1)
    with pytest.raises(RepositoryNotFoundError):
        bob.create_discussion(repo_id, "still there?")


def test_a_reader_opens_a_pull_request_with_files_and_commits_nowhere_else(server: Server, api: HfApi, repo_id: str,
                                                                            tmp_path: Path) -> None:
    """As on the Hub: read access and a write token of one's own suffice to propose files (regular and LFS, through
    Xet or git-lfs) in a pull request and to add commits to it; merging, and every other ref, need write access."""
    _, bob_token = server.user()
    bob = HfApi(endpoint=server.url, token=bob_token)
    weights, more_weights = os.urandom(1024 * 1024), os.urandom(512 * 1024)
    opened = bob.create_commit(repo_id, [CommitOperationAdd("notes.md", b"# Notes\n"),
                                         CommitOperationAdd("model.safetensors", weights)],
                               commit_message="Add weights", create_pr=True)
    assert opened.pr_revision == "refs/pr/1"
    assert api.list_repo_files(repo_id) == [".gitattributes"]
    path = hf_hub_download(repo_id, "model.safetensors", revision="refs/pr/1", cache_dir=tmp_path, token=bob_token)
    assert Path(path).read_bytes() == weights
    bob.upload_file(path_or_fileobj=more_weights, path_in_repo="more.safetensors", repo_id=repo_id,
                    revision="refs/pr/1")
    assert "more.safetensors" in bob.list_repo_files(repo_id, revision="refs/pr/1")

    api.create_branch(repo_id, branch="side")
    others = api.create_pull_request(repo_id, "Alice's own")
    for revision in ("main", "side", others.git_reference):
        assert status_of(commit_file, bob, repo_id, "x.txt", b"x", revision=revision) == 403
        assert status_of(bob.upload_file, path_or_fileobj=os.urandom(2048), path_in_repo="x.bin", repo_id=repo_id,
                         revision=revision) == 403
    bob_auth = {"authorization": f"Bearer {bob_token}"}
    batch = {"operation": "upload", "objects": [{"oid": "a" * 64, "size": 1}], "ref": {"name": "main"}}
    assert httpx.post(f"{server.url}/{repo_id}.git/info/lfs/objects/batch", json=batch,
                      headers=bob_auth).status_code == 403
    assert httpx.get(f"{server.url}/api/models/{repo_id}/xet-write-token/main", headers=bob_auth).status_code == 403

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    closed = bob.upload_folder(folder_path=folder, repo_id=repo_id, create_pr=True)
    api.change_discussion_status(repo_id, closed.pr_num, "closed")
    assert status_of(commit_file, bob, repo_id, "late.txt", b"late", revision=closed.pr_revision) == 403

    assert status_of(bob.merge_pull_request, repo_id, 1) == 403
    api.merge_pull_request(repo_id, 1)
    assert api.list_repo_files(repo_id) == [".gitattributes", "model.safetensors", "more.safetensors", "notes.md"]
    assert hf_hub_download(repo_id, "more.safetensors", cache_dir=tmp_path / "main", token=bob_token)
    merged = api.get_discussion_details(repo_id, 1)
    assert merged.status == "merged" and "+# Notes" in merged.diff and "model.safetensors" in merged.diff
    with pytest.raises(HfHubHTTPError) as refused:
        api.delete_branch(repo_id, branch="refs/pr/1")
    assert refused.value.response.status_code == 400 and "close the pull request" in str(refused.value)
    assert "notes.md" in api.list_repo_files(repo_id, revision="refs/pr/1")

    moved = f"{repo_id}-moved"
    api.move_repo(repo_id, moved)  # discussions under the old name follow the move, as the other routes do
    bob.comment_discussion(repo_id, 1, "Thanks")
    assert api.get_discussion_details(repo_id, 1).events[-1].content == "Thanks"
    assert [d.num for d in api.get_repo_discussions(moved)] == [3, 2, 1]


def test_bad_input_is_refused_naming_the_problem_and_changes_nothing(server: Server, api: HfApi, repo_id: str,
                                                                     alice) -> None:
    api.create_discussion(repo_id, "First")
    base = f"{server.url}/api/models/{repo_id}/discussions"
    auth = {"Authorization": f"Bearer {alice[1]}"}

    def post(path: str, **kwargs: object) -> httpx.Response:
        return httpx.post(base + path, headers=auth, timeout=30, **kwargs)  # type: ignore[arg-type]

    refused = [
        (post("", content=b"{not json"), 400, "not valid JSON"),
        (post("", json={"title": ""}), 400, "'title'"),
        (post("", json={"title": "x" * 201}), 400, "at most 200"),
        (post("", json={"title": "ok", "pullRequest": "yes"}), 400, "'pullRequest'"),
        (post("/1/comment", json={"comment": "x" * 70_000}), 413, "over the limit"),
        (post("/1/comment", json={}), 400, "'comment'"),
        (post("/1/status", json={"status": "merged"}), 400, "merge_pull_request"),
        (post("/1/comment/ffffffffffffffffffffffff/hide"), 404, "no comment"),
        (post("/7/comment", json={"comment": "hello"}), 404, "#7"),
        (post("/abc/comment", json={"comment": "hello"}), 404, "number"),
        (post("/1/merge"), 400, "not a pull request"),
    ]
    for response, status, words in refused:
        assert response.status_code == status and words in response.json()["error"], response.text
    assert status_of(api.get_discussion_details, repo_id, 7) == 404
    api.change_discussion_status(repo_id, 1, "closed")
    pr = commit_file(api, repo_id, "a.txt", b"a", create_pr=True)
    api.change_discussion_status(repo_id, pr.pr_num, "closed")
    response = post(f"/{pr.pr_num}/merge")
    assert response.status_code == 409 and "reopen" in response.json()["error"]
    assert "a.txt" not in api.list_repo_files(repo_id)
    details = api.get_discussion_details(repo_id, 1)
    assert (details.title, [e.type for e in details.events]) == ("First", ["comment", "status-change"])
    assert len(list(api.get_repo_discussions(repo_id))) == 2

