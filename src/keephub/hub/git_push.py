"""`git push`: the ref updates of a received pack, applied with the same rules as a commit through the API.

A push arrives as whole commits, not as file operations, so what the API checks while building a tree is
checked here on the pushed trees: paths the Hub accepts, regular files under the size limit, LFS pointers only
to objects uploaded to this repo. Branches move by compare-and-swap on the head the client saw (a push racing
another one is refused, never lost), a non-fast-forward update of the default branch is refused, and every new
commit is recorded in `repo_commits`, where the durability record verifies the pushes a job reports.
Objects the pack leaves out must already be part of this repo, so a push cannot graft another repo's private
history into one its author may read.
"""

from __future__ import annotations

import stat
from collections import deque
from dataclasses import dataclass, field
from typing import TypeVar

from dulwich.errors import ObjectFormatException
from dulwich.objects import Blob, Commit, ShaFile, Tag, Tree
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from keephub.hub import lfs, naming, webhooks
from keephub.hub.repos import DEFAULT_BRANCH, RepoRef, touch
from keephub.storage import gitobjects
from keephub.storage.db import insert_for
from keephub.storage.schema import Ref, Repo, RepoCommit
from keephub.wire import HubError

ZERO_SHA = "0" * 40
_REF_PREFIXES = {"branch": "refs/heads/", "tag": "refs/tags/"}
_ALLOWED_MODES = (gitobjects.FILE_MODE, stat.S_IFREG | 0o755, gitobjects.DIR_MODE)
# What `_to_accept` checks a pushed object to be: a tree or a blob.
Pushed = TypeVar("Pushed", Tree, Blob)


def ref_name(kind: str, name: str) -> str:
    """The git name of a stored ref: branches under refs/heads/, tags under refs/tags/, any other kind (such as
    pull requests, `refs/pr/N`) under refs/<kind>/."""
    if name.startswith("refs/"):
        return name
    return _REF_PREFIXES.get(kind, f"refs/{kind}/") + name


@dataclass(frozen=True)
class RefUpdate:
    old: str
    new: str
    name: str


class Refused(Exception):
    """One ref update refused; the message is what `git push` shows next to the ref."""


@dataclass
class _Push:
    """What one push needs while its updates are checked: the pushed objects, those accepted so far."""

    session: Session
    repo: RepoRef
    incoming: dict[str, ShaFile]
    max_regular_bytes: int
    accepted: dict[str, ShaFile] = field(default_factory=dict)
    new_commits: set[str] = field(default_factory=set)
    known: set[str] | None = None


def apply_push(session: Session, repo: RepoRef, updates: list[RefUpdate], incoming: dict[str, ShaFile],
               max_regular_bytes: int, atomic: bool, base_url: str) -> list[tuple[str, str | None]]:
    """Apply `updates` inside the caller's write transaction; (ref, None) for each applied, (ref, reason) for each
    refused. With `atomic`, one refusal refuses them all (git push --atomic). The applied ones are one
    `repo.content` webhook event, as a commit through the API is."""
    push = _Push(session, repo, incoming, max_regular_bytes)
    checked: list[tuple[RefUpdate, str | None]] = []
    for ref_update in updates:
        try:
            _check(push, ref_update)
            checked.append((ref_update, None))
        except Refused as exc:
            checked.append((ref_update, str(exc)))
    if atomic and any(reason for _, reason in checked):
        return [(u.name, reason or "atomic push failed: another ref of this push was refused") for u, reason in checked]
    applied = [u for u, reason in checked if reason is None]
    if applied:
        _write(push, applied)
        head = next((u.new for u in reversed(applied) if u.new != ZERO_SHA), None)
        webhooks.record_event(session, base_url, repo, "repo.content", "update", head, updatedRefs=[
            {"ref": u.name, "oldSha": None if u.old == ZERO_SHA else u.old, "newSha": None if u.new == ZERO_SHA
             else u.new} for u in applied])
    return [(u.name, reason) for u, reason in checked]


def _kind_and_name(ref: str) -> tuple[str, str]:
    for kind, prefix in _REF_PREFIXES.items():
        if ref.startswith(prefix):
            name = ref.removeprefix(prefix)
            try:
                naming.check_ref_name(name, kind)
            except HubError as exc:
                raise Refused(exc.message) from None
            return kind, name
    if ref.startswith("refs/pr/"):
        raise Refused("refs/pr/* belong to pull requests: push to a branch and open a pull request from it, or "
                      "commit to the pull request through the API (revision='refs/pr/N')")
    raise Refused("keephub stores branches (refs/heads/*) and tags (refs/tags/*) only; push to one of those")


