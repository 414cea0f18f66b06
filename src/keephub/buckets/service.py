"""Buckets as plain method calls: each one a whole operation in one transaction, testable without HTTP.

A bucket maps paths to Xet content and keeps no history: a write replaces the file it names. Content gets
into a bucket in two ways only: uploaded through the CAS under one of the bucket's write tokens (the shard
verified, the content linked to the bucket as a `BucketUpload`), or copied from a bucket or repo the caller
may read. A batch names content by Xet hash, and is all or nothing: one refused operation refuses the whole
batch, so a refused request changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from keephub.accounts import Actor, RepoTarget, authorize, refusal_of, require_actor
from keephub.accounts.access import Action
from keephub.hub import naming, repos
from keephub.hub.service import Hub, visibility_of
from keephub.storage.schema import (
    Account,
    Bucket,
    BucketFile,
    BucketUpload,
    LfsLink,
    XetFile,
    repo_stamp,
    utcnow,
)
from keephub.wire import BadRequest, Conflict, EntryNotFound, Forbidden, HubError, RepoNotFound, Unauthorized
from keephub.wire.errors import Unprocessable
from keephub.wire.text import text_problem
from keephub.xet import hashing, tokens

ME = "me"  # the Hub's name for the caller's own namespace in bucket URLs
MAX_BATCH_BYTES = 16 * 1024 * 1024
MAX_BATCH_OPERATIONS = 10_000  # huggingface_hub sends at most 1000 per request
MAX_PATHS_INFO = 1000
MAX_PATH_BYTES = 1024
MAX_CONTENT_TYPE = 200
SOURCE_TYPES = ("model", "dataset", "space", "bucket")
EMPTY_FILE_HASH = hashing.to_hex(hashing.file_hash([]))  # hf_xet uploads nothing for an empty file
_SCAN_BATCH = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NO_CHANGE = "nothing in this batch was applied"


def check_path(path: object, what: str = "path") -> str:
    """A file path in a bucket, kept exactly as sent (buckets mirror local trees byte for byte, so a sync
    finds the same name again): relative, '/'-separated, no empty, '.' or '..' component, no control
    character (NUL included) and no backslash."""
    if not isinstance(path, str) or not path:
        raise BadRequest(f"the {what} is missing or empty; name a file such as 'checkpoints/model.safetensors'")
    problem = text_problem(path)
    if problem:
        raise BadRequest(f"the {what} {path!r} {problem}; send UTF-8 text without NUL bytes")
    if _CONTROL.search(path):
        raise BadRequest(f"the {what} {path!r} contains a control character (NUL, newline, ...); rename the file")
    if "\\" in path:
        raise BadRequest(f"the {what} {path!r} contains a backslash; use '/' to separate folders")
    if path.startswith("/"):
        raise BadRequest(f"the {what} {path!r} is absolute; bucket paths are relative, e.g. 'data/train.jsonl'")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise BadRequest(f"the {what} {path!r} has an empty, '.' or '..' component; use a plain relative path")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise BadRequest(f"the {what} is {len(path.encode())} bytes long; the limit is {MAX_PATH_BYTES}")
    return path


def check_prefix(prefix: str) -> str:
    """A listing prefix: any start of a path (`checkpoint-` as well as `logs/`), held to the path's text rules."""
    if prefix and (text_problem(prefix) or _CONTROL.search(prefix) or "\\" in prefix):
        raise BadRequest(f"the prefix {prefix!r} contains a NUL, a control character or a backslash; "
                         "bucket paths hold none of these")
    return prefix


def iso(moment: datetime) -> str:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return aware.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def iso_ms(milliseconds: int) -> str:
    return iso(datetime.fromtimestamp(milliseconds / 1000, tz=timezone.utc))


def file_wire(row: BucketFile) -> dict:
    """A `BucketFile` as huggingface_hub parses it."""
    item = {"type": "file", "path": row.path, "size": row.size, "xetHash": row.xet_hash,
            "mtime": iso_ms(row.mtime_ms), "uploadedAt": iso(row.uploaded_at)}
    if row.content_type:
        item["contentType"] = row.content_type
    return item


