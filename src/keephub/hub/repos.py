"""Repos as the Hub models them: lookup with access control, create/delete/move/settings, refs and history.

Access rules follow the Hub: a private repo is invisible (404) to anyone without read access,
writes without a token are 401, and writes with a token that lacks access are 403 naming the
namespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from dulwich.objects import Commit
from sqlalchemy import and_, bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from keephub.accounts import Actor, RepoTarget, allowed, authorize, require_actor
from keephub.hub import naming
from keephub.storage import gitobjects
from keephub.storage.schema import Account, Ref, Repo, RepoCommit, RepoLike, RepoRedirect
from keephub.wire import BadRequest, Conflict, Forbidden, RepoNotFound, RevisionNotFound

DEFAULT_BRANCH = "main"
INITIAL_GITATTRIBUTES = "\n".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
        "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
        "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
        "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
) + "\n"


@dataclass(frozen=True)
class RepoRef:
    """A repo looked up for a caller, with the names the wire uses."""

    id: int
    type: str
    namespace: str
    name: str
    private: bool
    space_sdk: str | None
    created_at: datetime
    last_modified: datetime

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def url_path(self) -> str:
        return f"{naming.URL_PREFIX[self.type]}{self.repo_id}"

    @property
    def target(self) -> RepoTarget:
        return RepoTarget(self.type, self.namespace, self.name, self.private)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RepoMoved(RepoNotFound):
    """A repo asked for by a name it had before `move_repo`. Hub routes answer it with a redirect to the new name;
    anywhere else it is the 404 it derives from, naming the new id."""

    def __init__(self, repo_type: str, old_id: str, repo: RepoRef) -> None:
        super().__init__(f"{repo_type.capitalize()} repository {old_id} was renamed to {repo.repo_id}; use the new name")
        self.repo = repo


def repo_ref(repo: Repo, owner: str) -> RepoRef:
    return RepoRef(id=repo.id, type=repo.type, namespace=owner, name=repo.name, private=repo.private,
                   space_sdk=repo.space_sdk, created_at=repo.created_at, last_modified=repo.last_modified)


def _named(session: Session, repo_type: str, namespace: str, name: str) -> RepoRef | None:
    """The repo with this id, ignoring case as the Hub does (an exact match first, should two accounts' names
    differ only by case)."""
    rows = session.execute(
        select(Repo, Account.name).join(Account, Account.id == Repo.owner_id)
        .where(Repo.type == repo_type, func.lower(Account.name) == namespace.lower(),
               func.lower(Repo.name) == name.lower())
    ).all()
    if not rows:
        return None
    repo, owner = next(((r, o) for r, o in rows if o == namespace), rows[0])
    return repo_ref(repo, owner)


def _account_named(session: Session, name: str) -> Account | None:
    """The user or org owning namespace `name`, ignoring case (an exact match first)."""
    accounts = session.scalars(select(Account).where(func.lower(Account.name) == name.lower())).all()
    return next((a for a in accounts if a.name == name), accounts[0] if accounts else None)


def find_repo(session: Session, repo_type: str, namespace: str, name: str, actor: Actor | None) -> RepoRef:
    """The repo if the caller may read it; otherwise RepoNotFound, never revealing that a private repo exists.

    An id the repo had before it was moved raises RepoMoved, when the caller may read the repo."""
    found = _named(session, repo_type, namespace, name)
    if found is None:
        redirect = session.get(RepoRedirect, (repo_type, namespace.lower(), name.lower()))
        if redirect is not None:
            row = session.execute(select(Repo, Account.name).join(Account, Account.id == Repo.owner_id)
                                  .where(Repo.id == redirect.repo_id)).one_or_none()
            moved = repo_ref(*row) if row is not None else None
            if moved is not None and allowed(actor, "repo.read", moved.target):
                raise RepoMoved(repo_type, f"{namespace}/{name}", moved)
        hint = "" if actor else " If it is private, pass a token with read access."
        raise RepoNotFound(f"{repo_type.capitalize()} repository {namespace}/{name} not found.{hint}")
    authorize(actor, "repo.read", found.target)
    return found


@dataclass(frozen=True)
class RepoAtRevision:
    """A readable repo, the commit a revision names in it, and what its reads check besides (gate, likes)."""

    repo: RepoRef
    sha: str
    gated: str | None
    likes: int


_branch, _tag = aliased(Ref), aliased(Ref)
# The repo by its case-insensitive id, with the branch or tag of that name and its like count: what a small read
# needs before the content, in one prepared statement (built once, so SQLAlchemy only binds the values).
_REPO_AT_REF = (
    select(Repo.id, Repo.type, Repo.name, Repo.private, Repo.space_sdk, Repo.created_at, Repo.last_modified,
           Repo.gated, Account.name.label("owner"), _branch.commit_sha.label("branch_sha"),
           _tag.commit_sha.label("tag_sha"),
           select(func.count()).where(RepoLike.repo_id == Repo.id).scalar_subquery().label("likes"))
    .join(Account, Account.id == Repo.owner_id)
    .outerjoin(_branch, and_(_branch.repo_id == Repo.id, _branch.kind == "branch",
                             _branch.name == bindparam("revision")))
    .outerjoin(_tag, and_(_tag.repo_id == Repo.id, _tag.kind == "tag", _tag.name == bindparam("revision")))
    .where(Repo.type == bindparam("repo_type"), func.lower(Account.name) == bindparam("namespace"),
           func.lower(Repo.name) == bindparam("name"))
)


def find_repo_at(session: Session, repo_type: str, namespace: str, name: str, actor: Actor | None,
                 revision: str) -> RepoAtRevision:
    """`find_repo` and `resolve_revision` in one query when the revision is a branch or tag (the common case);
    anything else (a moved repo, a commit id, an error) takes their own path, with their answers."""
    rows = session.connection().execute(_REPO_AT_REF, {"repo_type": repo_type, "namespace": namespace.lower(),
                                                       "name": name.lower(), "revision": revision}).all()
    row = next((r for r in rows if r.owner == namespace), rows[0]) if rows else None
    if row is None:  # moved or missing (find_repo raises), or created since the query (PostgreSQL's READ COMMITTED)
        repo = find_repo(session, repo_type, namespace, name, actor)
        return RepoAtRevision(repo, resolve_revision(session, repo, revision),
                              session.scalar(select(Repo.gated).where(Repo.id == repo.id)),
                              session.scalar(select(func.count()).where(RepoLike.repo_id == repo.id)) or 0)
    repo = RepoRef(id=row.id, type=row.type, namespace=row.owner, name=row.name, private=row.private,
                   space_sdk=row.space_sdk, created_at=row.created_at, last_modified=row.last_modified)
    authorize(actor, "repo.read", repo.target)
    sha = row.branch_sha or row.tag_sha or resolve_revision(session, repo, revision)
    return RepoAtRevision(repo, sha, row.gated, row.likes)


def find_repo_for_write(session: Session, repo_type: str, namespace: str, name: str, actor: Actor | None) -> RepoRef:
    """The repo if the caller's token may change its content (commits, branches, tags, uploads)."""
    require_actor(actor, f"write to {namespace}/{name}")
    repo = find_repo(session, repo_type, namespace, name, actor)
    authorize(actor, "repo.write", repo.target)
    return repo


def find_repo_for_admin(session: Session, repo_type: str, namespace: str, name: str, actor: Actor | None) -> RepoRef:
    """The repo if the caller may delete, move it or change its settings."""
    require_actor(actor, f"manage {namespace}/{name}")
    repo = find_repo(session, repo_type, namespace, name, actor)
    authorize(actor, "repo.manage", repo.target)
    return repo


def resolve_revision(session: Session, repo: RepoRef, revision: str) -> str:
    """Branch, tag, full commit id or an unambiguous start of one (7 hex digits or more) of this repo -> commit sha."""
    for kind in ("branch", "tag"):
        ref = session.get(Ref, (repo.id, kind, revision))
        if ref is not None:
            return ref.commit_sha
    if naming.is_commit_sha(revision) and session.get(RepoCommit, (repo.id, revision)) is not None:
        return revision
    if naming.is_short_commit_sha(revision):
        matches = session.scalars(select(RepoCommit.sha).where(RepoCommit.repo_id == repo.id,
                                                               RepoCommit.sha.startswith(revision)).limit(2)).all()
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise RevisionNotFound(f"Invalid rev id: {revision!r} is the start of more than one commit of "
                                   f"{repo.repo_id}; give more of the commit id")
    raise RevisionNotFound(
        f"Invalid rev id: {revision!r} is not a branch, tag or commit of {repo.repo_id}; "
        "list them with `HfApi().list_repo_refs(...)`"
    )