def _check(push: _Push, ref_update: RefUpdate) -> None:
    kind, name = _kind_and_name(ref_update.name)
    current = push.session.get(Ref, (push.repo.id, kind, name), with_for_update=True)
    head = current.commit_sha if current is not None else ZERO_SHA
    if head != ref_update.old:
        raise Refused(f"{ref_update.name} is at {head[:12]} on the server, not {ref_update.old[:12]} as your push "
                      "assumes: it moved since you fetched; run git pull (or git fetch), then push again")
    if ref_update.new == ZERO_SHA:
        if kind == "branch" and name == DEFAULT_BRANCH:
            raise Refused(f"the default branch {DEFAULT_BRANCH!r} cannot be deleted; delete the repo instead")
        return
    if kind == "tag" and head != ZERO_SHA:
        raise Refused(f"tag {name!r} exists; delete it first (git push origin :refs/tags/{name}), then push it again")
    if isinstance(push.incoming.get(ref_update.new), Tag):
        raise Refused("annotated tags are not stored by keephub; push a lightweight tag (git tag NAME, without -a)")
    _accept_history(push, ref_update.new)
    rewrites_main = kind == "branch" and name == DEFAULT_BRANCH and head != ZERO_SHA
    if rewrites_main and not _is_ancestor(push, head, ref_update.new) and not _force_push_allowed(push):
        raise Refused(f"non-fast-forward update of {DEFAULT_BRANCH!r}, which would drop commits from it; "
                      "git pull (merge or rebase) and push again (a repo admin can allow force pushes with "
                      "PUT /api/models/REPO/settings {\"allowForcePush\": true})")


def allow_force_push(session: Session, repo: RepoRef, allowed: bool) -> None:
    """The repo setting that lets `git push --force` rewrite the default branch."""
    session.execute(update(Repo).where(Repo.id == repo.id).values(allow_force_push=allowed))


def _force_push_allowed(push: _Push) -> bool:
    return bool(push.session.execute(select(Repo.allow_force_push).where(Repo.id == push.repo.id)).scalar())


def _accept_history(push: _Push, tip: str) -> None:
    """Check every commit reachable from `tip` that this repo does not have yet, with its new trees and files."""
    pending = [tip]
    while pending:
        sha = pending.pop()
        if sha in push.new_commits or _repo_has_commit(push, sha):
            continue
        commit = push.incoming.get(sha)
        if not isinstance(commit, Commit):
            raise Refused(f"commit {sha[:12]} is neither in the pushed pack nor in this repo; "
                          "fetch, then push again")
        _check_format(commit)
        push.new_commits.add(sha)
        push.accepted[sha] = commit
        parents = [parent.decode() for parent in commit.parents]
        _accept_tree(push, commit.tree.decode(), "", parents)
        pending.extend(parents)


def _repo_has_commit(push: _Push, sha: str) -> bool:
    return push.session.get(RepoCommit, (push.repo.id, sha)) is not None


def _to_accept(push: _Push, sha: str, path: str, parents: list[str], kind: type[Pushed],
               noun: str) -> Pushed | None:
    """The pushed object `sha` found at `path`, checked to be a `kind`, if it still needs accepting; None when it
    was accepted already or is not in the push (then the repo must hold it already)."""
    if sha in push.accepted:
        return None
    found = push.incoming.get(sha)
    if found is None:
        _require_known(push, sha, path, parents)
        return None
    if not isinstance(found, kind):
        raise Refused(f"object {sha[:12]} at {path or 'the root'} should be a {noun} but is a "
                      f"{found.type_name.decode()}")
    return found


def _accept_tree(push: _Push, tree_sha: str, path: str, parents: list[str]) -> None:
    tree = _to_accept(push, tree_sha, path, parents, Tree, "tree")
    if tree is None:
        return
    _check_format(tree)
    push.accepted[tree_sha] = tree
    for entry in tree.iteritems():
        entry_path = f"{path}/{entry.path.decode('utf-8', 'replace')}" if path else entry.path.decode("utf-8",
                                                                                                   "replace")
        if entry.mode not in _ALLOWED_MODES:
            raise Refused(f"{entry_path} has mode {entry.mode:o}: keephub stores files and folders only (no symlinks "
                          "or submodules); commit the file itself")
        try:
            naming.check_path(entry_path)
        except HubError as exc:
            raise Refused(exc.message) from None
        sha = entry.sha.decode()
        if stat.S_ISDIR(entry.mode):
            _accept_tree(push, sha, entry_path, parents)
        else:
            _accept_blob(push, sha, entry_path, parents)


