"""git's smart HTTP protocol for every repo: `git clone`, `fetch`, `pull` and `push` of http://host/alice/model.

dulwich's server handlers speak the protocol (ref advertisement, negotiation, shallow clones, report-status);
keephub gives them a view of one repo: its refs, and an object store that reads the git objects in the database
and holds a pushed pack's objects in memory until git_push.apply_push has checked them and written them with the
ref updates in one transaction. The pack a clone or fetch receives is written by git_pack from the database rows.
Each handler runs in a worker thread and its output streams to the client.
git authenticates with HTTP Basic, the access token as the password (any user name); a caller without one gets a
401 whose realm git answers with its credential helper, and the same 401 for a private repo as for a missing one.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from tempfile import SpooledTemporaryFile
from typing import IO

from dulwich.errors import ApplyDeltaError, ChecksumMismatch, GitProtocolError, ObjectFormatException
from dulwich.object_store import GraphTraversalReachability, MemoryObjectStore, MissingObjectFinder
from dulwich.objects import Blob, Commit, ObjectID, ShaFile
from dulwich.pack import UnpackedObject
from dulwich.protocol import CAPABILITY_ATOMIC, CAPABILITY_NO_DONE, ReceivableProtocol
from dulwich.refs import DictRefsContainer
from dulwich.repo import BaseRepo
from dulwich.server import Backend, ReceivePackHandler, UploadPackHandler, _ProtocolGraphWalker
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from keephub.accounts import Actor
from keephub.hub import git_pack, git_push, repos
from keephub.hub.repos import DEFAULT_BRANCH, RepoRef
from keephub.hub.routes import actor_of
from keephub.hub.service import Hub
from keephub.storage import gitobjects
from keephub.storage.schema import GitObject, RepoCommit, repo_stamp
from keephub.wire import BadRequest, HubError, RepoNotFound, TooLarge, Unauthorized

log = logging.getLogger("keephub.git")

SERVICES = ("git-upload-pack", "git-receive-pack")
REALM = 'Basic realm="keephub", charset="UTF-8"'
NEGOTIATION_LIMIT = 16 * 1024 * 1024
_SPOOL_IN_MEMORY = 8 * 1024 * 1024
_QUEUED_CHUNKS = 64
_PREFETCH_OBJECTS = 500
_PREFETCH_BYTES = 16 * 1024 * 1024


class RepoObjects(MemoryObjectStore):
    """The git objects of one repo for dulwich: read from the database, a pushed pack's objects held in memory.

    A commit counts as present only if this repo has it, so that the `have` lines of a fetch cannot probe for
    other repos' commits. When dulwich writes a pack (a partial clone's; git_pack writes the others), it reads every
    object once, in the order it was handed them: each read that misses loads the objects that follow it in one
    query (up to _PREFETCH_BYTES), not one query per object.
    """

    def __init__(self, session: Session, repo_id: int) -> None:
        super().__init__()
        self.session = session
        self.repo_id = repo_id
        self.commit_links = git_pack.CommitLinks(session, repo_id)
        self._order: list[str] = []
        self._position: dict[str, int] = {}
        self._prefetched: dict[str, tuple[int, bytes]] = {}

    def contains_loose(self, sha: bytes) -> bool:  # type: ignore[override]
        hexsha = self._to_hexsha(sha)  # type: ignore[arg-type]
        if hexsha in self._data:
            return True
        type_num = self.session.execute(select(GitObject.type_num).where(GitObject.sha == hexsha.decode())
                                        ).scalar_one_or_none()
        if type_num is None:
            return False
        return type_num != Commit.type_num or self.session.get(RepoCommit, (self.repo_id, hexsha.decode())) is not None

    def get_raw(self, name: bytes) -> tuple[int, bytes]:  # type: ignore[override]
        hexsha = self._to_hexsha(name)  # type: ignore[arg-type]
        if hexsha in self._data:
            return super().get_raw(hexsha)
        return self._stored(hexsha.decode())

    def __getitem__(self, name: bytes) -> ShaFile:  # type: ignore[override]
        hexsha = self._to_hexsha(name)  # type: ignore[arg-type]
        if hexsha in self._data:
            return super().__getitem__(hexsha)
        sha = hexsha.decode()
        if sha not in self._position:
            return gitobjects.load(self.session, sha)
        type_num, data = self._stored(sha)
        if type_num != Blob.type_num:
            return gitobjects.load(self.session, sha)  # trees and commits: parsed once, kept in gitobjects' cache
        return Blob.from_raw_string(type_num, data, sha=hexsha)

    def iter_unpacked_subset(self, shas: Iterable[bytes], *, include_comp: bool = False,  # type: ignore[override]
                             allow_missing: bool = False, convert_ofs_delta: bool = True) -> Iterator[UnpackedObject]:
        """Objects for a pack, in order; their order is remembered for the reads that follow (see the class)."""
        ordered = [self._to_hexsha(sha).decode() for sha in shas]  # type: ignore[arg-type]
        self._order = ordered
        self._position = {sha: index for index, sha in enumerate(ordered)}
        for sha in ordered:
            try:
                type_num, data = self.get_raw(sha.encode())
            except KeyError:
                if allow_missing:
                    continue
                raise
            yield UnpackedObject(type_num, decomp_chunks=[data], sha=sha.encode())
        self._prefetched.clear()

    def _stored(self, sha: str) -> tuple[int, bytes]:
        found = self._prefetched.pop(sha, None)
        if found is not None:
            return found
        position = self._position.get(sha)
        window = [sha] if position is None else self._order[position : position + _PREFETCH_OBJECTS]
        sizes = dict(self.session.execute(select(GitObject.sha, GitObject.size).where(GitObject.sha.in_(window))).all())
        wanted, total = [], 0
        for candidate in window:
            if candidate in sizes and (not wanted or total + sizes[candidate] <= _PREFETCH_BYTES):
                wanted.append(candidate)
                total += sizes[candidate]
        rows = self.session.execute(select(GitObject.sha, GitObject.type_num, GitObject.data)
                                    .where(GitObject.sha.in_(wanted)))
        self._prefetched.update({row.sha: (row.type_num, row.data) for row in rows})
        found = self._prefetched.pop(sha, None)
        if found is None:
            raise KeyError(sha.encode())
        return found

    def pushed(self) -> dict[str, ShaFile]:
        return {sha.decode(): obj for sha, obj in self._data.items()}

    def get_commit_graph(self) -> git_pack.CommitLinks:  # type: ignore[override]
        """Commits' parents for dulwich's history walks, read in batches and cached (see git_pack.CommitLinks)."""
        return self.commit_links

    def get_reachability_provider(self, prefer_bitmaps: bool = True) -> GraphTraversalReachability:
        if self._data:  # a push's objects are not in the database yet
            return super().get_reachability_provider(prefer_bitmaps)  # type: ignore[return-value]
        return _StoredReachability(self)


class _StoredReachability(GraphTraversalReachability):
    """What the commits a fetch has in common with keephub hold (objects not to send), from git_pack's batched walk
    over cached trees instead of one object at a time."""

    def __init__(self, store: RepoObjects) -> None:
        super().__init__(store)
        self.session = store.session

    def get_tree_objects(self, tree_shas: Iterable[ObjectID]) -> set[ObjectID]:
        found = git_pack.tree_objects(self.session, [sha.decode() for sha in tree_shas])
        return {ObjectID(sha.encode()) for sha in found}


class ClonePacks:
    """The answers to recent clones (upload-pack requests without `have` lines) by repo and request, so that a fleet
    of jobs or CI runners cloning one revision costs one pack. Git objects never change and a repo only gains
    commits, so an answer stays right; the key holds the repo's creation stamp, since SQLite reuses a deleted
    repo's id. Access is checked before the cache is asked."""

    def __init__(self, capacity: int, largest: int) -> None:
        self.capacity = capacity
        self.largest = largest
        self.answers: OrderedDict[tuple[int, int, str], bytes] = OrderedDict()
        self.size = 0
        self.lock = threading.Lock()

    def get(self, key: tuple[int, int, str]) -> bytes | None:
        with self.lock:
            answer = self.answers.get(key)
            if answer is not None:
                self.answers.move_to_end(key)
            return answer

    def put(self, key: tuple[int, int, str], answer: bytes) -> None:
        with self.lock:
            if key in self.answers or len(answer) > self.largest:
                return
            self.answers[key] = answer
            self.size += len(answer)
            while self.size > self.capacity:
                self.size -= len(self.answers.popitem(last=False)[1])


