"""Xet-stored files kept whole after a first full plain download (issue 22: repeated reads at the speed of a file),
through the real client and plain HTTP: what is served is always the file's bytes, only a verified whole read is
kept, the cache stays within its bound, and `keephub gc` removes what the server no longer holds."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import XET_ENABLED, own_server, stored_blobs
from huggingface_hub import HfApi

from keephub.devserver import LocalServer, keephub_cli

MIB = 1024 * 1024
CACHE_BYTES = 8 * MIB

pytestmark = [pytest.mark.once,
              pytest.mark.skipif(not XET_ENABLED, reason="needs Xet uploads (KEEPHUB_TEST_XET=on)")]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    yield from own_server(tmp_path_factory, "xetcache", {"KEEPHUB_XET_FILE_CACHE_BYTES": str(CACHE_BYTES),
                                                         "KEEPHUB_XET_GC_GRACE_SECONDS": "0"})


@pytest.fixture(scope="module")
def owner(hub: LocalServer) -> tuple[str, str]:
    return hub.user()


@pytest.fixture(scope="module")
def api(hub: LocalServer, owner: tuple[str, str]) -> HfApi:
    return HfApi(endpoint=hub.url, token=owner[1])


def cached(hub: LocalServer) -> dict[str, bytes]:
    """The cache's published files; one the server evicts between the listing and its read is left out."""
    directory = hub.data_dir / "cache" / "xet-files"
    if not directory.is_dir():
        return {}
    held = {}
    for path in directory.iterdir():
        if path.name.endswith(".part"):
            continue
        try:
            held[path.name] = path.read_bytes()
        except FileNotFoundError:
            continue
    return held


def cached_soon(hub: LocalServer, oid: str) -> bytes:
    """The cached copy of `oid`: it is published just after the response's last byte is sent."""
    deadline = time.monotonic() + 10
    while oid not in (held := cached(hub)):
        assert time.monotonic() < deadline, f"{oid} was not cached"
        time.sleep(0.05)
    return held[oid]


def uploaded(api: HfApi, owner: tuple[str, str], files: dict[str, bytes]) -> str:
    repo = f"{owner[0]}/cache-{uuid.uuid4().hex[:8]}"
    api.create_repo(repo)
    for path, content in files.items():
        api.upload_file(path_or_fileobj=content, path_in_repo=path, repo_id=repo)
    return repo


def get(hub: LocalServer, owner: tuple[str, str], repo: str, path: str, byte_range: str | None = None) -> bytes:
    headers = {"authorization": f"Bearer {owner[1]}", **({"range": byte_range} if byte_range else {})}
    response = httpx.get(f"{hub.url}/{repo}/resolve/main/{path}", headers=headers, timeout=60)
    assert response.status_code == (206 if byte_range else 200), response.text
    return response.content


def test_a_whole_read_is_kept_and_later_reads_and_ranges_come_from_it(hub: LocalServer, api: HfApi,
                                                                        owner: tuple[str, str]) -> None:
    content = os.urandom(3 * MIB + 17)
    oid = hashlib.sha256(content).hexdigest()
    repo = uploaded(api, owner, {"model.bin": content})
    assert oid not in stored_blobs(hub, "lfs")  # Xet-stored: rebuilt from xorbs, not a git-lfs object

    assert get(hub, owner, repo, "model.bin", "bytes=100-199") == content[100:200]
    assert oid not in cached(hub)  # a part of the file is not the file
    assert get(hub, owner, repo, "model.bin") == content
    assert cached_soon(hub, oid) == content
    assert get(hub, owner, repo, "model.bin") == content
    assert get(hub, owner, repo, "model.bin", f"bytes={2 * MIB}-") == content[2 * MIB:]
    deadline = time.monotonic() + 10
    while [p for p in (hub.data_dir / "cache" / "xet-files").iterdir() if p.name.endswith(".part")]:
        assert time.monotonic() < deadline, "a partial copy was left behind"
        time.sleep(0.05)


def test_small_files_are_rebuilt_each_time_and_the_cache_keeps_to_its_bound(hub: LocalServer, api: HfApi,
                                                                              owner: tuple[str, str]) -> None:
    small = os.urandom(300_000)
    big = {f"ckpt-{n}.bin": os.urandom(3 * MIB) for n in range(3)}
    too_big = os.urandom(5 * MIB)  # over half the bound: never kept
    repo = uploaded(api, owner, {"small.bin": small, "huge.bin": too_big, **big})
    assert get(hub, owner, repo, "small.bin") == small and get(hub, owner, repo, "huge.bin") == too_big
    for path, content in big.items():
        assert get(hub, owner, repo, path) == content
        cached_soon(hub, hashlib.sha256(content).hexdigest())
    held = cached(hub)
    assert sum(len(content) for content in held.values()) <= CACHE_BYTES
    newest = hashlib.sha256(big["ckpt-2.bin"]).hexdigest()
    assert held[newest] == big["ckpt-2.bin"]
    assert hashlib.sha256(big["ckpt-0.bin"]).hexdigest() not in held  # the least recently read went first
    assert hashlib.sha256(small).hexdigest() not in held and hashlib.sha256(too_big).hexdigest() not in held
    assert get(hub, owner, repo, "ckpt-0.bin") == big["ckpt-0.bin"]  # evicted: rebuilt again, bytes unchanged


def test_gc_removes_cached_files_whose_content_is_gone(hub: LocalServer, api: HfApi, owner: tuple[str, str],
                                                        tmp_path: Path) -> None:
    content = os.urandom(2 * MIB)
    oid = hashlib.sha256(content).hexdigest()
    repo = uploaded(api, owner, {"secret.bin": content})
    assert get(hub, owner, repo, "secret.bin") == content and cached_soon(hub, oid) == content

    api.permanently_delete_lfs_files(repo, [f for f in api.list_lfs_files(repo) if f.filename == "secret.bin"])
    response = httpx.get(f"{hub.url}/{repo}/resolve/main/secret.bin", headers={"authorization": f"Bearer {owner[1]}"})
    assert response.status_code == 404  # refused before any byte is read, cached or not
    keephub_cli(hub.data_dir, "gc")
    assert oid not in cached(hub)
