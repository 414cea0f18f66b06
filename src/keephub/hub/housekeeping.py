"""Storage a repo holds, and giving it back: LFS files listed and permanently deleted, history squashed, and the
sweep `keephub gc` runs to free the bytes nothing references any more.

What a repo holds is its `LfsLink`s: content uploaded to it (git-lfs or Xet) and verified. A link stays while a
commit reachable from one of the repo's refs points at the content, or while it is younger than the grace period
(an upload waiting for its commit). Once no repo links an object and it is past the grace period, its bytes are
deleted; Xet content follows the same links (see `Cas.collect_garbage`).
"""

from __future__ import annotations

import stat
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session

from keephub.accounts import Actor
from keephub.hub import lfs, naming
from keephub.hub.repos import RepoRef, branch_head, make_commit, touch
from keephub.hub.wireformat import iso
from keephub.storage import gitobjects
from keephub.storage.blobs import BlobStore, is_sha256
from keephub.storage.db import Database
from keephub.storage.schema import GitObject, LfsLink, LfsObject, Ref, Repo, RepoCommit
from keephub.wire import BadRequest, EntryNotFound, PreconditionFailed

MAX_DELETIONS = 1000  # what the client sends per request


def reachable_commits(session: Session, repo_id: int) -> tuple[set[str], list[tuple[str, str]]]:
    """Every commit reachable (through all parents) from the repo's branches and tags, and (ref, head) pairs."""
    heads = [(ref.name, ref.commit_sha) for ref in session.scalars(select(Ref).where(Ref.repo_id == repo_id))]
    seen: set[str] = set()
    pending = [sha for _, sha in heads]
    while pending:
        sha = pending.pop()
        if sha in seen:
            continue
        seen.add(sha)
        pending += [parent.decode() for parent in gitobjects.load_commit(session, sha).parents]
    return seen, heads


def reachable_lfs(session: Session, repo_id: int) -> dict[str, tuple[str, str]]:
    """LFS content reachable from the repo's refs: sha256 -> (a path it has, the ref it was found from).

    Every tree of every reachable commit is walked once (a tree seen before is skipped, so long histories of
    small changes cost their changed trees only)."""
    commits, heads = reachable_commits(session, repo_id)
    ref_of = {sha: name for name, sha in heads}
    blobs: dict[str, tuple[str, str]] = {}
    seen_trees: set[str] = set()

    def walk(tree_sha: str, base: str, ref: str) -> None:
        if tree_sha in seen_trees:
            return
        seen_trees.add(tree_sha)
        for item in gitobjects.load_tree(session, tree_sha).iteritems():
            path, sha = f"{base}{item.path.decode()}", item.sha.decode()
            if stat.S_ISDIR(item.mode):
                walk(sha, path + "/", ref)
            else:
                blobs.setdefault(sha, (path, ref))

    # Heads first, so content still present at a ref is named by that ref and its current path.
    for sha in sorted(commits, key=lambda s: s not in ref_of):
        walk(gitobjects.load_commit(session, sha).tree.decode(), "", ref_of.get(sha, ""))
    where: dict[str, tuple[str, str]] = {}
    shas = sorted(blobs)
    for start in range(0, len(shas), 900):
        rows = session.execute(select(GitObject.sha, GitObject.lfs_oid)
                               .where(GitObject.sha.in_(shas[start : start + 900]), GitObject.lfs_oid.is_not(None)))
        for blob_sha, oid in rows:
            where.setdefault(oid, blobs[blob_sha])
    return where


def lfs_files(session: Session, repo: RepoRef) -> list[dict]:
    """`list_lfs_files`: the content the repo holds, newest first, with a path (and ref) it has where reachable."""
    reachable = reachable_lfs(session, repo.id)
    rows = session.execute(select(LfsLink.oid, LfsLink.created_at, LfsObject.size)
                           .join(LfsObject, LfsObject.oid == LfsLink.oid).where(LfsLink.repo_id == repo.id)
                           .order_by(LfsLink.created_at.desc(), LfsLink.oid))
    result = []
    for oid, pushed_at, size in rows:
        path, ref = reachable.get(oid, ("", ""))
        pointer = gitobjects.new_blob(gitobjects.lfs_pointer(oid, size)).id.decode()
        result.append({"fileOid": oid, "oid": pointer, "filename": path, "size": size,
                       "pushedAt": iso(pushed_at), "ref": ref or None})
    return result


def parse_deletions(body: dict) -> list[str]:
    deletions = body.get("deletions")
    shas = deletions.get("sha") if isinstance(deletions, dict) else None
    if not isinstance(shas, list) or not shas:
        raise BadRequest('the body must list what to delete: {"deletions": {"sha": ["<sha256>", ...]}}')
    if len(shas) > MAX_DELETIONS:
        raise BadRequest(f"at most {MAX_DELETIONS} LFS files per request; send the rest in another")
    for index, sha in enumerate(shas):
        if not is_sha256(sha):
            raise BadRequest(f"deletions.sha[{index}] ({sha!r}) is not a sha256; pass the `file_oid` of "
                             "list_lfs_files' entries")
    rewrite = deletions.get("rewriteHistory", True)
    if not isinstance(rewrite, bool):
        raise BadRequest("deletions.rewriteHistory must be true or false")
    return list(dict.fromkeys(shas))