@dataclass(frozen=True)
class BucketRef:
    """A bucket looked up for a caller."""

    id: int
    namespace: str
    name: str
    private: bool
    created_at: datetime
    updated_at: datetime

    @property
    def bucket_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def target(self) -> RepoTarget:
        return RepoTarget("bucket", self.namespace, self.name, self.private)


@dataclass(frozen=True)
class Change:
    """One validated operation of a batch: `xet_hash` None deletes `path`."""

    path: str
    xet_hash: str | None = None
    size: int = 0
    mtime_ms: int = 0
    content_type: str | None = None


class _Refused(Exception):
    """One operation of a batch that cannot be applied; the message says why and what to do."""


@dataclass(frozen=True)
class _Listing:
    """Which paths a tree listing covers: [start, end), folded into the folders of `base` unless recursive;
    `exact` is a file listed first (a path that is a file and a folder at once)."""

    base: str
    start: str
    end: str | None
    exact: str | None = None


class Buckets:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.settings = hub.settings
        self.db = hub.db
        self.cas = hub.cas
        self.accounts = hub.accounts

    # -- buckets -----------------------------------------------------------------------------------
    def create(self, actor: Actor | None, namespace: str, name: str, body: dict, root_url: str) -> dict:
        """A new bucket; 409 (with its `url`, which `exist_ok` reads) when it exists."""
        actor = require_actor(actor, f"create the bucket {namespace}/{name}")
        namespace = self._namespace(actor, namespace)
        naming.check_repo_name(name, "bucket name")
        for unsupported, flag in (("region", "--region"), ("resourceGroupId", "resource_group_id")):
            if body.get(unsupported) is not None:
                raise BadRequest(f"'{unsupported}' is not supported by keephub, which keeps every bucket in its own "
                                 f"storage; create the bucket without {flag}")
        private = visibility_of(body)
        url = f"{root_url}/buckets/{namespace}/{name}"
        with self.db.write() as session:
            owner = session.execute(select(Account).where(Account.name == namespace)).scalar_one_or_none()
            if owner is None:
                raise Forbidden(f"403 Forbidden: namespace '{namespace}' does not exist; create the bucket in "
                                f"'{actor.name}/...'.")
            authorize(actor, "repo.create", RepoTarget("bucket", namespace, name))
            taken = Conflict(f"You already created this bucket: {namespace}/{name}", extra_body={"url": url})
            if session.execute(select(Bucket.id).where(Bucket.owner_id == owner.id, Bucket.name == name)).first():
                raise taken
            now = utcnow()
            bucket = Bucket(owner_id=owner.id, name=name, private=bool(private), created_at=now, updated_at=now)
            session.add(bucket)
            try:
                session.flush()
            except IntegrityError:  # created meanwhile by a concurrent request (no database-wide write lock)
                raise taken from None
            return {"url": url, "name": f"{namespace}/{name}", "id": f"bucket-{bucket.id}"}

    def info(self, actor: Actor | None, namespace: str, name: str) -> dict:
        with self.db.read() as session:
            ref = self._find(session, actor, namespace, name, "repo.read")
            return self._info_wire(session, ref)

    def list_buckets(self, actor: Actor | None, namespace: str, search: str | None) -> list[dict]:
        """The buckets of a namespace the caller may see (private ones only to its members)."""
        namespace = self._namespace(actor, namespace)
        with self.db.read() as session:
            query = (select(Bucket, Account.name).join(Account, Account.id == Bucket.owner_id)
                     .where(Account.name == namespace).order_by(Bucket.updated_at.desc()))
            found = []
            for bucket, owner in session.execute(query):
                ref = _ref(bucket, owner)
                if (search is None or search in ref.bucket_id) and refusal_of(actor, "repo.read", ref.target) is None:
                    found.append(self._info_wire(session, ref))
            return found

    def delete(self, actor: Actor | None, namespace: str, name: str) -> None:
        """Delete a bucket and its file entries; the content stays in the CAS until garbage collection."""
        with self.db.write() as session:
            ref = self._find(session, actor, namespace, name, "repo.manage")
            if not session.execute(delete(Bucket).where(Bucket.id == ref.id)).rowcount:
                raise _deleted(ref)

    def move(self, actor: Actor | None, body: dict, root_url: str) -> dict:
        """`move_bucket` (POST /api/repos/move with type "bucket"): rename, or transfer to another namespace."""
        source = _split_bucket_id(body.get("fromRepo"), "fromRepo")
        new_namespace, new_name = _split_bucket_id(body.get("toRepo"), "toRepo")
        with self.db.write() as session:
            ref = self._find(session, actor, *source, "repo.manage")
            owner = session.execute(select(Account).where(Account.name == new_namespace)).scalar_one_or_none()
            if owner is None:
                raise Forbidden(f"403 Forbidden: cannot move to '{new_namespace}': namespace '{new_namespace}' does "
                                "not exist.")
            authorize(actor, "repo.create", RepoTarget("bucket", new_namespace, new_name, ref.private))
            exists = Conflict(f"cannot move {ref.bucket_id} to {new_namespace}/{new_name}: that bucket already exists")
            if session.execute(select(Bucket.id).where(Bucket.owner_id == owner.id, Bucket.name == new_name)).first():
                raise exists
            try:
                moved = session.execute(update(Bucket).where(Bucket.id == ref.id)
                                        .values(owner_id=owner.id, name=new_name, updated_at=utcnow())).rowcount
            except IntegrityError:  # the target was created meanwhile by a concurrent request
                raise exists from None
            if not moved:
                raise _deleted(ref)
        return {"url": f"{root_url}/buckets/{new_namespace}/{new_name}"}

    def update_settings(self, actor: Actor | None, namespace: str, name: str, body: dict) -> dict:
        private = visibility_of(body)
        if private is None:
            raise BadRequest("the settings body must set 'private': true or false (the only bucket setting)")
        with self.db.write() as session:
            ref = self._find(session, actor, namespace, name, "repo.manage")
            if not session.execute(update(Bucket).where(Bucket.id == ref.id).values(private=private)).rowcount:
                raise _deleted(ref)
        return {"private": private}

    # -- files -------------------------------------------------------------------------------------
    def tree(self, actor: Actor | None, namespace: str, name: str, prefix: str, recursive: bool,
             cursor: str | None) -> tuple[list[dict], str | None]:
        """One page of the listing under `prefix` and the cursor of the next page (None on the last).

        Recursive listings hold every file whose path starts with `prefix`, as the client documents; others
        the files and folders directly in the folder `prefix` names (or, when no folder has that name, the
        entries of its parent folder starting with it). Pages follow paths in order, so files added or
        removed between two pages never shift the rest."""
        prefix = check_prefix(prefix)
        limit = self.settings.tree_page_size
        with self.db.read() as session:
            ref = self._find(session, actor, namespace, name, "repo.read")
            listing = _listing(session, ref.id, prefix, recursive)
            return _page(session, ref.id, listing, recursive, _decode_cursor(cursor), limit)

    def paths_info(self, actor: Actor | None, namespace: str, name: str, paths: object) -> list[dict]:
        """The files among `paths` (missing paths and folders are left out, as the client expects)."""
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise BadRequest("the body must be {\"paths\": [...]} with file paths as strings")
        if len(paths) > MAX_PATHS_INFO:
            raise BadRequest(f"{len(paths)} paths in one request; send at most {MAX_PATHS_INFO} (the client "
                             "splits larger lists itself)")
        wanted = [check_path(p.rstrip("/"), f"paths[{index}]") for index, p in enumerate(paths)]
        with self.db.read() as session:
            ref = self._find(session, actor, namespace, name, "repo.read")
            rows = {row.path: row for start in range(0, len(wanted), 900) for row in session.scalars(
                select(BucketFile).where(BucketFile.bucket_id == ref.id,
                                         BucketFile.path.in_(wanted[start : start + 900])))}
        return [file_wire(rows[p]) for p in dict.fromkeys(wanted) if p in rows]

    def batch(self, actor: Actor | None, namespace: str, name: str, body: bytes) -> dict:
        """Apply an NDJSON batch of addFile / copyFile / deleteFile operations, all of them or none."""
        operations = _parse_ndjson(body)
        with self.db.write() as session:
            ref = self._find(session, actor, namespace, name, "repo.write")
            # Batches of one bucket apply one at a time (its row locked until the commit), as under SQLite's
            # write lock: two batches writing one path never both insert it.
            bucket = session.get(Bucket, ref.id, with_for_update=True)
            if bucket is None:
                raise _deleted(ref)
            changes: list[Change] = []
            failed: list[dict] = []
            for index, operation in enumerate(operations):
                try:
                    changes.append(self._change(session, actor, ref, operation, index))
                except _Refused as refusal:
                    failed.append({"path": str(operation.get("path", f"line {index + 1}")),
                                   "error": f"{refusal}; {_NO_CHANGE}"})
            if failed:
                raise Unprocessable(f"{len(failed)} of {len(operations)} operation(s) refused; {_NO_CHANGE}",
                                    extra_body={"failed": failed})
            now = utcnow()
            for change in changes:
                row = session.get(BucketFile, (ref.id, change.path))
                if change.xet_hash is None:
                    if row is not None:
                        session.delete(row)
                elif row is None:
                    session.add(BucketFile(bucket_id=ref.id, path=change.path, xet_hash=change.xet_hash,
                                           size=change.size, mtime_ms=change.mtime_ms,
                                           content_type=change.content_type, uploaded_at=now))
                else:
                    row.xet_hash, row.size, row.mtime_ms = change.xet_hash, change.size, change.mtime_ms
                    row.content_type, row.uploaded_at = change.content_type, now
                session.flush()
            bucket.updated_at = now
        return {"processed": len(changes), "failed": []}

    def file(self, actor: Actor | None, namespace: str, name: str, path: str) -> tuple[BucketRef, BucketFile]:
        """A file the caller may download, for resolve."""
        path = check_path(path)
        with self.db.read() as session:
            ref = self._find(session, actor, namespace, name, "repo.read")
            row = session.get(BucketFile, (ref.id, path))
            if row is None:
                raise EntryNotFound(f"{path} does not exist in bucket {ref.bucket_id}")
            return ref, row

    def content(self, row: BucketFile, start: int, length: int) -> Iterator[bytes]:
        """File bytes [start, start + length), rebuilt from the xorbs."""
        if length <= 0:
            return iter(())
        entry = self.cas.file(row.xet_hash)
        if entry is None:
            raise EntryNotFound(f"the content of {row.path} ({row.xet_hash}) is missing from this server's CAS")
        return self.cas.stream(entry, start, length)

    # -- Xet ---------------------------------------------------------------------------------------
    def xet_token(self, actor: Actor | None, namespace: str, name: str, access: str) -> dict:
        """A CAS token for one bucket, granting no more than the caller's own rights on it."""
        with self.db.read() as session:
            ref = self._find(session, actor, namespace, name, "repo.write" if access == tokens.WRITE else "repo.read")
        grant = tokens.issue(self.settings, ref.id, repo_stamp(ref.created_at), access, actor.name if actor else "",
                             actor.token_id if actor else None, tokens.BUCKET)
        return {"accessToken": tokens.encode(self.settings, grant), "exp": grant.expires,
                "casUrl": f"{self.settings.base_url}/cas"}

    def check_cas_grant(self, grant: tokens.CasGrant) -> None:
        """Re-check a bucket's CAS token against the present: the same bucket (not a later one reusing its id),
        the Hub token behind it still live, and that token's rights on the bucket now."""
        renew = "ask for a new CAS token (GET /api/buckets/<namespace>/<name>/xet-read-token or xet-write-token)"
        try:
            actor = None if grant.hub_token_id is None else self.accounts.actor_of_token(grant.hub_token_id)
        except Unauthorized as exc:
            raise Unauthorized(f"the access token this CAS token was issued for no longer works: {exc.message}; "
                               f"authenticate with a valid token and {renew}")
        with self.db.read() as session:
            row = session.execute(select(Bucket, Account.name).join(Account, Account.id == Bucket.owner_id)
                                  .where(Bucket.id == grant.repo_id)).one_or_none()
        if row is None or repo_stamp(row[0].created_at) != grant.repo_stamp:
            raise Unauthorized(f"the bucket this CAS token was issued for no longer exists; {renew}")
        ref = _ref(*row)
        who = actor.name if actor else "an anonymous caller"
        refusal = refusal_of(actor, "repo.write" if grant.access == tokens.WRITE else "repo.read", ref.target)
        if isinstance(refusal, RepoNotFound):
            raise Forbidden(f"{who} can no longer read the bucket {ref.bucket_id}; {renew}")
        if refusal is not None:
            raise Forbidden(f"{who} can no longer write to the bucket {ref.bucket_id} "
                            f"({refusal.message.removeprefix('403 Forbidden: ')}); {renew}")

    # -- job volumes -------------------------------------------------------------------------------
    def check_volume(self, actor: Actor, volume: dict) -> dict:
        """A job volume the submitter may use, with a repo's revision pinned to its commit (`commit`), so every
        attempt mounts the same files; 404/403 otherwise, before anything runs."""
        namespace, name = volume["source"].split("/")
        where = f"volume {volume['mountPath']}"
        with self.db.read() as session:
            if volume["type"] == "bucket":
                action: Action = "repo.read" if volume["readOnly"] else "repo.write"
                ref = self._find(session, actor, namespace, name, action)
                prefix = volume.get("path") or ""
                if volume["readOnly"] and prefix and not _holds_prefix(session, ref.id, prefix):
                    raise EntryNotFound(f"{where}: the bucket {ref.bucket_id} holds nothing under '{prefix}'; "
                                        "upload the files first or mount it read-write")
                return volume
            repo = repos.find_repo(session, volume["type"], namespace, name, actor)
            commit = repos.resolve_revision(session, repo, volume.get("revision") or repos.DEFAULT_BRANCH)
        if volume.get("path"):
            self.hub.tree(actor, volume["type"], namespace, name, commit, volume["path"], False)
        return {**volume, "commit": commit}

    # -- helpers -----------------------------------------------------------------------------------
    def _namespace(self, actor: Actor | None, namespace: str) -> str:
        if namespace == ME:
            return require_actor(actor, "use the 'me' namespace").name
        return naming.check_repo_name(namespace, "namespace")

    def _find(self, session: Session, actor: Actor | None, namespace: str, name: str, action: Action) -> BucketRef:
        """The bucket if the caller may do `action` on it; a private bucket it may not read is 404, as on the Hub."""
        namespace = self._namespace(actor, namespace)
        row = session.execute(select(Bucket, Account.name).join(Account, Account.id == Bucket.owner_id)
                              .where(Account.name == namespace, Bucket.name == name)).one_or_none()
        if row is None:
            hint = "" if actor else " If it is private, pass a token with read access."
            raise RepoNotFound(f"Bucket {namespace}/{name} not found.{hint}")
        ref = _ref(*row)
        authorize(actor, action, ref.target)  # a private bucket is 404 whatever the action
        return ref

    def _info_wire(self, session: Session, ref: BucketRef) -> dict:
        size, count = session.execute(select(func.coalesce(func.sum(BucketFile.size), 0), func.count())
                                      .where(BucketFile.bucket_id == ref.id)).one()
        return {"id": ref.bucket_id, "type": "bucket", "private": ref.private, "createdAt": iso(ref.created_at),
                "updatedAt": iso(ref.updated_at), "size": int(size), "totalFiles": int(count)}

    def _change(self, session: Session, actor: Actor | None, ref: BucketRef, operation: dict, index: int) -> Change:
        try:
            kind = operation.get("type")
            path = check_path(operation.get("path"), "path")
            if kind == "deleteFile":
                return Change(path)
            if kind not in ("addFile", "copyFile"):
                raise _Refused(f"unknown operation type {kind!r}; use addFile, copyFile or deleteFile")
            xet_hash = operation.get("xetHash")
            if not hashing.is_hash_string(xet_hash):
                raise _Refused(f"'xetHash' {xet_hash!r} is not a Xet hash (64 lowercase hex digits)")
            assert isinstance(xet_hash, str)
            if kind == "addFile":
                size = self._uploaded_size(session, ref, xet_hash)
            else:
                size = self._copyable_size(session, actor, operation, xet_hash)
            return Change(path, xet_hash, size, _mtime(operation), _content_type(operation))
        except BadRequest as exc:
            raise _Refused(exc.message)

    def _uploaded_size(self, session: Session, ref: BucketRef, xet_hash: str) -> int:
        if xet_hash == EMPTY_FILE_HASH:
            return 0
        content = session.get(XetFile, xet_hash)
        held = content is not None and (
            session.get(BucketUpload, (ref.id, xet_hash)) is not None
            or _holds_content(session, ref.id, xet_hash))
        if content is None or not held:
            raise _Refused(f"content {xet_hash} was never uploaded to bucket {ref.bucket_id} (or was garbage-"
                           "collected since); upload it through Xet first (batch_bucket_files does), then add it")
        return content.size

    def _copyable_size(self, session: Session, actor: Actor | None, operation: dict, xet_hash: str) -> int:
        source_type = operation.get("sourceRepoType")
        if source_type not in SOURCE_TYPES:
            raise _Refused(f"'sourceRepoType' {source_type!r} is not one of {', '.join(SOURCE_TYPES)}")
        namespace, name = _split_bucket_id(operation.get("sourceRepoId"), "sourceRepoId")
        source = f"{source_type} {namespace}/{name}"
        try:
            if source_type == "bucket":
                source_ref = self._find(session, actor, namespace, name, "repo.read")
                held = _holds_content(session, source_ref.id, xet_hash)
            else:
                repo = repos.find_repo(session, str(source_type), namespace, name, actor)
                content = session.get(XetFile, xet_hash)
                held = (content is not None and content.sha256 is not None
                        and session.get(LfsLink, (repo.id, content.sha256)) is not None)
        except HubError as exc:
            raise _Refused(f"cannot copy from {source}: {exc.message}")
        if xet_hash == EMPTY_FILE_HASH:
            return 0
        content = session.get(XetFile, xet_hash)
        if not held or content is None:
            raise _Refused(f"{source} holds no file with Xet hash {xet_hash}; list its files for their xetHash")
        return content.size


