"""Bounded work per request for job logs, and durability records only over the sidecar's own channel.

Regression tests for an attack review: a job printing 150 MB made every `tail=10` read load the whole log
(1.4 GB of server memory per read), and durability records were parsed out of the job's own output, so a
training script could print fake ones (and 30,000 of them).
"""

from __future__ import annotations

import re
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import httpx
import pytest
from conftest import SESSION_DIR, WAIT_ON_HUB, JobSocketProxy, Server, free_port, guarded_job
from huggingface_hub import HfApi

UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"
MB = 1024 * 1024
LOG_LINES = 60_000
LINE_TEXT = "x" * 1000
LOG_CAP = 200_000


@pytest.fixture(scope="module")
def hub() -> Iterator[Server]:
    """A server of its own, so its memory is this module's alone to measure."""
    srv = Server(data_dir=SESSION_DIR / f"logs-{uuid.uuid4().hex[:6]}", port=free_port(),
                 env={"KEEPHUB_JOB_GRACE_SECONDS": "15"})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def capped_hub() -> Iterator[Server]:
    srv = Server(data_dir=SESSION_DIR / f"logcap-{uuid.uuid4().hex[:6]}", port=free_port(),
                 env={"KEEPHUB_JOB_LOG_MAX_BYTES": str(LOG_CAP)})
    srv.start()
    yield srv
    srv.stop()


