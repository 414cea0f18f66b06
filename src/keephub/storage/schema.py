"""The metadata schema. Alembic migrations under storage/migrations create exactly these tables.

Git objects live in the database (not the blob store) so that a commit's objects and the ref
update that makes them visible are one transaction: a crash leaves either all or none.
Large file contents (LFS) live in the blob store, keyed by their verified sha256.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Account(Base):
    """A user or an organization: both own a namespace."""

    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(96), unique=True)
    kind: Mapped[str] = mapped_column(String(8))  # "user" | "org"
    fullname: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(200), default="")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Membership(Base):
    __tablename__ = "memberships"
    org_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(8))  # "read" | "write" | "admin"


class Token(Base):
    """An access token. Only the sha256 of the secret is stored; the secret is shown once."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(8))  # "read" | "write"
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # What a write token may write, as a JSON list like ["model:alice/foo", "namespace:acme"]; null: all the
    # user may write. Everything outside the list the token may only read.
    scopes_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    is_job_token: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    job_id: Mapped[str | None] = mapped_column(String(24), nullable=True, index=True)
    # The token this one was made with (a job token: the submitter's); it authenticates only while that one does.
    parent_token_id: Mapped[int | None] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), nullable=True)
    # When the token last authenticated, to the hour (the settings page shows it; a finer clock would cost a write
    # per request).
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Repo(Base):
    __tablename__ = "repos"
    __table_args__ = (UniqueConstraint("type", "owner_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(8))  # "model" | "dataset" | "space"
    owner_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(96))
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    space_sdk: Mapped[str | None] = mapped_column(String(20), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_modified: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Whether `git push --force` may rewrite the default branch (dropping commits from it); off unless asked for.
    allow_force_push: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # None: open; "auto" or "manual": files need an accepted access request (hub/gating.py).
    gated: Mapped[str | None] = mapped_column(String(8), nullable=True)


# Repo ids are case-insensitive, as on the Hub: "Alice/Model" and "alice/model" name one repo.
Index("ux_repos_type_owner_lower_name", Repo.type, Repo.owner_id, func.lower(Repo.name), unique=True)


class RepoRedirect(Base):
    """A name a repo had before `move_repo`, lowercased: requests to it are redirected to the repo's new name."""

    __tablename__ = "repo_redirects"
    type: Mapped[str] = mapped_column(String(8), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(96), primary_key=True)
    name: Mapped[str] = mapped_column(String(96), primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), index=True)


class RepoLike(Base):
    """A user's like of a repo (the Hub's favourites)."""

    __tablename__ = "repo_likes"
    user_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Collection(Base):
    """A curated list of repos in a namespace; its slug is `namespace/<title words>-<key>`, the key fixed for life."""

    __tablename__ = "collections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(24), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(60))
    description: Mapped[str | None] = mapped_column(String(150), nullable=True)
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    theme: Mapped[str] = mapped_column(String(16), default="default")
    position: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CollectionItem(Base):
    """A repo in a collection, with an optional note; deleted with the repo."""

    __tablename__ = "collection_items"
    __table_args__ = (UniqueConstraint("collection_id", "repo_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), index=True)
    note: Mapped[str | None] = mapped_column(String(500), nullable=True)
    position: Mapped[int] = mapped_column(Integer)


class AccessRequest(Base):
    """A user's request for the files of a gated repo: pending, accepted or rejected."""

    __tablename__ = "access_requests"
    __table_args__ = (UniqueConstraint("repo_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(8))
    fields_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def repo_stamp(created_at: datetime) -> int:
    """A repo's creation time in microseconds: credentials bound to a repo carry it with the repo id, because
    SQLite hands a deleted repo's id to the next repo created, and a stamp is never reused."""
    aware = created_at if created_at.tzinfo else created_at.replace(tzinfo=timezone.utc)
    return int(aware.timestamp() * 1_000_000)


class Ref(Base):
    """A branch or a tag, pointing at a commit. Branch updates are compare-and-swap on `commit_sha`."""

    __tablename__ = "refs"
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(6), primary_key=True)  # "branch" | "tag"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    commit_sha: Mapped[str] = mapped_column(String(40))


class GitObject(Base):
    """A real git object (blob, tree or commit) by its SHA-1.

    For blobs, `size` and the LFS pointer fields are denormalised so that tree listings of large
    repos need no object bodies.
    """

    __tablename__ = "git_objects"
    sha: Mapped[str] = mapped_column(String(40), primary_key=True)
    type_num: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    lfs_oid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lfs_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class LfsObject(Base):
    """Verified large-file content in the blob store (key = sha256)."""

    __tablename__ = "lfs_objects"
    oid: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LfsLink(Base):
    """Which repo may reference which LFS object: content is linked to a repo only after a verified upload."""

    __tablename__ = "lfs_links"
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True)
    oid: Mapped[str] = mapped_column(ForeignKey("lfs_objects.oid"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RepoCommit(Base):
    """Commits reachable in a repo: a commit sha is only resolvable through repos that contain it."""

    __tablename__ = "repo_commits"
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True)
    sha: Mapped[str] = mapped_column(String(40), primary_key=True)


class Job(Base):
    """A submitted job. The spec is stored without secret values; those live encrypted in `secrets_sealed`."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(96), index=True)
    owner: Mapped[str] = mapped_column(String(96))
    spec_json: Mapped[str] = mapped_column(Text)
    secrets_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    flavor: Mapped[str] = mapped_column(String(40))
    timeout_seconds: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(12), index=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancel_requested_by: Mapped[str | None] = mapped_column(String(96), nullable=True)
    job_token_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class JobAttempt(Base):
    """One run of a job in its own sandbox; a failed attempt may be followed by another."""

    __tablename__ = "job_attempts"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    outcome: Mapped[str] = mapped_column(String(12))  # PENDING | RUNNING | COMPLETED | ERROR | CANCELED | TIMEOUT
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    # sha256 of the credential the attempt's sidecar reports records with; cleared when the attempt ends.
    agent_credential_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The sidecar's credential (durability records only), apart from the agent's.
    sidecar_credential_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Which executor runs the attempt, its handle there (a Slurm job id, a process), and the node.
    executor: Mapped[str | None] = mapped_column(String(16), nullable=True)
    executor_ref: Mapped[str | None] = mapped_column(String(200), nullable=True)
    node: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # When the agent last reported; an attempt silent past the heartbeat deadline is given up.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Log lines stored so far: the last sequence number and the log file's committed length (bytes past it
    # are a torn append, cut off before the next one).
    log_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    log_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class ScheduledJob(Base):
    """A job spec run on a cron schedule; each run is an ordinary job."""

    __tablename__ = "scheduled_jobs"
    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(96), index=True)
    owner: Mapped[str] = mapped_column(String(96))
    owner_token_role: Mapped[str] = mapped_column(String(8))
    # The token that created the schedule: each run's job token lives only while it does.
    owner_token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    spec_json: Mapped[str] = mapped_column(Text)
    secrets_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    schedule: Mapped[str] = mapped_column(String(100))
    suspend: Mapped[bool] = mapped_column(Boolean, default=False)
    concurrency: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    next_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_job_id: Mapped[str | None] = mapped_column(String(24), nullable=True)
    last_job_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JobRecordEntry(Base):
    """What a job's sidecar reported: each push (commit, files, bytes, verified), resumes and the verdict."""

    __tablename__ = "job_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    data_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class XetXorb(Base):
    """A xorb whose every chunk the server decompressed and hashed; bytes in the blob store under its hash.

    `chunk_index` packs (chunk hash, serialized offset, unpacked size) per chunk, in order.
    """

    __tablename__ = "xet_xorbs"
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    num_chunks: Mapped[int] = mapped_column(Integer)
    unpacked_bytes: Mapped[int] = mapped_column(BigInteger)
    stored_bytes: Mapped[int] = mapped_column(BigInteger)
    chunk_index: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class XetDedupChunk(Base):
    """Chunks the global dedup query can find (those the protocol makes eligible), and a xorb holding each."""

    __tablename__ = "xet_dedup_chunks"
    chunk_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    xorb_hash: Mapped[str] = mapped_column(ForeignKey("xet_xorbs.hash", ondelete="CASCADE"), index=True)


class XetFile(Base):
    """A file as terms over verified xorbs, with the sha256 the server computed by rebuilding it.

    `terms` packs (xorb hash, unpacked bytes, first chunk, end chunk) per term, in order. `sha256` is None
    for content only buckets hold: nothing names it by sha256, so it is computed when a repo first needs it.
    """

    __tablename__ = "xet_files"
    file_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    size: Mapped[int] = mapped_column(BigInteger)
    terms: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Bucket(Base):
    """A bucket: files without history in a namespace, each write replacing the file it names."""

    __tablename__ = "buckets"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(96))
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BucketFile(Base):
    """A file in a bucket: a path naming Xet content; `mtime` (ms) is the client's, `uploaded_at` the server's."""

    __tablename__ = "bucket_files"
    __table_args__ = (Index("ix_bucket_files_content", "bucket_id", "xet_hash"),)
    bucket_id: Mapped[int] = mapped_column(ForeignKey("buckets.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    xet_hash: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ms: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str | None] = mapped_column(String(200), nullable=True)
    uploaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BucketUpload(Base):
    """Xet content a write token of this bucket uploaded (its shard verified): only such content, or content
    the caller may read elsewhere (a copy), can be named by a batch's `addFile`."""

    __tablename__ = "bucket_uploads"
    bucket_id: Mapped[int] = mapped_column(ForeignKey("buckets.id", ondelete="CASCADE"), primary_key=True)
    file_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Password(Base):
    """A user's password for signing in to the web pages, as an argon2id hash (memory-hard: a stolen database
    does not yield passwords cheaply)."""

    __tablename__ = "passwords"
    user_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    argon2_hash: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebSession(Base):
    """A signed-in browser. Only the sha256 of the cookie's secret is stored. Signed in with a token, the session
    acts through that token (its role and scopes; revoking it ends the session); with a password, as the user."""

    __tablename__ = "web_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), nullable=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Discussion(Base):
    """A discussion or pull request of a repo, numbered per repo from 1 as on the Hub. A pull request's commits
    live on the branch-kind ref `refs/pr/<num>`, which merging brings into `target_branch`."""

    __tablename__ = "discussions"
    __table_args__ = (UniqueConstraint("repo_id", "num"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"))
    num: Mapped[int] = mapped_column(Integer)
    is_pull_request: Mapped[bool] = mapped_column(Boolean)
    title: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(8))  # "open" | "closed" | "merged" | "draft"
    author: Mapped[str] = mapped_column(String(96))
    target_branch: Mapped[str | None] = mapped_column(String(255), nullable=True)
    merge_commit_sha: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Where a merged pull request left its target branch: its diff is shown from there once merged.
    merge_base_sha: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DiscussionEvent(Base):
    """One event of a discussion: a comment, a status or title change, or a commit pushed to a pull request;
    `data_json` holds what the kind needs (a comment's text and edit history, the new status...)."""

    __tablename__ = "discussion_events"
    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    discussion_id: Mapped[int] = mapped_column(ForeignKey("discussions.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "comment" | "status-change" | "title-change" | "commit"
    author: Mapped[str] = mapped_column(String(96))
    data_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Webhook(Base):
    """A user's webhook: repo and discussion events of what it watches are POSTed to `url`. The secret, sent
    back in X-Webhook-Secret, is kept encrypted (the job secrets' key) and never returned."""

    __tablename__ = "webhooks"
    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    watched_json: Mapped[str] = mapped_column(Text)
    domains_json: Mapped[str] = mapped_column(Text)
    secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookDelivery(Base):
    """One payload for one webhook, written in the transaction of the event itself (so an acknowledged push
    always has its deliveries) and sent later by the dispatcher, with retries; also the webhook's delivery log."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(40))
    payload_json: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10))  # "pending" | "delivered" | "failed"
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # A dispatcher sending it holds it until then; one that died mid-send leaves it to be claimed again after.
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
