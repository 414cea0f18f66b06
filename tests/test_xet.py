"""Xet storage, with the real hf_xet as the oracle, and the CAS's refusal of bad input.

Runs in the hf_xet mode of the suite (the git-lfs mode has no Xet uploads to test). Positive paths go
through huggingface_hub + hf_xet; bad input is sent raw, with xorbs and shards built here byte by byte.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import lz4.frame
import pytest
from conftest import XET_ENABLED, Server, free_port, read_response, stored_blobs
from huggingface_hub import HfApi, hf_hub_download, snapshot_download

from keephub.xet import hashing

pytestmark = pytest.mark.skipif(not XET_ENABLED, reason="Xet uploads only happen in the hf_xet mode of the suite")

SHARD_TAG = b"HFRepoMetaData\x00" + bytes([85, 105, 103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209,
                                          74, 169])
BOOKEND = b"\xff" * 32 + bytes(16)


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def xorb_bytes(chunks: list[bytes], scheme: int = 1) -> bytes:
    out = bytearray()
    for chunk in chunks:
        payload = lz4.frame.compress(chunk) if scheme == 1 else chunk
        out += bytes([0]) + len(payload).to_bytes(3, "little") + bytes([scheme]) + len(chunk).to_bytes(3, "little")
        out += payload
    return bytes(out)


def xorb_hash(chunks: list[bytes]) -> bytes:
    return hashing.merkle_root([(hashing.chunk_hash(c), len(c)) for c in chunks])


def shard_bytes(file_chunks: list[bytes], xorb: bytes, *, verification: bytes | None = None,
                sha256: bytes | None = None, file_hash: bytes | None = None, end: int | None = None) -> bytes:
    """A one-file, one-term shard over chunks [0, end) of `xorb`; keyword arguments tamper with one field."""
    hashes = [hashing.chunk_hash(c) for c in file_chunks]
    end = len(file_chunks) if end is None else end
    content = b"".join(file_chunks)
    real_sha = hashing.from_hex(hashlib.sha256(content).hexdigest())
    out = bytearray(SHARD_TAG + struct.pack("<QQ", 2, 0))
    out += struct.pack("<32sII8x", file_hash or hashing.file_hash([(h, len(c)) for h, c in zip(hashes, file_chunks)]),
                       (1 << 31) | (1 << 30), 1)
    out += struct.pack("<32sIIII", xorb, 0, len(content), 0, end)
    out += struct.pack("<32s16x", verification or hashing.verification_hash(hashes))
    out += struct.pack("<32s16x", sha256 or real_sha)
    out += BOOKEND
    out += struct.pack("<32sIIII", xorb, 0, len(file_chunks), len(content), 0)
    position = 0
    for h, c in zip(hashes, file_chunks):
        out += struct.pack("<32sIIII", h, position, len(c), 0, 0)
        position += len(c)
    out += BOOKEND
    return bytes(out)


def cas_token(server: Server, token: str, repo_id: str, access: str) -> tuple[str, dict]:
    response = httpx.get(f"{server.url}/api/models/{repo_id}/xet-{access}-token/main",
                         headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["X-Xet-Access-Token"] == body["accessToken"]
    assert response.headers["X-Xet-Cas-Url"] == body["casUrl"]
    return body["casUrl"], {"Authorization": f"Bearer {body['accessToken']}"}


def stored_xorbs(server: Server) -> set[str]:
    return set(stored_blobs(server, "xorbs"))


def xorb_dir_bytes(server: Server) -> int:
    return sum(stored_blobs(server, "xorbs").values())


def client_subprocess(server: Server, token: str, hf_home: Path, code: str, **env: str) -> str:
    """Run client code in a fresh interpreter: hf_xet reads its configuration (and shard cache) per process."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "HF_ENDPOINT": server.url, "HF_HOME": str(hf_home), "HF_TOKEN": token, **env},
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# -- the real client ------------------------------------------------------------------------------------
def test_upload_file_is_stored_as_xet_and_reads_back_every_way(server: Server, api: HfApi, repo_id: str,
                                                                tmp_path: Path) -> None:
    data = random_bytes(2_500_000, 1) + b"keephub " * 200_000
    (tmp_path / "weights.bin").write_bytes(data)
    api.upload_file(path_or_fileobj=str(tmp_path / "weights.bin"), path_in_repo="weights.bin", repo_id=repo_id)
    sha = hashlib.sha256(data).hexdigest()
    assert sha not in stored_blobs(server, "lfs"), "the file went through git-lfs, not Xet"

    tree = httpx.get(f"{server.url}/api/models/{repo_id}/tree/main").json()
    entry = next(e for e in tree if e["path"] == "weights.bin")
    assert entry["lfs"]["oid"] == sha and hashing.is_hash_string(entry["xetHash"])
    head = httpx.head(f"{server.url}/{repo_id}/resolve/main/weights.bin")
    assert head.headers["X-Xet-Hash"] == entry["xetHash"]
    assert head.headers["X-Linked-Size"] == str(len(data))
    assert 'rel="xet-auth"' in head.headers["Link"]

    downloaded = hf_hub_download(repo_id, "weights.bin", cache_dir=str(tmp_path / "cache"))
    assert Path(downloaded).read_bytes() == data

    plain = httpx.get(f"{server.url}/{repo_id}/resolve/main/weights.bin")
    assert plain.status_code == 200 and plain.content == data
    ranged = httpx.get(f"{server.url}/{repo_id}/resolve/main/weights.bin", headers={"Range": "bytes=2499990-2500020"})
    assert ranged.status_code == 206 and ranged.content == data[2499990:2500021]
    past_end = httpx.get(f"{server.url}/{repo_id}/resolve/main/weights.bin", headers={"Range": f"bytes={len(data)}-"})
    assert past_end.status_code == 416