CLONE_PACKS = ClonePacks(capacity=256 * 1024 * 1024, largest=64 * 1024 * 1024)


class RepoView(BaseRepo):
    """One keephub repo as dulwich's server sees it: its refs (HEAD names the default branch) and objects."""

    def __init__(self, session: Session, repo: RepoRef) -> None:
        refs: dict[bytes, bytes] = {}
        for ref in repos.list_refs(session, repo):
            refs[git_push.ref_name(ref.kind, ref.name).encode()] = ref.commit_sha.encode()
        if f"refs/heads/{DEFAULT_BRANCH}".encode() in refs:
            refs[b"HEAD"] = f"ref: refs/heads/{DEFAULT_BRANCH}".encode()
        super().__init__(RepoObjects(session, repo.id), DictRefsContainer(refs))  # type: ignore[arg-type]

    def get_named_file(self, path: str, basedir: str | None = None) -> None:
        """No files beside the objects (no `shallow` file, no hooks): keephub keeps none."""
        return


class _OneRepo(Backend):
    def __init__(self, view: RepoView) -> None:
        self.view = view

    def open_repository(self, path: str) -> RepoView:  # type: ignore[override]
        return self.view


class KeephubUploadPack(UploadPackHandler):
    """dulwich's upload-pack (wants, haves, shallow and deepen lines, acknowledgements) whose pack git_pack writes:
    the objects found by a batched walk, their pack entries cached by sha, the pack streamed as it is built. A
    partial clone (a filter) is left to dulwich's own handler, which filters (see service_rpc)."""

    def handle(self) -> None:
        store: RepoObjects = self.repo.object_store
        walker = _ProtocolGraphWalker(self, store, self.repo.get_peeled, self.repo.refs.get_symrefs)
        wants: list[ObjectID] = []

        def determine_wants(refs: Mapping[bytes, ObjectID], depth: int | None = None) -> list[ObjectID]:
            wants.extend(walker.determine_wants(refs, depth))
            return wants

        finder = self.repo.find_missing_objects(determine_wants, walker, self.progress,  # type: ignore[arg-type]
                                                get_tagged=self.get_tagged)
        if not wants or finder is None:  # nothing wanted, or a shallow update without objects
            return
        if self.filter_spec is not None:
            raise GitProtocolError("a partial clone (--filter) is served by dulwich's own upload-pack")
        if not walker.handle_done(not self.has_capability(CAPABILITY_NO_DONE), self._done_received):
            return  # a negotiation round without `done`: acknowledgements only, no pack, so no walk
        shas = _objects_to_send(store.commit_links, finder)
        self._start_pack_send_phase()
        self.progress(f"counting objects: {len(shas)}, done.\n".encode())
        git_pack.write_pack(store.session, shas, self.write_pack_data)
        self.proto.write_pkt_line(None)


