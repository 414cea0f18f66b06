"""The Hub as plain method calls: each one is a whole operation in one transaction, testable without HTTP.

HTTP handlers (hub/routes.py) parse the request, call one of these in a worker thread, and render.
"""

from __future__ import annotations

import base64
import fnmatch
import stat
from dataclasses import dataclass
from typing import Iterable, Iterator

from dulwich.ignore import IgnoreFilter
from dulwich.objects import Blob
from sqlalchemy import select

from keephub.accounts import Accounts, Actor, RepoTarget, allowed, refusal_of
from keephub.accounts.access import Action
from keephub.config import Settings
from keephub.hub import (commits, discussions, gating, git_push, housekeeping, lfs, naming, repos, snapshots, webhooks,
                         wireformat)
from keephub.storage import gitobjects
from keephub.storage.blobs import BlobStore, iter_range
from keephub.storage.db import Database
from keephub.storage.schema import Account, LfsLink, Repo, repo_stamp
from keephub.wire import BadRequest, EntryNotFound, Forbidden, HubError, PreconditionFailed, RepoNotFound, Unauthorized
from keephub.wire.errors import NotFound
from keephub.xet import Cas, tokens
from keephub.xet.filecache import RebuiltFileCache

_COMMIT_RETRIES = 5


@dataclass(frozen=True)
class FileTarget:
    """Everything resolve needs to answer HEAD or GET for one file at one revision; `inline` holds a small
    file's bytes (None for a large file, and when they were not asked for)."""

    commit_sha: str
    etag: str
    size: int
    is_lfs: bool
    inline: bytes | None
    xet_hash: str | None = None


