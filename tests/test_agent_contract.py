"""The agent contract's guarantees, checked on the lifecycle itself and over HTTP on a live keephub: a
credential works for its own attempt only, a resent log line is stored once, a gap is refused, an attempt
ends once however many reports arrive, and a job is claimed by one keephub only."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from conftest import Server

from keephub.app import open_hub
from keephub.config import Settings
from keephub.durability import record as durability_record
from keephub.jobs.agent_api import accept_record
from keephub.jobs.logs import attempt_log
from keephub.jobs.scheduler import Outcome, Scheduler, new_credential
from keephub.jobs.service import JobService
from keephub.jobs.spec import parse_spec
from keephub.storage.schema import Job, JobAttempt
from keephub.wire import BadRequest, Forbidden
from keephub.wire.errors import Conflict


@pytest.fixture
def lifecycle(tmp_path: Path) -> Scheduler:
    settings = Settings.load(environ={}, overrides={"data_dir": tmp_path / "data"}).with_signing_key()
    hub = open_hub(settings)
    hub.accounts.create_user("ada")
    return Scheduler(settings, hub.db, JobService(settings, hub, None))


def _job(lifecycle: Scheduler, attempts: int = 1) -> str:
    spec, secrets = parse_spec({"command": ["python", "-c", "print(1)"], "dockerImage": "python:3.12",
                                "flavor": "cpu-basic", "attempts": attempts}, lifecycle.service.flavors, 60)
    return lifecycle.service.create_job("ada", "ada", spec, secrets, [], None)


def _claimed(lifecycle: Scheduler, job_id: str) -> str:
    credential = new_credential()
    assert lifecycle._claim(job_id, credential) is not None
    return credential


def _started(lifecycle: Scheduler, job_id: str) -> str:
    """Claim and start the job's first attempt; the credential its agent uses from then on."""
    return lifecycle.agent_start(job_id, 1, _claimed(lifecycle, job_id), "node-a")["agentCredential"]


def test_a_credential_works_for_its_own_attempt_only(lifecycle: Scheduler) -> None:
    first, second = _job(lifecycle), _job(lifecycle)
    launch, theirs = _claimed(lifecycle, first), _claimed(lifecycle, second)
    plan = lifecycle.agent_start(first, 1, launch, "node-a")
    mine = plan.pop("agentCredential")
    assert plan["command"] == ["python", "-c", "print(1)"] and plan["flavor"] == "cpu-basic"
    with pytest.raises(Forbidden):
        lifecycle.agent_start(first, 1, theirs, "node-a")
    with pytest.raises(Forbidden):
        lifecycle.agent_log(first, 2, mine, 1, [("t", "a line for an attempt that does not exist")])
    with pytest.raises(Forbidden):
        lifecycle.agent_heartbeat(second, 1, mine, "node-a")
    assert lifecycle.finish_attempt(first, 1, Outcome("COMPLETED", "completed", 0))
    with pytest.raises(Forbidden):  # the attempt has ended: its credential is dead
        lifecycle.agent_log(first, 1, mine, 1, [("t", "late")])


def test_a_second_agent_of_a_started_attempt_is_refused(lifecycle: Scheduler) -> None:
    """An executor may start the same attempt twice (a batch job queued again after sbatch timed out): the
    launch credential dies at the first start, so the second agent is refused and exits, and the attempt runs
    once; the first agent goes on with the credential its plan carried."""
    job_id = _job(lifecycle)
    launch = _claimed(lifecycle, job_id)
    running = lifecycle.agent_start(job_id, 1, launch, "node-a")["agentCredential"]
    assert running != launch
    with pytest.raises(Forbidden):
        lifecycle.agent_start(job_id, 1, launch, "node-b")
    with pytest.raises(Forbidden):
        lifecycle.agent_heartbeat(job_id, 1, launch, "node-b")
    assert lifecycle.agent_heartbeat(job_id, 1, running, "node-a") == {}
    assert lifecycle.agent_log(job_id, 1, running, 1, [("t", "once")]) == {"next": 2, "stored": 1}
    attempt = lifecycle.service.load(None, job_id).attempts[0]
    assert attempt.outcome == "RUNNING" and attempt.node == "node-a"