def _objects_to_send(links: git_pack.CommitLinks, finder: MissingObjectFinder) -> list[str]:
    """What dulwich's negotiation decided to send (commits, minus what the client has), walked by git_pack; anything
    else wanted (an object that is not a commit) is walked by dulwich's finder itself."""
    commits = [sha.decode() for sha, _, type_num, _ in finder.objects_to_send if type_num == Commit.type_num]
    if len(commits) < len(finder.objects_to_send):
        return [sha.decode() for sha, _ in finder]
    return git_pack.objects_to_send(links, commits, {sha.decode() for sha in finder.get_remote_has()})


_UNPACK_ERRORS = (OSError, ChecksumMismatch, ApplyDeltaError, AssertionError, zlib.error, ObjectFormatException,
                  ValueError, KeyError, GitProtocolError)


class KeephubReceivePack(ReceivePackHandler):
    """dulwich's receive-pack, whose ref updates go through git_push.apply_push instead of a refs container."""

    def __init__(self, backend: Backend, args: list[str], proto: ReceivableProtocol, *, stateless_rpc: bool,
                 advertise_refs: bool, apply: Callable[[list[git_push.RefUpdate], dict[str, ShaFile], bool],
                                                       list[tuple[str, str | None]]]) -> None:
        super().__init__(backend, args, proto, stateless_rpc=stateless_rpc, advertise_refs=advertise_refs)
        self.apply = apply

    def _apply_pack(  # type: ignore[override]
            self, refs: list[tuple[bytes, bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        store: RepoObjects = self.repo.object_store
        if any(new != git_push.ZERO_SHA.encode() for _, new, _ in refs):
            try:
                store.add_thin_pack(self.proto.read, getattr(self.proto, "recv", None))
            except _UNPACK_ERRORS as exc:
                reason = f"the pushed pack is corrupt or incomplete ({type(exc).__name__}: {exc}); nothing was stored"
                yield b"unpack", reason.replace("\n", " ").encode()
                for _, _, name in refs:
                    yield name, b"unpacker error"
                return
        yield b"unpack", b"ok"
        updates = [git_push.RefUpdate(old.decode(), new.decode(), name.decode("utf-8", "replace"))
                   for old, new, name in refs]
        try:
            results = self.apply(updates, store.pushed(), self.has_capability(CAPABILITY_ATOMIC))
        except HubError as exc:
            results = [(update.name, exc.message) for update in updates]
        for (_, _, name), (_, reason) in zip(refs, results):
            yield name, b"ok" if reason is None else reason.replace("\n", " ").encode()


# -- HTTP ------------------------------------------------------------------------------------------
def _hub(request: Request) -> Hub:
    return request.app.state.hub


def _repo_of(request: Request) -> tuple[str, str, str]:
    params = request.path_params
    return params["repo_type"], params["namespace"], params["name"].removesuffix(".git")


def _find(hub: Hub, actor: Actor | None, repo_type: str, namespace: str, name: str, write: bool) -> RepoRef:
    with hub.db.read() as session:
        if write:
            return repos.find_repo_for_write(session, repo_type, namespace, name, actor)
        return repos.find_repo(session, repo_type, namespace, name, actor)


async def _authorized_repo(request: Request, service: str) -> tuple[Actor | None, RepoRef]:
    """The repo, if the caller may fetch it (upload-pack) or push to it (receive-pack). Without credentials, a
    push and a private or missing repo all get 401 with git's realm, so git asks its credential helper."""
    actor = await actor_of(request)
    if actor is None and service == "git-receive-pack":
        raise Unauthorized("pushing needs an access token with write access; use it as the password "
                           "(git clone http://USER:TOKEN@host/...) or from a git credential helper")
    try:
        repo = await run_in_threadpool(_find, _hub(request), actor, *_repo_of(request), service == "git-receive-pack")
    except RepoNotFound:
        if actor is None:
            raise Unauthorized("authentication required: use an access token as the password") from None
        raise
    return actor, repo


def _service_of(request: Request) -> str:
    service = request.path_params.get("service") or request.query_params.get("service")
    if service not in SERVICES:
        raise BadRequest("keephub serves git's smart HTTP protocol only (git-upload-pack, git-receive-pack); "
                         "use git 1.6.6 or later")
    return service


def _stream(run: Callable[[Callable[[bytes], None]], None]) -> Iterator[bytes]:
    """Run a protocol handler in a thread and yield what it writes, with back-pressure; if the client goes away,
    the handler's next write raises and it stops."""
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED_CHUNKS)
    gone = threading.Event()

    def write(data: bytes) -> None:
        while True:
            if gone.is_set():
                raise ConnectionAbortedError("the git client disconnected")
            try:
                chunks.put(bytes(data), timeout=1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            run(write)
        except ConnectionAbortedError:
            pass
        except Exception:
            log.exception("git protocol handler failed")
        finally:
            while True:
                try:
                    chunks.put(None, timeout=1)
                    break
                except queue.Full:
                    if gone.is_set():
                        break

    threading.Thread(target=work, name="git-http", daemon=True).start()
    try:
        while True:
            chunk = chunks.get()
            if chunk is None:
                return
            batch = [chunk]
            while True:  # send what is ready as one write
                try:
                    more = chunks.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    yield b"".join(batch)
                    return
                batch.append(more)
            yield b"".join(batch)
    finally:
        gone.set()


async def info_refs(request: Request) -> Response:
    service = _service_of(request)
    _, repo = await _authorized_repo(request, service)
    hub = _hub(request)

    def run(write: Callable[[bytes], None]) -> None:
        with hub.db.read() as session:
            proto = ReceivableProtocol(lambda _size: b"", write)
            proto.write_pkt_line(f"# service={service}\n".encode())
            proto.write_pkt_line(None)
            handler_class = UploadPackHandler if service == "git-upload-pack" else ReceivePackHandler
            handler_class(_OneRepo(RepoView(session, repo)), ["/"], proto, stateless_rpc=True,
                          advertise_refs=True).handle()

    return StreamingResponse(_stream(run), media_type=f"application/x-{service}-advertisement",
                             headers={"Cache-Control": "no-cache"})


async def _request_body(request: Request, limit: int, hint: str) -> IO[bytes]:
    """The request body (gunzipped if git compressed it) in a spooled file, refused past `limit` bytes."""
    body: IO[bytes] = SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115  (closed by the caller)
    gzipped = request.headers.get("content-encoding", "").lower() in ("gzip", "x-gzip")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
    size = 0
    try:
        async for chunk in request.stream():
            if inflater is not None:
                try:
                    chunk = inflater.decompress(chunk)
                except zlib.error:
                    raise BadRequest("the request body is not valid gzip")
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"the request body is over {limit} bytes{hint}")
            body.write(chunk)
    except ClientDisconnect:
        body.close()
        raise BadRequest("the git client disconnected before sending its whole request")
    except HubError:
        body.close()
        raise
    body.seek(0)
    return body


async def service_rpc(request: Request) -> Response:
    service = _service_of(request)
    if request.headers.get("content-type") != f"application/x-{service}-request":
        raise BadRequest(f"a {service} request needs Content-Type application/x-{service}-request")
    actor, repo = await _authorized_repo(request, service)
    hub = _hub(request)
    pushing = service == "git-receive-pack"
    limit = hub.settings.max_push_bytes if pushing else NEGOTIATION_LIMIT
    body = await _request_body(request, limit, "; push fewer commits at a time, and large files with git lfs"
                               if pushing else "")

    clone_key = None
    handler: type[UploadPackHandler] = KeephubUploadPack
    if not pushing:
        request_bytes = body.read()
        body.seek(0)
        if b"filter" in request_bytes:  # a partial clone: dulwich's handler applies the filter
            handler = UploadPackHandler
        if b"have " not in request_bytes:
            clone_key = (repo.id, repo_stamp(repo.created_at), hashlib.sha256(request_bytes).hexdigest())
            cached = CLONE_PACKS.get(clone_key)
            if cached is not None:
                body.close()
                return Response(cached, media_type=f"application/x-{service}-result",
                                headers={"Cache-Control": "no-cache"})

    def run(write: Callable[[bytes], None]) -> None:
        try:
            if not pushing:
                answer: list[bytes] | None = [] if clone_key is not None else None

                def write_and_keep(data: bytes) -> None:
                    nonlocal answer
                    write(data)
                    if answer is not None:
                        answer.append(bytes(data))
                        if sum(map(len, answer)) > CLONE_PACKS.largest:
                            answer = None

                proto = ReceivableProtocol(body.read, write_and_keep)
                with hub.db.read() as session:
                    handler(_OneRepo(RepoView(session, repo)), ["/"], proto, stateless_rpc=True).handle()
                if clone_key is not None and answer is not None:
                    CLONE_PACKS.put(clone_key, b"".join(answer))
                return
            proto = ReceivableProtocol(body.read, write)
            with hub.db.read() as session:
                view = RepoView(session, repo)

                def apply(updates: list[git_push.RefUpdate], pushed: dict[str, ShaFile],
                          atomic: bool) -> list[tuple[str, str | None]]:
                    with hub.db.write() as write_session:
                        current = repos.find_repo_for_write(write_session, repo.type, repo.namespace, repo.name,
                                                            actor)
                        return git_push.apply_push(write_session, current, updates, pushed,
                                                   hub.settings.max_regular_file_bytes, atomic, hub.settings.base_url)

                KeephubReceivePack(_OneRepo(view), ["/"], proto, stateless_rpc=True, advertise_refs=False,
                                   apply=apply).handle()
        finally:
            body.close()

    return StreamingResponse(_stream(run), media_type=f"application/x-{service}-result",
                             headers={"Cache-Control": "no-cache"})


def _git_errors(endpoint: Callable) -> Callable:
    """Errors as git shows them: plain text, and a 401 with the realm that makes git ask for credentials."""

    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HubError as exc:
            extra = {"WWW-Authenticate": REALM} if exc.status_code == 401 else {}
            return PlainTextResponse(exc.message + "\n", status_code=exc.status_code,
                                     headers={**exc.extra_headers, **extra})

    return wrapped


def routes() -> list[BaseRoute]:
    table: list[BaseRoute] = []
    for repo_type, prefix in (("dataset", "/datasets"), ("space", "/spaces"), ("model", "")):
        for path, endpoint, methods, service in (("/info/refs", info_refs, ["GET"], None),
                                                 *(("/" + name, service_rpc, ["POST"], name) for name in SERVICES)):
            async def typed(request: Request, endpoint: Callable = endpoint, repo_type: str = repo_type,
                            service: str | None = service) -> Response:
                request.path_params["repo_type"] = repo_type
                if service is not None:
                    request.path_params["service"] = service
                return await endpoint(request)

            table.append(Route(f"{prefix}/{{namespace}}/{{name}}{path}", _git_errors(typed), methods=methods,
                               name=f"git_{path.strip('/')}_{repo_type}"))
    return table