def branch_head(session: Session, repo: RepoRef, branch: str, lock: bool = False) -> str:
    """The branch's head commit; `lock` (in a write) holds the branch until the commit, so that commits to it
    queue one behind the other instead of racing (without a database-wide write lock, as on PostgreSQL)."""
    ref = session.get(Ref, (repo.id, "branch", branch), with_for_update=lock)
    if ref is None:
        if session.get(Ref, (repo.id, "tag", branch)) is not None or naming.is_commit_sha(branch):
            raise BadRequest(f"{branch!r} is not a branch; commits can only be made to a branch of {repo.repo_id}")
        raise RevisionNotFound(
            f"branch {branch!r} does not exist in {repo.repo_id}; create it first with `HfApi().create_branch(...)`"
        )
    return ref.commit_sha


def make_commit(tree_sha: str, parents: list[str], author: str, summary: str, description: str) -> Commit:
    commit = Commit()
    commit.tree = tree_sha.encode()
    commit.parents = [p.encode() for p in parents]
    identity = f"{author} <{author}@users.keephub>".encode()
    commit.author = commit.committer = identity
    now = int(utcnow().timestamp())
    commit.author_time = commit.commit_time = now
    commit.author_timezone = commit.commit_timezone = 0
    message = summary.strip() or "Update"
    if description.strip():
        message += "\n\n" + description.strip()
    commit.message = (message + "\n").encode()
    return commit


def create_repo(session: Session, actor: Actor | None, repo_type: str, namespace: str, name: str,
                private: bool, space_sdk: str | None, base_url: str) -> RepoRef:
    actor = require_actor(actor, f"create {namespace}/{name}")
    owner = _account_named(session, namespace)
    if owner is None:
        raise Forbidden(f"403 Forbidden: namespace '{namespace}' does not exist; create it or push to '{actor.name}/...'.")
    namespace = owner.name
    authorize(actor, "repo.create", RepoTarget(repo_type, namespace, name))

    def taken(existing_name: str) -> Conflict:
        return Conflict(f"You already created this {repo_type} repo: {namespace}/{existing_name}",
                        extra_body={"url": f"{base_url}/{naming.URL_PREFIX[repo_type]}{namespace}/{existing_name}"})

    existing = session.execute(
        select(Repo.name).where(Repo.type == repo_type, Repo.owner_id == owner.id, func.lower(Repo.name) == name.lower())
    ).scalar_one_or_none()
    if existing is not None:
        raise taken(existing)
    now = utcnow()
    repo = Repo(type=repo_type, owner_id=owner.id, name=name, private=private, space_sdk=space_sdk,
                created_at=now, last_modified=now)
    session.add(repo)
    try:
        session.flush()
    except IntegrityError:  # created meanwhile by a concurrent request (PostgreSQL: no database-wide write lock)
        raise taken(name) from None
    writer = gitobjects.ObjectWriter()
    blob_sha = writer.add(gitobjects.new_blob(INITIAL_GITATTRIBUTES.encode()))
    tree_sha = gitobjects.apply_changes(session, writer, None, {".gitattributes": blob_sha})
    commit = make_commit(tree_sha, [], actor.name, "initial commit", "")
    commit_sha = writer.add(commit)
    writer.flush(session)
    session.add(RepoCommit(repo_id=repo.id, sha=commit_sha))
    session.add(Ref(repo_id=repo.id, kind="branch", name=DEFAULT_BRANCH, commit_sha=commit_sha))
    return RepoRef(id=repo.id, type=repo_type, namespace=namespace, name=name, private=private,
                   space_sdk=space_sdk, created_at=now, last_modified=now)


