"""A live keephub on 127.0.0.1 for the whole session, and the real clients pointed at it.

huggingface_hub reads HF_ENDPOINT when it is imported, so the port is chosen and the environment
set here, before any test module imports a client.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from postgres_cluster import PostgresCluster
from slurm_cluster import SlurmCluster, keephub_slurm_env, slurm_cluster  # noqa: F401  (a session fixture)
from seaweedfs import SeaweedFS

from keephub.devserver import LocalServer as Server
from keephub.agent.sandbox import remove_tree
from keephub.devserver import free_port

# The suite runs twice (scripts/test.sh): with hf_xet, as a default install uploads, and with
# KEEPHUB_TEST_XET=off, through the git-lfs path that HF_HUB_DISABLE_XET=1 selects.
XET_ENABLED = os.environ.get("KEEPHUB_TEST_XET", "on") != "off"
# What a job's environment needs so the client inside the sandbox runs in the same mode.
JOB_XET_ENV = {} if XET_ENABLED else {"HF_HUB_DISABLE_XET": "1"}
SESSION_DIR = Path(tempfile.mkdtemp(prefix="keephub-tests-"))
PORT = free_port()
ENDPOINT = f"http://127.0.0.1:{PORT}"
os.environ.update({
    "HF_ENDPOINT": ENDPOINT,
    "HF_HOME": str(SESSION_DIR / "hf-home"),
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_ETAG_TIMEOUT": "30",
    "HF_HUB_DOWNLOAD_TIMEOUT": "60",
    "TOKENIZERS_PARALLELISM": "false",
})
os.environ.pop("HF_TOKEN", None)
# The suite's job tests run on the local executor, and with KEEPHUB_TEST_EXECUTOR=slurm (scripts/test.sh's
# second pass) every keephub the tests start hands its jobs to a throwaway one-machine Slurm cluster.
EXECUTOR = os.environ.get("KEEPHUB_TEST_EXECUTOR", "local")
SLURM = None
if EXECUTOR == "slurm":
    SLURM = SlurmCluster(SESSION_DIR / "slurm")
    SLURM.start()
    atexit.register(SLURM.stop)
    os.environ.update(keephub_slurm_env(SLURM))
elif EXECUTOR != "local":
    raise RuntimeError(f"KEEPHUB_TEST_EXECUTOR={EXECUTOR!r}: use local or slurm")
# Metadata in SQLite (keephub's default), or with KEEPHUB_TEST_DATABASE=postgres in a throwaway PostgreSQL
# cluster started here: every keephub the tests start gets a database of its own in it (CREATE DATABASE per
# server, so tests that start their own servers share no state), and admin commands on a server's data
# directory reach the same database.
DATABASE = os.environ.get("KEEPHUB_TEST_DATABASE", "sqlite")
POSTGRES: PostgresCluster | None = None
if DATABASE == "postgres":
    POSTGRES = PostgresCluster()
    POSTGRES.start()
    atexit.register(POSTGRES.close)
    Server.database_factory = POSTGRES.create_database
elif DATABASE != "sqlite":
    raise RuntimeError(f"KEEPHUB_TEST_DATABASE={DATABASE!r}: use sqlite or postgres")


def stored_metadata(server: Server) -> bytes:
    """Everything `server` keeps in its metadata database, as bytes (for tests that look for what must never
    be stored): the SQLite file, or a pg_dump of its PostgreSQL database."""
    url = server.env.get("KEEPHUB_DATABASE_URL")
    if url is None:
        return (server.data_dir / "keephub.db").read_bytes()
    assert POSTGRES is not None, f"{url}: not in this session's PostgreSQL cluster"
    return POSTGRES.dump(url.rsplit("/", 1)[1])
if XET_ENABLED:
    os.environ.pop("HF_HUB_DISABLE_XET", None)
else:
    os.environ["HF_HUB_DISABLE_XET"] = "1"

# Bytes in each keephub's data directory (the default), or with KEEPHUB_TEST_BLOBS=s3 in a throwaway SeaweedFS
# started here: one bucket, and a prefix of its own for every keephub the tests start (from its data directory,
# so a restarted server and the admin commands run on its directory, `keephub gc` included, find its objects).
BLOBS = os.environ.get("KEEPHUB_TEST_BLOBS", "local")
SEAWEEDFS: SeaweedFS | None = None
if BLOBS == "s3":
    SEAWEEDFS = SeaweedFS(SESSION_DIR / "seaweedfs")
    SEAWEEDFS.start()
    atexit.register(SEAWEEDFS.stop)
    os.environ.update(SEAWEEDFS.settings_env(SEAWEEDFS.create_bucket()))
    # S3's smallest part, so an upload shows in the store (an open multipart upload) after 5 MiB, not 16.
    os.environ["KEEPHUB_BLOB_PART_BYTES"] = str(5 * 1024 * 1024)
    _server_init = Server.__post_init__

    def _with_own_prefix(self: Server) -> None:
        _server_init(self)
        own = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
        self.env.setdefault("KEEPHUB_BLOB_PREFIX", own)

    Server.__post_init__ = _with_own_prefix  # type: ignore[method-assign]
elif BLOBS != "local":
    raise RuntimeError(f"KEEPHUB_TEST_BLOBS={BLOBS!r}: use local or s3")


def _blob_store(server: Server, store: str):  # type: ignore[no-untyped-def]
    from keephub.config import Settings
    from keephub.storage.blobs import open_blob_stores

    settings = Settings.load(environ={**os.environ, **server.env}, overrides={"data_dir": server.data_dir})
    return getattr(open_blob_stores(settings), store)


def stored_blobs(server: Server, store: str) -> dict[str, int]:
    """The blobs `server` keeps in its "lfs" or "xorbs" store, key to size, on whichever backend it uses."""
    blobs = _blob_store(server, store)
    return {key: blobs.size(key) for key in blobs.keys()}


def blob_staging(server: Server) -> list[str]:
    """What unfinished uploads hold in `server`'s LFS store: temporary files and multipart parts in the data
    directory, or open multipart uploads and part objects in S3."""
    from keephub.storage.blobs import LocalBlobStore

    blobs = _blob_store(server, "lfs")
    if isinstance(blobs, LocalBlobStore):
        return [p.name for folder in (blobs.tmp, blobs.uploads) for p in folder.iterdir()]
    unfinished = blobs.client.list_multipart_uploads(Bucket=blobs.bucket, Prefix=blobs.prefix).get("Uploads", [])
    parts = blobs.client.list_objects_v2(Bucket=blobs.bucket, Prefix=f"{blobs.prefix}uploads/").get("Contents", [])
    return [u["Key"] for u in unfinished] + [p["Key"] for p in parts]


def agent_root(server: Server) -> Path:
    """Where this pass's executor keeps job workspaces and uv caches: under the server's data directory on
    the local executor, in the Slurm agents' work directory on a node."""
    if SLURM is not None:
        return Path(json.loads(os.environ["KEEPHUB_JOB_SLURM"])["work_dir"])
    return server.data_dir / "sandboxes"


