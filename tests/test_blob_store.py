"""The blob-store contract, passed by every backend: local directory, memory, S3 (a real SeaweedFS).

What a store promises keephub: a blob is visible only under the key its bytes hash to (or, for content the
caller verified, after `commit_verified`), refused or aborted writes leave nothing behind, reads honour
ranges, and interrupted uploads are swept.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from seaweedfs import SeaweedFS

from keephub.storage.blobs import (
    BlobStore,
    HashBehind,
    HashMismatch,
    LocalBlobStore,
    MemoryBlobStore,
    SizeMismatch,
)
from keephub.storage.blobs.s3 import S3BlobStore

# Each test opens the stores it checks (a directory, memory, the session's SeaweedFS), whatever the pass.
pytestmark = pytest.mark.once

PART = 5 * 1024 * 1024  # S3's smallest multipart part, so the S3 store's multipart path runs on small data


@pytest.fixture(params=["local", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    if request.param == "memory":
        return MemoryBlobStore()
    weed: SeaweedFS = request.getfixturevalue("seaweedfs")
    return S3BlobStore(weed.client(), endpoint=weed.endpoint, bucket=request.getfixturevalue("s3_bucket"),
                       prefix=f"t{uuid.uuid4().hex[:12]}/lfs/", presign_ttl_seconds=60, part_bytes=PART)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(store: BlobStore, data: bytes, pieces: int = 3) -> str:
    writer = store.begin(sha(data))
    step = max(1, -(-len(data) // pieces))
    for start in range(0, len(data), step):
        writer.write(data[start : start + step])
    writer.commit(len(data))
    return sha(data)


def read(store: BlobStore, key: str, start: int = 0, length: int | None = None) -> bytes:
    fh = store.open_range(key, start, length)
    try:
        out = b""
        while piece := fh.read(1 << 20):
            out += piece
        return out
    finally:
        fh.close()


def unfinished_s3_uploads(store: BlobStore) -> list[str]:
    if not isinstance(store, S3BlobStore):
        return []
    answer = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
    return [u["Key"] for u in answer.get("Uploads", [])]


def test_committed_blob_is_visible_listed_and_read_whole(store: BlobStore) -> None:
    data = os.urandom(300_000)
    key = put(store, data)
    assert store.exists(key) and store.size(key) == len(data)
    assert read(store, key) == data
    assert key in set(store.keys())


def test_multipart_sized_blob_round_trips(store: BlobStore) -> None:
    """More than two S3 parts (the last one short): the parts are stitched in order."""
    data = os.urandom(2 * PART + 12345)
    key = put(store, data, pieces=7)
    assert store.size(key) == len(data) and read(store, key) == data
    assert unfinished_s3_uploads(store) == []


@pytest.mark.parametrize("size", [0, 1000, PART + 1])
def test_wrong_hash_leaves_nothing(store: BlobStore, size: int) -> None:
    data = os.urandom(size)
    claimed = sha(data + b"x")
    writer = store.begin(claimed)
    writer.write(data)
    with pytest.raises(HashMismatch, match=claimed):
        writer.commit(len(data))
    assert not store.exists(claimed) and claimed not in set(store.keys())
    assert unfinished_s3_uploads(store) == []


def test_wrong_size_leaves_nothing(store: BlobStore) -> None:
    data = os.urandom(5000)
    writer = store.begin(sha(data))
    writer.write(data)
    with pytest.raises(SizeMismatch, match="5000 bytes but 5001"):
        writer.commit(5001)
    assert not store.exists(sha(data))


def test_abort_leaves_nothing(store: BlobStore) -> None:
    data = os.urandom(PART + 100)
    writer = store.begin(sha(data))
    writer.write(data)
    writer.abort()
    writer.abort()  # idempotent
    assert not store.exists(sha(data)) and list(store.keys()) == []
    assert unfinished_s3_uploads(store) == []


def test_empty_blob(store: BlobStore) -> None:
    key = put(store, b"")
    assert store.size(key) == 0 and read(store, key) == b""


def test_range_reads(store: BlobStore) -> None:
    data = os.urandom(100_000)
    key = put(store, data)
    for start, length in [(0, 1), (0, None), (17, 4096), (99_999, 1), (50_000, None), (100_000, None), (5, 0)]:
        expected = data[start:] if length is None else data[start : start + length]
        assert read(store, key, start, length) == expected, (start, length)


def test_missing_blob(store: BlobStore) -> None:
    key = sha(b"never stored")
    assert not store.exists(key)
    with pytest.raises(FileNotFoundError):
        store.size(key)
    with pytest.raises(FileNotFoundError):
        read(store, key)
    store.delete(key)  # deleting what is not there is fine


def test_keys_must_be_content_hashes(store: BlobStore) -> None:
    for bad in ["../../etc/passwd", "A" * 64, "abc", ""]:
        with pytest.raises(ValueError):
            store.begin(bad)
        with pytest.raises(ValueError):
            store.exists(bad)


def test_delete(store: BlobStore) -> None:
    kept, gone = put(store, b"kept"), put(store, b"gone")
    store.delete(gone)
    assert not store.exists(gone) and store.exists(kept)
    assert set(store.keys()) == {kept}


def test_caller_verified_content_is_read_back_then_placed(store: BlobStore) -> None:
    """A xorb's path: no sha256, the bytes read back for the caller's own check, then placed under its key."""
    data = os.urandom(PART + 999)
    key = sha(b"some merkle hash")
    writer = store.begin(key, hashed=False, spool=True)
    writer.write(data[:1000])
    writer.write(data[1000:])
    with pytest.raises(RuntimeError):
        _ = writer.sha256
    with writer.read_back() as fh:
        assert fh.read() == data
    assert not store.exists(key)
    writer.commit_verified()
    assert read(store, key) == data


def test_a_check_alongside_the_write_sees_every_piece_and_its_refusal_leaves_nothing(store: BlobStore) -> None:
    """A xorb's path: the caller's check of each piece runs beside the store's write of it, sees the same bytes in
    order, and its error comes out of `write` (after the store is done with the piece); aborting then keeps
    nothing, and the store takes the next blob as usual."""
    data = os.urandom(PART + 999)
    seen: list[bytes] = []
    key = sha(b"a checked merkle hash")
    writer = store.begin(key, hashed=False)
    writer.write(data[:1000], alongside=lambda piece: seen.append(bytes(piece)))
    writer.write(data[1000:], alongside=lambda piece: seen.append(bytes(piece)))
    writer.commit_verified()
    assert b"".join(seen) == data and read(store, key) == data

    def refuse(piece: bytes | memoryview) -> None:
        raise ValueError("chunk 3 at byte 99: sizes are outside the limits")

    refused = sha(b"a refused merkle hash")
    writer = store.begin(refused, hashed=False)
    with pytest.raises(ValueError, match="chunk 3"):
        writer.write(data, alongside=refuse)
    writer.abort()
    assert not store.exists(refused) and refused not in set(store.keys())
    again = os.urandom(5000)
    assert read(store, put(store, again)) == again


class SlowDigest:
    """A sha256 that copies each piece only after a pause, so a buffer refilled before its piece is hashed shows
    up as a wrong digest."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()

    def update(self, piece: bytes | memoryview) -> None:
        time.sleep(0.002)
        self._sha256.update(bytes(piece))

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


def test_hash_behind_hashes_each_piece_while_the_next_is_read(store: BlobStore) -> None:
    """A Xet file's sha256 rebuilt from stored ranges: the ranges read one after another into two reused buffers,
    parts of each piece handed on as the caller parses them, hashed while the next bytes are read; the pieces
    are the ranges' bytes, and the digest covers exactly what was handed on, as it was when handed on, from
    every backend (S3's bodies have no `readinto`)."""
    data = os.urandom(300_001)
    key = put(store, data)
    behind = HashBehind(SlowDigest(), 8192)
    expected = hashlib.sha256()
    for start, length in [(0, 100_000), (100_000, 8192), (5, 3), (123_457, 176_544), (299_999, 2)]:
        pieces = b""
        for piece in behind.pieces(store.open_range(key, start, length), length):
            behind.add(piece[8:])  # what a xorb's chunk headers leave of a piece, in two views
            behind.add(piece[:8])
            expected.update(bytes(piece[8:]) + bytes(piece[:8]))
            pieces += piece
        assert pieces == data[start : start + length]
    assert behind.hexdigest() == expected.hexdigest()


def test_multipart_parts(store: BlobStore) -> None:
    upload = uuid.uuid4().hex
    parts = [os.urandom(2000 + n) for n in range(3)]
    for number, body in enumerate(parts, 1):
        writer = store.begin_part(upload, number)
        writer.write(body)
        assert writer.sha256 == sha(body)  # the ETag the client gets back
        writer.commit_verified()
    streams = store.open_parts(upload, 3)
    try:
        assert [s.read() for s in streams] == parts
    finally:
        for s in streams:
            s.close()
    with pytest.raises(FileNotFoundError):
        store.open_parts(upload, 4)
    assert list(store.keys()) == []  # parts are not blobs
    store.discard_parts(upload)
    with pytest.raises(FileNotFoundError):
        store.open_parts(upload, 1)


def test_sweep_stale_removes_interrupted_uploads_only(store: BlobStore) -> None:
    kept = put(store, b"a finished blob")
    upload = uuid.uuid4().hex
    part = store.begin_part(upload, 1)
    part.write(b"part")
    part.commit_verified()
    crashed = store.begin(sha(b"y" * (PART + 1)))
    crashed.write(b"y" * (PART + 1))  # an S3 multipart upload is open now, a local temp file written
    time.sleep(1.1)
    assert store.sweep_stale(3600) == 0
    removed = store.sweep_stale(1)
    assert removed >= (1 if isinstance(store, MemoryBlobStore) else 2)
    with pytest.raises(FileNotFoundError):
        store.open_parts(upload, 1)
    assert unfinished_s3_uploads(store) == []
    assert set(store.keys()) == {kept} and read(store, kept) == b"a finished blob"
    crashed.abort()  # the writer's own clean-up after a sweep does not fail


def test_concurrent_writers_of_one_key(store: BlobStore) -> None:
    """Same content from several uploads at once: all succeed, one blob; a liar racing them is refused."""
    data = os.urandom(PART + 4321)
    key = sha(data)
    errors: list[BaseException] = []
    refused: list[BaseException] = []

    def honest() -> None:
        try:
            put(store, data, pieces=5)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    def liar() -> None:
        writer = store.begin(key)
        writer.write(os.urandom(len(data)))
        try:
            writer.commit(len(data))
        except HashMismatch as exc:
            refused.append(exc)

    threads = [threading.Thread(target=honest) for _ in range(4)] + [threading.Thread(target=liar)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(refused) == 1
    assert read(store, key) == data and list(store.keys()) == [key]
    assert unfinished_s3_uploads(store) == []


def test_s3_presigned_url_serves_one_object_until_it_expires(seaweedfs: SeaweedFS, s3_bucket: str) -> None:
    """The URLs downloads are redirected to: the object's bytes (with Range), 403 once tampered with, pointed
    at another object, or expired; the S3 server checks this, with real identities configured."""
    import httpx

    bucket = s3_bucket
    store = S3BlobStore(seaweedfs.client(), endpoint=seaweedfs.endpoint, bucket=bucket, prefix=f"p{uuid.uuid4().hex[:12]}/lfs/",
                        presign_ttl_seconds=2)
    data, other = os.urandom(70_000), os.urandom(10)
    key, other_key = put(store, data), put(store, other)
    url = store.presigned_get(key)
    assert url is not None and "Signature" in url
    assert httpx.get(url).content == data
    assert httpx.get(url, headers={"Range": "bytes=10-19"}).content == data[10:20]
    assert httpx.get(url.replace(key, other_key)).status_code == 403
    signature = url.split("X-Amz-Signature=")[1][:64]
    assert httpx.get(url.replace(signature, signature[::-1])).status_code == 403
    assert httpx.get(url.replace("X-Amz-Expires=2", "X-Amz-Expires=3600")).status_code == 403
    spanned = store.presigned_get(key, (100, 199))
    assert spanned is not None
    exact = httpx.get(spanned, headers={"Range": "bytes=100-199"})
    assert exact.status_code == 206 and exact.content == data[100:200]
    for other_range in [None, "bytes=0-199", "bytes=100-200", "bytes=120-150"]:
        refused = httpx.get(spanned, headers={"Range": other_range} if other_range else {})
        assert refused.status_code == 403 and data[100:200] not in refused.content, other_range
    time.sleep(3)
    expired = httpx.get(url)
    assert expired.status_code == 403 and data not in expired.content


def test_blobs_settings_choose_and_check_the_backend(tmp_path: Path) -> None:
    """The [blobs] table (and KEEPHUB_BLOB_*) picks the backend; settings it cannot use stop start-up naming
    the setting, and the secret never appears in the settings' repr."""
    from keephub.config import ConfigError, Settings
    from keephub.storage.blobs import open_blob_stores

    config = tmp_path / "keephub.toml"
    config.write_text('[blobs]\nbackend = "s3"\nendpoint = "http://127.0.0.1:9"\nbucket = "kh-bucket"\n'
                      'prefix = "prod"\naccess_key_id = "AKID"\nsecret_access_key = "very-secret"\n')
    settings = Settings.load(config_file=config, environ={}, overrides={"data_dir": tmp_path / "data"})
    assert (settings.blob_backend, settings.blob_bucket, settings.blob_prefix) == ("s3", "kh-bucket", "prod")
    assert "very-secret" not in repr(settings)
    stores = open_blob_stores(settings)
    assert isinstance(stores.lfs, S3BlobStore) and stores.lfs.prefix == "prod/lfs/"
    assert stores.xorbs.prefix == "prod/xorbs/"  # type: ignore[attr-defined]
    memory = Settings.load(environ={"KEEPHUB_BLOB_BACKEND": "memory"}, overrides={"data_dir": tmp_path / "m"})
    assert isinstance(open_blob_stores(memory).lfs, MemoryBlobStore)
    refused = {
        "blobs.backend": {"KEEPHUB_BLOB_BACKEND": "ftp"},
        "blobs.bucket is required": {"KEEPHUB_BLOB_BACKEND": "s3"},
        "go together": {"KEEPHUB_BLOB_BACKEND": "s3", "KEEPHUB_BLOB_BUCKET": "b", "KEEPHUB_BLOB_ACCESS_KEY_ID": "a"},
        "blobs.part_bytes": {"KEEPHUB_BLOB_BACKEND": "s3", "KEEPHUB_BLOB_BUCKET": "b",
                             "KEEPHUB_BLOB_PART_BYTES": "1024"},
        "blobs.presign_ttl_seconds": {"KEEPHUB_BLOB_BACKEND": "s3", "KEEPHUB_BLOB_BUCKET": "b",
                                      "KEEPHUB_BLOB_PRESIGN_TTL_SECONDS": "0"},
    }
    for message, environ in refused.items():
        with pytest.raises(ConfigError, match=message):
            open_blob_stores(Settings.load(environ=environ, overrides={"data_dir": tmp_path / "x"}))


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 4 * 1024 * 1024 - 1, 4 * 1024 * 1024, 9 * 1024 * 1024 + 7])
def test_local_blobs_written_around_the_page_cache_keep_every_byte(tmp_path: Path, size: int) -> None:
    """Durable local writes go out O_DIRECT in aligned pieces, the last padded and the file cut back: each size
    about a piece or block boundary reads back whole and exactly as long as written."""
    store = LocalBlobStore(tmp_path / "blobs")
    data = os.urandom(size)
    put(store, data, pieces=7)
    assert store.size(sha(data)) == size
    assert read(store, sha(data)) == data


