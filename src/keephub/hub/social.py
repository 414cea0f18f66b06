"""Likes and collections: the Hub's ways of pointing at repos, kept in keephub's database.

Both only point: a like or a collection item goes when its repo does, and either shows a repo only to callers
who may read it.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from keephub.accounts import Actor, RepoTarget, allowed, authorize, require_actor
from keephub.hub import naming, repos
from keephub.hub.wireformat import iso
from keephub.storage.db import Database
from keephub.storage.schema import Account, Collection, CollectionItem, Repo, RepoLike
from keephub.wire import BadRequest, Conflict
from keephub.wire.errors import NotFound

MAX_TITLE = 60
MAX_DESCRIPTION = 150
MAX_NOTE = 500
MAX_ITEMS = 1000
_KEY = re.compile(r"-([0-9a-f]{24})$")
ITEM_TYPES = {"model", "dataset", "space"}
_THEME = re.compile(r"[a-z]{1,16}")
COLLECTION_FIELDS = ("title", "description", "private", "theme", "position")
ITEM_FIELDS = ("note", "position")


# -- likes ------------------------------------------------------------------------------------------
def like(session: Session, actor: Actor | None, repo: repos.RepoRef) -> None:
    actor = require_actor(actor, f"like {repo.repo_id}")
    if session.get(RepoLike, (actor.user_id, repo.id)) is None:
        session.add(RepoLike(user_id=actor.user_id, repo_id=repo.id, created_at=_now()))


def unlike(session: Session, actor: Actor | None, repo: repos.RepoRef) -> None:
    actor = require_actor(actor, f"unlike {repo.repo_id}")
    session.execute(delete(RepoLike).where(RepoLike.user_id == actor.user_id, RepoLike.repo_id == repo.id))


def like_count(session: Session, repo_id: int) -> int:
    return session.scalar(select(func.count()).select_from(RepoLike).where(RepoLike.repo_id == repo_id)) or 0


def liked_by(session: Session, actor: Actor | None, user: str) -> list[dict]:
    """`list_liked_repos`: a user's likes, newest first, of repos the caller may read."""
    account = session.scalars(select(Account).where(func.lower(Account.name) == user.lower(),
                                                    Account.kind == "user")).first()
    if account is None:
        raise NotFound(f"no user {user!r} on this server")
    rows = session.execute(select(RepoLike.created_at, Repo, Account.name)
                           .join(Repo, Repo.id == RepoLike.repo_id).join(Account, Account.id == Repo.owner_id)
                           .where(RepoLike.user_id == account.id).order_by(RepoLike.created_at.desc()))
    result = []
    for created_at, repo, owner in rows:
        if allowed(actor, "repo.read", RepoTarget(repo.type, owner, repo.name, repo.private)):
            result.append({"createdAt": iso(created_at), "repo": {"name": f"{owner}/{repo.name}", "type": repo.type}})
    return result


def likers(session: Session, repo: repos.RepoRef) -> list[dict]:
    rows = session.execute(select(Account.name, Account.fullname).join(RepoLike, RepoLike.user_id == Account.id)
                           .where(RepoLike.repo_id == repo.id).order_by(RepoLike.created_at))
    return [{"user": name, "fullname": fullname or name, "avatarUrl": ""} for name, fullname in rows]


# -- collections ------------------------------------------------------------------------------------
def create_collection(session: Session, actor: Actor | None, body: dict) -> Collection:
    actor = require_actor(actor, "create a collection")
    title = _title(body.get("title"))
    namespace = body.get("namespace") or actor.name
    if not isinstance(namespace, str):
        raise BadRequest("'namespace' must be the user or organization that owns the collection")
    owner = session.scalars(select(Account).where(func.lower(Account.name) == namespace.lower())).first()
    if owner is None:
        raise NotFound(f"namespace {namespace!r} does not exist; create collections under your own name or an "
                       "organization you belong to")
    private = body.get("private", False)
    if not isinstance(private, bool):
        raise BadRequest("'private' must be true or false")
    description = _optional_text(body.get("description"), "description", MAX_DESCRIPTION)
    authorize(actor, "repo.create", RepoTarget("collection", owner.name, title))
    existing = session.scalars(select(Collection).where(Collection.owner_id == owner.id,
                                                        Collection.title == title)).first()
    if existing is not None:
        raise Conflict(f"a collection titled {title!r} already exists in {owner.name}",
                       extra_body={"slug": slug_of(existing, owner.name)})
    position = session.scalar(select(func.count()).select_from(Collection).where(Collection.owner_id == owner.id))
    collection = Collection(key=secrets.token_hex(12), owner_id=owner.id, title=title, description=description,
                            private=private, theme="default", position=position or 0, updated_at=_now())
    session.add(collection)
    session.flush()
    return collection


