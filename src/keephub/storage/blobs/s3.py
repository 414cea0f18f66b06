"""Blobs in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, Ceph RGW), through boto3.

A blob is written as a multipart upload of its final key: parts of bounded size are sent as the bytes arrive
(a 1 GiB upload holds one part in memory, never the object), and the upload is completed, which is what
makes the object visible, only after `BlobWriter` has checked the bytes. A refused or interrupted write
aborts its multipart upload; one a crash leaves open is aborted by `sweep_stale`. Objects live under
`<prefix>objects/<key>`, multipart parts of keephub's own LFS multipart transfer under
`<prefix>uploads/<upload id>/<part>`.

Every botocore failure becomes `BlobStoreUnavailable` (503) naming the endpoint, except a missing object,
which is `FileNotFoundError` as in the other backends. Credentials are never part of a message.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from keephub.config import ConfigError
from keephub.storage.blobs.base import (
    BlobStoreUnavailable,
    BlobWriter,
    ByteStream,
    check_key,
    check_part,
    is_sha256,
)

# Parts of `part_bytes` (16 MiB by default); after every 1000 parts the size grows by as much again, so the
# 10,000 parts S3 allows reach 880 GiB at 16 MiB, past keephub's 500 GiB object limit, while memory stays one
# part per upload.
MIN_PART_BYTES = 5 * 1024 * 1024
PART_BYTES = 16 * 1024 * 1024
_PARTS_PER_STEP = 1000
log = logging.getLogger("keephub")
_MISSING = ("404", "NoSuchKey", "NotFound", "NoSuchUpload")


class S3BlobStore:
    """One logical store (LFS objects, or xorbs) under `prefix` in `bucket`; stores may share a bucket."""

    def __init__(self, client: Any, *, endpoint: str, bucket: str, prefix: str, presign_ttl_seconds: int,
                 part_bytes: int = PART_BYTES) -> None:
        self.client = client
        self.endpoint = endpoint or "AWS S3"
        self.bucket = bucket
        self.prefix = prefix
        self.presign_ttl_seconds = presign_ttl_seconds
        self.part_bytes = part_bytes
        self.label = f"S3 at {self.endpoint}, bucket {bucket}"

    # -- errors ---------------------------------------------------------------------------------------
    @contextmanager
    def _s3(self, doing: str) -> Iterator[None]:
        """Turn botocore's failures into a 503 naming the backend; a missing object into FileNotFoundError."""
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise FileNotFoundError(f"{doing}: no such object in {self.label}") from None
            raise BlobStoreUnavailable(f"the blob store (S3 at {self.endpoint}) refused to {doing}: {code or exc}; "
                                       "nothing was made visible; check the bucket and keephub's credentials "
                                       "([blobs] in the config), then retry") from None
        except (BotoCoreError, OSError) as exc:
            raise BlobStoreUnavailable(f"the blob store (S3 at {self.endpoint}) is unreachable ({type(exc).__name__}"
                                       f" while trying to {doing}); nothing was made visible; retry once it is "
                                       "back, keephub needs no restart") from None

    def check(self) -> None:
        """At start: the endpoint answers, the bucket exists, and the credentials may write, read and delete in
        it (a probe object under the prefix, named for this check alone: servers starting together each write
        their own). Each failure names the setting to fix."""
        probe = f"{self.prefix}.keephub-probe-{uuid.uuid4().hex}"
        try:
            self.client.head_bucket(Bucket=self.bucket)
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"probe")
            self.client.get_object(Bucket=self.bucket, Key=probe)["Body"].read()
            self.client.delete_object(Bucket=self.bucket, Key=probe)
        except NoCredentialsError:
            raise ConfigError("blobs.access_key_id: no S3 credentials; set [blobs] access_key_id and "
                              "secret_access_key (or KEEPHUB_BLOB_ACCESS_KEY_ID / KEEPHUB_BLOB_SECRET_ACCESS_KEY), "
                              "or give boto3 its own (AWS_ACCESS_KEY_ID, ~/.aws/credentials)") from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("404", "NoSuchBucket"):
                raise ConfigError(f"blobs.bucket: bucket {self.bucket!r} does not exist at {self.endpoint}; create "
                                  "it, or name an existing one in [blobs] bucket") from None
            if status == 403 or code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise ConfigError(f"blobs.access_key_id / blobs.secret_access_key: {self.endpoint} refused them "
                                  f"({code}) for bucket {self.bucket!r}; keephub needs to read, write, list and "
                                  "delete objects there") from None
            raise ConfigError(f"blobs: {self.endpoint} answered {code or status} for bucket {self.bucket!r}; "
                              "check [blobs] endpoint, bucket and region") from None
        except BotoCoreError as exc:
            raise ConfigError(f"blobs.endpoint: the S3 server at {self.endpoint} cannot be reached ({exc}); start "
                              "it, or fix [blobs] endpoint (KEEPHUB_BLOB_ENDPOINT)") from None

    # -- blobs ----------------------------------------------------------------------------------------
    def _object(self, key: str) -> str:
        return f"{self.prefix}objects/{check_key(key)}"

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        with self._s3(f"look up blob {key}"):
            return int(self.client.head_object(Bucket=self.bucket, Key=self._object(key))["ContentLength"])

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> ByteStream:
        if length == 0:
            return io.BytesIO()
        params = {"Bucket": self.bucket, "Key": self._object(key)}
        if start or length is not None:
            params["Range"] = f"bytes={start}-" if length is None else f"bytes={start}-{start + length - 1}"
        try:
            with self._s3(f"read blob {key}"):
                return _FullReads(self.client.get_object(**params)["Body"])
        except BlobStoreUnavailable as exc:
            if "InvalidRange" in exc.message:  # a range starting at the end: nothing to read
                return io.BytesIO()
            raise

    def presigned_get(self, key: str, span: tuple[int, int] | None = None) -> str | None:
        """A GET URL for this one object, signed with keephub's credentials, valid `presign_ttl_seconds`.
        Computed locally (no request to S3); the S3 server checks the signature and the expiry. A `span` is
        signed as the Range header (SigV4 signs it: any other Range, or none, gets 403)."""
        params = {"Bucket": self.bucket, "Key": self._object(key)}
        if span is not None:
            params["Range"] = f"bytes={span[0]}-{span[1]}"
        with self._s3(f"sign a URL for blob {key}"):
            return str(self.client.generate_presigned_url("get_object", Params=params,
                                                          ExpiresIn=self.presign_ttl_seconds))

    def begin(self, key: str, *, hashed: bool = True, spool: bool = False) -> BlobWriter:
        """`spool` keeps a copy in an anonymous local temporary file for `read_back` (a xorb's verification reads
        it; xorbs are at most 64 MiB): an unfinished multipart upload cannot be read from S3."""
        return BlobWriter(key, _MultipartSink(self, self._object(key), spool), hashed=hashed)

    def keys(self) -> Iterator[str]:
        start = f"{self.prefix}objects/"
        for item in self._list(start):
            name = item["Key"][len(start):]
            if is_sha256(name):
                yield name

    def _list(self, prefix: str) -> Iterator[dict]:
        with self._s3("list objects"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get("Contents", [])

    def delete(self, key: str) -> None:
        with self._s3(f"delete blob {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._object(key))

    # -- parts of keephub's LFS multipart transfer ----------------------------------------------------
    def _part(self, upload_id: str, part_number: int) -> str:
        check_part(upload_id, part_number)
        return f"{self.prefix}uploads/{upload_id}/{part_number:06d}"

    def begin_part(self, upload_id: str, part_number: int) -> BlobWriter:
        return BlobWriter(f"{upload_id}/{part_number}", _MultipartSink(self, self._part(upload_id, part_number), False))

    def open_parts(self, upload_id: str, count: int) -> list[ByteStream]:
        """Parts are listed now and each opened when first read, so no more than one response is held open."""
        present = {item["Key"] for item in self._list(f"{self.prefix}uploads/{upload_id}/")}
        keys = [self._part(upload_id, n) for n in range(1, count + 1)]
        missing = [n for n, key in enumerate(keys, 1) if key not in present]
        if missing:
            raise FileNotFoundError(f"part {missing[0]} of upload {upload_id} was never uploaded")
        return [_LazyObject(self, key) for key in keys]

    def discard_parts(self, upload_id: str) -> None:
        for item in list(self._list(f"{self.prefix}uploads/{upload_id}/")):
            with self._s3("delete a multipart part"):
                self.client.delete_object(Bucket=self.bucket, Key=item["Key"])

    def sweep_stale(self, older_than_seconds: float) -> int:
        """Abort multipart uploads (writes a crash interrupted) and delete LFS parts older than the cutoff."""
        cutoff = datetime.fromtimestamp(time.time() - older_than_seconds, UTC)
        removed = 0
        with self._s3("list unfinished uploads"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                               Prefix=self.prefix)
            stale = [(u["Key"], u["UploadId"]) for page in pages for u in page.get("Uploads", [])
                     if u["Initiated"] < cutoff]
        for key, upload in stale:
            with self._s3("abort an unfinished upload"):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            removed += 1
        for item in list(self._list(f"{self.prefix}uploads/")):
            if item["LastModified"] < cutoff:
                with self._s3("delete a stale multipart part"):
                    self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
                removed += 1
        return removed


class _MultipartSink:
    """Bytes streamed into a multipart upload of the final object key, visible only once completed.

    A blob smaller than one part never starts a multipart upload: `place` PUTs it whole (one request).
    """

    def __init__(self, store: S3BlobStore, key: str, spool: bool) -> None:
        self._store = store
        self._key = key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict] = []
        self._spool: IO[bytes] | None = tempfile.TemporaryFile() if spool else None
        self._placed = False

    def _next_part_bytes(self) -> int:
        return self._store.part_bytes * (1 + len(self._parts) // _PARTS_PER_STEP)

    def write(self, data: bytes) -> None:
        self._buffer += data
        if self._spool is not None:
            self._spool.write(data)
        while len(self._buffer) >= self._next_part_bytes():
            size = self._next_part_bytes()
            self._send_part(bytes(self._buffer[:size]))
            del self._buffer[:size]

    def _send_part(self, body: bytes) -> None:
        store = self._store
        with store._s3("store an upload's part"):
            if self._upload_id is None:
                self._upload_id = store.client.create_multipart_upload(Bucket=store.bucket, Key=self._key)["UploadId"]
            number = len(self._parts) + 1
            answer = store.client.upload_part(Bucket=store.bucket, Key=self._key, UploadId=self._upload_id,
                                              PartNumber=number, Body=body)
            self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def read_back(self) -> BinaryIO:
        if self._spool is None:
            raise RuntimeError("read_back needs a writer begun with spool=True")
        self._spool.flush()
        self._spool.seek(0)
        return self._spool  # type: ignore[return-value]

    def place(self) -> None:
        store = self._store
        if self._upload_id is None:
            with store._s3("store a blob"):
                store.client.put_object(Bucket=store.bucket, Key=self._key, Body=bytes(self._buffer))
        else:
            if self._buffer:
                self._send_part(bytes(self._buffer))
            with store._s3("complete an upload"):
                store.client.complete_multipart_upload(Bucket=store.bucket, Key=self._key, UploadId=self._upload_id,
                                                       MultipartUpload={"Parts": self._parts})
        self._placed = True

    def discard(self) -> None:
        self._buffer = bytearray()
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if self._upload_id is not None and not self._placed:
            upload, self._upload_id = self._upload_id, None
            try:
                self._store.client.abort_multipart_upload(Bucket=self._store.bucket, Key=self._key, UploadId=upload)
            except (BotoCoreError, ClientError) as exc:
                # Never completed, so never visible; sweep_stale aborts it once the store answers again.
                log.warning("could not abort multipart upload of %s in %s (%s); the janitor will", self._key,
                            self._store.label, type(exc).__name__)


class _FullReads:
    """An S3 response body whose `read(n)` returns n bytes unless the object ends first (a file's contract,
    which the xorb reader relies on); a network read may return fewer."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            return bytes(self._body.read())
        pieces, wanted = [], size
        while wanted > 0:
            piece = self._body.read(wanted)
            if not piece:
                break
            pieces.append(piece)
            wanted -= len(piece)
        return b"".join(pieces)

    def close(self) -> None:
        self._body.close()


class _LazyObject:
    """An object opened on its first read."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        self._store = store
        self._key = key
        self._body: _FullReads | None = None

    def read(self, size: int = -1, /) -> bytes:
        if self._body is None:
            with self._store._s3("read a multipart part"):
                self._body = _FullReads(self._store.client.get_object(Bucket=self._store.bucket,
                                                                      Key=self._key)["Body"])
        return self._body.read(size)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()


def make_client(endpoint: str, region: str, access_key_id: str, secret_access_key: str) -> Any:
    """A boto3 S3 client: path-style addressing (what SeaweedFS and MinIO expect), SigV4 (what presigned URLs
    need), short connect timeouts and few retries so an unreachable store answers 503 within seconds."""
    import boto3
    from botocore.config import Config

    config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, connect_timeout=3, read_timeout=60,
                    retries={"max_attempts": 2, "mode": "standard"}, max_pool_connections=32)
    credentials = ({"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key}
                   if access_key_id else {})
    return boto3.session.Session().client("s3", endpoint_url=endpoint or None, region_name=region or "us-east-1",
                                          config=config, **credentials)