def delete_repo(session: Session, actor: Actor | None, repo_type: str, namespace: str, name: str) -> None:
    repo = find_repo_for_admin(session, repo_type, namespace, name, actor)
    if not session.execute(delete(Repo).where(Repo.id == repo.id)).rowcount:
        raise _gone(repo)


def move_repo(session: Session, actor: Actor | None, repo_type: str, source: tuple[str, str],
              target: tuple[str, str]) -> RepoRef:
    repo = find_repo_for_admin(session, repo_type, *source, actor)
    assert actor is not None
    new_namespace, new_name = target
    owner = _account_named(session, new_namespace)
    if owner is None:
        raise Forbidden(f"403 Forbidden: cannot move to '{new_namespace}': namespace '{new_namespace}' does not exist.")
    new_namespace = owner.name
    authorize(actor, "repo.create", RepoTarget(repo_type, new_namespace, new_name, repo.private))
    if (new_namespace, new_name) == (repo.namespace, repo.name):
        raise Conflict(f"cannot move {repo.repo_id} to {new_namespace}/{new_name}: that repo already exists")
    clash = session.execute(
        select(Repo.id).where(Repo.type == repo_type, Repo.owner_id == owner.id,
                              func.lower(Repo.name) == new_name.lower(), Repo.id != repo.id)
    ).scalar_one_or_none()
    if clash is not None:
        raise Conflict(f"cannot move {repo.repo_id} to {new_namespace}/{new_name}: that repo already exists")
    now = utcnow()
    try:
        moved = session.execute(update(Repo).where(Repo.id == repo.id)
                                .values(owner_id=owner.id, name=new_name, last_modified=now)).rowcount
    except IntegrityError:  # the target was created meanwhile by a concurrent request
        raise Conflict(f"cannot move {repo.repo_id} to {new_namespace}/{new_name}: that repo already exists") from None
    if not moved:
        raise _gone(repo)
    if repo.repo_id.lower() != f"{new_namespace}/{new_name}".lower():
        session.merge(RepoRedirect(type=repo_type, namespace=repo.namespace.lower(), name=repo.name.lower(),
                                   repo_id=repo.id))
    return RepoRef(id=repo.id, type=repo_type, namespace=new_namespace, name=new_name, private=repo.private,
                   space_sdk=repo.space_sdk, created_at=repo.created_at, last_modified=now)


def _gone(repo: RepoRef) -> RepoNotFound:
    """A repo found earlier in the transaction and deleted by a concurrent request before this one changed it."""
    return RepoNotFound(f"{repo.type.capitalize()} repository {repo.repo_id} was deleted by a concurrent request")


def set_visibility(session: Session, repo: RepoRef, private: bool) -> None:
    if not session.execute(update(Repo).where(Repo.id == repo.id).values(private=private)).rowcount:
        raise _gone(repo)


def create_branch(session: Session, repo: RepoRef, branch: str, starting_point: str | None) -> None:
    naming.check_ref_name(branch, "branch")
    exists = Conflict(f"branch {branch!r} already exists in {repo.repo_id}")
    if session.get(Ref, (repo.id, "branch", branch)) is not None:
        raise exists
    target = resolve_revision(session, repo, starting_point or DEFAULT_BRANCH)
    _add_ref(session, Ref(repo_id=repo.id, kind="branch", name=branch, commit_sha=target), exists)