def _deleted(ref: BucketRef) -> RepoNotFound:
    """A bucket found earlier in the transaction and deleted by a concurrent request before this one changed it."""
    return RepoNotFound(f"Bucket {ref.bucket_id} was deleted by a concurrent request")


def _ref(bucket: Bucket, owner: str) -> BucketRef:
    return BucketRef(bucket.id, owner, bucket.name, bucket.private, bucket.created_at, bucket.updated_at)


def _holds_content(session: Session, bucket_id: int, xet_hash: str) -> bool:
    query = select(BucketFile.path).where(BucketFile.bucket_id == bucket_id, BucketFile.xet_hash == xet_hash)
    return session.scalars(query.limit(1)).first() is not None


def _holds_prefix(session: Session, bucket_id: int, prefix: str) -> bool:
    folder = prefix.rstrip("/") + "/"
    query = select(BucketFile.path).where(BucketFile.bucket_id == bucket_id, BucketFile.path >= folder,
                                          BucketFile.path < folder[:-1] + "0")
    return session.scalars(query.limit(1)).first() is not None


def _split_bucket_id(value: object, field: str) -> tuple[str, str]:
    if not isinstance(value, str) or value.count("/") != 1:
        raise BadRequest(f"'{field}' {value!r} must be namespace/name, e.g. alice/my-bucket")
    namespace, name = value.split("/")
    return naming.check_repo_name(namespace, "namespace"), naming.check_repo_name(name, "name")


