"""What keephub keeps between requests never outlives the truth: a revoked token, a repo made private, a changed
role or a new commit counts from the very next request, through the real huggingface_hub client.

Each test first makes the same calls once, so anything a server could have cached is warm before the change."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import Server
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

from keephub.devserver import keephub_cli


def revoke_in_settings_page(server: Server, signed_in_with: str, token_name: str) -> None:
    """Revoke a token as its owner does: sign in to the web pages with another token and press Revoke."""
    with httpx.Client(base_url=server.url, follow_redirects=True) as browser:
        form_token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/login").text).group(1)
        browser.post("/login", data={"csrf_token": form_token, "username": "", "password": "",
                                     "token": signed_in_with, "next": "/settings/tokens"}).raise_for_status()
        page = browser.get("/settings/tokens").text
        row = re.search(rf"<tr><td>{token_name}</td>.*?action=\"(/settings/tokens/\d+/revoke)\".*?"
                        r'name="csrf_token" value="([^"]+)"', page, re.DOTALL)
        assert row is not None, f"no Revoke button for {token_name} on the tokens page"
        browser.post(row.group(1), data={"csrf_token": row.group(2)}).raise_for_status()


def test_a_revoked_token_is_refused_on_the_very_next_request(server: Server, alice: tuple[str, str],
                                                            api: HfApi) -> None:
    name, token = alice
    doomed_name = f"doomed-{uuid.uuid4().hex[:6]}"
    doomed = keephub_cli(server.data_dir, "token", "create", name, "--name", doomed_name, "--role", "write",
                         "--quiet").strip()
    repo = api.create_repo(f"{name}/kept-{uuid.uuid4().hex[:6]}", private=True).repo_id
    doomed_api = HfApi(endpoint=server.url, token=doomed)
    assert doomed_api.whoami()["name"] == name and doomed_api.model_info(repo).id == repo

    revoke_in_settings_page(server, token, doomed_name)

    with pytest.raises(HfHubHTTPError) as refused:
        doomed_api.whoami()
    assert refused.value.response.status_code == 401
    assert "revoked" in refused.value.response.json()["error"]
    with pytest.raises(HfHubHTTPError) as refused:
        doomed_api.model_info(repo)
    assert refused.value.response.status_code == 401
    assert api.whoami()["name"] == name, "the token used to sign in still works"


def test_a_repo_made_private_is_hidden_from_others_on_the_very_next_request(server: Server, api: HfApi,
                                                                           repo_id: str) -> None:
    api.upload_file(path_or_fileobj=b"weights", path_in_repo="model.bin", repo_id=repo_id)
    _, other_token = server.user()
    other = HfApi(endpoint=server.url, token=other_token)
    assert "model.bin" in other.list_repo_files(repo_id) and other.model_info(repo_id).id == repo_id
    other.get_paths_info(repo_id, ["model.bin"])
    head = httpx.head(f"{server.url}/{repo_id}/resolve/main/model.bin",
                      headers={"authorization": f"Bearer {other_token}"})
    assert head.status_code in (200, 302), "served, or sent to the S3 store holding it"

    api.update_repo_settings(repo_id, private=True)

    for call in (lambda: other.model_info(repo_id), lambda: other.list_repo_files(repo_id),
                 lambda: other.get_paths_info(repo_id, ["model.bin"])):
        with pytest.raises(RepositoryNotFoundError):
            call()
    head = httpx.head(f"{server.url}/{repo_id}/resolve/main/model.bin",
                      headers={"authorization": f"Bearer {other_token}"})
    assert head.status_code == 404
    assert api.model_info(repo_id).private is True, "the owner still sees it"


def test_a_changed_role_counts_on_the_very_next_request(server: Server, alice: tuple[str, str]) -> None:
    owner, _ = alice
    member, member_token = server.user()
    org = f"org-{uuid.uuid4().hex[:6]}"
    keephub_cli(server.data_dir, "org", "create", org, "--owner", owner)
    keephub_cli(server.data_dir, "org", "add-member", org, member, "--role", "read")
    as_member = HfApi(endpoint=server.url, token=member_token)
    assert {o["name"]: o["roleInOrg"] for o in as_member.whoami()["orgs"]} == {org: "read"}
    with pytest.raises(HfHubHTTPError) as refused:
        as_member.create_repo(f"{org}/by-member")
    assert refused.value.response.status_code == 403

    keephub_cli(server.data_dir, "org", "add-member", org, member, "--role", "write")

    assert {o["name"]: o["roleInOrg"] for o in as_member.whoami()["orgs"]} == {org: "write"}
    repo = as_member.create_repo(f"{org}/by-member").repo_id
    as_member.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)

    keephub_cli(server.data_dir, "org", "add-member", org, member, "--role", "read")

    with pytest.raises(HfHubHTTPError) as refused:
        as_member.upload_file(path_or_fileobj=b"y", path_in_repo="y.txt", repo_id=repo)
    assert refused.value.response.status_code == 403


def test_a_new_commit_is_seen_by_the_very_next_call(server: Server, api: HfApi, repo_id: str, tmp_path: Path) -> None:
    api.create_commit(repo_id, [CommitOperationAdd("README.md", b"---\nlicense: mit\n---\n# first\n")]
                      + [CommitOperationAdd(f"data/{i}.txt", f"{i}".encode()) for i in range(20)],
                      commit_message="first")
    first = api.model_info(repo_id)
    assert first.card_data.license == "mit" and "data/19.txt" in [s.rfilename for s in first.siblings]
    assert len(api.list_repo_files(repo_id)) == len(first.siblings)
    assert [f.path for f in api.list_repo_tree(repo_id, "data")][:1] == ["data/0.txt"]
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "data/new.txt", endpoint=server.url, token=api.token, cache_dir=tmp_path)

    head = httpx.head(f"{server.url}/{repo_id}/resolve/main/data/0.txt", headers={"authorization": f"Bearer {api.token}"})
    assert head.headers["content-length"] == "1"

    second = api.create_commit(repo_id, [CommitOperationAdd("README.md", b"---\nlicense: apache-2.0\n---\n"),
                                         CommitOperationAdd("data/new.txt", b"new"),
                                         CommitOperationAdd("data/0.txt", b"changed")], commit_message="second")

    info = api.model_info(repo_id)
    assert info.sha == second.oid and info.card_data.license == "apache-2.0" and len(info.siblings) == len(first.siblings) + 1
    assert "data/new.txt" in api.list_repo_files(repo_id)
    assert "data/new.txt" in [f.path for f in api.list_repo_tree(repo_id, "data")]
    assert [p.path for p in api.get_paths_info(repo_id, ["data/new.txt"])] == ["data/new.txt"]
    assert [p.size for p in api.get_paths_info(repo_id, ["data/0.txt"])] == [len(b"changed")]
    head = httpx.head(f"{server.url}/{repo_id}/resolve/main/data/0.txt", headers={"authorization": f"Bearer {api.token}"})
    assert head.headers["x-repo-commit"] == second.oid and head.headers["content-length"] == str(len(b"changed"))
    path = hf_hub_download(repo_id, "data/new.txt", endpoint=server.url, token=api.token, cache_dir=tmp_path)
    assert Path(path).read_bytes() == b"new"
    assert api.model_info(repo_id, revision=first.sha).card_data.license == "mit", "the old commit is unchanged"


def test_likes_and_a_gate_count_on_the_very_next_request(server: Server, api: HfApi, repo_id: str) -> None:
    """model_info reads the repo, its likes and its gate in one query; each change shows at once."""
    api.upload_file(path_or_fileobj=b"weights", path_in_repo="model.bin", repo_id=repo_id)
    _, other_token = server.user()
    other = HfApi(endpoint=server.url, token=other_token)
    info = other.model_info(repo_id)
    assert info.likes == 0 and info.gated is False
    head = httpx.head(f"{server.url}/{repo_id}/resolve/main/model.bin", headers={"authorization": f"Bearer {other_token}"})
    assert head.status_code in (200, 302)

    liked = httpx.post(f"{server.url}/api/models/{repo_id}/like", headers={"authorization": f"Bearer {other_token}"})
    assert liked.status_code == 200, liked.text
    api.update_repo_settings(repo_id, gated="manual")

    info = other.model_info(repo_id)
    assert info.likes == 1 and info.gated == "manual"
    head = httpx.head(f"{server.url}/{repo_id}/resolve/main/model.bin", headers={"authorization": f"Bearer {other_token}"})
    assert head.status_code == 403 and head.headers["x-error-code"] == "GatedRepo"