def test_file_spanning_several_full_xorbs_round_trips(server: Server, api: HfApi, repo_id: str,
                                                      tmp_path: Path) -> None:
    """hf_xet packs 64 MiB of chunk data per xorb, so a full xorb's body is 64 MiB plus its chunk headers."""
    data = random_bytes(150 * 1024 * 1024, 6)
    (tmp_path / "big.bin").write_bytes(data)
    api.upload_file(path_or_fileobj=str(tmp_path / "big.bin"), path_in_repo="big.bin", repo_id=repo_id)
    assert len(stored_xorbs(server)) >= 3
    downloaded = hf_hub_download(repo_id, "big.bin", cache_dir=str(tmp_path / "cache"))
    assert hashlib.sha256(Path(downloaded).read_bytes()).digest() == hashlib.sha256(data).digest()


def test_git_lfs_and_xet_files_live_side_by_side(server: Server, api: HfApi, repo_id: str, tmp_path: Path) -> None:
    """huggingface_hub sends a file object through git-lfs even with hf_xet installed, a path through Xet."""
    through_lfs, through_xet = random_bytes(600_000, 7), random_bytes(600_000, 8)
    api.upload_file(path_or_fileobj=io.BytesIO(through_lfs), path_in_repo="lfs.bin", repo_id=repo_id)
    (tmp_path / "xet.bin").write_bytes(through_xet)
    api.upload_file(path_or_fileobj=str(tmp_path / "xet.bin"), path_in_repo="xet.bin", repo_id=repo_id)
    tree = {e["path"]: e for e in httpx.get(f"{server.url}/api/models/{repo_id}/tree/main").json()}
    assert "xetHash" not in tree["lfs.bin"] and "xetHash" in tree["xet.bin"]
    assert tree["lfs.bin"]["lfs"]["oid"] == hashlib.sha256(through_lfs).hexdigest()
    for name, content in (("lfs.bin", through_lfs), ("xet.bin", through_xet)):
        assert Path(hf_hub_download(repo_id, name, cache_dir=str(tmp_path / "c"))).read_bytes() == content