def _add_ref(session: Session, ref: Ref, exists: Conflict) -> None:
    """Insert a new branch or tag; `exists` if a concurrent request created the same one first."""
    session.add(ref)
    try:
        session.flush()
    except IntegrityError:
        raise exists from None


def delete_branch(session: Session, repo: RepoRef, branch: str) -> None:
    if branch == DEFAULT_BRANCH:
        raise BadRequest(f"the default branch {DEFAULT_BRANCH!r} cannot be deleted; delete the repo instead")
    if not session.execute(delete(Ref).where(Ref.repo_id == repo.id, Ref.kind == "branch", Ref.name == branch)
                           ).rowcount:
        raise RevisionNotFound(f"branch {branch!r} does not exist in {repo.repo_id}")


def create_tag(session: Session, repo: RepoRef, tag: str, revision: str) -> None:
    naming.check_ref_name(tag, "tag")
    exists = Conflict(f"tag {tag!r} already exists in {repo.repo_id}")
    if session.get(Ref, (repo.id, "tag", tag)) is not None:
        raise exists
    _add_ref(session, Ref(repo_id=repo.id, kind="tag", name=tag, commit_sha=resolve_revision(session, repo, revision)),
             exists)


def delete_tag(session: Session, repo: RepoRef, tag: str) -> None:
    if not session.execute(delete(Ref).where(Ref.repo_id == repo.id, Ref.kind == "tag", Ref.name == tag)).rowcount:
        raise RevisionNotFound(f"tag {tag!r} does not exist in {repo.repo_id}")


def list_refs(session: Session, repo: RepoRef) -> list[Ref]:
    return list(session.execute(select(Ref).where(Ref.repo_id == repo.id).order_by(Ref.kind, Ref.name)).scalars())


def last_changes(session: Session, head: str, paths: list[str]) -> dict[str, Commit]:
    """For each path present at `head`, the newest commit of its first-parent history that changed the path.

    A commit changed a path when the path's (mode, sha) differs from its parent's. Paths whose folder is
    identical in both commits are skipped without looking inside, which keeps long histories cheap.
    """
    pending, found = set(paths), {}
    sha: str | None = head
    while sha is not None and pending:
        commit = gitobjects.load_commit(session, sha)
        parent = commit.parents[0].decode() if commit.parents else None
        tree = commit.tree.decode()
        parent_tree = gitobjects.load_commit(session, parent).tree.decode() if parent else None
        folder_unchanged: dict[str, bool] = {}
        for path in sorted(pending):
            if parent_tree is not None:
                folder = path.rpartition("/")[0]
                if folder not in folder_unchanged:
                    folder_unchanged[folder] = (gitobjects.lookup(session, tree, folder)
                                                == gitobjects.lookup(session, parent_tree, folder))
                if folder_unchanged[folder] or (gitobjects.lookup(session, tree, path)
                                                == gitobjects.lookup(session, parent_tree, path)):
                    continue
            found[path] = commit
            pending.discard(path)
        sha = parent
    return found


def visible_repos(session: Session, actor: Actor | None, repo_type: str | None, author: str | None,
                  search: str | None) -> list[RepoRef]:
    query = select(Repo, Account.name).join(Account, Account.id == Repo.owner_id)
    if repo_type:
        query = query.where(Repo.type == repo_type)
    if author:
        query = query.where(Account.name == author)
    if search:
        query = query.where((Account.name + "/" + Repo.name).contains(search))
    repos = []
    for repo, owner in session.execute(query.order_by(Repo.last_modified.desc())):
        found = repo_ref(repo, owner)
        if allowed(actor, "repo.read", found.target):
            repos.append(found)
    return repos


def touch(session: Session, repo: RepoRef) -> None:
    if not session.execute(update(Repo).where(Repo.id == repo.id).values(last_modified=utcnow())).rowcount:
        raise _gone(repo)
