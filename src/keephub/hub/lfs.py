"""The git-lfs batch API, with uploads the server verifies before anything can reference them.

Upload URLs are self-authenticating (the client PUTs bytes without an Authorization header, as
it does to S3 on the Hub): each carries an HMAC over the repo, the object, an expiry and the id of
the access token it was issued to, which the server re-checks at use time (live, still allowed to
write the repo), so a URL dies with its token. Bytes
are hashed as they arrive; an object becomes visible to a repo (an `LfsLink`) only after its
sha256 and size match what the client announced.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session

from keephub.config import Settings
from keephub.hub.repos import RepoRef
from keephub.storage.blobs import BlobStore, BlobWriter, HashMismatch, SizeMismatch, is_sha256, iter_stream
from keephub.storage.db import Database, insert_for
from keephub.storage.schema import LfsLink, LfsObject, Repo, repo_stamp
from keephub.wire import BadRequest, Conflict, Forbidden, TooLarge
from keephub.wire.errors import NotFound, Unprocessable
from keephub.wire.text import same_signature

MAX_BATCH_OBJECTS = 10_000
MAX_OBJECT_BYTES = 500 * 1024**3
# Held while an upload links an object and while garbage collection deletes unlinked objects' bytes.
PLACING_LOCK = "lfs-placing"


@dataclass(frozen=True)
class UploadGrant:
    """What a signed upload URL authorises: one object of one size into one repo, until `expires`, while the
    access token `token_id` it was issued to may still write there (a `contribution`, for a caller's own pull
    requests: while it may still open them)."""

    repo_id: int
    oid: str
    size: int
    upload_id: str
    expires: int
    repo_stamp: int
    token_id: int
    contribution: bool = False

    def payload(self) -> str:
        return (f"{self.repo_id}|{self.repo_stamp}|{self.oid}|{self.size}|{self.upload_id}|{self.expires}"
                f"|{self.token_id}|{int(self.contribution)}")


def sign(settings: Settings, grant: UploadGrant) -> str:
    return hmac.new(settings.signing_key.encode(), grant.payload().encode(), hashlib.sha256).hexdigest()


def grant_query(settings: Settings, grant: UploadGrant) -> str:
    return urlencode({"repo": grant.repo_id, "rs": grant.repo_stamp, "size": grant.size, "upload": grant.upload_id,
                      "exp": grant.expires, "t": grant.token_id, "c": int(grant.contribution),
                      "sig": sign(settings, grant)})


def check_grant(settings: Settings, oid: str, params: dict[str, str]) -> UploadGrant:
    try:
        grant = UploadGrant(repo_id=int(params["repo"]), oid=oid, size=int(params["size"]),
                            upload_id=params["upload"], expires=int(params["exp"]), repo_stamp=int(params["rs"]),
                            token_id=int(params["t"]), contribution=params.get("c") == "1")
        signature = params["sig"]
    except (KeyError, ValueError):
        raise Forbidden("this upload URL is incomplete; request a fresh one from the LFS batch endpoint")
    if not same_signature(sign(settings, grant), signature):
        raise Forbidden("this upload URL's signature is invalid; request a fresh one from the LFS batch endpoint")
    if grant.expires < time.time():
        raise Forbidden("this upload URL has expired; request a fresh one from the LFS batch endpoint")
    return grant


def _validate_batch(body: object) -> list[tuple[str, int]]:
    if not isinstance(body, dict):
        raise BadRequest("the LFS batch body must be a JSON object with 'operation' and 'objects'")
    if body.get("operation") not in ("upload", "download"):
        raise BadRequest("LFS batch 'operation' must be 'upload' or 'download'")
    objects = body.get("objects")
    if not isinstance(objects, list) or not objects:
        raise BadRequest("LFS batch 'objects' must be a non-empty list of {oid, size}")
    if len(objects) > MAX_BATCH_OBJECTS:
        raise TooLarge(f"an LFS batch may name at most {MAX_BATCH_OBJECTS} objects; send several batches")
    if body.get("hash_algo", "sha256") != "sha256":
        raise BadRequest("only hash_algo 'sha256' is supported")
    if not isinstance(body.get("transfers") or [], list):
        raise BadRequest("LFS batch 'transfers' must be a list of transfer names, e.g. [\"basic\", \"multipart\"]")
    result = []
    for index, obj in enumerate(objects):
        oid = obj.get("oid") if isinstance(obj, dict) else None
        size = obj.get("size") if isinstance(obj, dict) else None
        if not is_sha256(oid):
            raise BadRequest(f"LFS batch object {index}: 'oid' must be a lowercase sha256 hex digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > MAX_OBJECT_BYTES:
            raise BadRequest(f"LFS batch object {index}: 'size' must be an integer between 0 and {MAX_OBJECT_BYTES}")
        result.append((str(oid), size))
    return result


def target_ref(body: object) -> str | None:
    """The branch an upload batch is for (its `ref.name`), or None: the client leaves it out for create_pr."""
    ref = body.get("ref") if isinstance(body, dict) else None
    if ref is None:
        return None
    name = ref.get("name") if isinstance(ref, dict) else None
    if not isinstance(name, str) or not name:
        raise BadRequest("LFS batch 'ref' must be an object naming the branch: {\"name\": \"main\"}")
    return name.removeprefix("refs/heads/")


def batch(session: Session, settings: Settings, repo: RepoRef, body: object, token_id: int | None,
          contribution: bool = False) -> dict:
    """Answer a batch request: nothing to do for objects this repo already has, signed URLs for the rest, bound
    to the uploader's token (`token_id`; None only for downloads, which need no URL of their own) and, for a
    caller who may not write the repo, marked a `contribution` to their pull requests."""
    operation = body.get("operation") if isinstance(body, dict) else None
    objects = _validate_batch(body)
    transfers = body.get("transfers") or ["basic"]  # type: ignore[union-attr]
    use_multipart = "multipart" in transfers
    linked = linked_sizes(session, repo, [oid for oid, _ in objects])
    base = f"{settings.base_url}/{repo.url_path}.git/info/lfs/objects"
    answers = []
    chosen = "basic"
    for oid, size in objects:
        answer: dict = {"oid": oid, "size": size, "authenticated": True}
        if operation == "download":
            if oid not in linked:
                answer["error"] = {"code": 404, "message": f"object {oid} is not in {repo.repo_id}"}
            else:
                answer["actions"] = {"download": {"href": f"{base}/{oid}"}}
        elif oid in linked and linked[oid] == size:
            pass
        else:
            assert token_id is not None, "uploads need a write token, so an upload answer always has one"
            grant = UploadGrant(repo.id, oid, size, uuid.uuid4().hex, int(time.time()) + settings.upload_url_ttl_seconds,
                                repo_stamp(repo.created_at), token_id, contribution)
            href = f"{settings.base_url}/api/lfs/objects/{oid}?{grant_query(settings, grant)}"
            upload: dict = {"href": href}
            chunk = settings.lfs_multipart_chunk_bytes
            if use_multipart and size > max(chunk, settings.lfs_multipart_threshold_bytes):
                chosen = "multipart"
                parts = -(-size // chunk)
                upload["header"] = {"chunk_size": str(chunk)} | {
                    str(n): f"{settings.base_url}/api/lfs/objects/{oid}/parts/{n}?{grant_query(settings, grant)}"
                    for n in range(1, parts + 1)
                }
            # Signed like the upload URL: git-lfs sends no credentials to the actions of an "authenticated" answer.
            answer["actions"] = {"upload": upload, "verify": {"href": f"{base}/verify?{grant_query(settings, grant)}"}}
        answers.append(answer)
    return {"transfer": chosen, "objects": answers, "hash_algo": "sha256"}


def linked_sizes(session: Session, repo: RepoRef, oids: list[str], lock: bool = False) -> dict[str, int]:
    """Sizes of the objects among `oids` linked to the repo; `lock` (in a write that is about to reference them)
    holds the links with the shared lock commits take, so that garbage collection cannot drop one meanwhile."""
    found: dict[str, int] = {}
    for start in range(0, len(oids), 900):
        query = (select(LfsObject.oid, LfsObject.size).join(LfsLink, LfsLink.oid == LfsObject.oid)
                 .where(LfsLink.repo_id == repo.id, LfsObject.oid.in_(oids[start : start + 900])))
        rows = session.execute(query.with_for_update(read=True, of=LfsLink) if lock else query)
        found.update({oid: size for oid, size in rows})
    return found


def link(db: Database, blobs: BlobStore, grant: UploadGrant) -> None:
    """Record a verified object and make it referable from the grant's repo, idempotently.

    Under the lock `keephub gc` deletes unlinked objects under, with the bytes checked once more: an object gc
    freed while this upload placed it again is reported, never linked without its bytes."""
    repo_id, oid, size = grant.repo_id, grant.oid, grant.size
    with db.lock(PLACING_LOCK), db.write() as session:
        if not blobs.exists(oid):
            raise Conflict(f"LFS object {oid} was removed by garbage collection while it was uploaded; upload it "
                           "again (retry the push)")
        repo = session.get(Repo, repo_id)
        if repo is None or repo_stamp(repo.created_at) != grant.repo_stamp:
            raise NotFound("the repo this upload URL was issued for has been deleted since; nothing was linked")
        # Each row may exist already (another repo's upload, a retry, a concurrent upload of the same file).
        session.execute(insert_for(session, LfsObject).values(oid=oid, size=size)
                        .on_conflict_do_nothing(index_elements=["oid"]))
        session.execute(insert_for(session, LfsLink).values(repo_id=repo_id, oid=oid)
                        .on_conflict_do_nothing(index_elements=["repo_id", "oid"]))


def complete_multipart(blobs: BlobStore, grant: UploadGrant, body: bytes) -> None:
    """Concatenate the parts the client lists, verifying each part's ETag and the whole object's sha256."""
    try:
        payload = json.loads(body)
        parts = payload["parts"]
        numbers = [int(p["partNumber"]) for p in parts]
        etags = [str(p["etag"]).strip('"') for p in parts]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise BadRequest("the completion body must be JSON {oid, parts: [{partNumber, etag}, ...]}")
    if payload.get("oid") != grant.oid:
        raise BadRequest("the completion body's oid does not match the upload URL")
    if numbers != list(range(1, len(numbers) + 1)):
        raise BadRequest("parts must be listed in order 1..N with none missing")
    try:
        files = blobs.open_parts(grant.upload_id, len(numbers))
    except FileNotFoundError:
        raise Unprocessable("some parts were never uploaded; upload every part, then complete again")
    pending = blobs.begin(grant.oid)
    try:
        for number, fh, etag in zip(numbers, files, etags):
            part_digest = hashlib.sha256()
            for chunk in iter_stream(fh):
                part_digest.update(chunk)
                pending.write(chunk)
            if part_digest.hexdigest() != etag:
                raise BadRequest(f"part {number}'s ETag does not match the bytes stored for it; re-upload it")
        commit_upload(pending, grant)
    finally:
        pending.abort()
        for fh in files:
            fh.close()
        blobs.discard_parts(grant.upload_id)


def commit_upload(pending: BlobWriter, grant: UploadGrant) -> None:
    """Place an uploaded object if its bytes are the grant's (sha256 and size); a 400 saying why otherwise."""
    try:
        pending.commit(grant.size)
    except (HashMismatch, SizeMismatch) as exc:
        raise BadRequest(f"upload rejected, nothing was stored: {exc}")


def verify(session: Session, repo: RepoRef, body: object) -> None:
    if not isinstance(body, dict) or not is_sha256(body.get("oid")) or not isinstance(body.get("size"), int):
        raise BadRequest("the verify body must be JSON {oid: sha256 hex, size: integer}")
    sizes = linked_sizes(session, repo, [body["oid"]])
    if body["oid"] not in sizes:
        raise NotFound(f"object {body['oid']} has not been uploaded to {repo.repo_id}; upload it again")
    if sizes[body["oid"]] != body["size"]:
        raise Unprocessable(f"object {body['oid']} was stored with {sizes[body['oid']]} bytes, not {body['size']}")



def verify_granted(session: Session, grant: UploadGrant, body: object) -> None:
    """`verify` through the signed URL of a batch answer: the object named in the body is the grant's, uploaded."""
    if not isinstance(body, dict) or body.get("oid") != grant.oid or body.get("size") != grant.size:
        raise BadRequest("the verify body must be JSON {oid, size} of the object this verify URL was issued for")
    if session.get(LfsLink, (grant.repo_id, grant.oid)) is None:
        raise NotFound(f"object {grant.oid} has not been uploaded yet; upload it again")
