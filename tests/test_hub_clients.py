"""The real clients a user points at keephub: HfFileSystem, datasets, transformers, the `hf` CLI, the pages.

Each test does what a user would do with the client and checks what that user would look at: the bytes,
the rows, the weights, the listing. Users are created once per module (each costs two CLI runs).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    HfFileSystem,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)


@pytest.fixture(scope="module")
def owner(server) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    return server.user()


@pytest.fixture(scope="module")
def hub(server, owner: tuple[str, str]) -> HfApi:  # type: ignore[no-untyped-def]
    return HfApi(endpoint=server.url, token=owner[1])


def new_repo(hub: HfApi, owner: tuple[str, str], prefix: str, **kwargs: Any) -> str:
    repo = f"{owner[0]}/{prefix}-{uuid.uuid4().hex[:8]}"
    hub.create_repo(repo, **kwargs)
    return repo


# -- 1. HfFileSystem ------------------------------------------------------------------------------------
def test_hf_file_system_lists_reads_ranges_and_writes(server, hub: HfApi, owner, tmp_path: Path) -> None:
    repo = new_repo(hub, owner, "fs")
    weights = os.urandom(3 * 1024 * 1024)
    hub.create_commit(repo, commit_message="weights and config", operations=[
        CommitOperationAdd("model/weights.safetensors", weights),
        CommitOperationAdd("model/config.json", b'{"hidden": 64}'),
        CommitOperationAdd("notes.txt", b"first notes\n"),
    ])
    fs = HfFileSystem(endpoint=server.url, token=owner[1], skip_instance_cache=True)

    assert fs.ls(repo, detail=False) == [f"{repo}/.gitattributes", f"{repo}/model", f"{repo}/notes.txt"]
    assert sorted(fs.ls(f"{repo}/model", detail=False)) == [f"{repo}/model/config.json",
                                                             f"{repo}/model/weights.safetensors"]
    assert fs.glob(f"{repo}/**/*.safetensors") == [f"{repo}/model/weights.safetensors"]
    assert fs.glob(f"{repo}/*.txt") == [f"{repo}/notes.txt"]

    info = fs.info(f"{repo}/model/weights.safetensors")
    assert info["type"] == "file" and info["size"] == len(weights)
    assert info["lfs"].sha256 == hashlib.sha256(weights).hexdigest()
    assert fs.info(f"{repo}/model")["type"] == "directory"
    assert fs.isdir(f"{repo}/model") and not fs.exists(f"{repo}/missing.txt")

    assert fs.read_text(f"{repo}/notes.txt") == "first notes\n"
    # A small block size makes the client fetch only the bytes asked for, with `Range: bytes=...`.
    with fs.open(f"{repo}/model/weights.safetensors", "rb", block_size=4096) as f:
        f.seek(2_000_000)
        middle = f.read(1000)
        f.seek(-10, 2)
        tail = f.read()
    assert middle == weights[2_000_000:2_001_000]
    assert tail == weights[-10:]

    with fs.open(f"{repo}/written.txt", "w") as f:
        f.write("via fsspec")
    local = tmp_path / "upload.bin"
    local.write_bytes(b"\x00\x01" * 5000)
    fs.put_file(str(local), f"{repo}/uploads/upload.bin")
    assert fs.cat(f"{repo}/written.txt") == b"via fsspec"
    assert fs.cat(f"{repo}/uploads/upload.bin") == local.read_bytes()
    assert {"written.txt", "uploads/upload.bin"} <= set(hub.list_repo_files(repo))

    # expand=true listings carry each path's last commit, which is what fsspec's modified() reads.
    commits = hub.list_repo_commits(repo)
    by_title = {c.title: c for c in commits}
    expanded = {e["name"]: e for e in fs.ls(repo, expand_info=True)}
    assert expanded[f"{repo}/model"]["last_commit"].oid == by_title["weights and config"].commit_id
    assert expanded[f"{repo}/written.txt"]["last_commit"].oid == commits[1].commit_id
    assert expanded[f"{repo}/.gitattributes"]["last_commit"].title == "initial commit"
    assert fs.modified(f"{repo}/notes.txt") == by_title["weights and config"].created_at


# -- 2. datasets --------------------------------------------------------------------------------------
def test_load_dataset_from_csv_jsonl_and_parquet(server, hub: HfApi, owner, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import load_dataset

    repo = new_repo(hub, owner, "ds", repo_type="dataset")
    parquet = io.BytesIO()
    pq.write_table(pa.table({"id": [20, 21], "text": ["pi", "rho"]}), parquet)
    jsonl = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in [(10, "kappa"), (11, "lambda")])
    hub.create_commit(repo, repo_type="dataset", commit_message="data", operations=[
        CommitOperationAdd("data/train.csv", b"id,text\n1,alpha\n2,beta\n3,gamma\n"),
        CommitOperationAdd("data/test.csv", b"id,text\n4,delta\n"),
        CommitOperationAdd("extra/more.jsonl", jsonl.encode()),
        CommitOperationAdd("scores/part-0.parquet", parquet.getvalue()),
    ])
    cache = tmp_path / "datasets-cache"

    default = load_dataset(repo, cache_dir=str(cache), token=owner[1])
    assert set(default) == {"train", "test"}
    assert default["train"].to_list() == [{"id": 1, "text": "alpha"}, {"id": 2, "text": "beta"},
                                          {"id": 3, "text": "gamma"}]
    assert default["test"].to_list() == [{"id": 4, "text": "delta"}]

    jsonl_split = load_dataset(repo, data_files={"validation": "extra/more.jsonl"}, split="validation",
                               cache_dir=str(cache), token=owner[1])
    assert jsonl_split.to_list() == [{"id": 10, "text": "kappa"}, {"id": 11, "text": "lambda"}]

    parquet_split = load_dataset(repo, data_files="scores/*.parquet", split="train", cache_dir=str(cache),
                                 token=owner[1])
    assert parquet_split.to_list() == [{"id": 20, "text": "pi"}, {"id": 21, "text": "rho"}]

    streamed = load_dataset(repo, split="train", streaming=True, token=owner[1])
    assert [row["text"] for row in streamed] == ["alpha", "beta", "gamma"]


# -- 3. transformers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from keephub.demo.tiny import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("tiny-base"))


def test_transformers_push_to_hub_and_load_back(server, hub: HfApi, owner, tiny_model_dir: Path,
                                                tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    repo = f"{owner[0]}/tiny-{uuid.uuid4().hex[:8]}"
    model.push_to_hub(repo, token=owner[1])
    tokenizer.push_to_hub(repo, token=owner[1])
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        hub.list_repo_files(repo))

    cache = tmp_path / "hf-cache"
    loaded = AutoModelForCausalLM.from_pretrained(repo, token=owner[1], cache_dir=cache)
    loaded_tokenizer = AutoTokenizer.from_pretrained(repo, token=owner[1], cache_dir=cache)
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[key], reloaded[key]) for key in original)

    text = "What is the capital of France? The capital of France is Paris."
    assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    chat = [{"role": "user", "content": "How many metres are there in 3 kilometres?"}]
    assert loaded_tokenizer.apply_chat_template(chat, tokenize=False) == tokenizer.apply_chat_template(
        chat, tokenize=False)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


# -- 4. the hf CLI --------------------------------------------------------------------------------------
def hf_cli(server, token: str, *args: str) -> dict:  # type: ignore[no-untyped-def]
    """Run this environment's `hf` executable as a user would, with HF_TOKEN set; parse its JSON output."""
    env = {**os.environ, "HF_TOKEN": token, "HF_ENDPOINT": server.url}
    result = subprocess.run([str(Path(sys.executable).parent / "hf"), *args, "--format", "json"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, f"hf {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def test_hf_cli_create_upload_download_whoami(server, hub: HfApi, owner, tmp_path: Path) -> None:
    name, token = owner
    repo = f"{name}/cli-{uuid.uuid4().hex[:8]}"
    source = tmp_path / "run"
    (source / "ckpt").mkdir(parents=True)
    (source / "metrics.json").write_text('{"loss": 0.25}')
    (source / "ckpt" / "weights.bin").write_bytes(os.urandom(300_000))

    assert hf_cli(server, token, "auth", "whoami")["user"] == name
    assert hf_cli(server, token, "repos", "create", repo)["repo_id"] == repo
    uploaded = hf_cli(server, token, "upload", repo, str(source), ".")
    head = hub.list_repo_commits(repo)[0].commit_id
    assert uploaded["url"].endswith(f"/{repo}/commit/{head}")
    downloaded = Path(hf_cli(server, token, "download", repo, "--local-dir", str(tmp_path / "copy"))["path"])

    for relative in ("metrics.json", "ckpt/weights.bin"):
        assert (downloaded / relative).read_bytes() == (source / relative).read_bytes()
    assert hub.get_paths_info(repo, ["ckpt/weights.bin"])[0].lfs is not None


# -- 5. tree pagination ---------------------------------------------------------------------------------
def test_tree_listing_pages_through_2500_files(server, hub: HfApi, owner) -> None:
    repo = new_repo(hub, owner, "many")
    folder = "données 数据 2024"  # non-latin-1 and a space: must survive in the Link header
    hub.create_commit(repo, commit_message="2500 files", operations=[
        CommitOperationAdd(f"{folder}/f{i:05d}.txt", str(i).encode()) for i in range(2500)])
    expected = {f"{folder}/f{i:05d}.txt" for i in range(2500)}

    tree = list(hub.list_repo_tree(repo, recursive=True))
    assert {e.path for e in tree} == expected | {".gitattributes", folder}
    assert len(tree) == 2502
    assert set(hub.list_repo_files(repo)) == expected | {".gitattributes"}
    assert {e.path for e in hub.list_repo_tree(repo, path_in_repo=folder)} == expected

    first = httpx.get(f"{server.url}/api/models/{repo}/tree/main/{folder}")
    assert len(first.json()) == 1000 and first.links["next"]["url"]
    second = httpx.get(first.links["next"]["url"])
    assert [e["path"] for e in second.json()][0] == f"{folder}/f01000.txt"


# -- 6. uploads, downloads, refs ------------------------------------------------------------------------
def test_upload_patterns_downloads_metadata_tags_and_squash(server, hub: HfApi, owner,
                                                            tmp_path: Path) -> None:
    repo = new_repo(hub, owner, "six")
    folder = tmp_path / "out"
    (folder / "ckpt").mkdir(parents=True)
    (folder / "config.json").write_text('{"v": 1}')
    (folder / "notes.txt").write_text("notes v1")
    (folder / "train.log").write_text("log")
    weights = os.urandom(200_000)
    (folder / "ckpt" / "model.safetensors").write_bytes(weights)

    first = hub.upload_folder(repo_id=repo, folder_path=folder, allow_patterns=["*.json", "*.txt", "ckpt/*"])
    assert set(hub.list_repo_files(repo)) == {".gitattributes", "config.json", "notes.txt",
                                              "ckpt/model.safetensors"}
    hub.upload_folder(repo_id=repo, folder_path=folder, allow_patterns=["*.log"], delete_patterns=["*.txt"])
    assert set(hub.list_repo_files(repo)) == {".gitattributes", "config.json", "train.log",
                                              "ckpt/model.safetensors"}
    commits = hub.list_repo_commits(repo)
    assert commits[1].commit_id == first.oid
    assert [c.title for c in commits] == ["Upload folder using huggingface_hub"] * 2 + ["initial commit"]

    snapshot = Path(snapshot_download(repo, allow_patterns=["*.json", "ckpt/*"], cache_dir=tmp_path / "c1"))
    assert sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()) == [
        "ckpt/model.safetensors", "config.json"]
    assert (snapshot / "ckpt" / "model.safetensors").read_bytes() == weights

    # notes.txt is gone from main but still there at the first commit, by its sha.
    old = hf_hub_download(repo, "notes.txt", revision=first.oid, cache_dir=tmp_path / "c2")
    assert Path(old).read_bytes() == b"notes v1"

    # A non-latin-1 file name must still be servable (it goes into Content-Disposition).
    hub.upload_file(path_or_fileobj=b"x", path_in_repo="données/模型 1.txt", repo_id=repo)
    assert Path(hf_hub_download(repo, "données/模型 1.txt", cache_dir=tmp_path / "c2")).read_bytes() == b"x"

    url = hf_hub_url(repo, "ckpt/model.safetensors")
    meta = get_hf_file_metadata(url, token=owner[1])
    head_sha = hub.list_repo_commits(repo)[0].commit_id
    assert meta.commit_hash == head_sha and meta.size == len(weights)
    assert meta.etag == hashlib.sha256(weights).hexdigest()
    config_meta = get_hf_file_metadata(hf_hub_url(repo, "config.json"), token=owner[1])
    assert config_meta.etag == hub.get_paths_info(repo, ["config.json"])[0].blob_id

    head = httpx.head(url)
    body = httpx.get(url, follow_redirects=True)
    # On the S3 backend both answer 302 to the object's presigned URL, the metadata on the redirect itself.
    first_answer = body.history[0] if body.history else body
    assert head.status_code == first_answer.status_code in (200, 302) and body.status_code == 200
    assert head.headers["x-repo-commit"] == first_answer.headers["x-repo-commit"] == head_sha
    assert head.headers["etag"] == first_answer.headers["etag"]
    size = head.headers["x-linked-size" if head.status_code == 302 else "content-length"]
    assert int(size) == len(body.content) and body.content == weights
    ranged = httpx.get(url, headers={"Range": "bytes=100-199"}, follow_redirects=True)
    assert ranged.status_code == 206 and ranged.content == weights[100:200]

    hub.create_tag(repo, tag="v1.0", revision=first.oid)
    tagged = hf_hub_download(repo, "notes.txt", revision="v1.0", cache_dir=tmp_path / "c3")
    assert Path(tagged).read_bytes() == b"notes v1"
    assert [t.target_commit for t in hub.list_repo_refs(repo).tags] == [first.oid]

    # Squashing leaves one commit on main; the tag keeps its own history (tests/test_storage_management.py).
    hub.super_squash_history(repo)
    assert len(hub.list_repo_commits(repo)) == 1
    assert [t.target_commit for t in hub.list_repo_refs(repo).tags] == [first.oid]


# -- 7. the web pages ----------------------------------------------------------------------------------
README = b"""---
license: apache-2.0
tags:
- yaml-only-tag
---
# Tiny Heading

Trained on *synthetic* chats.
"""


def test_repo_and_namespace_pages(server, hub: HfApi, owner) -> None:
    name, token = owner
    repo = new_repo(hub, owner, "page")
    hub.upload_file(path_or_fileobj=README, path_in_repo="README.md", repo_id=repo)
    upload = hub.upload_file(path_or_fileobj=os.urandom(123_456), path_in_repo="model.safetensors",
                             repo_id=repo, commit_message="Add the weights")

    page = httpx.get(f"{server.url}/{repo}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<h1>Tiny Heading</h1>" in html and "<em>synthetic</em>" in html
    assert "yaml-only-tag" not in html and "license:" not in html
    assert re.search(r"model\.safetensors</a>.*?</td>\s*<td[^>]*>123\.5 kB</td>", html, re.S)
    assert re.search(r"README\.md</a>.*?</td>\s*<td[^>]*>\d+ B</td>", html, re.S)
    assert upload.oid[:7] in html and "Add the weights" in html

    twin = httpx.get(f"{server.url}/{repo}", params={"format": "json"}).json()
    assert twin["id"] == repo and twin["sha"] == upload.oid
    assert twin["cardData"]["tags"] == ["yaml-only-tag"]
    assert {s["rfilename"]: s["size"] for s in twin["siblings"]}["model.safetensors"] == 123_456

    # The commit URL the API returns shows the repo as of that commit.
    readme_commit = hub.list_repo_commits(repo)[1].commit_id
    old_page = httpx.get(f"{server.url}/{repo}/commit/{readme_commit}").text
    assert readme_commit[:7] in old_page and "model.safetensors" not in old_page

    other_name, other_token = server.user()
    other = HfApi(endpoint=server.url, token=other_token)
    other.create_repo(f"{other_name}/public-work")
    other.create_repo(f"{other_name}/hidden-work", private=True)
    mine_private = new_repo(hub, owner, "mine-private", private=True)

    as_owner = {"Authorization": f"Bearer {token}"}
    listing = httpx.get(f"{server.url}/{other_name}", headers=as_owner)
    assert listing.status_code == 200
    assert f"{other_name}/public-work" in listing.text and "hidden-work" not in listing.text
    own = httpx.get(f"{server.url}/{name}", headers=as_owner, params={"format": "json"}).json()
    assert {repo, mine_private} <= {r["id"] for r in own}
    anonymous_ids = {r["id"] for r in httpx.get(f"{server.url}/{name}", params={"format": "json"}).json()}
    assert repo in anonymous_ids and mine_private not in anonymous_ids

    assert httpx.get(f"{server.url}/{mine_private}").status_code == 404
    assert httpx.get(f"{server.url}/{mine_private}", headers=as_owner).status_code == 200
    assert httpx.get(f"{server.url}/{other_name}/hidden-work", headers=as_owner).status_code == 404
    assert httpx.get(f"{server.url}/no-such-user-{uuid.uuid4().hex[:6]}").status_code == 404