def find_collection(session: Session, actor: Actor | None, slug: str, write: bool = False
                    ) -> tuple[Collection, Account]:
    """The collection named by `slug` if the caller may see it (and, with `write`, change it); 404 otherwise."""
    match = _KEY.search(slug)
    found = session.scalars(select(Collection).where(Collection.key == match.group(1))).first() if match else None
    owner = session.get(Account, found.owner_id) if found is not None else None
    if found is None or owner is None or not slug.lower().startswith(owner.name.lower() + "/"):
        raise NotFound(f"collection {slug!r} not found; slugs look like alice/my-models-<24 hex digits>")
    target = RepoTarget("collection", owner.name, found.key, found.private)
    if not allowed(actor, "repo.read", target):
        raise NotFound(f"collection {slug!r} not found; slugs look like alice/my-models-<24 hex digits>")
    if write:
        authorize(actor, "repo.write", target)
    return found, owner


def list_collections(session: Session, actor: Actor | None, owner: str | None, item: str | None,
                     limit: int | None) -> list[dict]:
    query = select(Collection, Account).join(Account, Account.id == Collection.owner_id)
    if owner:
        query = query.where(func.lower(Account.name) == owner.lower())
    if item:
        repo_type, repo_id = _item_filter(item)
        namespace, name = naming.split_repo_id(repo_id)
        holding = (select(CollectionItem.collection_id).join(Repo, Repo.id == CollectionItem.repo_id)
                   .join(Account, Account.id == Repo.owner_id)
                   .where(Repo.type == repo_type, func.lower(Account.name) == namespace.lower(),
                          func.lower(Repo.name) == name.lower()))
        query = query.where(Collection.id.in_(holding))
    # Without `position`: the client numbers a listing's collections itself.
    found = [{k: v for k, v in collection_json(session, actor, c, a).items() if k != "position"} for c, a in
             session.execute(query.order_by(Collection.updated_at.desc()))
             if allowed(actor, "repo.read", RepoTarget("collection", a.name, c.key, c.private))]
    return found[:limit]


def add_item(session: Session, actor: Actor | None, collection: Collection, body: dict) -> None:
    item = body.get("item")
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        raise BadRequest('the body must name the item: {"item": {"id": "alice/model", "type": "model"}}')
    if item.get("type") not in ITEM_TYPES:
        raise BadRequest(f"item type {item.get('type')!r} cannot be collected here; use one of "
                         f"{', '.join(sorted(ITEM_TYPES))} (keephub has no papers, and collections hold repos)")
    note = _optional_text(body.get("note"), "note", MAX_NOTE)
    repo = repos.find_repo(session, item["type"], *naming.split_repo_id(item["id"]), actor)
    if session.scalars(select(CollectionItem.id).where(CollectionItem.collection_id == collection.id,
                                                       CollectionItem.repo_id == repo.id)).first() is not None:
        raise Conflict(f"{repo.repo_id} is already in this collection")
    count = session.scalar(select(func.count()).select_from(CollectionItem)
                           .where(CollectionItem.collection_id == collection.id)) or 0
    if count >= MAX_ITEMS:
        raise BadRequest(f"a collection holds at most {MAX_ITEMS} items; remove some or start another")
    session.add(CollectionItem(collection_id=collection.id, repo_id=repo.id, note=note, position=count))
    collection.updated_at = _now()
    try:
        session.flush()
    except IntegrityError:  # added meanwhile by a concurrent request
        raise Conflict(f"{repo.repo_id} is already in this collection") from None


