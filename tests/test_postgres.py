"""keephub on a real PostgreSQL: migrations from empty, writes racing without SQLite's database-wide lock
(real huggingface_hub clients in threads against live servers), the named lock across processes, an outage
answered 503 and survived without a restart, and a wrong database_url refused at start.

Runs in every pass: on the session's cluster with KEEPHUB_TEST_DATABASE=postgres, else on a cluster of its own;
skipped only where PostgreSQL is not installed. The tests marked `once` (schema, locks, outage, refused URLs) touch
no upload path or executor, so scripts/test.sh runs them in its first pass only.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import JOB_XET_ENV, POSTGRES, Server, free_port
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError
from postgres_cluster import PostgresCluster, postgres_bin_dir
from sqlalchemy import text

from keephub.app import open_hub
from keephub.config import Settings
from keephub.jobs.scheduled import ScheduledJobs
from keephub.jobs.service import JobService
from keephub.jobs.spec import parse_spec
from keephub.storage.db import Database
from keephub.storage.schema import Base, ScheduledJob

pytestmark = pytest.mark.skipif(postgres_bin_dir() is None,
                                reason="PostgreSQL is not installed (scripts/setup.sh installs it as root)")
THREADS = 8


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    """The session's cluster on the PostgreSQL pass, else one for this module."""
    if POSTGRES is not None:
        yield POSTGRES
        return
    own = PostgresCluster()
    own.start()
    yield own
    own.close()


def start_server(data_dir: Path, database_url: str, **env: str) -> Server:
    server = Server(data_dir=data_dir, port=free_port(), env={"KEEPHUB_DATABASE_URL": database_url, **env})
    server.start()
    return server


@pytest.fixture(scope="module")
def hub(cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("pg-hub") / "data", cluster.create_database())
    yield server
    server.stop()


def all_at_once(count: int, call: Callable[[int], object]) -> list[object]:
    """Run call(0..count-1) in threads released together; each result is the return value or the exception."""
    barrier = threading.Barrier(count)

    def run(index: int) -> object:
        barrier.wait()
        try:
            return call(index)
        except Exception as exc:  # noqa: BLE001 - the caller sorts outcomes
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def status_of(outcome: object) -> int:
    assert isinstance(outcome, HfHubHTTPError), f"expected an HTTP error, got {outcome!r}"
    assert outcome.response is not None
    return outcome.response.status_code