def test_resent_lines_are_stored_once_and_a_gap_is_refused(lifecycle: Scheduler) -> None:
    job_id = _job(lifecycle)
    credential = _started(lifecycle, job_id)
    assert lifecycle.agent_log(job_id, 1, credential, 1, [("t", "one"), ("t", "two")]) == {"next": 3, "stored": 2}
    # The answer was lost: the agent sends lines 2-3 again, with line 3 new.
    assert lifecycle.agent_log(job_id, 1, credential, 2, [("t", "two"), ("t", "three")]) == {"next": 4, "stored": 1}
    assert lifecycle.agent_log(job_id, 1, credential, 1, [("t", "one")]) == {"next": 4, "stored": 0}
    with pytest.raises(Conflict) as gap:
        lifecycle.agent_log(job_id, 1, credential, 6, [("t", "six")])
    assert gap.value.extra_body == {"next": 4}
    stored = attempt_log(lifecycle.jobs_dir, job_id, 1).read_text()
    assert [line for line in ("one", "two", "three", "six") if f'"data": "{line}"' in stored] == ["one", "two", "three"]
    assert stored.count('"data": "two"') == 1


def test_a_torn_append_is_cut_off_before_the_next(lifecycle: Scheduler) -> None:
    """A crash between appending lines and recording them leaves bytes the agent will resend: they go."""
    job_id = _job(lifecycle)
    credential = _started(lifecycle, job_id)
    lifecycle.agent_log(job_id, 1, credential, 1, [("t", "kept")])
    path = attempt_log(lifecycle.jobs_dir, job_id, 1)
    with open(path, "ab") as fh:
        fh.write(b'{"timestamp": "t", "data": "torn"}\n{"times')
    lifecycle.agent_log(job_id, 1, credential, 2, [("t", "torn"), ("t", "after")])
    events = path.read_text().splitlines()
    assert [e for e in events if "torn" in e] == ['{"timestamp": "t", "data": "torn"}'] and "after" in events[-1]


def test_an_attempt_ends_once_and_a_failed_one_is_retried(lifecycle: Scheduler) -> None:
    job_id = _job(lifecycle, attempts=2)
    credential = _started(lifecycle, job_id)
    assert lifecycle.agent_exit(job_id, 1, credential, {"exitCode": 3, "stopped": None, "reason": None}) == {
        "outcome": "ERROR", "message": "exited with status 3"}
    with pytest.raises(Forbidden):  # a second report of the same end
        lifecycle.agent_exit(job_id, 1, credential, {"exitCode": 0, "stopped": None, "reason": None})
    assert not lifecycle.finish_attempt(job_id, 1, Outcome("COMPLETED", "completed", 0))
    record = lifecycle.service.load(None, job_id)
    assert record.job.stage == "SCHEDULING" and "retrying" in (record.job.message or "")
    assert [a.outcome for a in record.attempts] == ["ERROR"]


def test_volumes_reach_the_agent_with_a_token_of_their_own_and_each_credential_reports_its_own_kinds(
        lifecycle: Scheduler) -> None:
    """The job's token mounts the volumes: in the plan (redacted from the log), not in the job's environment
    unless $HF_TOKEN asked for it. A bucket-sync record takes the agent's credential, the others the sidecar's."""
    spec, secrets = parse_spec({"command": ["python", "-c", "print(1)"], "dockerImage": "python:3.12",
                                "volumes": [{"type": "bucket", "source": "ada/runs", "mountPath": "/data"}]},
                               lifecycle.service.flavors, 60)
    guarded = replace(spec, durability={"repo": "ada/m", "outputDir": "o"})
    job_id = lifecycle.service.create_job("ada", "ada", guarded, secrets, [], None)
    plan = lifecycle.agent_start(job_id, 1, _claimed(lifecycle, job_id), "node-a")
    credential = plan["agentCredential"]
    token = plan["volumeToken"]
    assert token.startswith("kh_") and token in plan["redact"]
    assert token not in json.dumps(plan["env"]) and plan["volumes"][0]["mountPath"] == "/data"
    sync = {"kind": "bucket-sync", "bucket": "ada/runs", "prefix": "", "mountPath": "/data", "direction": "push",
            "final": True, "files": 1, "bytes": 5, "deleted": 0, "deferred": 0, "verified": True, "seconds": 0.1,
            "error": None}
    db, sidecar = lifecycle.db, plan["sidecarCredential"]
    with pytest.raises(Forbidden):
        accept_record(db, job_id, 1, sidecar, sync)
    with pytest.raises(Forbidden):
        accept_record(db, job_id, 1, credential, {"kind": "verdict", "status": "saved"})
    accept_record(db, job_id, 1, credential, sync)
    accept_record(db, job_id, 1, sidecar, {"kind": "verdict", "status": "saved"})
    with pytest.raises(BadRequest):
        durability_record.check({**sync, "files": ["a"]})


