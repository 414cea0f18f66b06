"""Small parity items (issue 19, item 5) through the real client: likes, collections, gated repos."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError


@pytest.fixture(scope="module")
def alice(server) -> tuple[str, str]:
    return server.user()


@pytest.fixture(scope="module")
def bob(server) -> tuple[str, str]:
    return server.user()


@pytest.fixture(scope="module")
def api(server, alice: tuple[str, str]) -> HfApi:
    return HfApi(endpoint=server.url, token=alice[1])


def new_repo(api: HfApi, owner: str, private: bool = False, repo_type: str = "model") -> str:
    repo_id = f"{owner}/r-{uuid.uuid4().hex[:8]}"
    api.create_repo(repo_id, private=private, repo_type=repo_type)
    return repo_id


def test_likes(server, api: HfApi, alice, bob) -> None:
    model, dataset = new_repo(api, alice[0]), new_repo(api, alice[0], repo_type="dataset")
    hidden = new_repo(api, alice[0], private=True)
    for repo_type, repo_id in (("models", model), ("datasets", dataset), ("models", hidden)):
        # The client has no like(): the Hub takes likes from its pages. This is what they send.
        liked = httpx.post(f"{server.url}/api/{repo_type}/{repo_id}/like", headers={"authorization": f"Bearer {alice[1]}"})
        assert liked.status_code == 200, liked.text
    httpx.post(f"{server.url}/api/models/{model}/like", headers={"authorization": f"Bearer {alice[1]}"})  # twice: once
    likes = api.list_liked_repos()
    assert set(likes.models) == {model, hidden} and likes.datasets == [dataset] and likes.total == 3
    assert api.model_info(model).likes == 1
    assert [u.username for u in api.list_repo_likers(model)] == [alice[0]]
    # Others see alice's likes of repos they may read only.
    assert set(HfApi(endpoint=server.url, token=bob[1]).list_liked_repos(alice[0]).models) == {model}
    api.unlike(model)
    api.unlike(model)
    assert api.model_info(model).likes == 0 and api.list_liked_repos().models == [hidden]
    anonymous = httpx.post(f"{server.url}/api/models/{model}/like")
    assert anonymous.status_code == 401
    missing = httpx.post(f"{server.url}/api/models/{model}-gone/like", headers={"authorization": f"Bearer {alice[1]}"})
    assert missing.status_code == 404 and missing.headers["x-error-code"] == "RepoNotFound"


def test_collections(server, api: HfApi, alice, bob) -> None:
    model, dataset = new_repo(api, alice[0]), new_repo(api, alice[0], repo_type="dataset")
    hidden = new_repo(api, alice[0], private=True)
    title = f"Checkpoints {uuid.uuid4().hex[:6]}"
    collection = api.create_collection(title, description="what we trained")
    assert collection.slug.startswith(f"{alice[0]}/checkpoints-") and collection.items == []
    assert api.create_collection(title, exists_ok=True).slug == collection.slug

    api.add_collection_item(collection.slug, model, "model", note="the best one")
    api.add_collection_item(collection.slug, dataset, "dataset")
    api.add_collection_item(collection.slug, hidden, "model")
    api.add_collection_item(collection.slug, model, "model", exists_ok=True)
    with pytest.raises(HfHubHTTPError) as twice:
        api.add_collection_item(collection.slug, model, "model")
    assert twice.value.response.status_code == 409
    got = api.get_collection(collection.slug)
    assert [(i.item_id, i.item_type, i.note) for i in got.items] == [
        (model, "model", "the best one"), (dataset, "dataset", None), (hidden, "model", None)]

    # bob sees the public collection without alice's private repo, and cannot change it.
    as_bob = HfApi(endpoint=server.url, token=bob[1])
    assert [i.item_id for i in as_bob.get_collection(collection.slug).items] == [model, dataset]
    with pytest.raises(HfHubHTTPError) as refused:
        as_bob.delete_collection_item(collection.slug, got.items[0].item_object_id)
    assert refused.value.response.status_code == 403

    assert [c.slug for c in api.list_collections(owner=alice[0])] == [collection.slug]
    assert [c.slug for c in api.list_collections(item=f"datasets/{dataset}")] == [collection.slug]
    api.delete_collection_item(collection.slug, got.items[1].item_object_id)
    api.delete_collection_item(collection.slug, got.items[1].item_object_id, missing_ok=True)
    assert [i.item_id for i in api.get_collection(collection.slug).items] == [model, hidden]
    api.delete_repo(model)
    assert [i.item_id for i in api.get_collection(collection.slug).items] == [hidden]

    private = api.create_collection(f"Private {uuid.uuid4().hex[:6]}", private=True)
    with pytest.raises(HfHubHTTPError) as unseen:
        as_bob.get_collection(private.slug)
    assert unseen.value.response.status_code == 404
    api.delete_collection(collection.slug)
    api.delete_collection(collection.slug, missing_ok=True)
    assert [c.slug for c in api.list_collections(owner=alice[0])] == [private.slug]


def test_collection_bad_input_changes_nothing(server, api: HfApi, alice) -> None:
    collection = api.create_collection(f"Bad {uuid.uuid4().hex[:6]}")
    before = {c.slug for c in api.list_collections(owner=alice[0])}
    auth = {"authorization": f"Bearer {alice[1]}"}
    base = f"{server.url}/api/collections"
    for url, body, status, text in (
        (base, {}, 400, "title"),
        (base, {"title": "x" * 61}, 400, "limit is 60"),
        (base, {"title": "t", "private": "yes"}, 400, "'private'"),
        (base, {"title": "t", "namespace": "no-such-org-here"}, 404, "does not exist"),
        (f"{base}/{collection.slug}/items", {"item": {"id": "x/y", "type": "paper"}}, 400, "cannot be collected"),
        (f"{base}/{collection.slug}/items", {"item": "alice/x"}, 400, "name the item"),
        (f"{base}/{collection.slug}/items", {"item": {"id": f"{alice[0]}/nope", "type": "model"}}, 404, "not found"),
        (f"{base}/{alice[0]}/nope-0123456789abcdef01234567/items", {"item": {"id": "a/b", "type": "model"}}, 404,
         "not found"),
    ):
        answer = httpx.post(url, json=body, headers=auth)
        assert answer.status_code == status and text in answer.json()["error"], (url, body, answer.text)
    assert api.get_collection(collection.slug).items == []
    assert {c.slug for c in api.list_collections(owner=alice[0])} == before


def test_collection_metadata_and_items_updated(server, bob) -> None:
    owner, token = server.user()
    api = HfApi(endpoint=server.url, token=token)
    first, second, third = (new_repo(api, owner) for _ in range(3))
    other = api.create_collection(f"Other {uuid.uuid4().hex[:6]}")
    collection = api.create_collection(f"Runs {uuid.uuid4().hex[:6]}")
    for repo in (first, second, third):
        api.add_collection_item(collection.slug, repo, "model")
    updated = api.update_collection_metadata(collection.slug, title="Best runs", description="picked",
                                             private=True, theme="pink", position=0)
    assert (updated.title, updated.description, updated.private, updated.theme) == ("Best runs", "picked", True,
                                                                                      "pink")
    assert updated.slug.startswith(f"{owner}/best-runs-") and updated.position == 0
    assert api.get_collection(other.slug).position == 1
    with pytest.raises(HfHubHTTPError) as hidden:
        HfApi(endpoint=server.url, token=bob[1]).get_collection(updated.slug)
    assert hidden.value.response.status_code == 404

    items = api.get_collection(updated.slug).items
    api.update_collection_item(updated.slug, items[2].item_object_id, note="the final one", position=0)
    api.update_collection_item(updated.slug, items[0].item_object_id, position=99)  # past the end: last
    moved = api.get_collection(updated.slug).items
    assert [(i.item_id, i.note, i.position) for i in moved] == [(third, "the final one", 0), (second, None, 1),
                                                                (first, None, 2)]
    api.update_collection_item(updated.slug, moved[0].item_object_id, note="")
    assert api.get_collection(updated.slug).items[0].note is None

    auth = {"authorization": f"Bearer {token}"}
    base = f"{server.url}/api/collections/{updated.slug}"
    item = f"{base}/items/{moved[1].item_object_id}"
    for url, body, status, text in (
        (base, {}, 400, "nothing to change"),
        (base, {"upvotes": 5}, 400, "cannot change 'upvotes'"),
        (base, {"title": "x" * 61}, 400, "limit is 60"),
        (base, {"title": other.title}, 409, "already has a collection"),
        (base, {"private": "no"}, 400, "'private'"),
        (base, {"theme": "<b>"}, 400, "'theme'"),
        (base, {"position": -1}, 400, "'position'"),
        (base, {"description": "d" * 151}, 400, "limit is 150"),
        (item, {"note": "n" * 501}, 400, "limit is 500"),
        (item, {"position": "first"}, 400, "'position'"),
        (f"{base}/items/12345678", {"note": "x"}, 404, "not in this collection"),
    ):
        answer = httpx.patch(url, json=body, headers=auth)
        assert answer.status_code == status and text in answer.json()["error"], (url, body, answer.text)
    refused = httpx.patch(item, json={"note": "mine"}, headers={"authorization": f"Bearer {bob[1]}"})
    assert refused.status_code == 404  # private: bob cannot see it, let alone change it
    api.update_collection_metadata(updated.slug, private=False)
    refused = httpx.patch(item, json={"note": "mine"}, headers={"authorization": f"Bearer {bob[1]}"})
    assert refused.status_code == 403
    after = api.get_collection(updated.slug)
    assert (after.title, after.description, after.theme) == ("Best runs", "picked", "pink")
    assert [(i.item_id, i.note) for i in after.items] == [(third, None), (second, None), (first, None)]


def test_gated_repo_with_manual_and_auto_approval(server, api: HfApi, alice, bob, tmp_path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError

    repo = new_repo(api, alice[0])
    weights = os.urandom(300_000)
    api.upload_file(path_or_fileobj=b"# Card\n", path_in_repo="README.md", repo_id=repo)
    api.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id=repo)
    bob_auth = {"authorization": f"Bearer {bob[1]}"}
    cas_token = httpx.get(f"{server.url}/api/models/{repo}/xet-read-token/main", headers=bob_auth).json()
    api.update_repo_settings(repo, gated="manual")
    as_bob = HfApi(endpoint=server.url, token=bob[1])
    assert as_bob.model_info(repo).gated == "manual"
    # A CAS read token bob got before the repo was gated no longer reads it.
    reconstruction = httpx.get(f"{cas_token['casUrl']}/v1/reconstructions/{'0' * 64}",
                               headers={"authorization": f"Bearer {cas_token['accessToken']}"})
    assert reconstruction.status_code == 403 and "restricted" in reconstruction.json()["error"]
    gated_token = httpx.get(f"{server.url}/api/models/{repo}/xet-read-token/main", headers=bob_auth)
    assert gated_token.status_code == 403 and gated_token.headers["x-error-code"] == "GatedRepo"

    def download(token: str, path: str) -> bytes:
        return Path(hf_hub_download(repo, path, token=token, cache_dir=tmp_path / uuid.uuid4().hex)).read_bytes()

    assert download(bob[1], "README.md") == b"# Card\n"  # the card stays readable
    with pytest.raises(GatedRepoError):
        download(bob[1], "model.safetensors")
    assert download(alice[1], "model.safetensors") == weights  # its own namespace is never gated

    ask = f"{server.url}/api/models/{repo}/ask-access"
    asked = httpx.post(ask, json={"fields": {"purpose": "research"}}, headers={"authorization": f"Bearer {bob[1]}"})
    assert asked.status_code == 200 and asked.json()["status"] == "pending"
    with pytest.raises(GatedRepoError):
        download(bob[1], "model.safetensors")
    pending = api.list_pending_access_requests(repo)
    assert [(r.username, r.fields) for r in pending] == [(bob[0], {"purpose": "research"})]
    api.accept_access_request(repo, bob[0])
    assert download(bob[1], "model.safetensors") == weights
    assert [r.username for r in api.list_accepted_access_requests(repo)] == [bob[0]]
    api.reject_access_request(repo, bob[0], rejection_reason="done")
    with pytest.raises(GatedRepoError):
        download(bob[1], "model.safetensors")
    carol = server.user()
    api.grant_access(repo, carol[0])
    assert download(carol[1], "model.safetensors") == weights
    with pytest.raises(HfHubHTTPError) as twice:
        api.grant_access(repo, carol[0])
    assert twice.value.response.status_code == 409

    api.update_repo_settings(repo, gated="auto")
    dave = server.user()
    auto = httpx.post(ask, headers={"authorization": f"Bearer {dave[1]}"})
    assert auto.json()["status"] == "accepted" and download(dave[1], "model.safetensors") == weights
    api.update_repo_settings(repo, gated=False)
    assert as_bob.model_info(repo).gated is False and download(bob[1], "model.safetensors") == weights


def test_gating_bad_input_changes_nothing(server, api: HfApi, alice, bob) -> None:
    repo = new_repo(api, alice[0])
    auth = {"authorization": f"Bearer {alice[1]}"}
    base = f"{server.url}/api/models/{repo}"
    for call, status, text in (
        (lambda: httpx.put(f"{base}/settings", json={"gated": "sometimes"}, headers=auth), 400, "invalid 'gated'"),
        (lambda: httpx.post(f"{base}/ask-access", headers={"authorization": f"Bearer {bob[1]}"}), 400, "not gated"),
        (lambda: httpx.post(f"{base}/user-access-request/grant", json={"user": bob[0]}, headers=auth), 400,
         "not gated"),
    ):
        answer = call()
        assert answer.status_code == status and text in answer.json()["error"], answer.text
    api.update_repo_settings(repo, gated="manual")
    for body, status, text in (
        ({"user": bob[0], "status": "maybe"}, 400, "'status'"),
        ({"user": "no-such-user-here", "status": "accepted"}, 404, "no user"),
        ({"user": bob[0], "status": "accepted"}, 404, "no access request"),
        ({"status": "accepted"}, 400, "'user'"),
    ):
        answer = httpx.post(f"{base}/user-access-request/handle", json=body, headers=auth)
        assert answer.status_code == status and text in answer.json()["error"], answer.text
    with pytest.raises(HfHubHTTPError) as not_writer:
        list(HfApi(endpoint=server.url, token=bob[1]).list_pending_access_requests(repo))
    assert not_writer.value.response.status_code == 403
    assert list(api.list_accepted_access_requests(repo)) == [] and api.model_info(repo).gated == "manual"