class Hub:
    def __init__(self, settings: Settings, db: Database, blobs: BlobStore, cas: Cas) -> None:
        self.settings = settings
        self.db = db
        self.blobs = blobs
        self.cas = cas
        self.accounts = Accounts(db)
        self.rebuilt = RebuiltFileCache(settings.data_dir / "cache" / "xet-files", settings.xet_file_cache_bytes)

    # -- repos -----------------------------------------------------------------------------------
    def create_repo(self, actor: Actor | None, body: dict) -> dict:
        repo_type = naming.check_repo_type(body.get("type"))
        name = body.get("name")
        namespace = body.get("organization") or (actor.name if actor else None)
        if isinstance(name, str) and "/" in name:
            namespace, name = naming.split_repo_id(name)
        naming.check_repo_name(name)
        if namespace is None:
            repos.require_actor(actor, f"create {name}")
        naming.check_repo_name(namespace, "namespace")
        private = visibility_of(body)
        sdk = body.get("sdk")
        if repo_type == "space" and sdk not in ("gradio", "docker", "static", "streamlit"):
            raise BadRequest("a space needs 'sdk': one of gradio, docker, static, streamlit")
        with self.db.write() as session:
            repo = repos.create_repo(session, actor, repo_type, str(namespace), str(name), bool(private),
                                     sdk if repo_type == "space" else None, self.settings.base_url)
        return {"url": f"{self.settings.base_url}/{repo.url_path}", "name": repo.repo_id, "id": f"{repo.type}-{repo.id}"}

    def delete_repo(self, actor: Actor | None, body: dict) -> None:
        repo_type, namespace, name = _repo_from_body(body, actor)
        with self.db.write() as session:
            repos.delete_repo(session, actor, repo_type, namespace, name)

    def move_repo(self, actor: Actor | None, body: dict) -> dict:
        repo_type = naming.check_repo_type(body.get("type"))
        source = naming.split_repo_id(body.get("fromRepo"))
        target = naming.split_repo_id(body.get("toRepo"))
        with self.db.write() as session:
            repo = repos.move_repo(session, actor, repo_type, source, target)
        return {"url": f"{self.settings.base_url}/{repo.url_path}"}

    def update_settings(self, actor: Actor | None, repo_type: str, namespace: str, name: str, body: dict) -> dict:
        private = visibility_of(body)
        gate = gating.gate_of(body)
        force_push = body.get("allowForcePush")
        if force_push is not None and not isinstance(force_push, bool):
            raise BadRequest("'allowForcePush' must be true or false (whether git push --force may rewrite main)")
        with self.db.write() as session:
            repo = repos.find_repo_for_admin(session, repo_type, namespace, name, actor)
            if private is not None:
                repos.set_visibility(session, repo, private)
            if force_push is not None:
                git_push.allow_force_push(session, repo, force_push)
            if gate is not None:
                gating.set_gate(session, repo, gate)
        return {"private": private if private is not None else repo.private}

    def repo_info(self, actor: Actor | None, repo_type: str, namespace: str, name: str, revision: str | None,
                  with_file_metadata: bool) -> dict:
        info, files, _ = self._repo_info_parts(actor, repo_type, namespace, name, revision, with_file_metadata)
        return info | files

    def repo_info_json(self, actor: Actor | None, repo_type: str, namespace: str, name: str, revision: str | None,
                       with_file_metadata: bool) -> bytes:
        """`repo_info` as JSON bytes: the siblings, the large part, are encoded once per commit (snapshots)."""
        info, files, siblings = self._repo_info_parts(actor, repo_type, namespace, name, revision,
                                                      with_file_metadata)
        head = snapshots.encode(info | {"usedStorage": files["usedStorage"]})
        return head[:-1] + b',"siblings":' + siblings + b"}"

    def _repo_info_parts(self, actor: Actor | None, repo_type: str, namespace: str, name: str, revision: str | None,
                         with_file_metadata: bool) -> tuple[dict, dict, bytes]:
        """`model_info` but its siblings, then the siblings and usedStorage, then the siblings as JSON."""
        with self.db.read() as session:
            found = repos.find_repo_at(session, repo_type, namespace, name, actor, revision or repos.DEFAULT_BRANCH)
            card, files, siblings = snapshots.repo_files(session, found.sha, with_file_metadata,
                                                         lambda tree: self._read_small(session, tree, "README.md"))
        info = wireformat.repo_info(found.repo, found.sha, card, None, self.settings.base_url)
        return info | {"likes": found.likes, "gated": found.gated or False}, files, siblings

    def list_repos(self, actor: Actor | None, repo_type: str, author: str | None, search: str | None,
                   limit: int | None) -> list[dict]:
        with self.db.read() as session:
            found = repos.visible_repos(session, actor, repo_type, author, search)[:limit]
            result = []
            for repo in found:
                sha = repos.resolve_revision(session, repo, repos.DEFAULT_BRANCH)
                result.append(wireformat.repo_info(repo, sha, None, None, self.settings.base_url))
            return result

    # -- reading trees and history ---------------------------------------------------------------
    def tree(self, actor: Actor | None, repo_type: str, namespace: str, name: str, revision: str, path: str,
             recursive: bool) -> tuple[str, list[dict]]:
        with self.db.read() as session:
            sha, tree = self._folder(session, actor, repo_type, namespace, name, revision, path)
            return sha, snapshots.tree_entries(session, tree, path, recursive, self.cas.xet_hashes)

    def tree_page_json(self, actor: Actor | None, repo_type: str, namespace: str, name: str, revision: str,
                       path: str, recursive: bool, start: int, size: int) -> tuple[str, int, bytes]:
        """The commit, how many entries the folder has, and a page of them as JSON (`list_repo_tree`)."""
        with self.db.read() as session:
            sha, tree = self._folder(session, actor, repo_type, namespace, name, revision, path)
            return (sha, *snapshots.tree_page_json(session, tree, path, recursive, start, size, self.cas.xet_hashes))

    def _folder(self, session, actor: Actor | None, repo_type: str, namespace: str, name: str,  # type: ignore[no-untyped-def]
                revision: str, path: str) -> tuple[str, str]:
        """The commit `revision` names and the tree sha of the folder `path` in it; 404 if it is not a folder."""
        found = repos.find_repo_at(session, repo_type, namespace, name, actor, revision)
        tree = gitobjects.load_commit(session, found.sha).tree.decode()
        folder = gitobjects.lookup(session, tree, path) if path else (gitobjects.DIR_MODE, tree)
        if folder is None or not stat.S_ISDIR(folder[0]):
            raise EntryNotFound(f"folder {path!r} does not exist at revision {revision!r} of {found.repo.repo_id}")
        return found.sha, folder[1]

    def paths_info(self, actor: Actor | None, repo_type: str, namespace: str, name: str, revision: str,
                   paths: list[str], expand: bool = False) -> list[dict]:
        with self.db.read() as session:
            sha = repos.find_repo_at(session, repo_type, namespace, name, actor, revision).sha
            tree = gitobjects.load_commit(session, sha).tree.decode()
            found_entries = []
            for index, raw in enumerate(paths):
                path = naming.check_path(raw.strip("/"), f"'paths' entry {index}")
                found = gitobjects.lookup(session, tree, path)
                if found is not None:
                    found_entries.append(snapshots.path_entry(session, path, *found))
            lfs_oids = [e.lfs_oid for e in found_entries if e.lfs_oid]
            xet = self.cas.xet_hashes(session, lfs_oids) if lfs_oids else {}
            result = [wireformat.tree_entry(e, xet.get(e.lfs_oid or "")) for e in found_entries]
            return _with_last_commits(session, sha, result) if expand else result

    def last_commits(self, actor: Actor | None, repo_type: str, namespace: str, name: str, sha: str,
                     entries: list[dict]) -> list[dict]:
        """`entries` of commit `sha`'s tree with their `lastCommit`, for expand=true (fsspec's modified())."""
        with self.db.read() as session:
            repos.find_repo(session, repo_type, namespace, name, actor)
            return _with_last_commits(session, sha, entries)

    def commits(self, actor: Actor | None, repo_type: str, namespace: str, name: str, revision: str,
                formatted: bool = False) -> list[dict]:
        with self.db.read() as session:
            repo = repos.find_repo(session, repo_type, namespace, name, actor)
            sha = repos.resolve_revision(session, repo, revision)
            return [wireformat.commit_entry(commit.id.decode(), commit, formatted)
                    for commit in gitobjects.iter_history(session, sha)]

    def refs(self, actor: Actor | None, repo_type: str, namespace: str, name: str) -> dict:
        with self.db.read() as session:
            repo = repos.find_repo(session, repo_type, namespace, name, actor)
            return wireformat.refs(repos.list_refs(session, repo))

    # -- branches and tags -----------------------------------------------------------------------
    def create_branch(self, actor: Actor | None, repo_type: str, namespace: str, name: str, branch: str,
                      starting_point: str | None) -> None:
        with self.db.write() as session:
            repo = repos.find_repo_for_write(session, repo_type, namespace, name, actor)
            repos.create_branch(session, repo, branch, starting_point)

    def delete_branch(self, actor: Actor | None, repo_type: str, namespace: str, name: str, branch: str) -> None:
        num = discussions.pr_number(branch)
        if num is not None:  # the pull request's commits and diff live there
            raise BadRequest(f"{branch} holds the commits of pull request #{num} and cannot be deleted; close the "
                             f"pull request instead (HfApi().change_discussion_status(repo_id, {num}, 'closed'))")
        with self.db.write() as session:
            repo = repos.find_repo_for_write(session, repo_type, namespace, name, actor)
            repos.delete_branch(session, repo, branch)

    def create_tag(self, actor: Actor | None, repo_type: str, namespace: str, name: str, revision: str,
                   tag: str) -> None:
        with self.db.write() as session:
            repo = repos.find_repo_for_write(session, repo_type, namespace, name, actor)
            repos.create_tag(session, repo, tag, revision)
            sha = repos.resolve_revision(session, repo, tag)
            webhooks.record_event(session, self.settings.base_url, repo, "repo.content", "update", sha,
                                  updatedRefs=[{"ref": f"refs/tags/{tag}", "oldSha": None, "newSha": sha}])

    def delete_tag(self, actor: Actor | None, repo_type: str, namespace: str, name: str, tag: str) -> None:
        with self.db.write() as session:
            repo = repos.find_repo_for_write(session, repo_type, namespace, name, actor)
            repos.delete_tag(session, repo, tag)

    # -- writing ---------------------------------------------------------------------------------
    def preupload(self, actor: Actor | None, repo_type: str, namespace: str, name: str, revision: str,
                  body: dict, create_pr: bool = False) -> dict:
        files = body.get("files") if isinstance(body, dict) else None
        if not isinstance(files, list):
            raise BadRequest("preupload body must be JSON {files: [{path, size, sample}]}")
        gitignore = body.get("gitIgnore")
        if gitignore is not None and not isinstance(gitignore, str):
            raise BadRequest("preupload 'gitIgnore' must be the text of a .gitignore file")
        with self.db.read() as session:
            repo = discussions.find_repo_for_contribution(session, repo_type, namespace, name, actor,
                                                          None if create_pr else revision)
            sha = repos.branch_head(session, repo, revision)
            tree = gitobjects.load_commit(session, sha).tree.decode()
            lfs_patterns = _lfs_patterns(self._read_small(session, tree, ".gitattributes"))
            if gitignore is None:  # the client sends the .gitignore it uploads; otherwise the branch's own counts
                gitignore = (self._read_small(session, tree, ".gitignore") or b"").decode("utf-8", "replace")
            ignored = IgnoreFilter(line.encode() for line in gitignore.splitlines())
            answers = []
            for index, item in enumerate(files):
                if not isinstance(item, dict):
                    raise BadRequest(f"preupload files[{index}] must be an object {{path, size, sample}}")
                path = naming.check_path(item.get("path"), f"path of preupload files[{index}]")
                size = item.get("size")
                if not isinstance(size, int) or size < 0:
                    raise BadRequest(f"preupload files[{index}] ({path}): 'size' must be a non-negative integer")
                try:
                    sample = base64.b64decode(item.get("sample") or "", validate=True)
                except (TypeError, ValueError):
                    raise BadRequest(f"preupload files[{index}] ({path}): 'sample' must be base64")
                existing = gitobjects.lookup(session, tree, path)
                oid = None
                if existing is not None and not stat.S_ISDIR(existing[0]):
                    entry = gitobjects.entry_for(session, path, *existing)
                    oid = entry.lfs_oid or entry.sha
                mode = "lfs" if self._wants_lfs(path, size, sample, lfs_patterns) else "regular"
                # The path as the client sent it, not its NFC form: the client matches answers by that key.
                answers.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": bool(ignored.is_ignored(path)),
                                "oid": oid})
            return {"files": answers, "commitOid": sha}

    def _wants_lfs(self, path: str, size: int, sample: bytes, patterns: list[str]) -> bool:
        if size == 0:
            return False
        if size > self.settings.max_regular_file_bytes or b"\x00" in sample:
            return True
        base = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(base, p) or fnmatch.fnmatch(path, p) for p in patterns)

    def commit(self, actor: Actor | None, repo_type: str, namespace: str, name: str, branch: str,
               body: bytes | Iterable[bytes]) -> dict:
        """Apply an NDJSON commit (bytes, or its lines as from a spooled file). Regular files are stored while the
        body is read, once the caller is known to may write the repo, so memory holds one batch of them."""
        with self.db.read() as session:
            discussions.find_repo_for_contribution(session, repo_type, namespace, name, actor, branch)
        request = commits.parse_ndjson(body, self.settings.max_regular_file_bytes, commits.BlobStash(self._store_blobs))
        for attempt in range(_COMMIT_RETRIES):
            try:
                with self.db.write() as session:
                    repo = discussions.find_repo_for_contribution(session, repo_type, namespace, name, actor,
                                                                  branch)
                    assert actor is not None
                    result = commits.apply_commit(session, repo, branch, request, actor)
                    if result.created:
                        discussions.record_push(session, self.settings, repo, actor, branch, result.sha,
                                                request.summary)
                break
            except PreconditionFailed:
                if request.parent_commit is not None or attempt == _COMMIT_RETRIES - 1:
                    raise
        return {
            "commitUrl": f"{self.settings.base_url}/{repo.url_path}/commit/{result.sha}",
            "commitOid": result.sha,
            "commitMessage": request.summary,
            "pullRequestUrl": None,
        }

    def _store_blobs(self, blobs: list[Blob]) -> None:
        with self.db.write() as session:
            gitobjects.insert_ignoring_duplicates(session, [gitobjects.object_row(blob) for blob in blobs])

    # -- storage a repo holds (hub/housekeeping.py) -----------------------------------------------
    def lfs_files(self, actor: Actor | None, repo_type: str, namespace: str, name: str) -> list[dict]:
        with self.db.read() as session:
            repo = repos.find_repo_for_write(session, repo_type, namespace, name, actor)
            return housekeeping.lfs_files(session, repo)

    def delete_lfs_files(self, actor: Actor | None, repo_type: str, namespace: str, name: str, body: dict) -> None:
        shas = housekeeping.parse_deletions(body)
        with self.db.write() as session:
            repo = repos.find_repo_for_admin(session, repo_type, namespace, name, actor)
            housekeeping.delete_lfs_files(session, repo, shas)

    def super_squash(self, actor: Actor | None, repo_type: str, namespace: str, name: str, branch: str,
                     body: dict) -> str:
        message = housekeeping.squash_message(body, branch)
        with self.db.write() as session:
            repo = repos.find_repo_for_admin(session, repo_type, namespace, name, actor)
            assert actor is not None
            return housekeeping.super_squash(session, repo, branch, message, actor)

    def collect_garbage(self, dry_run: bool = False) -> dict:
        """`keephub gc`: repos' unreferenced LFS content first, then the Xet storage no repo or bucket holds."""
        grace = self.settings.xet_gc_grace_seconds
        collected = {"lfs": housekeeping.collect_lfs_garbage(self.db, self.blobs, grace, dry_run),
                     "xet": self.cas.collect_garbage(self.blobs, dry_run=dry_run)}
        if not dry_run:
            self.rebuilt.forget_unless(lambda oid: self.cas.file_for_sha256(oid) is not None)
        return collected

    # -- LFS -------------------------------------------------------------------------------------
    def lfs_batch(self, actor: Actor | None, repo_type: str, namespace: str, name: str, body: object) -> dict:
        with self.db.read() as session:
            if isinstance(body, dict) and body.get("operation") == "download":
                repo = repos.find_repo(session, repo_type, namespace, name, actor)
                gating.check_access(session, actor, repo)
            else:
                repo = discussions.find_repo_for_contribution(session, repo_type, namespace, name, actor,
                                                              lfs.target_ref(body))
            return lfs.batch(session, self.settings, repo, body, actor.token_id if actor else None,
                             contribution=not allowed(actor, "repo.write", repo.target))

    def lfs_verify(self, actor: Actor | None, repo_type: str, namespace: str, name: str, body: object) -> None:
        with self.db.read() as session:
            repo = discussions.find_repo_for_contribution(session, repo_type, namespace, name, actor, None)
            lfs.verify(session, repo, body)

    def lfs_verify_granted(self, grant: lfs.UploadGrant, body: object) -> None:
        with self.db.read() as session:
            lfs.verify_granted(session, grant, body)

    def lfs_object(self, actor: Actor | None, repo_type: str, namespace: str, name: str, oid: str) -> int:
        """Size of an LFS object the caller may download from this repo."""
        with self.db.read() as session:
            repo = repos.find_repo(session, repo_type, namespace, name, actor)
            gating.check_access(session, actor, repo)
            sizes = lfs.linked_sizes(session, repo, [oid])
        if oid not in sizes:
            raise EntryNotFound(f"LFS object {oid} is not part of {repo.repo_id}")
        return sizes[oid]

    # -- files -----------------------------------------------------------------------------------
    def file_target(self, actor: Actor | None, repo_type: str, namespace: str, name: str, revision: str,
                    path: str, with_content: bool = True) -> FileTarget:
        """What resolve answers for one file; `with_content` False (a HEAD) leaves a small file's bytes unread."""
        path = naming.check_path(path)
        with self.db.read() as session:
            found_repo = repos.find_repo_at(session, repo_type, namespace, name, actor, revision)
            repo, sha = found_repo.repo, found_repo.sha
            if found_repo.gated is not None:
                gating.check_access(session, actor, repo, path)
            tree = gitobjects.load_commit(session, sha).tree.decode()
            found = gitobjects.lookup(session, tree, path)
            if found is None or stat.S_ISDIR(found[0]):
                raise EntryNotFound(
                    f"{path} does not exist at revision {revision!r} of {repo.repo_id}",
                    extra_headers={"X-Repo-Commit": sha},
                )
            entry = snapshots.path_entry(session, path, *found)
            if entry.lfs_oid is not None:
                if session.get(LfsLink, (repo.id, entry.lfs_oid)) is None:
                    raise EntryNotFound(f"{path} at revision {revision!r} of {repo.repo_id} is an LFS file whose "
                                        "content was permanently deleted from the repo (permanently_delete_lfs_files)",
                                        extra_headers={"X-Repo-Commit": sha})
                xet = self.cas.xet_hashes(session, [entry.lfs_oid]).get(entry.lfs_oid)
                return FileTarget(sha, entry.lfs_oid, entry.file_size, True, None, xet)
            content = gitobjects.read_blob(session, entry.sha) if with_content else None
            return FileTarget(sha, entry.sha, entry.size, False, content)

    def large_file_url(self, oid: str) -> str | None:
        """A short-lived URL serving a git-lfs-uploaded large file straight from the blob store (S3), for the
        caller to redirect to after its access check; None when keephub serves the bytes itself (a local store,
        or content kept only as xorbs)."""
        url = self.blobs.presigned_get(oid)
        return url if url is not None and self.blobs.exists(oid) else None

    def large_file(self, oid: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Bytes of a large file by sha256: from the blob store (git-lfs uploads) or rebuilt from xorbs (Xet)."""
        if self.blobs.exists(oid):
            return iter_range(self.blobs, oid, start, length)
        entry = self.cas.file_for_sha256(oid)
        if entry is None:
            raise EntryNotFound(f"the content of large file {oid} is missing from this server's stores")
        length = entry.size - start if length is None else length
        cached = self.rebuilt.read(oid, start, length)
        if cached is not None:
            return cached
        pieces = self.cas.stream(entry, start, length)
        return self.rebuilt.keeping(oid, entry.size, pieces) if start == 0 and length == entry.size else pieces

    # -- Xet -------------------------------------------------------------------------------------
    def xet_token(self, actor: Actor | None, repo_type: str, namespace: str, name: str, access: str,
                  revision: str, create_pr: bool = False) -> dict:
        """A CAS token for one repo, granting no more than the caller's own rights on it: a write token for a
        caller who may not write the repo only uploads for their pull requests (`create_pr`, or `refs/pr/<num>`)."""
        contribution = False
        with self.db.read() as session:
            if access == tokens.WRITE:
                repo = discussions.find_repo_for_contribution(session, repo_type, namespace, name, actor,
                                                              None if create_pr else revision)
                contribution = not allowed(actor, "repo.write", repo.target)
            else:
                repo = repos.find_repo(session, repo_type, namespace, name, actor)
                gating.check_access(session, actor, repo)
        grant = tokens.issue(self.settings, repo.id, repo_stamp(repo.created_at), access,
                             actor.name if actor else "", actor.token_id if actor else None,
                             contribution=contribution)
        return {"accessToken": tokens.encode(self.settings, grant), "exp": grant.expires,
                "casUrl": f"{self.settings.base_url}/cas"}

    def check_cas_grant(self, grant: tokens.CasGrant) -> None:
        """Re-check a CAS token against the present: the same repo (not a later one that reused its id), the
        Hub token behind it still live, and that token's rights on the repo now, not when it was issued."""
        renew = "ask for a new CAS token (xet-read-token / xet-write-token)"
        action: Action = "repo.read" if grant.access != tokens.WRITE else (
            "repo.discuss" if grant.contribution else "repo.write")
        self._recheck("CAS token", renew, grant.hub_token_id, grant.repo_id, grant.repo_stamp, action,
                      Unauthorized(f"the repo this CAS token was issued for no longer exists; {renew}"))

    def check_upload_grant(self, grant: lfs.UploadGrant) -> None:
        """Re-check a signed upload URL at use time: it works only while the token it was issued to is live and
        may still write the repo (a job's URL ends with the job)."""
        self._recheck("upload URL", "request a fresh one from the LFS batch endpoint", grant.token_id,
                      grant.repo_id, grant.repo_stamp, "repo.discuss" if grant.contribution else "repo.write",
                      NotFound("the repo this upload URL was issued for has been deleted since; nothing was linked"))

    def _recheck(self, credential: str, renew: str, token_id: int | None, repo_id: int, stamp: int,
                 action: Action, gone: HubError) -> None:
        """A credential derived from a Hub token allows no more than that token allows now."""
        try:
            actor = None if token_id is None else self.accounts.actor_of_token(token_id)
        except Unauthorized as exc:
            raise Unauthorized(f"the access token this {credential} was issued for no longer works: {exc.message}; "
                               f"authenticate with a valid token and {renew}")
        with self.db.read() as session:
            row = session.execute(select(Repo, Account.name).join(Account, Account.id == Repo.owner_id)
                                  .where(Repo.id == repo_id)).one_or_none()
        if row is None or repo_stamp(row[0].created_at) != stamp:
            raise gone
        repo, namespace = row
        who = actor.name if actor else "an anonymous caller"
        refusal = refusal_of(actor, action, RepoTarget(repo.type, namespace, repo.name, repo.private))
        if isinstance(refusal, RepoNotFound):
            raise Forbidden(f"{who} can no longer read {namespace}/{repo.name}; {renew}")
        if refusal is not None:
            raise Forbidden(f"{who} can no longer write to {namespace}/{repo.name} "
                            f"({refusal.message.removeprefix('403 Forbidden: ')}); {renew}")
        # A repo gated since the credential was issued; a contributor's CAS write token also reads.
        if action != "repo.write" and repo.gated is not None:
            with self.db.read() as session:
                gating.check_access(session, actor, repos.repo_ref(repo, namespace))

    def auth_check(self, actor: Actor | None, repo_type: str, namespace: str, name: str, write: bool) -> None:
        with self.db.read() as session:
            if write:
                repos.find_repo_for_write(session, repo_type, namespace, name, actor)
            else:
                repos.find_repo(session, repo_type, namespace, name, actor)

    def _read_small(self, session, tree: str, path: str) -> bytes | None:  # type: ignore[no-untyped-def]
        found = gitobjects.lookup(session, tree, path)
        if found is None or stat.S_ISDIR(found[0]):
            return None
        data = gitobjects.read_blob(session, found[1])
        return None if gitobjects.parse_lfs_pointer(data) else data


def visibility_of(body: dict) -> bool | None:
    """Whether a create/settings body asks for a private repo or bucket (None: it does not say)."""
    visibility = body.get("visibility")
    if visibility is not None:
        if visibility not in ("public", "private"):
            raise BadRequest(f"invalid visibility {visibility!r}; use 'public' or 'private'")
        return visibility == "private"
    private = body.get("private")
    if private is not None and not isinstance(private, bool):
        raise BadRequest("'private' must be true or false")
    return private


def _repo_from_body(body: dict, actor: Actor | None) -> tuple[str, str, str]:
    repo_type = naming.check_repo_type(body.get("type"))
    name = body.get("name")
    namespace = body.get("organization") or (actor.name if actor else None)
    if isinstance(name, str) and "/" in name:
        namespace, name = naming.split_repo_id(name)
    repos.require_actor(actor, "manage repos")
    return repo_type, naming.check_repo_name(namespace, "namespace"), naming.check_repo_name(name)


def _with_last_commits(session, sha: str, entries: list[dict]) -> list[dict]:  # type: ignore[no-untyped-def]
    changed = repos.last_changes(session, sha, [entry["path"] for entry in entries])
    return [entry | {"lastCommit": wireformat.last_commit(changed[entry["path"]])} for entry in entries]


def _lfs_patterns(gitattributes: bytes | None) -> list[str]:
    patterns = []
    for line in (gitattributes or b"").decode("utf-8", "replace").splitlines():
        fields = line.split()
        if len(fields) >= 2 and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns

