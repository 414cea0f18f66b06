"""Gaps the real clients hit (issue 19, item 4), each through the client that hit it."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import httpx
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    ModelCard,
    hf_hub_download,
)
from huggingface_hub.errors import (
    BadRequestError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from keephub.devserver import keephub_cli


@pytest.fixture(scope="module")
def alice(server) -> tuple[str, str]:
    """One user for the module (each test makes repos of its own): creating users is the slow part."""
    return server.user()


@pytest.fixture(scope="module")
def api(server, alice: tuple[str, str]) -> HfApi:
    return HfApi(endpoint=server.url, token=alice[1])


def test_nested_folders_list_through_list_repo_tree_and_hf_file_system(server, api: HfApi, alice,
                                                                        repo_id: str) -> None:
    api.upload_file(path_or_fileobj=b"x", path_in_repo="a/b/c.txt", repo_id=repo_id)
    # The client quotes the whole folder path: /tree/main/a%2Fb.
    assert [f.path for f in api.list_repo_tree(repo_id, path_in_repo="a/b")] == ["a/b/c.txt"]
    fs = HfFileSystem(endpoint=server.url, token=alice[1])
    assert fs.ls(f"{repo_id}/a/b", detail=False) == [f"{repo_id}/a/b/c.txt"]
    assert fs.ls(f"{repo_id}/a", detail=False) == [f"{repo_id}/a/b"]


def test_upload_folder_skips_what_gitignore_excludes(api: HfApi, repo_id: str, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    (folder / "logs").mkdir(parents=True)
    (folder / ".gitignore").write_text("*.tmp\nlogs/\n!keep.tmp\n")
    (folder / "model.txt").write_text("weights")
    (folder / "scratch.tmp").write_text("scratch")
    (folder / "keep.tmp").write_text("kept")
    (folder / "logs" / "run.log").write_text("log")
    api.upload_folder(repo_id=repo_id, folder_path=folder)
    assert set(api.list_repo_files(repo_id)) == {".gitattributes", ".gitignore", "model.txt", "keep.tmp"}

    # Later uploads without a .gitignore of their own follow the one the branch holds.
    later = tmp_path / "later"
    later.mkdir()
    (later / "other.tmp").write_text("scratch")
    (later / "notes.md").write_text("notes")
    api.upload_folder(repo_id=repo_id, folder_path=later)
    assert "other.tmp" not in api.list_repo_files(repo_id) and "notes.md" in api.list_repo_files(repo_id)


def test_commit_of_regular_files_over_64_mib(api: HfApi, repo_id: str, tmp_path: Path) -> None:
    """Text files under the LFS threshold travel base64 inside the commit body, which a 64 MiB cap refused."""
    folder = tmp_path / "tokenizers"
    folder.mkdir()
    contents = {f"part-{n}.json": os.urandom(4 * 1024 * 1024).hex().encode() for n in range(6)}  # 48 MiB as text
    for name, content in contents.items():
        (folder / name).write_bytes(content)
    api.upload_folder(repo_id=repo_id, folder_path=folder)
    info = {entry.path: entry for entry in api.list_repo_tree(repo_id)}
    for name, content in contents.items():
        assert info[name].lfs is None and info[name].size == len(content)
    path = hf_hub_download(repo_id, "part-5.json", cache_dir=tmp_path / "cache")
    assert hashlib.sha256(Path(path).read_bytes()).digest() == hashlib.sha256(contents["part-5.json"]).digest()


def test_repo_ids_without_namespace_are_not_found(api: HfApi) -> None:
    assert api.repo_exists("gpt2") is False
    assert api.file_exists("gpt2", "config.json") is False
    assert api.repo_exists("squad", repo_type="dataset") is False
    with pytest.raises(RepositoryNotFoundError, match="namespace/name"):
        api.model_info("gpt2")


def test_repo_ids_ignore_case(api: HfApi, alice, repo_id: str, tmp_path: Path) -> None:
    api.upload_file(path_or_fileobj=b"hi", path_in_repo="f.txt", repo_id=repo_id)
    shouted = repo_id.upper()
    assert api.model_info(shouted).id == repo_id
    assert Path(hf_hub_download(shouted, "f.txt", cache_dir=tmp_path)).read_bytes() == b"hi"
    api.upload_file(path_or_fileobj=b"ho", path_in_repo="g.txt", repo_id=shouted)
    assert "g.txt" in api.list_repo_files(repo_id)
    with pytest.raises(HfHubHTTPError) as taken:
        api.create_repo(shouted)
    assert taken.value.response.status_code == 409
    assert api.create_repo(shouted, exist_ok=True).repo_id == repo_id


def test_old_name_after_move_redirects(api: HfApi, alice, repo_id: str, tmp_path: Path) -> None:
    api.upload_file(path_or_fileobj=b"v1", path_in_repo="f.txt", repo_id=repo_id)
    new_id = f"{alice[0]}/renamed-{uuid.uuid4().hex[:6]}"
    api.move_repo(repo_id, new_id)
    assert api.model_info(repo_id).id == new_id
    assert Path(hf_hub_download(repo_id, "f.txt", cache_dir=tmp_path)).read_bytes() == b"v1"
    # Writes to the old name land in the renamed repo (307 keeps the method and the body).
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="f.txt", repo_id=repo_id)
    assert Path(hf_hub_download(new_id, "f.txt", cache_dir=tmp_path / "2")).read_bytes() == b"v2"
    # Whoever may not read the repo learns nothing from its old name.
    stranger = HfApi(endpoint=api.endpoint, token=None)
    api.update_repo_settings(new_id, private=True)
    with pytest.raises(RepositoryNotFoundError):
        stranger.model_info(repo_id)
    # A new repo under the old name takes it over.
    api.create_repo(repo_id)
    assert api.model_info(repo_id).id == repo_id


def test_short_commit_sha_as_revision(api: HfApi, repo_id: str, tmp_path: Path) -> None:
    first = api.upload_file(path_or_fileobj=b"one", path_in_repo="f.txt", repo_id=repo_id)
    api.upload_file(path_or_fileobj=b"two", path_in_repo="f.txt", repo_id=repo_id)
    assert api.model_info(repo_id, revision=first.oid[:7]).sha == first.oid
    path = hf_hub_download(repo_id, "f.txt", revision=first.oid[:10], cache_dir=tmp_path)
    assert Path(path).read_bytes() == b"one"
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo_id, revision="abcdef0")


def test_deleting_a_folder_named_without_trailing_slash(api: HfApi, repo_id: str) -> None:
    api.upload_file(path_or_fileobj=b"x", path_in_repo="ckpt/a.txt", repo_id=repo_id)
    api.create_commit(repo_id, operations=[CommitOperationDelete("ckpt")], commit_message="drop ckpt")
    assert api.list_repo_files(repo_id) == [".gitattributes"]


def test_create_tag_names_a_bad_tag_before_a_bad_revision(api: HfApi, repo_id: str) -> None:
    with pytest.raises(BadRequestError, match="invalid tag name"):
        api.create_tag(repo_id, tag="bad tag", revision="no-such-branch")
    api.create_tag(repo_id, tag="v1")
    api.create_tag(repo_id, tag="v1", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_tag(repo_id, tag="v1", revision="no-such-branch")
    assert exists.value.response.status_code == 409


def test_list_repo_commits_formatted(api: HfApi, repo_id: str) -> None:
    api.create_commit(repo_id, operations=[CommitOperationAdd("f.txt", b"x")], commit_message="Add <f> & more",
                      commit_description="Trained with **TRL**.")
    latest = api.list_repo_commits(repo_id, formatted=True)[0]
    assert latest.formatted_title == "Add &lt;f&gt; &amp; more"
    assert latest.formatted_message == "<p>Trained with <strong>TRL</strong>.</p>\n"
    assert api.list_repo_commits(repo_id)[0].formatted_title is None


def test_auth_check_reads_and_writes(server, api: HfApi, repo_id: str) -> None:
    api.auth_check(repo_id)
    api.auth_check(repo_id, write=True)
    reader = HfApi(endpoint=server.url, token=server.user(role="read")[1])
    reader.auth_check(repo_id)
    with pytest.raises(HfHubHTTPError) as refused:
        reader.auth_check(repo_id, write=True)
    assert refused.value.response.status_code == 403
    with pytest.raises(RepositoryNotFoundError):
        api.auth_check(f"{repo_id}-missing")


def test_validate_yaml_checks_model_card_metadata(api: HfApi, repo_id: str) -> None:
    good = ModelCard("---\nlicense: apache-2.0\ntags: [trl, sft]\nbase_model: alice/base\nmodel-index:\n"
                     "- name: m\n  results: []\n---\n# Model\n")
    good.validate()
    good.push_to_hub(repo_id, token=api.token)
    with pytest.raises(ValueError, match="'license' must be a string or a list of strings; 'pipeline_tag' must"):
        ModelCard("---\nlicense: {a: 1}\npipeline_tag: [a, b]\n---\n# x\n").validate()
    # The client's ModelCard cannot hold YAML it cannot parse; other writers of READMEs post such text.
    broken = httpx.post(f"{api.endpoint}/api/validate-yaml", json={"content": "---\nlicense: [x\n---\n"})
    assert broken.status_code == 400 and "not valid YAML" in broken.json()["error"]
    # Commits of a README.md ask first: the client lists the problems and commits nothing.
    with pytest.raises(ValueError, match="'pipeline_tag' must be a string"):
        api.upload_file(path_or_fileobj=b"---\npipeline_tag: [a]\n---\n", path_in_repo="README.md", repo_id=repo_id)
    assert api.list_repo_commits(repo_id)[0].title.startswith("Upload README.md")  # good's push, not this one
    deep = httpx.post(f"{api.endpoint}/api/validate-yaml", json={"content": "---\na: " + "[" * 3000 + "\n---\n"})
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]
    no_task = "---\nmodel-index:\n- name: m\n  results:\n  - dataset: {type: d, name: d}\n    metrics: []\n---\n"
    refused = httpx.post(f"{api.endpoint}/api/validate-yaml", json={"content": no_task, "repoType": "model"})
    assert refused.status_code == 400 and "model-index[0].results[0].task needs a 'type'" in refused.json()["error"]


def test_request_id_on_every_response(server, api: HfApi, repo_id: str) -> None:
    ok = httpx.get(f"{server.url}/api/models/{repo_id}")
    missing = httpx.get(f"{server.url}/api/models/{repo_id}-missing")
    unknown = httpx.get(f"{server.url}/no/such/endpoint/here")
    ids = [r.headers.get("x-request-id") for r in (ok, missing, unknown)]
    assert all(ids) and len(set(ids)) == 3
    assert httpx.get(f"{server.url}/api/models/{repo_id}", headers={"X-Request-Id": "trace-42"}
                     ).headers["x-request-id"] == "trace-42"
    with pytest.raises(RepositoryNotFoundError) as error:
        api.model_info(f"{repo_id}-missing")
    assert error.value.request_id and error.value.request_id in str(error.value)


def test_stale_parent_commit_gets_the_hubs_412_text(api: HfApi, repo_id: str) -> None:
    parent = api.model_info(repo_id).sha
    api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id=repo_id)
    with pytest.raises(HfHubHTTPError) as stale:
        api.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id=repo_id, parent_commit=parent)
    assert stale.value.response.status_code == 412
    assert "A commit has happened since. Please refresh and try again." in str(stale.value)


def test_organization_named_with_underscore(server, api: HfApi, alice) -> None:
    org = f"my_org_{uuid.uuid4().hex[:6]}"
    keephub_cli(server.data_dir, "org", "create", org, "--owner", alice[0])
    repo = f"{org}/model"
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b"x", path_in_repo="f.txt", repo_id=repo)
    assert api.file_exists(repo, "f.txt")
    assert org in [o["name"] for o in api.whoami()["orgs"]]
