"""Content-addressed blob storage for large files: LFS objects (keyed by sha256) and Xet xorbs (by Merkle hash).

The interface is `BlobStore` with its `BlobWriter` (base.py); backends are a local directory (the embedded
default), memory, and an S3-compatible bucket, chosen by the `[blobs]` settings through `open_blob_stores`.
"""

from __future__ import annotations

from dataclasses import dataclass

from keephub.config import ConfigError, Settings
from keephub.storage.blobs.base import (
    BlobStore,
    BlobStoreUnavailable,
    BlobWriter,
    ByteStream,
    HashBehind,
    HashMismatch,
    SizeMismatch,
    is_sha256,
    iter_range,
    iter_stream,
)
from keephub.storage.blobs.local import LocalBlobStore
from keephub.storage.blobs.memory import MemoryBlobStore

__all__ = ["BlobStore", "BlobStoreUnavailable", "BlobStores", "BlobWriter", "ByteStream", "HashBehind", "HashMismatch",
           "LocalBlobStore", "MemoryBlobStore", "SizeMismatch", "check_blob_settings", "is_sha256", "iter_range",
           "iter_stream", "open_blob_stores"]

BACKENDS = ("local", "memory", "s3")


@dataclass(frozen=True)
class BlobStores:
    """keephub's two logical stores; on S3 they share one bucket under `<prefix>lfs/` and `<prefix>xorbs/`."""

    lfs: BlobStore
    xorbs: BlobStore


def open_blob_stores(settings: Settings) -> BlobStores:
    """The stores `settings` name. Nothing is contacted here: `check_blob_settings` does that at start."""
    backend = settings.blob_backend
    if backend == "local":
        return BlobStores(LocalBlobStore(settings.data_dir / "blobs"), LocalBlobStore(settings.data_dir / "xorbs"))
    if backend == "memory":
        return BlobStores(MemoryBlobStore(), MemoryBlobStore())
    if backend != "s3":
        raise ConfigError(f"blobs.backend = {backend!r}: use one of {', '.join(BACKENDS)}")
    if not settings.blob_bucket:
        raise ConfigError("blobs.bucket is required with blobs.backend = \"s3\": name the bucket keephub keeps "
                          "its bytes in (KEEPHUB_BLOB_BUCKET)")
    if bool(settings.blob_access_key_id) != bool(settings.blob_secret_access_key):
        raise ConfigError("blobs.access_key_id and blobs.secret_access_key go together: set both, or neither "
                          "to use boto3's own credentials (AWS_ACCESS_KEY_ID, ~/.aws/credentials, ...)")
    from keephub.storage.blobs.s3 import MIN_PART_BYTES, S3BlobStore, make_client

    if not 1 <= settings.blob_presign_ttl_seconds <= 7 * 24 * 3600:
        raise ConfigError("blobs.presign_ttl_seconds must be between 1 and 604800 (S3's limit of 7 days)")
    if not MIN_PART_BYTES <= settings.blob_part_bytes <= 1024**3:
        raise ConfigError(f"blobs.part_bytes must be between {MIN_PART_BYTES} (S3's smallest part) and 1 GiB")

    client = make_client(settings.blob_endpoint, settings.blob_region, settings.blob_access_key_id,
                         settings.blob_secret_access_key)
    prefix = settings.blob_prefix
    if prefix and not prefix.endswith("/"):
        prefix += "/"

    def store(name: str) -> S3BlobStore:
        return S3BlobStore(client, endpoint=settings.blob_endpoint, bucket=settings.blob_bucket,
                           prefix=f"{prefix}{name}/", presign_ttl_seconds=settings.blob_presign_ttl_seconds,
                           part_bytes=settings.blob_part_bytes)

    return BlobStores(store("lfs"), store("xorbs"))


def check_blob_settings(settings: Settings) -> None:
    """Stop `keephub serve` at start, naming the setting, when the blob store cannot be used. A local store has
    nothing to check before its folders are made (by `open_hub`, inside the private data directory)."""
    if settings.blob_backend == "local":
        return
    stores = open_blob_stores(settings)
    stores.lfs.check()
    stores.xorbs.check()