def delete_item(session: Session, collection: Collection, item_object_id: str) -> None:
    removed = 0
    if item_object_id.isdigit():
        removed = session.execute(delete(CollectionItem).where(CollectionItem.collection_id == collection.id,
                                                               CollectionItem.id == int(item_object_id))).rowcount
    if not removed:
        raise NotFound(f"item {item_object_id!r} is not in this collection; take `item_object_id` from "
                       "get_collection's items")
    collection.updated_at = _now()


def update_collection(session: Session, collection: Collection, owner: Account, body: dict) -> None:
    """`update_collection_metadata`: only the fields the body names change (the client leaves out the others)."""
    _check_fields(body, COLLECTION_FIELDS, "update_collection_metadata")
    if "title" in body:
        title = _title(body["title"])
        if session.scalars(select(Collection.id).where(Collection.owner_id == owner.id, Collection.title == title,
                                                       Collection.id != collection.id)).first() is not None:
            raise Conflict(f"{owner.name} already has a collection titled {title!r}; choose another title")
        collection.title = title
    if "description" in body:
        collection.description = _optional_text(body["description"], "description", MAX_DESCRIPTION) or None
    if "private" in body:
        if not isinstance(body["private"], bool):
            raise BadRequest("'private' must be true or false")
        collection.private = body["private"]
    if "theme" in body:
        if not isinstance(body["theme"], str) or not _THEME.fullmatch(body["theme"]):
            raise BadRequest("'theme' must be a colour name of at most 16 lowercase letters, e.g. 'pink'")
        collection.theme = body["theme"]
    if "position" in body:
        siblings = session.scalars(select(Collection).where(Collection.owner_id == owner.id)
                                   .order_by(Collection.position, Collection.id)).all()
        _move(list(siblings), collection, _position(body["position"]))
    collection.updated_at = _now()


def update_item(session: Session, collection: Collection, item_object_id: str, body: dict) -> None:
    """`update_collection_item`: a new note (an empty one removes it) and/or a new place in the collection."""
    _check_fields(body, ITEM_FIELDS, "update_collection_item")
    items = session.scalars(select(CollectionItem).where(CollectionItem.collection_id == collection.id)
                            .order_by(CollectionItem.position, CollectionItem.id)).all()
    item = next((i for i in items if str(i.id) == item_object_id), None)
    if item is None:
        raise NotFound(f"item {item_object_id!r} is not in this collection; take `item_object_id` from "
                       "get_collection's items")
    if "note" in body:
        item.note = _optional_text(body["note"], "note", MAX_NOTE) or None
    if "position" in body:
        _move(list(items), item, _position(body["position"]))
    collection.updated_at = _now()


def _check_fields(body: dict, known: tuple[str, ...], call: str) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise BadRequest(f"{call} cannot change {', '.join(map(repr, unknown))}; it changes {', '.join(known)}")
    if not body:
        raise BadRequest(f"nothing to change: send at least one of {', '.join(known)}")


def _position(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"'position' must be a whole number from 0 (the first place), not {value!r}")
    return value


def _move(ordered: list, moved: Collection | CollectionItem, position: int) -> None:
    """Put `moved` at `position` (or last, past the end) and number the rest after it in their order."""
    ordered.remove(moved)
    ordered.insert(min(position, len(ordered)), moved)
    for index, row in enumerate(ordered):
        row.position = index


def collection_json(session: Session, actor: Actor | None, collection: Collection, owner: Account) -> dict:
    rows = session.execute(select(CollectionItem, Repo, Account.name).join(Repo, Repo.id == CollectionItem.repo_id)
                           .join(Account, Account.id == Repo.owner_id)
                           .where(CollectionItem.collection_id == collection.id).order_by(CollectionItem.position))
    items = [{"_id": str(item.id), "id": f"{repo_owner}/{repo.name}", "type": repo.type, "repoType": repo.type,
              "position": item.position, "private": repo.private,
              "note": {"text": item.note, "html": item.note} if item.note else None}
             for item, repo, repo_owner in rows
             if allowed(actor, "repo.read", RepoTarget(repo.type, repo_owner, repo.name, repo.private))]
    return {"slug": slug_of(collection, owner.name), "title": collection.title, "description": collection.description,
            "owner": {"name": owner.name, "type": owner.kind}, "items": items,
            "lastUpdated": iso(collection.updated_at), "position": collection.position,
            "private": collection.private, "theme": collection.theme, "upvotes": 0}