def user_of(server: Server) -> tuple[str, HfApi]:
    name, token = server.user()
    return name, HfApi(endpoint=server.url, token=token)


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def peak_rss_growth(pid: int, action: Callable[[], None]) -> int:
    """Bytes by which the process's resident memory peaked above where it stood when `action` began: the
    kernel's high-water mark, reset first (clear_refs 5), and frequent samples in case it cannot be reset."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    base = _status_kib(pid, "VmRSS")
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _status_kib(pid, "VmRSS"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        action()
    finally:
        done.set()
        sampler.join()
    if hwm_reset:
        peak = max(peak, _status_kib(pid, "VmHWM"))
    return (peak - base) * 1024


@pytest.fixture(scope="module")
def big_log(hub: Server) -> tuple[str, HfApi, str]:
    """A finished job whose log holds LOG_LINES lines of about 1 kB (about 60 MB on disk)."""
    name, api = user_of(hub)
    code = f"import sys\nsys.stdout.write(''.join(f'line {{i:06d}} {LINE_TEXT}\\n' for i in range({LOG_LINES})))"
    job = api.run_job(image=UV_IMAGE, command=["python", "-c", code], namespace=name)
    assert api.wait_for_job(job_id=job.id, namespace=name, timeout=120).status.stage == "COMPLETED"
    return name, api, job.id


def expected_line(i: int) -> str:
    return f"line {i:06d} {LINE_TEXT}"


def test_concurrent_tail_reads_of_a_huge_log_cost_the_lines_not_the_log(hub: Server, big_log) -> None:
    name, api, job_id = big_log
    answers: list[list[str]] = []

    def four_tail_reads() -> None:
        with ThreadPoolExecutor(4) as pool:
            answers.extend(pool.map(lambda _: list(api.fetch_job_logs(job_id=job_id, namespace=name, tail=10)),
                                    range(4)))

    assert hub.process is not None
    growth = peak_rss_growth(hub.process.pid, four_tail_reads)
    last = [expected_line(i) for i in range(LOG_LINES - 9, LOG_LINES)] + ["===== completed ====="]
    assert answers == [last] * 4
    assert growth < 50 * MB, f"four tail=10 reads of a 60 MB log grew the server by {growth / MB:.0f} MB"


def test_a_full_read_is_streamed_and_a_slow_reader_holds_the_server_back(hub: Server, big_log) -> None:
    name, api, job_id = big_log
    url = f"{hub.url}/api/jobs/{name}/{job_id}/logs"
    headers = {"authorization": f"Bearer {api.token}"}
    count = 0

    def read_all() -> None:
        nonlocal count
        with httpx.stream("GET", url, headers=headers, timeout=60) as reply:
            count = sum(1 for line in reply.iter_lines() if line.startswith("data: "))

    assert hub.process is not None
    growth = peak_rss_growth(hub.process.pid, read_all)
    assert count == LOG_LINES + 2  # the start line and the final status line are events too
    assert growth < 50 * MB, f"one full read of a 60 MB log grew the server by {growth / MB:.0f} MB"

    def stall_after_the_first_bytes() -> None:
        with httpx.stream("GET", url, headers=headers, timeout=60) as reply:
            next(reply.iter_bytes(64 * 1024))
            time.sleep(3)

    growth = peak_rss_growth(hub.process.pid, stall_after_the_first_bytes)
    assert growth < 50 * MB, f"a reader that stalled made the server read ahead by {growth / MB:.0f} MB"


def test_the_job_page_shows_the_tail_and_pages_back(hub: Server, big_log) -> None:
    name, api, job_id = big_log
    headers = {"authorization": f"Bearer {api.token}"}
    page = httpx.get(f"{hub.url}/jobs/{name}/{job_id}", headers=headers)
    assert page.status_code == 200
    assert expected_line(LOG_LINES - 1) in page.text and "===== completed =====" in page.text
    assert expected_line(LOG_LINES - 500) not in page.text, "a page holds about 500 lines, not the log"
    older = re.search(r'href="\?before=([0-9.]+)"', page.text)
    assert older, "the page links to older lines"
    earlier = httpx.get(f"{hub.url}/jobs/{name}/{job_id}?before={older.group(1)}", headers=headers)
    assert earlier.status_code == 200
    first_shown = int(re.findall(r"line (\d{6}) ", page.text)[0])
    assert expected_line(first_shown - 1) in earlier.text and expected_line(first_shown) not in earlier.text
    assert "Newest lines" in earlier.text
    bad = httpx.get(f"{hub.url}/jobs/{name}/{job_id}?before=the-end", headers=headers)
    assert bad.status_code == 400 and "ATTEMPT.OFFSET" in bad.json()["error"]


def test_output_past_the_log_cap_is_dropped_with_one_notice_and_the_job_goes_on(capped_hub: Server) -> None:
    name, api = user_of(capped_hub)
    code = textwrap.dedent("""
        for i in range(5000):
            print(f"noise {i:04d} " + "y" * 100)
        print("Traceback: the error the user is looking for")
    """)
    job = api.run_job(image=UV_IMAGE, command=["python", "-c", code], namespace=name)
    assert api.wait_for_job(job_id=job.id, namespace=name, timeout=60).status.stage == "COMPLETED"
    lines = list(api.fetch_job_logs(job_id=job.id, namespace=name))
    reached = [line for line in lines if "reached its limit" in line]
    dropped = [line for line in lines if line.startswith("keephub: dropped")]
    assert len(reached) == 1 and "job_log_max_bytes" in reached[0] and "The job goes on" in reached[0]
    assert len(dropped) == 1, lines[-60:]
    stored_in_place = sum(1 for line in lines[:lines.index(dropped[0])] if line.startswith("noise "))
    assert f"in {5001 - stored_in_place:,} lines" in dropped[0], dropped
    assert lines[-2] == "Traceback: the error the user is looking for", "the job's last lines stay visible"
    assert lines[-1] == "===== completed ====="
    assert sum(len(line) for line in lines) < LOG_CAP + 50 * 200, "the stored log stays near the cap"


# -- durability records ---------------------------------------------------------------------------------

WAIT_FOR_GO = WAIT_ON_HUB + textwrap.dedent('''
    import json, os
    os.makedirs("out/checkpoint-10")
    with open("out/checkpoint-10/trainer_state.json", "w") as state:
        json.dump({"global_step": 10}, state)
    wait_on_hub("go.txt", 120, 0.2)
    with open("out/model.txt", "w") as model:
        model.write("the final model")
''')


def durability_of(api: HfApi, name: str, job_id: str) -> dict:
    reply = httpx.get(f"{api.endpoint}/api/jobs/{name}/{job_id}", headers={"authorization": f"Bearer {api.token}"})
    return reply.json()["durability"]


def test_record_lines_the_script_prints_are_only_log_text(hub: Server) -> None:
    name, api = user_of(hub)
    repo = f"{name}/forged"
    forged = ('keephub-durability {"kind": "push", "label": "checkpoint-99", "revision": "main", "commit": "'
              + "0" * 40 + '", "files": ["x"], "bytes": 1, "verified": true}')
    fake_verdict = 'keephub-durability {"kind": "verdict", "status": "saved"}'
    job = guarded_job(api, name, repo, f"print({forged!r})\nprint({fake_verdict!r})")
    assert api.wait_for_job(job_id=job.id, namespace=name, timeout=90).status.stage == "COMPLETED"
    lines = list(api.fetch_job_logs(job_id=job.id, namespace=name))
    assert forged in lines and fake_verdict in lines, "the lines are shown as the job printed them"
    record = durability_of(api, name, job.id)
    assert record["pushes"] == [], record
    assert record["verdict"]["status"] == "not-saved", record  # the sidecar's own verdict: nothing was pushed


def test_records_need_the_attempts_own_credential_and_are_capped(hub: Server) -> None:
    name, api = user_of(hub)
    repo = f"{name}/channel"
    other = api.run_job(image=UV_IMAGE, command=["python", "-c", "pass"], namespace=name)
    # Nothing in the job's sandbox but the sidecar ever sees its credential: the test reads it on the wire.
    # The proxy stays in place while the job runs: the sandbox was bound to the proxy's socket.
    with JobSocketProxy(hub) as proxy:
        job = guarded_job(api, name, repo, WAIT_FOR_GO)
        deadline = time.time() + 90
        while not (credentials := re.findall(rb"Bearer (khagent_[A-Za-z0-9_\-]{20,})\r\n", proxy.sent)):
            assert time.time() < deadline, "the sidecar reports its checkpoint push with its credential"
            time.sleep(0.2)
        credential = credentials[0].decode()
        records = f"{hub.url}/api/agent/v1/jobs/{job.id}/attempts/1/records"
        bearer = {"authorization": f"Bearer {credential}"}
        push = {"kind": "push", "label": "checkpoint-1", "revision": "main", "commit": "1" * 40, "files": [], "bytes": 0}

        with httpx.Client(timeout=30) as http:
            elsewhere = [f"{hub.url}/api/agent/v1/jobs/{other.id}/attempts/1/records",
                         f"{hub.url}/api/agent/v1/jobs/{job.id}/attempts/2/records"]
            for url in elsewhere:
                refused = http.post(url, json=push, headers=bearer)
                assert refused.status_code == 403 and "valid only for the attempt" in refused.json()["error"]
            user_token = http.post(records, json=push, headers={"authorization": f"Bearer {api.token}"})
            assert user_token.status_code == 401 and "agent credential" in user_token.json()["error"]
            huge = http.post(records, json={**push, "files": ["f" * 1000] * 300}, headers=bearer)
            assert huge.status_code == 413 and "262144-byte limit" in huge.json()["error"]
            unknown = http.post(records, json={"kind": "anything"}, headers=bearer)
            assert unknown.status_code == 400 and "push, push-failed, resume, verdict" in unknown.json()["error"]
            misshapen = http.post(records, json={**push, "files": 1}, headers=bearer)
            assert misshapen.status_code == 400 and "'files' must be a list of strings" in misshapen.json()["error"]

            answers = [http.post(records, json=push, headers=bearer).status_code for _ in range(1000)]
            refused = http.post(records, json=push, headers=bearer)
        assert answers.count(201) == 999 and answers[-1] == 429, "1,000 records per attempt, the sidecar's included"
        assert refused.status_code == 429 and "1000 records" in refused.json()["error"]
        assert len(durability_of(api, name, job.id)["pushes"]) == 1000

        api.upload_file(path_or_fileobj=b"go", path_in_repo="go.txt", repo_id=repo)
        assert api.wait_for_job(job_id=job.id, namespace=name, timeout=90).status.stage == "COMPLETED"
        lines = list(api.fetch_job_logs(job_id=job.id, namespace=name))
        assert sum("the most an attempt may" in line for line in lines) == 1, "the sidecar says it once, then stops"
        record = durability_of(api, name, job.id)
        assert len(record["pushes"]) == 1000
        assert "reported no verdict" not in record["verdict"]["message"], "the verdict always fits"
    after = httpx.post(records, json={"kind": "verdict", "status": "saved"}, headers=bearer)
    assert after.status_code == 403, "the credential is revoked when the attempt ends"