def own_server(tmp_path_factory: pytest.TempPathFactory, name: str, env: dict[str, str]) -> Iterator[Server]:
    """A server of a test module's own, with settings the session's server lacks; for a module-scoped fixture to
    `yield from`, so it stops when the module ends."""
    server = Server(data_dir=tmp_path_factory.mktemp(name) / "data", port=free_port(), env=env)
    server.start()
    yield server
    server.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With KEEPHUB_TEST_SKIP_ONCE=1 (scripts/test.sh's second pass), leave out the tests marked `once`: the first
    pass ran them, and none of the backends the second pass switches changes what they check."""
    if os.environ.get("KEEPHUB_TEST_SKIP_ONCE") != "1":
        return
    once = [item for item in items if item.get_closest_marker("once")]
    config.hook.pytest_deselected(items=once)
    items[:] = [item for item in items if not item.get_closest_marker("once")]


# The tests' webhook receivers listen on loopback, which webhooks may reach only where the operator allows it.
LOOPBACK_RECEIVERS = {"KEEPHUB_WEBHOOK_PRIVATE_TARGETS": "127.0.0.1/32"}


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    srv = Server(data_dir=SESSION_DIR / "data", port=PORT, env=LOOPBACK_RECEIVERS)
    srv.start()
    yield srv
    srv.stop()
    if SLURM is not None:
        SLURM.stop()
    remove_tree(SESSION_DIR)  # jobs may leave trees too deep for shutil.rmtree


@pytest.fixture
def alice(server: Server) -> tuple[str, str]:
    """A fresh user with a write token, per test (so tests never share namespaces)."""
    return server.user()


@pytest.fixture
def api(server: Server, alice: tuple[str, str]):  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi

    return HfApi(endpoint=server.url, token=alice[1])


@pytest.fixture
def repo_id(api, alice: tuple[str, str]) -> str:  # type: ignore[no-untyped-def]
    repo = f"{alice[0]}/repo-{uuid.uuid4().hex[:8]}"
    api.create_repo(repo)
    return repo


# Job-side code (it runs in a sandbox, standard library only) for scripts that wait until a file of their repo
# (env REPO) is on the hub; a script is WAIT_ON_HUB + its own code calling wait_on_hub(path, seconds, pause).
WAIT_ON_HUB = """
def wait_on_hub(path, seconds, pause):
    import os, time, urllib.error, urllib.request
    url = os.environ["HF_ENDPOINT"] + "/" + os.environ["REPO"] + "/resolve/main/" + path
    request = urllib.request.Request(url, headers={"authorization": "Bearer " + os.environ["HF_TOKEN"]})
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(request)
            return
        except urllib.error.HTTPError:
            time.sleep(pause)
"""

def guarded_job(api, name: str, repo: str, code: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """A `python -c code` job whose results keephub guards (sidecar pushing ./out to `repo`), past preflight,
    with REPO in its environment (for WAIT_ON_HUB) and the suite's Xet mode."""
    return api.run_job(image="ghcr.io/astral-sh/uv:python3.12-bookworm", command=["python", "-c", code],
                       env={"REPO": repo, **JOB_XET_ENV, **(env or {})}, secrets={"HF_TOKEN": "$HF_TOKEN"},
                       namespace=name,
                       labels={"keephub.repo": repo, "keephub.output-dir": "out", "keephub.preflight": "override"})

class JobSocketProxy:
    """Stands in for keephub's socket for jobs (sandboxes/run/hub.sock: jobs live in network namespaces of
    their own and reach keephub only through it) and forwards to the real one. A test can make keephub
    unreachable from inside jobs for a while (`outage`) and see what jobs send (`sent`)."""

    def __init__(self, hub: Server) -> None:
        import socket
        import threading

        self.path = hub.data_dir / "sandboxes" / "run" / "hub.sock"
        self.real = self.path.with_name("hub-real.sock")
        self.path.rename(self.real)
        self.down_until = 0.0
        self.sent = b""
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.path.chmod(0o666)
        self.server.listen(64)
        self.open_sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> "JobSocketProxy":
        return self

    def __exit__(self, *_: object) -> None:
        self.server.close()
        self.path.unlink()
        self.real.rename(self.path)

    def outage(self, seconds: float) -> None:
        import time

        self.down_until = time.time() + seconds
        for sock in list(self.open_sockets):
            try:
                sock.close()
            except OSError:
                pass

    def _accept(self) -> None:
        import socket
        import threading
        import time

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            if time.time() < self.down_until:
                client.close()
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(str(self.real))
            except OSError:  # the hub has stopped
                client.close()
                continue
            self.open_sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source, target, outgoing: bool) -> None:  # type: ignore[no-untyped-def]
        relay(source, target, self._saw_sent if outgoing else None)

    def _saw_sent(self, data: bytes) -> None:
        self.sent += data