def test_local_writes_after_a_read_back_land_after_it(tmp_path: Path) -> None:
    """Reading back flushes the unaligned tail; bytes written after that still go to the right offset."""
    store = LocalBlobStore(tmp_path / "blobs")
    first, second = os.urandom(4 * 1024 * 1024 + 3), os.urandom(5000)
    writer = store.begin(sha(first + second))
    writer.write(first)
    with writer.read_back() as fh:
        assert fh.read() == first
    writer.write(second)
    writer.commit(len(first) + len(second))
    assert read(store, sha(first + second)) == first + second


def test_local_writes_fall_back_to_the_page_cache_where_direct_writes_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem that accepts O_DIRECT at open but refuses the writes (EINVAL) gets cached writes instead,
    every byte kept, whether it refuses the first piece or only the padded tail, and also when the refusal
    comes back (from the pool thread writing behind) after the next piece has begun."""
    import errno

    from keephub.storage.blobs import local

    probe = local._DirectFile.create(tmp_path / "probe")
    if probe is None:
        pytest.skip("this filesystem has no O_DIRECT: the cached path is all it ever takes")
    probe.close()
    real_pwrite = os.pwrite
    refused = []

    def refuse_direct(fd: int, data, offset: int) -> int:  # type: ignore[no-untyped-def]
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & local._O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(local.os, "pwrite", refuse_direct)
    store = LocalBlobStore(tmp_path / "blobs")
    for size in (10, 4 * 1024 * 1024 + 10, 12 * 1024 * 1024 + 10):
        data = os.urandom(size)
        put(store, data, pieces=3)
        assert read(store, sha(data)) == data
    # The first blob's padded tail, the second's and the third's first piece.
    assert refused == [4096, 4 * 1024 * 1024, 4 * 1024 * 1024]


def test_local_writes_from_page_aligned_buffers_go_to_the_disk_with_no_copy(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A piece in page-aligned writable memory (direct_body.py's buffers) is written to the disk from that memory
    itself, its whole blocks at least; what follows it (an unaligned tail, a bytes piece) is gathered as before,
    every byte lands in order, and a filesystem that refuses the direct write gets the same bytes cached."""
    import errno
    import fcntl
    import mmap

    from keephub.storage.blobs import local

    probe = local._DirectFile.create(tmp_path / "probe")
    if probe is None:
        pytest.skip("this filesystem has no O_DIRECT: the cached path is all it ever takes")
    probe.close()
    real_pwrite = os.pwrite
    sources: list[object] = []
    refuse = False

    def record(fd: int, data, offset: int) -> int:  # type: ignore[no-untyped-def]
        if refuse and fcntl.fcntl(fd, fcntl.F_GETFL) & local._O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        sources.append(memoryview(data).obj)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(local.os, "pwrite", record)
    store = LocalBlobStore(tmp_path / "blobs")
    for refuse in (False, True):
        first, second = mmap.mmap(-1, 8 * 1024 * 1024), mmap.mmap(-1, 4 * 1024 * 1024 + 4096)
        first.write(os.urandom(len(first)))
        second.write(os.urandom(len(second)))
        last = os.urandom(100)
        data = bytes(first) + bytes(second[:4 * 1024 * 1024 + 5]) + last
        sources.clear()
        writer = store.begin(sha(data))
        writer.write(memoryview(first))
        writer.write(memoryview(second)[:4 * 1024 * 1024 + 5])
        writer.write(last)
        writer.commit(len(data))
        assert read(store, sha(data)) == data
        if not refuse:
            # Straight from `first` and from `second`'s whole blocks; its 5 bytes and `last`: one padded piece.
            assert sources[:2] == [first, second] and len(sources) == 3 and sources[2] not in (first, second)


def test_a_failed_local_write_leaves_nothing_and_the_next_write_works(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills up mid-blob: the writer's error is the disk's own (ENOSPC), nothing is placed, its
    temporary file is gone, and the store writes the next blob normally."""
    import errno

    from keephub.storage.blobs import local

    store = LocalBlobStore(tmp_path / "blobs")
    real_pwrite = os.pwrite
    written = []

    def fill_up(fd: int, data, offset: int) -> int:  # type: ignore[no-untyped-def]
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(local.os, "pwrite", fill_up)
    data = os.urandom(9 * 1024 * 1024)
    writer = store.begin(sha(data))
    with pytest.raises(OSError) as failed:
        writer.write(data)
        writer.commit(len(data))
    writer.abort()
    assert failed.value.errno == errno.ENOSPC
    assert not store.exists(sha(data)) and list(store.tmp.iterdir()) == []
    monkeypatch.setattr(local.os, "pwrite", real_pwrite)
    again = os.urandom(5 * 1024 * 1024 + 1)
    put(store, again)
    assert read(store, sha(again)) == again