def slug_of(collection: Collection, owner: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", collection.title.lower()).strip("-") or "collection"
    return f"{owner}/{words}-{collection.key}"


def _item_filter(item: str) -> tuple[str, str]:
    """`models/alice/x` (the client's `item=` filter) -> ("model", "alice/x")."""
    plural, _, repo_id = item.partition("/")
    repo_type = plural.removesuffix("s")
    if repo_type not in ITEM_TYPES:
        raise BadRequest(f"'item' {item!r} must look like models/alice/x, datasets/alice/x or spaces/alice/x")
    return repo_type, repo_id


def _title(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("a collection needs a 'title'")
    if len(value) > MAX_TITLE:
        raise BadRequest(f"the title is {len(value)} characters long; the limit is {MAX_TITLE}")
    return naming.check_text(value.strip(), "collection title")


def _optional_text(value: object, what: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{what}' must be a string")
    if len(value) > limit:
        raise BadRequest(f"the {what} is {len(value)} characters long; the limit is {limit}")
    return naming.check_text(value, what)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Social:
    """Likes and collections as whole operations, one transaction each (the handlers in social_routes.py)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def set_like(self, actor: Actor | None, repo_type: str, namespace: str, name: str, liked: bool) -> None:
        with self.db.write() as session:
            repo = repos.find_repo(session, repo_type, namespace, name, actor)
            (like if liked else unlike)(session, actor, repo)

    def likes_of(self, actor: Actor | None, user: str) -> list[dict]:
        with self.db.read() as session:
            return liked_by(session, actor, user)

    def likers_of(self, actor: Actor | None, repo_type: str, namespace: str, name: str) -> list[dict]:
        with self.db.read() as session:
            return likers(session, repos.find_repo(session, repo_type, namespace, name, actor))

    def create(self, actor: Actor | None, body: dict) -> dict:
        with self.db.write() as session:
            collection = create_collection(session, actor, body)
            return collection_json(session, actor, collection, session.get(Account, collection.owner_id))

    def get(self, actor: Actor | None, slug: str) -> dict:
        with self.db.read() as session:
            return collection_json(session, actor, *find_collection(session, actor, slug))

    def list(self, actor: Actor | None, owner: str | None, item: str | None, limit: int | None) -> list[dict]:
        with self.db.read() as session:
            return list_collections(session, actor, owner, item, limit)

    def add(self, actor: Actor | None, slug: str, body: dict) -> dict:
        with self.db.write() as session:
            collection, owner = find_collection(session, actor, slug, write=True)
            add_item(session, actor, collection, body)
            return collection_json(session, actor, collection, owner)

    def update(self, actor: Actor | None, slug: str, body: dict) -> dict:
        with self.db.write() as session:
            collection, owner = find_collection(session, actor, slug, write=True)
            update_collection(session, collection, owner, body)
            session.flush()
            return collection_json(session, actor, collection, owner)

    def update_item(self, actor: Actor | None, slug: str, item_object_id: str, body: dict) -> None:
        with self.db.write() as session:
            collection, _ = find_collection(session, actor, slug, write=True)
            update_item(session, collection, item_object_id, body)

    def remove(self, actor: Actor | None, slug: str, item_object_id: str) -> None:
        with self.db.write() as session:
            collection, _ = find_collection(session, actor, slug, write=True)
            delete_item(session, collection, item_object_id)

    def delete(self, actor: Actor | None, slug: str) -> None:
        with self.db.write() as session:
            collection, _ = find_collection(session, actor, slug, write=True)
            session.delete(collection)