# -- schema ------------------------------------------------------------------------------------------------
@pytest.mark.once
@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_migrations_from_empty_give_exactly_the_schema(dialect: str, cluster: PostgresCluster, tmp_path: Path) -> None:
    url = cluster.create_database() if dialect == "postgresql" else f"sqlite:///{tmp_path / 'keephub.db'}"
    db = Database(url)
    try:
        db.migrate()
        db.migrate()  # a second start finds nothing to do
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            assert compare_metadata(context, Base.metadata) == []
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() is not None
        if dialect == "postgresql":  # sizes past 2^31 fit where the schema says bytes
            with db.engine.connect() as conn:
                kinds = dict(conn.execute(text(
                    "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                    "WHERE column_name IN ('size', 'lfs_size', 'log_bytes', 'unpacked_bytes', 'stored_bytes')")).all())
            assert kinds and set(kinds.values()) == {"bigint"}, kinds
    finally:
        db.close()


# -- the named lock -----------------------------------------------------------------------------------------
@pytest.mark.once
def test_named_lock_excludes_holders_through_other_database_objects(cluster: PostgresCluster) -> None:
    """Two Database objects stand for two keephub processes: one holds the lock, the other waits for it; a lock
    of another name is free meanwhile."""
    url = cluster.create_database()
    first, second = Database(url), Database(url)
    events: list[str] = []
    held = threading.Event()

    def holder() -> None:
        with first.lock("xet-placing-xorbs"):
            events.append("first in")
            held.set()
            time.sleep(1.0)
            events.append("first out")

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        with second.lock("another-lock"):
            events.append("other lock free")
        started = time.monotonic()
        with second.lock("xet-placing-xorbs"):
            events.append("second in")
            waited = time.monotonic() - started
    finally:
        thread.join()
        first.close()
        second.close()
    assert events == ["first in", "other lock free", "first out", "second in"]
    assert waited > 0.5


@pytest.mark.once
def test_named_lock_of_a_killed_process_is_released(cluster: PostgresCluster) -> None:
    """A keephub killed while holding the lock (kill -9: no cleanup runs) does not hold it for ever: PostgreSQL
    releases an advisory lock with its session."""
    url = cluster.create_database()
    code = ("import sys, time\nfrom keephub.storage.db import Database\n"
            f"with Database({url!r}).lock('xet-placing-xorbs'):\n    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    db = Database(url)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        acquired = threading.Event()

        def take() -> None:
            with db.lock("xet-placing-xorbs"):
                acquired.set()

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        assert not acquired.wait(1.0), "the lock was taken while another process held it"
        holder.kill()
        holder.wait()
        assert acquired.wait(30), "the lock of a killed process was never released"
        taker.join(10)
    finally:
        holder.kill()
        db.close()


# -- racing writes through real clients ---------------------------------------------------------------------
def test_concurrent_commits_with_parent_commit_land_or_get_412(hub: Server) -> None:
    name, token = hub.user()
    api = HfApi(endpoint=hub.url, token=token)
    repo = f"{name}/race-{uuid.uuid4().hex[:6]}"
    api.create_repo(repo)
    acknowledged: list[str] = []
    expected_files: set[str] = set()
    for round_number in range(3):
        head = api.list_repo_commits(repo)[0].commit_id

        def commit(index: int, head: str = head, round_number: int = round_number) -> tuple[str, str]:
            path = f"r{round_number}/t{index}.txt"
            info = api.create_commit(repo, operations=[CommitOperationAdd(path, f"{round_number}-{index}".encode())],
                                     commit_message=f"round {round_number} thread {index}", parent_commit=head)
            return path, info.oid

        outcomes = all_at_once(THREADS, commit)
        landed = [o for o in outcomes if isinstance(o, tuple)]
        assert len(landed) == 1, outcomes  # all raced from the same head: exactly one can land
        assert all(status_of(o) == 412 for o in outcomes if not isinstance(o, tuple))
        expected_files.add(landed[0][0])
        acknowledged.append(landed[0][1])
    history = [c.commit_id for c in api.list_repo_commits(repo)]
    assert history[:-1] == acknowledged[::-1]  # newest first, then the repo's initial commit: nothing lost
    assert {f for f in api.list_repo_files(repo) if f.endswith(".txt")} == expected_files


def test_concurrent_commits_without_parent_all_land(hub: Server) -> None:
    """Without parent_commit each commit lands on whatever the head is when its turn comes (commits to a branch
    queue on it): every one lands, none is lost, none is refused."""
    name, token = hub.user()
    api = HfApi(endpoint=hub.url, token=token)
    repo = f"{name}/pile-{uuid.uuid4().hex[:6]}"
    api.create_repo(repo)
    count = THREADS
    outcomes = all_at_once(count, lambda i: api.upload_file(path_or_fileobj=f"file {i}".encode(),
                                                            path_in_repo=f"f{i}.txt", repo_id=repo))
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    assert {f for f in api.list_repo_files(repo) if f.endswith(".txt")} == {f"f{i}.txt" for i in range(count)}
    assert len(api.list_repo_commits(repo)) == count + 1


def test_concurrent_create_repo_of_one_name_gives_one_repo_and_409s(hub: Server) -> None:
    name, token = hub.user()
    api = HfApi(endpoint=hub.url, token=token)
    repo = f"{name}/same-{uuid.uuid4().hex[:6]}"
    outcomes = all_at_once(THREADS, lambda _: api.create_repo(repo))
    created = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(created) == 1, outcomes
    conflicts = [o for o in outcomes if isinstance(o, Exception)]
    assert all(status_of(o) == 409 and "already created" in str(o) for o in conflicts), conflicts
    assert [r.id for r in api.list_models(author=name)] == [repo]


def test_concurrent_branches_and_tags_of_one_name(hub: Server) -> None:
    name, token = hub.user()
    api = HfApi(endpoint=hub.url, token=token)
    repo = f"{name}/refs-{uuid.uuid4().hex[:6]}"
    api.create_repo(repo)
    for kind, create in (("branch", lambda _: api.create_branch(repo, branch="dev")),
                         ("tag", lambda _: api.create_tag(repo, tag="v1"))):
        outcomes = all_at_once(THREADS, create)
        errors = [o for o in outcomes if isinstance(o, Exception)]
        assert len(errors) == THREADS - 1, (kind, outcomes)
        assert all(status_of(o) == 409 and "already exists" in str(o) for o in errors), errors
    refs = api.list_repo_refs(repo)
    assert [b.name for b in refs.branches if b.name == "dev"] == ["dev"] and [t.name for t in refs.tags] == ["v1"]
    outcomes = all_at_once(THREADS, lambda _: api.delete_branch(repo, branch="dev"))
    assert len([o for o in outcomes if not isinstance(o, Exception)]) == 1
    assert all(status_of(o) == 404 for o in outcomes if isinstance(o, Exception))


def test_same_large_file_uploaded_concurrently_to_several_repos(hub: Server) -> None:
    """Each upload records the content (one row, whoever comes first) and links it to its repo."""
    name, token = hub.user()
    api = HfApi(endpoint=hub.url, token=token)
    repos = [f"{name}/same-content-{i}" for i in range(4)]
    for repo in repos:
        api.create_repo(repo)
    data = os.urandom(3_000_000)
    outcomes = all_at_once(len(repos), lambda i: api.upload_file(path_or_fileobj=data, path_in_repo="w.bin",
                                                                 repo_id=repos[i]))
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    for repo in repos:
        with httpx.Client(follow_redirects=True, timeout=60) as client:
            got = client.get(f"{hub.url}/{repo}/resolve/main/w.bin", headers={"authorization": f"Bearer {token}"})
        assert got.status_code == 200 and got.content == data


def test_concurrent_user_creation_of_one_name(hub: Server) -> None:
    """`keephub user create` from several shells at once: one account, the others told the name is taken."""
    name = f"u{uuid.uuid4().hex[:10]}"
    env = {**os.environ, **hub.env}
    runs = all_at_once(4, lambda _: subprocess.run(
        [sys.executable, "-m", "keephub.cli", "--data-dir", str(hub.data_dir), "user", "create", name],
        capture_output=True, text=True, env=env, timeout=120, check=False))
    codes = sorted(run.returncode for run in runs)  # type: ignore[attr-defined]
    assert codes == [0, 2, 2, 2], [(r.returncode, r.stderr) for r in runs]  # type: ignore[attr-defined]
    assert all("already taken" in r.stderr for r in runs if r.returncode)  # type: ignore[attr-defined]


def test_two_servers_on_one_database_run_each_job_once(cluster: PostgresCluster, tmp_path: Path) -> None:
    """Jobs submitted through either of two servers sharing one database: both schedulers race to claim every
    job, each job runs exactly one attempt, and both servers see every user, repo and job."""
    url = cluster.create_database()
    first = start_server(tmp_path / "a" / "data", url)
    second = start_server(tmp_path / "b" / "data", url)
    try:
        name, token = first.user()
        through = [HfApi(endpoint=s.url, token=token) for s in (first, second)]
        repo = f"{name}/shared"
        through[1].create_repo(repo)
        through[0].upload_file(path_or_fileobj=b"one", path_in_repo="a.txt", repo_id=repo)
        assert through[1].hf_hub_download(repo, "a.txt", cache_dir=str(tmp_path / "dl"))
        jobs = all_at_once(4, lambda i: through[i % 2].run_job(
            image="python:3.12", command=["python", "-c", f"print('job {i}')"], env=JOB_XET_ENV, namespace=name))
        assert not [j for j in jobs if isinstance(j, Exception)], jobs
        for job in jobs:
            final = through[0].wait_for_job(job_id=job.id, timeout=240)  # type: ignore[attr-defined]
            assert final.status.stage == "COMPLETED", final.status
        for job in jobs:
            record = httpx.get(f"{second.url}/api/jobs/{name}/{job.id}",  # type: ignore[attr-defined]
                               headers={"authorization": f"Bearer {token}"}).json()
            assert record["status"]["stage"] == "COMPLETED"
        db = Database(url)
        try:
            with db.read() as session:
                attempts = dict(session.execute(text(
                    "SELECT job_id, count(*) FROM job_attempts GROUP BY job_id")).all())
        finally:
            db.close()
        assert attempts == {job.id: 1 for job in jobs}  # type: ignore[attr-defined]
    finally:
        first.stop()
        second.stop()


def test_a_due_scheduled_run_starts_once_across_servers(cluster: PostgresCluster, tmp_path: Path) -> None:
    """Two keephub processes' schedulers (each its own open_hub on one database) look for due runs at the same
    moment, four threads each: the schedule's next run moves once, and one job is created."""
    url = cluster.create_database()
    schedulers = []
    for name in ("a", "b"):
        settings = Settings.load(environ={}, overrides={"data_dir": tmp_path / name,
                                                          "database_url": url}).with_signing_key()
        hub = open_hub(settings)
        schedulers.append(ScheduledJobs(JobService(settings, hub, None)))
    schedulers[0].jobs.accounts.create_user("ada")
    spec, _ = parse_spec({"command": ["python", "-c", "print(1)"], "dockerImage": "python:3.12",
                          "flavor": "cpu-basic"}, schedulers[0].jobs.flavors, 60)
    due = datetime.now(timezone.utc) - timedelta(minutes=1)
    with schedulers[0].db.write() as session:
        session.add(ScheduledJob(id="s" * 24, namespace="ada", owner="ada", owner_token_role="read",
                                 spec_json=json.dumps(spec.to_wire()), schedule="@hourly", suspend=False,
                                 concurrency=True, next_run_at=due))
    started = all_at_once(THREADS, lambda i: schedulers[i % 2].run_due())
    assert sorted(started) == [0] * (THREADS - 1) + [1], started  # type: ignore[type-var]
    with schedulers[0].db.read() as session:
        assert session.execute(text("SELECT count(*) FROM jobs")).scalar() == 1
        assert session.get(ScheduledJob, "s" * 24).next_run_at > datetime.now(timezone.utc)  # type: ignore[union-attr]
    for scheduler in schedulers:
        scheduler.db.close()


# -- outages and bad settings -------------------------------------------------------------------------------
@pytest.mark.once
def test_unreachable_postgresql_answers_503_and_recovers_without_restart(tmp_path: Path) -> None:
    """PostgreSQL cut off as in a crash (pg_ctl stop -m immediate): every request that needs it gets a 503 naming
    the database, a commit sent meanwhile leaves nothing behind, and once it is back keephub serves again."""
    outage = PostgresCluster()  # its own cluster: stopping the shared one would disturb other servers
    outage.start()
    server = start_server(tmp_path / "data", outage.create_database())
    try:
        name, token = server.user()
        api = HfApi(endpoint=server.url, token=token)
        repo = f"{name}/weather"
        api.create_repo(repo)
        api.upload_file(path_or_fileobj=b"before", path_in_repo="a.txt", repo_id=repo)
        outage.stop("immediate")
        auth = {"authorization": f"Bearer {token}"}
        for method, path in (("GET", f"/api/models/{repo}"), ("GET", "/api/whoami-v2"),
                             ("GET", f"/{repo}/resolve/main/a.txt"), ("GET", f"/api/jobs/{name}")):
            answer = httpx.request(method, server.url + path, headers=auth, timeout=60)
            assert answer.status_code == 503, (path, answer.status_code, answer.text)
            message = answer.json()["error"]
            assert f"PostgreSQL at 127.0.0.1:{outage.port}" in message and "unreachable" in message, message
            assert "retries on the next request" in message
        commit = "\n".join(json.dumps(line) for line in (
            {"key": "header", "value": {"summary": "during the outage"}},
            {"key": "file", "value": {"path": "raw.txt", "content": base64.b64encode(b"raw").decode(),
                                      "encoding": "base64"}}))
        refused = httpx.post(f"{server.url}/api/models/{repo}/commit/main", content=commit,
                             headers={**auth, "content-type": "application/x-ndjson"}, timeout=60)
        assert refused.status_code == 503 and "unreachable" in refused.json()["error"], refused.text
        assert refused.headers["retry-after"]
        # huggingface_hub waits out 503s as Retry-After says: an upload sent during a short outage lands after it.
        landed: dict[str, object] = {}
        uploader = threading.Thread(target=lambda: landed.update(commit=api.upload_file(
            path_or_fileobj=b"during", path_in_repo="b.txt", repo_id=repo)))
        uploader.start()
        time.sleep(3)
        outage.start()
        uploader.join(120)
        assert "commit" in landed
        assert api.whoami()["name"] == name
        assert sorted(f for f in api.list_repo_files(repo) if f.endswith(".txt")) == ["a.txt", "b.txt"]
        assert len(api.list_repo_commits(repo)) == 3  # initial, a.txt, b.txt: nothing of the refused commit
        api.upload_file(path_or_fileobj=b"after", path_in_repo="c.txt", repo_id=repo)
        assert api.hf_hub_download(repo, "c.txt", cache_dir=str(tmp_path / "dl"))
        assert server.process is not None and server.process.poll() is None  # the same process throughout
    finally:
        server.stop()
        outage.close()


@pytest.mark.parametrize("database_url, words", [
    ("postgresql+psycopg://postgres@127.0.0.1:{closed}/keephub", ["database_url", "Connection refused"]),
    ("postgresql+psycopg://postgres@127.0.0.1:{port}/no_such_database", ["database_url", "no_such_database"]),
    ("postgresql+psycopg://postgres:s3cret@127.0.0.1:{closed}/x", ["database_url", "PostgreSQL at 127.0.0.1"]),
    ("mysql+nodriver://somewhere/x", ["database_url", "postgresql+psycopg://"]),
])
@pytest.mark.once
def test_serve_refuses_a_database_url_it_cannot_use(database_url: str, words: list[str], cluster: PostgresCluster,
                                                   tmp_path: Path) -> None:
    url = database_url.format(closed=free_port(), port=cluster.port)
    started = subprocess.run(
        [sys.executable, "-m", "keephub.cli", "--data-dir", str(tmp_path / "data"), "serve", "--port",
         str(free_port())], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "KEEPHUB_DATABASE_URL": url})
    assert started.returncode == 2, started.stdout + started.stderr
    assert all(word in started.stderr for word in words), started.stderr
    assert "s3cret" not in started.stderr and "Traceback" not in started.stderr