def _accept_blob(push: _Push, sha: str, path: str, parents: list[str]) -> None:
    blob = _to_accept(push, sha, path, parents, Blob, "file")
    if blob is None:
        return
    data = blob.as_raw_string()
    pointer = gitobjects.parse_lfs_pointer(data)
    if pointer is not None:
        oid, size = pointer
        stored = lfs.linked_sizes(push.session, push.repo, [oid], lock=True).get(oid)
        if stored is None:
            raise Refused(f"{path} is an LFS pointer to {oid[:12]}..., which was never uploaded to "
                          f"{push.repo.repo_id}; install git-lfs (git lfs install) so that git push uploads it first")
        if stored != size:
            raise Refused(f"{path}: the LFS pointer says {size} bytes, but object {oid[:12]}... has {stored}")
    elif len(data) > push.max_regular_bytes:
        raise Refused(f"{path} is {len(data)} bytes, over the {push.max_regular_bytes}-byte limit for files stored "
                      f"in git; track it with git lfs (git lfs track '{path}', git add .gitattributes), "
                      "amend the commit and push again")
    push.accepted[sha] = blob


def _require_known(push: _Push, sha: str, path: str, parents: list[str]) -> None:
    """An object the pack left out is fine if this repo has it: git leaves out what the refs it fetched hold."""
    for parent in parents:
        if _repo_has_commit(push, parent):
            parent_tree = gitobjects.load_commit(push.session, parent).tree.decode()
            found = gitobjects.lookup(push.session, parent_tree, path) if path else (gitobjects.DIR_MODE, parent_tree)
            if found is not None and found[1] == sha:
                return
    if sha in _known_objects(push):
        return
    raise Refused(f"object {sha[:12]} ({path or 'the root folder'}) is neither in the pushed pack nor part of "
                  f"{push.repo.repo_id}; fetch, then push again")


def _known_objects(push: _Push) -> set[str]:
    """Every tree and file sha in the trees of this repo's refs: what a client that fetched them may leave out."""
    if push.known is None:
        known: set[str] = set()
        tips = push.session.execute(select(Ref.commit_sha).where(Ref.repo_id == push.repo.id)).scalars()
        for tip in set(tips):
            stack = [gitobjects.load_commit(push.session, tip).tree.decode()]
            while stack:
                tree_sha = stack.pop()
                if tree_sha in known:
                    continue
                known.add(tree_sha)
                for entry in gitobjects.load_tree(push.session, tree_sha).iteritems():
                    if stat.S_ISDIR(entry.mode):
                        stack.append(entry.sha.decode())
                    else:
                        known.add(entry.sha.decode())
        push.known = known
    return push.known


def _check_format(obj: ShaFile) -> None:
    try:
        obj.check()
    except ObjectFormatException as exc:
        raise Refused(f"malformed {obj.type_name.decode()} {obj.id.decode()[:12]}: {exc}") from None


def _is_ancestor(push: _Push, ancestor: str, descendant: str) -> bool:
    seen: set[str] = set()
    queue = deque([descendant])
    while queue:
        sha = queue.popleft()
        if sha == ancestor:
            return True
        if sha in seen:
            continue
        seen.add(sha)
        commit = push.accepted.get(sha)
        if not isinstance(commit, Commit):
            commit = gitobjects.load_commit(push.session, sha)
        queue.extend(parent.decode() for parent in commit.parents)
    return False


def _write(push: _Push, applied: list[RefUpdate]) -> None:
    """Store the accepted objects, record the new commits, and move each ref by compare-and-swap."""
    session, repo = push.session, push.repo
    writer = gitobjects.ObjectWriter()
    for obj in push.accepted.values():
        writer.add(obj)
    writer.flush(session)
    for sha in push.new_commits:
        session.execute(insert_for(session, RepoCommit).values(repo_id=repo.id, sha=sha)
                        .on_conflict_do_nothing(index_elements=["repo_id", "sha"]))
    for ref_update in applied:
        kind, name = _kind_and_name(ref_update.name)
        where = (Ref.repo_id == repo.id, Ref.kind == kind, Ref.name == name)
        if ref_update.new == ZERO_SHA:
            session.execute(delete(Ref).where(*where, Ref.commit_sha == ref_update.old))
        elif ref_update.old == ZERO_SHA:
            session.add(Ref(repo_id=repo.id, kind=kind, name=name, commit_sha=ref_update.new))
        else:
            session.execute(update(Ref).where(*where, Ref.commit_sha == ref_update.old)
                            .values(commit_sha=ref_update.new))
    session.flush()
    touch(session, repo)