def relay(source, target, seen: Callable[[bytes], None] | None = None) -> None:  # type: ignore[no-untyped-def]
    """Copy bytes from one socket to the other until either side ends, then close both (for test proxies that
    stand between a client and a server); `seen` is shown every piece on its way."""
    try:
        while data := source.recv(65536):
            if seen is not None:
                seen(data)
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            try:
                sock.close()
            except OSError:
                pass


def read_response(sock, interim: bool = False) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    """One HTTP/1.1 response read off a raw socket: (status, body), the body by its Content-Length; with `interim`,
    only an interim (1xx) response's head is read, and its status returned with an empty body."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, f"the server closed the connection after {buffer!r}"
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    if interim:
        assert not rest, "nothing may follow an interim response before the client sends its body"
        return status, b""
    length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
    while len(rest) < length:
        data = sock.recv(65536)
        assert data, "the server closed the connection inside a response body"
        rest += data
    assert len(rest) == length, "the server sent more than one response"
    return status, rest


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """An S3 server for tests of the S3 backend whatever the pass: the pass's own SeaweedFS, else one started
    for the session (once) and stopped at its end."""
    if SEAWEEDFS is not None:
        yield SEAWEEDFS
        return
    started = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    started.start()
    yield started
    started.stop()


@pytest.fixture(scope="session")
def s3_bucket(seaweedfs: SeaweedFS) -> str:
    """One bucket in `seaweedfs` for every test that needs one (the pass's own on the S3 pass): tests keep apart
    by prefix, since each bucket costs SeaweedFS volumes of its own and it has few (more buckets: InternalError)."""
    return os.environ["KEEPHUB_BLOB_BUCKET"] if SEAWEEDFS is not None else seaweedfs.create_bucket()


@pytest.fixture(scope="session")
def scale_out_backends(seaweedfs: SeaweedFS, s3_bucket: str) -> Iterator[tuple[PostgresCluster, SeaweedFS, str]]:
    """A PostgreSQL cluster, a SeaweedFS and a bucket in it, for tests that move data onto them or share them
    between servers: the session's own when the pass runs on them, else a PostgreSQL cluster started here
    (once)."""
    postgres = POSTGRES
    if postgres is None:
        postgres = PostgresCluster()
        postgres.start()
    yield postgres, seaweedfs, s3_bucket
    if postgres is not POSTGRES:
        postgres.close()