def test_two_keephubs_never_claim_the_same_attempt(lifecycle: Scheduler, tmp_path: Path) -> None:
    other = Scheduler(lifecycle.settings, lifecycle.db, lifecycle.service)
    job_id = _job(lifecycle)
    assert lifecycle._claim(job_id, new_credential()) is not None
    assert other._claim(job_id, new_credential()) is None


def test_the_contract_refuses_user_tokens_and_made_up_credentials(server: Server, alice: tuple[str, str]) -> None:
    _, token = alice
    url = f"{server.url}/api/agent/v1/jobs/0123456789abcdef01234567/attempts/1/log"
    body = {"first": 1, "events": [["2026-01-01T00:00:00.000Z", "forged"]]}
    user = httpx.post(url, json=body, headers={"authorization": f"Bearer {token}"})
    assert user.status_code == 401 and "agent credential" in user.json()["error"]
    made_up = httpx.post(url, json=body, headers={"authorization": f"Bearer {new_credential()}"})
    assert made_up.status_code == 403 and "valid only for the attempt" in made_up.json()["error"]
    bad = httpx.post(url, json={"first": 0, "events": "x"}, headers={"authorization": f"Bearer {new_credential()}"})
    assert bad.status_code == 400 and "first" in bad.json()["error"]


def test_a_launch_that_fails_unexpectedly_ends_the_attempt_and_the_job_is_retried(lifecycle: Scheduler) -> None:
    job_id = _job(lifecycle, attempts=2)

    def broken(launch):  # type: ignore[no-untyped-def]
        raise OSError("the disk is full")

    lifecycle.executor.launch = broken  # type: ignore[method-assign]
    assert lifecycle.start_attempt(job_id)
    record = lifecycle.service.load(None, job_id)
    assert [a.outcome for a in record.attempts] == ["ERROR"] and "the disk is full" in (record.attempts[0].message or "")
    assert record.job.stage == "SCHEDULING", "the next attempt is offered again"


def test_attempts_of_a_keephub_before_executors_end_at_start_and_are_retried(lifecycle: Scheduler) -> None:
    job_id = _job(lifecycle, attempts=2)
    with lifecycle.db.write() as session:
        session.add(JobAttempt(job_id=job_id, number=1, outcome="RUNNING"))
        session.get(Job, job_id).stage = "RUNNING"  # type: ignore[union-attr]
    lifecycle.adopt()
    record = lifecycle.service.load(None, job_id)
    assert record.attempts[0].outcome == "ERROR" and "upgraded" in (record.attempts[0].message or "")
    assert record.job.stage == "SCHEDULING"


def test_an_agent_heard_from_again_is_not_given_up(lifecycle: Scheduler) -> None:
    """The silence that ends an attempt is checked in the same update: a heartbeat that arrived meanwhile wins."""
    job_id = _job(lifecycle)
    credential = _started(lifecycle, job_id)
    before_it = datetime.now(timezone.utc) - timedelta(seconds=60)
    assert not lifecycle.finish_attempt(job_id, 1, Outcome("ERROR", "silent"), silent_since=before_it)
    assert lifecycle.service.load(None, job_id).job.stage == "RUNNING"
    with lifecycle.db.write() as session:
        session.get(JobAttempt, (job_id, 1)).heartbeat_at = before_it - timedelta(seconds=1)  # type: ignore[union-attr]
    assert lifecycle.finish_attempt(job_id, 1, Outcome("ERROR", "silent"), silent_since=before_it, retry=False)
    assert lifecycle.service.load(None, job_id).job.stage == "ERROR"


def test_log_batches_keep_odd_output_as_text_and_refuse_what_is_not_a_batch() -> None:
    """A job may print a NUL byte or a lone surrogate: the line is stored with a replacement character, never
    refused (that would hold back every later line); a body that is not a batch is a 400 naming the field."""
    from keephub.jobs.agent_api import _events
    from keephub.wire import BadRequest

    first, events = _events({"first": 3, "events": [["t", "a\x00b"], ["t", "c\ud800d"], ["t", "-rf /\n.."]]})
    assert first == 3 and events == [("t", "a\ufffdb"), ("t", "c?d"), ("t", "-rf /\n..")]
    for body, field in (({"first": 0, "events": []}, "first"), ({"first": True, "events": []}, "first"),
                        ({"first": 1, "events": "x"}, "events"), ({"first": 1, "events": [["t"]]}, "events[0]"),
                        ({"first": 1, "events": [["t", 5]]}, "events[0]")):
        with pytest.raises(BadRequest) as refused:
            _events(body)
        assert field in refused.value.message