def _mtime(operation: dict) -> int:
    value = operation.get("mtime")
    if value is None:
        return int(utcnow().timestamp() * 1000)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise _Refused(f"'mtime' {value!r} must be the file's modification time in milliseconds since 1970")
    return value


def _content_type(operation: dict) -> str | None:
    value = operation.get("contentType")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_CONTENT_TYPE or _CONTROL.search(value) or text_problem(value):
        raise _Refused(f"'contentType' must be a media type such as 'application/json' (at most "
                       f"{MAX_CONTENT_TYPE} printable characters)")
    return value


def _parse_ndjson(body: bytes) -> list[dict]:
    """The batch's operations, one JSON object per line; a body that is not that is refused whole (400)."""
    operations = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            operation = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"line {number} of the batch is not JSON ({exc}); send one JSON object per line "
                             "(application/x-ndjson); nothing was applied")
        if not isinstance(operation, dict):
            raise BadRequest(f"line {number} of the batch is not a JSON object; nothing was applied")
        operations.append(operation)
        if len(operations) > MAX_BATCH_OPERATIONS:
            raise BadRequest(f"more than {MAX_BATCH_OPERATIONS} operations in one batch; split it (the client "
                             "sends 1000 per request); nothing was applied")
    if not operations:
        raise BadRequest("the batch is empty: send addFile, copyFile or deleteFile operations, one JSON object "
                         "per line")
    return operations