def delete_lfs_files(session: Session, repo: RepoRef, shas: list[str]) -> None:
    """Unlink the content from the repo, all or nothing: its files at every revision stop downloading at once, and
    `keephub gc` frees the bytes once no other repo holds them. The pointer files stay in history."""
    held = set(session.scalars(select(LfsLink.oid).where(LfsLink.repo_id == repo.id, LfsLink.oid.in_(shas))))
    missing = [sha for sha in shas if sha not in held]
    if missing:
        raise EntryNotFound(f"{len(missing)} of these LFS files are not in {repo.repo_id} (first: {missing[0]}); "
                            "nothing was deleted; list what it holds with list_lfs_files")
    session.execute(delete(LfsLink).where(LfsLink.repo_id == repo.id, LfsLink.oid.in_(shas)))


def super_squash(session: Session, repo: RepoRef, branch: str, message: str, actor: Actor) -> str:
    """Replace the branch's history by one commit of its current tree. Commits no ref reaches any more are
    forgotten by the repo (their ids stop resolving); the content only they held is freed by `keephub gc`."""
    head = branch_head(session, repo, branch, lock=True)
    commit = make_commit(gitobjects.load_commit(session, head).tree.decode(), [], actor.name, message, "")
    writer = gitobjects.ObjectWriter()
    squashed = writer.add(commit)
    writer.flush(session)
    moved = session.execute(update(Ref).where(Ref.repo_id == repo.id, Ref.kind == "branch", Ref.name == branch,
                                              Ref.commit_sha == head).values(commit_sha=squashed))
    if moved.rowcount != 1:
        raise PreconditionFailed(f"branch {branch!r} moved during the squash; retry it")
    session.merge(RepoCommit(repo_id=repo.id, sha=squashed))
    kept, _ = reachable_commits(session, repo.id)
    known = set(session.scalars(select(RepoCommit.sha).where(RepoCommit.repo_id == repo.id)))
    forgotten = sorted(known - kept)
    for start in range(0, len(forgotten), 900):
        session.execute(delete(RepoCommit).where(RepoCommit.repo_id == repo.id,
                                                 RepoCommit.sha.in_(forgotten[start : start + 900])))
    touch(session, repo)
    return squashed


def squash_message(body: dict, branch: str) -> str:
    message = body.get("message")
    if message is None:
        return f"Super-squash branch '{branch}'"
    if not isinstance(message, str) or not message.strip():
        raise BadRequest("'message' must be the squashed commit's message (a non-empty string)")
    return naming.check_text(message, "squash message")


def collect_lfs_garbage(db: Database, blobs: BlobStore, grace_seconds: int, dry_run: bool = False) -> dict:
    """Unlink content no reachable commit of its repo points at (links past the grace period only), then delete
    the git-lfs bytes no repo links any more. Runs beside a live server: the sweep holds the tables commits
    write (SQLite: its write lock), and bytes are deleted under the lock uploads link under, each re-checked."""
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=grace_seconds)
    with db.write() as session:
        if db.is_postgresql and not dry_run:
            # lfs_links first and EXCLUSIVE: a commit reads the links it needs FOR SHARE, so it either ends
            # before the sweep starts or waits for it, never builds on a link the sweep removes.
            session.execute(text("LOCK TABLE lfs_links IN EXCLUSIVE MODE"))
            session.execute(text("LOCK TABLE refs, git_objects, repo_commits, lfs_objects IN SHARE MODE"))
        stale_links: list[tuple[int, str]] = []
        for repo_id in session.scalars(select(Repo.id)):
            reachable = reachable_lfs(session, repo_id)
            for oid, created in session.execute(select(LfsLink.oid, LfsLink.created_at)
                                                .where(LfsLink.repo_id == repo_id)):
                if oid not in reachable and _aware(created) < cutoff:
                    stale_links.append((repo_id, oid))
        stale = set(stale_links)
        held = {oid for repo_id, oid in session.execute(select(LfsLink.repo_id, LfsLink.oid))
                if (repo_id, oid) not in stale}
        dead = [oid for oid, created in session.execute(select(LfsObject.oid, LfsObject.created_at))
                if oid not in held and _aware(created) < cutoff]
        if not dry_run:
            for repo_id, oid in stale_links:
                session.execute(delete(LfsLink).where(LfsLink.repo_id == repo_id, LfsLink.oid == oid))
            for start in range(0, len(dead), 900):
                session.execute(delete(LfsObject).where(LfsObject.oid.in_(dead[start : start + 900])))
    freed = 0
    for oid in dead:
        with db.lock(lfs.PLACING_LOCK):
            if not dry_run:
                with db.read() as session:
                    if session.get(LfsObject, oid) is not None:
                        continue  # uploaded and linked again meanwhile
            if blobs.exists(oid):  # Xet content has no git-lfs bytes: Cas.collect_garbage frees its xorbs
                freed += blobs.size(oid)
                if not dry_run:
                    blobs.delete(oid)
    return {"links": len(stale_links), "objects": len(dead), "bytes": freed, "dry_run": dry_run}


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)