def test_upload_folder_and_paged_snapshot_download(server: Server, api: HfApi, repo_id: str, alice,
                                                    tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    files = {"model.safetensors": random_bytes(1_500_000, 2), "sub/optimizer.pt": random_bytes(700_000, 3),
             "config.json": b'{"hidden_size": 8}'}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    # Small fetch sizes make hf_xet ask for the file's reconstruction page by page, with Range.
    out = client_subprocess(server, alice[1], tmp_path / "hf-paged", f"""
from huggingface_hub import snapshot_download
print(snapshot_download({repo_id!r}, cache_dir={str(tmp_path / 'paged')!r}))
""", HF_XET_RECONSTRUCTION_MIN_RECONSTRUCTION_FETCH_SIZE="65536",
                            HF_XET_RECONSTRUCTION_MAX_RECONSTRUCTION_FETCH_SIZE="262144")
    snapshot = Path(out.strip().splitlines()[-1])
    for name, content in files.items():
        assert (snapshot / name).read_bytes() == content, name
    again = snapshot_download(repo_id, cache_dir=str(tmp_path / "whole"))
    assert (Path(again) / "sub/optimizer.pt").read_bytes() == files["sub/optimizer.pt"]


UPLOAD = """
from huggingface_hub import HfApi
HfApi().upload_file(path_or_fileobj={source!r}, path_in_repo="big.bin", repo_id={repo!r})
"""


def test_files_sharing_chunks_across_repos_and_users_send_only_new_bytes(server: Server, api: HfApi, alice,
                                                                         tmp_path: Path) -> None:
    """A fresh client (empty shard cache) finds shared chunks through the global dedup query."""
    original = random_bytes(12_000_000, 4)
    edited = bytearray(original)
    edited[6_000_000:6_050_000] = random_bytes(50_000, 5)
    (tmp_path / "a.bin").write_bytes(original)
    (tmp_path / "b.bin").write_bytes(bytes(edited))
    first = f"{alice[0]}/shared-a"
    api.create_repo(first, private=True)
    client_subprocess(server, alice[1], tmp_path / "hf-1", UPLOAD.format(source=str(tmp_path / "a.bin"), repo=first))

    bob, bob_token = server.user()
    bobs = f"{bob}/edited"
    HfApi(endpoint=server.url, token=bob_token).create_repo(bobs)
    before = xorb_dir_bytes(server)
    client_subprocess(server, bob_token, tmp_path / "hf-2", UPLOAD.format(source=str(tmp_path / "b.bin"), repo=bobs))
    sent = xorb_dir_bytes(server) - before
    assert sent < 0.1 * len(edited), f"{sent} bytes stored for a 50 kB edit of a 12 MB file"

    assert Path(hf_hub_download(bobs, "big.bin", token=bob_token, cache_dir=str(tmp_path / "c"))).read_bytes() == edited
    # Sharing chunks gives bob nothing of alice's private file: her file hash is unknown to his repo's token.
    alice_hash = next(e for e in api.list_repo_tree(first) if e.path == "big.bin").xet_hash
    cas, headers = cas_token(server, bob_token, bobs, "read")
    assert httpx.get(f"{cas}/v1/reconstructions/{alice_hash}", headers=headers).status_code == 404


# -- bad input, sent raw ---------------------------------------------------------------------------------
def test_corrupted_xorbs_are_rejected_and_nothing_is_stored(server: Server, alice, api: HfApi, repo_id: str) -> None:
    cas, headers = cas_token(server, alice[1], repo_id, "write")
    chunks = [random_bytes(40_000, 10), random_bytes(30_000, 11)]
    good = xorb_bytes(chunks)
    name = hashing.to_hex(xorb_hash(chunks))
    flipped = bytearray(good)
    flipped[100] ^= 0xFF
    other = hashing.to_hex(xorb_hash([chunks[0]]))
    cases = {
        "flipped byte": (name, bytes(flipped)),
        "hash of other content": (other, good),
        "truncated": (name, good[:-10]),
        "cut inside a header": (name, good[:5]),
        "unknown scheme": (name, xorb_bytes(chunks, scheme=9)),
        "empty": (name, b""),
        "size lies": (name, bytes([0]) + (3).to_bytes(3, "little") + bytes([0]) + (5).to_bytes(3, "little") + b"abc"),
    }
    for label, (target, body) in cases.items():
        response = httpx.post(f"{cas}/v1/xorbs/default/{target}", content=body, headers=headers)
        assert response.status_code == 400, (label, response.status_code, response.text)
        assert response.headers["X-Error-Message"], label
    assert name not in stored_xorbs(server) and other not in stored_xorbs(server)
    malformed = httpx.post(f"{cas}/v1/xorbs/default/not-a-hash", content=good, headers=headers)
    assert malformed.status_code == 400 and "64 lowercase hex" in malformed.json()["error"]

    accepted = httpx.post(f"{cas}/v1/xorbs/default/{name}", content=good, headers=headers)
    assert accepted.status_code == 200 and accepted.json() == {"was_inserted": True}
    again = httpx.post(f"{cas}/v1/xorbs/default/{name}", content=good, headers=headers)
    assert again.json() == {"was_inserted": False}


def test_a_large_xorb_refused_mid_body_leaves_nothing_and_its_connection_serves_the_next(
        server: Server, alice, repo_id: str) -> None:
    """A xorb of several 4 MiB pieces (read straight into the server's buffers, wire/direct_body.py) whose chunk
    header goes bad in its first piece is refused while the rest is still arriving; the same connection then
    carries a good one of the same size, uncompressed and with chunks straddling every piece boundary."""
    cas, headers = cas_token(server, alice[1], repo_id, "write")
    chunks = [random_bytes(65_000 + 13 * n, 30 + n) for n in range(160)]
    good = xorb_bytes(chunks, scheme=0)
    name = hashing.to_hex(xorb_hash(chunks))
    bad = bytearray(good)
    bad[sum(8 + len(c) for c in chunks[:16])] = 7  # the 17th chunk's header version
    url = httpx.URL(f"{cas}/v1/xorbs/default/{name}")
    head = (f"POST {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.netloc.decode()}\r\n"
            f"Authorization: {headers['Authorization']}\r\nContent-Length: {len(good)}\r\n\r\n").encode()
    with socket.create_connection((url.host, url.port), timeout=60) as sock:
        sock.sendall(head + bad)
        status, body = read_response(sock)
        assert status == 400 and "unknown chunk header version 7" in json.loads(body)["error"]
        assert name not in stored_xorbs(server)
        sock.sendall(head + good)
        assert read_response(sock) == (200, b'{"was_inserted":true}')
    assert name in stored_xorbs(server)


def commit_lfs(server: Server, token: str, repo_id: str, path: str, content: bytes) -> httpx.Response:
    lines = [{"key": "header", "value": {"summary": f"add {path}"}},
             {"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": hashlib.sha256(content).hexdigest(),
                                          "size": len(content)}}]
    return httpx.post(f"{server.url}/api/models/{repo_id}/commit/main", content="\n".join(map(json.dumps, lines)),
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"})


def test_tampered_shards_are_rejected_and_their_files_cannot_be_committed(server: Server, alice, repo_id: str) -> None:
    cas, headers = cas_token(server, alice[1], repo_id, "write")
    chunks = [random_bytes(50_000, 20), random_bytes(20_000, 21), random_bytes(9_000, 22)]
    xorb = xorb_hash(chunks)
    assert httpx.post(f"{cas}/v1/xorbs/default/{hashing.to_hex(xorb)}", content=xorb_bytes(chunks),
                      headers=headers).status_code == 200
    content = b"".join(chunks)
    missing = xorb_hash([random_bytes(1000, 23)])
    tampered = {
        "verification hash": shard_bytes(chunks, xorb, verification=bytes(32)),
        "claimed sha256": shard_bytes(chunks, xorb, sha256=hashing.from_hex(hashlib.sha256(b"other").hexdigest())),
        "file hash": shard_bytes(chunks, xorb, file_hash=bytes(range(32))),
        "missing xorb": shard_bytes(chunks, missing),
        "chunk range past the xorb": shard_bytes(chunks + [b"x" * 100], xorb, end=4),
        "wrong tag": b"X" + shard_bytes(chunks, xorb)[1:],
        "truncated": shard_bytes(chunks, xorb)[:-20],
    }
    for label, body in tampered.items():
        response = httpx.post(f"{cas}/v1/shards", content=body, headers=headers)
        assert response.status_code == 400, (label, response.status_code, response.text)
        assert "rejected" in response.json()["error"] or "not a Xet shard" in response.json()["error"], label
    refused = commit_lfs(server, alice[1], repo_id, "w.bin", content)
    assert refused.status_code in (400, 404, 422) and "never uploaded" in refused.json()["error"]

    assert httpx.post(f"{cas}/v1/shards", content=shard_bytes(chunks, xorb), headers=headers).json() == {"result": 1}
    assert commit_lfs(server, alice[1], repo_id, "w.bin", content).status_code == 200
    assert httpx.get(f"{server.url}/{repo_id}/resolve/main/w.bin").content == content


def files_shard(files: list[tuple[list[tuple[bytes, list[bytes]]], bytes | None]]) -> bytes:
    """A shard of files, each a list of (xorb hash, the xorb's chunks) terms covering whole xorbs, and the sha256
    to claim for it (None: the true one); every xorb named is listed in the xorb section."""
    out = bytearray(SHARD_TAG + struct.pack("<QQ", 2, 0))
    listed: dict[bytes, list[bytes]] = {}
    for terms, claimed in files:
        content = b"".join(c for _, chunks in terms for c in chunks)
        pairs = [(hashing.chunk_hash(c), len(c)) for _, chunks in terms for c in chunks]
        out += struct.pack("<32sII8x", hashing.file_hash(pairs), (1 << 31) | (1 << 30), len(terms))
        for xorb, chunks in terms:
            out += struct.pack("<32sIIII", xorb, 0, sum(map(len, chunks)), 0, len(chunks))
            listed[xorb] = chunks
        for _, chunks in terms:
            out += struct.pack("<32s16x", hashing.verification_hash([hashing.chunk_hash(c) for c in chunks]))
        out += struct.pack("<32s16x", claimed or hashing.from_hex(hashlib.sha256(content).hexdigest()))
    out += BOOKEND
    for xorb, chunks in listed.items():
        out += struct.pack("<32sIIII", xorb, 0, len(chunks), sum(map(len, chunks)), 0)
        position = 0
        for chunk in chunks:
            out += struct.pack("<32sIIII", hashing.chunk_hash(chunk), position, len(chunk), 0, 0)
            position += len(chunk)
    out += BOOKEND
    return bytes(out)


def test_a_files_sha256_is_verified_whether_hashed_on_arrival_or_rebuilt(server: Server, alice,
                                                                          repo_id: str) -> None:
    """The sha256 a commit names is taken from the digest kept while the file's xorbs arrived as far as they are the
    first xorbs sent since the session's last shard, in order, and rebuilt from the stored xorbs for the rest: a
    lie is refused either way, the truth accepted either way, and a refused file cannot be committed."""
    cas, headers = cas_token(server, alice[1], repo_id, "write")
    xorbs = {}
    for name, seed in (("a", 40), ("b", 41), ("c", 42), ("d", 43)):
        chunks = [random_bytes(30_000 + seed * 100, seed), random_bytes(25_000, seed + 100)]
        xorbs[name] = (xorb_hash(chunks), chunks)
    broken = bytearray(xorb_bytes(xorbs["c"][1]))
    broken[50] ^= 0xFF
    lie = hashing.from_hex(hashlib.sha256(b"something else").hexdigest())
    # Each case sends its xorbs ("c!" a corrupted c, refused), then the file's shard, refused with a lie and
    # accepted with the truth; the accepted shard starts the next case's digest afresh.
    for sent_first, (first, second), path in ((["a", "c!", "b"], ("a", "b"), "on-arrival.bin"),
                                              (["c", "d"], ("c", "b"), "part-rebuilt.bin"),
                                              ([], ("d", "c"), "rebuilt.bin")):
        for name in sent_first:
            body = bytes(broken) if name == "c!" else xorb_bytes(xorbs[name][1])
            sent = httpx.post(f"{cas}/v1/xorbs/default/{hashing.to_hex(xorbs[name[0]][0])}", content=body,
                              headers=headers)
            assert sent.status_code == (400 if name == "c!" else 200), (name, sent.text)
        terms = [xorbs[first], xorbs[second]]
        content = b"".join(xorbs[first][1] + xorbs[second][1])
        refused = httpx.post(f"{cas}/v1/shards", content=files_shard([(terms, lie)]), headers=headers)
        assert refused.status_code == 400 and "not the claimed" in refused.json()["error"], refused.text
        assert commit_lfs(server, alice[1], repo_id, path, content).status_code in (400, 404, 422)
        accepted = httpx.post(f"{cas}/v1/shards", content=files_shard([(terms, None)]), headers=headers)
        assert accepted.json() == {"result": 1}, accepted.text
        assert commit_lfs(server, alice[1], repo_id, path, content).status_code == 200
        assert httpx.get(f"{server.url}/{repo_id}/resolve/main/{path}").content == content


def test_the_running_sha256_covers_a_files_leading_run_of_the_sessions_xorbs() -> None:
    """chains.py on its own: the digest after as many of the session's first xorbs as begin the file, whole and in
    turn order since the session's last shard, and how many of the file's terms it covers; the caller rebuilds the
    rest."""
    import asyncio

    from keephub.xet.chains import Chains
    from keephub.xet.formats import Term

    pieces = {name: [random_bytes(1000, seed), random_bytes(500, seed + 1)] for name, seed in (("x", 1), ("y", 3))}
    names = {name: hashing.to_hex(xorb_hash(chunks)) for name, chunks in pieces.items()}
    raw = {name: xorb_hash(chunks) for name, chunks in pieces.items()}
    chains = Chains()
    tickets = [chains.ticket("session") for _ in range(3)]
    for ticket, name in zip(tickets, ("x", "y")):
        assert asyncio.run(ticket.take_turn())
        for chunk in pieces[name]:
            ticket.feed(chunk)
        ticket.complete(names[name], 2)
    tickets[2].close()  # an upload that failed: its turn passes, nothing is added
    x, y = b"".join(pieces["x"]), b"".join(pieces["y"])
    empty = hashlib.sha256().hexdigest()

    def resumed(session: str, terms: list) -> tuple[str, int]:
        digest, covered = chains.resume(session, terms)
        return digest.hexdigest(), covered

    whole = [Term(raw["x"], 1500, 0, 2), Term(raw["y"], 1500, 0, 2)]
    assert resumed("session", whole) == (hashlib.sha256(x + y).hexdigest(), 2)
    split = [Term(raw["x"], 1000, 0, 1), Term(raw["x"], 500, 1, 2)]
    assert resumed("session", split) == (hashlib.sha256(x).hexdigest(), 2)  # adjacent terms of one xorb
    assert resumed("session", [Term(raw["y"], 1500, 0, 2)]) == (empty, 0)  # not where the session began
    assert resumed("session", [Term(raw["x"], 1000, 0, 1)]) == (empty, 0)  # part of a xorb
    # Out of turn order (y's upload overtook x's), more than was sent, or y only partly: x alone is covered.
    assert resumed("session", [whole[0], whole[0]]) == (hashlib.sha256(x).hexdigest(), 1)
    assert resumed("session", whole + [whole[0]]) == (hashlib.sha256(x + y).hexdigest(), 2)
    assert resumed("session", [whole[0], Term(raw["y"], 1000, 0, 1)]) == (hashlib.sha256(x).hexdigest(), 1)
    assert resumed("other session", whole) == (empty, 0)
    digest, _ = chains.resume("session", whole)
    digest.update(b"more")  # the caller extends a copy: the session's own state is untouched
    assert resumed("session", whole) == (hashlib.sha256(x + y).hexdigest(), 2)

    # Once a shard registered the session's files, the next xorbs start a digest of their own: a file made of them
    # is covered from its start, as the session's first file was.
    begun_before = chains.ticket("session")
    chains.restart("session")
    assert resumed("session", whole) == (empty, 0)
    again = chains.ticket("session")
    asyncio.run(again.take_turn())
    for chunk in pieces["y"]:
        again.feed(chunk)
    again.complete(names["y"], 2)
    assert resumed("session", [whole[1]]) == (hashlib.sha256(y).hexdigest(), 1)
    # An upload begun before the restart and ending after it extends the old digest, never the new one.
    asyncio.run(begun_before.take_turn())
    for chunk in pieces["x"]:
        begun_before.feed(chunk)
    begun_before.complete(names["x"], 2)
    assert resumed("session", [whole[1], whole[0]]) == (hashlib.sha256(y).hexdigest(), 1)


def test_cas_tokens_are_scoped_to_one_repo_and_access(server: Server, alice, api: HfApi, repo_id: str) -> None:
    assert httpx.get(f"{server.url}/api/models/{repo_id}/xet-write-token/main").status_code == 401
    reader = server.token(alice[0], "read")
    denied = httpx.get(f"{server.url}/api/models/{repo_id}/xet-write-token/main",
                       headers={"Authorization": f"Bearer {reader}"})
    assert denied.status_code == 403
    other, other_token = server.user()
    api.update_repo_settings(repo_id, private=True)
    hidden = httpx.get(f"{server.url}/api/models/{repo_id}/xet-read-token/main",
                       headers={"Authorization": f"Bearer {other_token}"})
    assert hidden.status_code == 404
    assert httpx.get(f"{server.url}/api/models/{repo_id}/xet-admin-token/main").status_code == 404

    cas, read_headers = cas_token(server, reader, repo_id, "read")
    chunks = [random_bytes(10_000, 30)]
    target = f"{cas}/v1/xorbs/default/{hashing.to_hex(xorb_hash(chunks))}"
    assert httpx.post(target, content=xorb_bytes(chunks), headers=read_headers).status_code == 403
    assert httpx.post(target, content=xorb_bytes(chunks)).status_code == 401
    assert httpx.post(target, content=xorb_bytes(chunks), headers={"Authorization": "Bearer kxet1.e30.00"}).status_code == 401
    forged = read_headers["Authorization"][:-4] + ("0000" if not read_headers["Authorization"].endswith("0000") else "1111")
    assert httpx.post(target, content=xorb_bytes(chunks), headers={"Authorization": forged}).status_code == 401
    assert httpx.post(f"{cas}/v1/shards", content=b"", headers=read_headers).status_code == 403
    assert httpx.get(f"{cas}/v1/chunks/default/{'0' * 64}", headers=read_headers).status_code == 403


def test_reconstruction_ranges_and_signed_fetch_urls(server: Server, api: HfApi, alice, repo_id: str) -> None:
    data = random_bytes(1_000_000, 40)
    api.upload_file(path_or_fileobj=data, path_in_repo="f.bin", repo_id=repo_id)
    file_hash = httpx.head(f"{server.url}/{repo_id}/resolve/main/f.bin").headers["X-Xet-Hash"]
    cas, headers = cas_token(server, alice[1], repo_id, "read")
    for version, key in ((1, "fetch_info"), (2, "xorbs")):
        plan = httpx.get(f"{cas}/v{version}/reconstructions/{file_hash}", headers={**headers, "Range": "bytes=10-99"})
        assert plan.status_code == 200 and key in plan.json()
    plan = httpx.get(f"{cas}/v1/reconstructions/{file_hash}", headers=headers).json()
    rebuilt = bytearray()
    for term in plan["terms"]:
        fetch = next(f for f in plan["fetch_info"][term["hash"]] if f["range"]["start"] <= term["range"]["start"])
        span = fetch["url_range"]
        raw = httpx.get(fetch["url"], headers={"Range": f"bytes={span['start']}-{span['end']}"})
        assert raw.status_code == 206
        pos = 0
        while pos < len(raw.content):
            packed = int.from_bytes(raw.content[pos + 1 : pos + 4], "little")
            payload = raw.content[pos + 8 : pos + 8 + packed]
            rebuilt += lz4.frame.decompress(payload) if raw.content[pos + 4] == 1 else payload
            pos += 8 + packed
    assert bytes(rebuilt) == data

    url = plan["fetch_info"][plan["terms"][0]["hash"]][0]["url"]
    span = plan["fetch_info"][plan["terms"][0]["hash"]][0]["url_range"]
    # Past the granted span: keephub's own fetch route answers 416, an S3 URL (whose signature covers the exact
    # Range) 403; never bytes.
    assert httpx.get(url, headers={"Range": f"bytes=0-{span['end'] + 1}"}).status_code in (416, 403)
    assert httpx.get(url.replace("s=", "s=0"), headers={"Range": "bytes=0-10"}).status_code == 403
    past = httpx.get(f"{cas}/v1/reconstructions/{file_hash}", headers={**headers, "Range": f"bytes={len(data)}-{len(data) + 5}"})
    assert past.status_code == 416
    assert httpx.get(f"{cas}/v1/reconstructions/{'0' * 64}", headers=headers).status_code == 404
    bad_range = httpx.get(f"{cas}/v1/reconstructions/{file_hash}", headers={**headers, "Range": "bytes=9-3"})
    assert bad_range.status_code == 400 and "Range" in bad_range.json()["error"]


@contextmanager
def own_server(tmp_path: Path, **env: str) -> Iterator[Server]:
    """A server of this test's own, for settings the session server does not have, or to kill it."""
    srv = Server(data_dir=tmp_path / "data", port=free_port(), env=env)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_expired_cas_token_is_refused(tmp_path: Path) -> None:
    with own_server(tmp_path, KEEPHUB_XET_TOKEN_TTL_SECONDS="1") as srv:
        name, token = srv.user()
        HfApi(endpoint=srv.url, token=token).create_repo(f"{name}/r")
        cas, headers = cas_token(srv, token, f"{name}/r", "write")
        time.sleep(2.2)
        refused = httpx.post(f"{cas}/v1/shards", content=b"", headers=headers)
        assert refused.status_code == 401 and "expired" in refused.json()["error"]


def test_garbage_collection_keeps_committed_files_and_drops_orphans(tmp_path: Path) -> None:
    with own_server(tmp_path, KEEPHUB_XET_GC_GRACE_SECONDS="0") as srv:
        name, token = srv.user()
        api = HfApi(endpoint=srv.url, token=token)
        api.create_repo(f"{name}/r")
        data = random_bytes(800_000, 50)
        api.upload_file(path_or_fileobj=data, path_in_repo="kept.bin", repo_id=f"{name}/r")
        cas, headers = cas_token(srv, token, f"{name}/r", "write")
        orphan = [random_bytes(30_000, 51)]
        orphan_name = hashing.to_hex(xorb_hash(orphan))
        assert httpx.post(f"{cas}/v1/xorbs/default/{orphan_name}", content=xorb_bytes(orphan),
                          headers=headers).status_code == 200
        kept = stored_xorbs(srv) - {orphan_name}
        env = {**os.environ, **srv.env}  # the server's settings: its grace of 0 s, its database
        dry = subprocess.run([sys.executable, "-m", "keephub.cli", "--data-dir", str(srv.data_dir), "gc", "--dry-run"],
                             capture_output=True, text=True, env=env, timeout=60)
        assert "would remove 1 xorb" in dry.stdout, dry.stdout + dry.stderr
        assert orphan_name in stored_xorbs(srv)
        done = subprocess.run([sys.executable, "-m", "keephub.cli", "--data-dir", str(srv.data_dir), "gc"],
                              capture_output=True, text=True, env=env, timeout=60)
        assert "removed 1 xorb" in done.stdout, done.stdout + done.stderr
        assert stored_xorbs(srv) == kept
        # gc's last step, deleting the files it un-indexed, racing a client that uploads that xorb again:
        # the re-uploaded xorb is indexed anew, and the deletion step must leave it alone.
        assert httpx.post(f"{cas}/v1/xorbs/default/{orphan_name}", content=xorb_bytes(orphan),
                          headers=headers).status_code == 200
        from keephub.app import open_hub
        from keephub.config import Settings

        open_hub(Settings.load(config_file=None, environ=env, overrides={"data_dir": srv.data_dir})).cas.delete_unindexed_xorbs(
            [orphan_name])
        assert orphan_name in stored_xorbs(srv)
        downloaded = hf_hub_download(f"{name}/r", "kept.bin", cache_dir=str(tmp_path / "c"), endpoint=srv.url,
                                     token=token)
        assert Path(downloaded).read_bytes() == data


def test_cas_tokens_end_with_the_job_token_they_came_from(server: Server, api: HfApi, alice, repo_id: str) -> None:
    """A job's HF_TOKEN is revoked when the job ends; a CAS token the job obtained with it must stop working
    then too, not an hour later. (This job has no target repo, so its token, and its CAS token, only read.)"""
    code = ("import os, httpx; r = httpx.get(os.environ['HF_ENDPOINT'] + "
            f"'/api/models/{repo_id}/xet-read-token/main', "
            "headers={'Authorization': 'Bearer ' + os.environ['HF_TOKEN']}); print('cas-token', r.json()['accessToken'])")
    job = api.run_job(image="ghcr.io/astral-sh/uv:python3.12-bookworm", command=["python", "-c", code],
                      secrets={"HF_TOKEN": "$HF_TOKEN"})
    assert api.wait_for_job(job_id=job.id, timeout=60).status.stage == "COMPLETED"
    printed = [line.split()[1] for line in api.fetch_job_logs(job_id=job.id) if line.startswith("cas-token")]
    assert printed, "the job could not obtain a CAS token"
    refused = httpx.get(f"{server.url}/cas/v1/reconstructions/{'ab' * 32}",
                        headers={"Authorization": f"Bearer {printed[0]}"})
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    # The user's own token, still valid, gets CAS tokens that work.
    cas, headers = cas_token(server, alice[1], repo_id, "write")
    assert httpx.post(f"{cas}/v1/shards", content=b"", headers=headers).status_code == 400


def test_acknowledged_xet_upload_survives_kill_9(tmp_path: Path) -> None:
    with own_server(tmp_path) as srv:
        name, token = srv.user()
        api = HfApi(endpoint=srv.url, token=token)
        api.create_repo(f"{name}/r")
        data = random_bytes(3_000_000, 60)
        commit = api.upload_file(path_or_fileobj=data, path_in_repo="w.bin", repo_id=f"{name}/r")
        srv.kill()
        srv.start()
        assert api.list_repo_commits(f"{name}/r")[0].commit_id == commit.oid
        downloaded = hf_hub_download(f"{name}/r", "w.bin", cache_dir=str(tmp_path / "c"), endpoint=srv.url,
                                     token=token)
        assert Path(downloaded).read_bytes() == data


def test_cas_tokens_are_rechecked_against_the_repo_and_rights_of_now(server: Server, api: HfApi, alice) -> None:
    """A token names its repo by id and creation time, and the user's rights are checked on every request:
    a deleted repo's token does not reach a later repo that reused its id, nor does an anonymous token
    survive the repo turning private."""
    scratch = f"{alice[0]}/scratch"
    api.create_repo(scratch)
    cas, headers = cas_token(server, alice[1], scratch, "write")
    api.delete_repo(scratch)
    mallory_repo_gone = httpx.post(f"{cas}/v1/shards", content=b"", headers=headers)
    assert mallory_repo_gone.status_code == 401 and "no longer exists" in mallory_repo_gone.json()["error"]

    public = f"{alice[0]}/soon-private"
    api.create_repo(public)
    anonymous = httpx.get(f"{server.url}/api/models/{public}/xet-read-token/main").json()
    api.update_repo_settings(public, private=True)
    refused = httpx.get(f"{anonymous['casUrl']}/v1/reconstructions/{'0' * 64}",
                        headers={"Authorization": f"Bearer {anonymous['accessToken']}"})
    assert refused.status_code == 403 and "can no longer read" in refused.json()["error"]


def test_xorb_with_too_many_chunks_and_open_ranges_past_the_end(server: Server, alice, api: HfApi,
                                                                 repo_id: str) -> None:
    cas, headers = cas_token(server, alice[1], repo_id, "write")
    tiny = [bytes([i % 256, i // 256]) for i in range(8193)]
    response = httpx.post(f"{cas}/v1/xorbs/default/{hashing.to_hex(xorb_hash(tiny))}", content=xorb_bytes(tiny, 0),
                          headers=headers)
    assert response.status_code == 400 and "8192" in response.json()["error"]
    api.upload_file(path_or_fileobj=random_bytes(5000, 70), path_in_repo="s.bin", repo_id=repo_id)
    api.upload_file(path_or_fileobj=random_bytes(300_000, 71), path_in_repo="t.bin", repo_id=repo_id)
    file_hash = httpx.head(f"{server.url}/{repo_id}/resolve/main/t.bin").headers["X-Xet-Hash"]
    _, read = cas_token(server, alice[1], repo_id, "read")
    for spec in ("bytes=300000-", "bytes=99999999999999-"):
        past = httpx.get(f"{cas}/v1/reconstructions/{file_hash}", headers={**read, "Range": spec})
        assert past.status_code == 416, spec