def _after_prefix(prefix: str) -> str | None:
    """The first string past every string starting with `prefix` (None: no bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


def _listing(session: Session, bucket_id: int, prefix: str, recursive: bool) -> _Listing:
    if recursive or not prefix:
        return _Listing("", prefix, _after_prefix(prefix))
    if prefix.endswith("/"):
        return _Listing(prefix, prefix, _after_prefix(prefix))
    if _holds_prefix(session, bucket_id, prefix):
        return _Listing(prefix + "/", prefix + "/", prefix + "0", exact=prefix)
    return _Listing(prefix[: prefix.rfind("/") + 1], prefix, _after_prefix(prefix))


def _page(session: Session, bucket_id: int, listing: _Listing, recursive: bool, cursor: str | None,
          limit: int) -> tuple[list[dict], str | None]:
    """Up to `limit` entries from `cursor` (the first path not yet listed) on, and the next page's cursor.

    A folder is listed once and its paths skipped by one index seek (to just past `folder/`); a file's
    successor starts at `path + "\\x01"`, the next possible path, since paths hold no control characters."""
    entries: list[dict] = []
    lower = cursor if cursor is not None else listing.start
    if cursor is None and listing.exact is not None:
        exact = session.get(BucketFile, (bucket_id, listing.exact))
        if exact is not None:
            entries.append(file_wire(exact))
    while True:
        query = select(BucketFile).where(BucketFile.bucket_id == bucket_id, BucketFile.path >= lower)
        if listing.end is not None:
            query = query.where(BucketFile.path < listing.end)
        rows = session.scalars(query.order_by(BucketFile.path).limit(_SCAN_BATCH)).all()
        if not rows:
            return entries, None
        if len(entries) >= limit:
            return entries, _encode_cursor(lower)
        for row in rows:
            if row.path < lower or len(entries) >= limit:
                continue
            rest = row.path[len(listing.base):]
            if recursive or "/" not in rest:
                entries.append(file_wire(row))
                lower = row.path + "\x01"
            else:
                folder = listing.base + rest.split("/", 1)[0]
                entries.append({"type": "directory", "path": folder})
                lower = folder + "0"  # '0' follows '/': the first path past the folder's own


def _encode_cursor(position: str) -> str:
    return base64.urlsafe_b64encode(position.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        return base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise BadRequest("the 'cursor' parameter is malformed; pass the one from the Link header of the previous "
                         "page")

