"""The job sandbox as a hostile user meets it: values that look like bwrap options, setuid files left on the
host, every limit of a flavor, and the network. Each test reproduces a finding of the attack review."""

from __future__ import annotations

import os
import socket
import stat
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from conftest import SESSION_DIR, Server, agent_root, free_port
from huggingface_hub import HfApi

from keephub.agent import sandbox

IMAGE = "python:3.12"
AS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    """A TCP service on the host's loopback that jobs must not reach, except through the egress allow-list."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with client:
                client.sendall(b"host service says hi\n")

    threading.Thread(target=serve, daemon=True).start()
    yield port
    listener.close()


@pytest.fixture(scope="module")
def box(echo_port: int) -> Iterator[Server]:
    """Small limits so every bomb hits one fast: 1 GB of memory, 1 GB of disk, 200 tasks."""
    srv = Server(data_dir=SESSION_DIR / f"sandbox-{uuid.uuid4().hex[:6]}", port=free_port(), env={
        "KEEPHUB_JOB_GRACE_SECONDS": "3", "KEEPHUB_JOB_CPUS": "2", "KEEPHUB_JOB_MEMORY_GB": "1",
        "KEEPHUB_JOB_DISK_GB": "1", "KEEPHUB_JOB_PROCESSES": "200",
        "KEEPHUB_JOB_EGRESS_ALLOW": f"127.0.0.1:{echo_port}"})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def user(box: Server) -> tuple[str, HfApi]:
    name, token = box.user()
    return name, HfApi(endpoint=box.url, token=token)


def run(api: HfApi, code: str, *args: str, **kwargs):  # type: ignore[no-untyped-def]
    job = api.run_job(image=IMAGE, command=["python", "-c", textwrap.dedent(code), *args], **kwargs)
    lines = list(api.fetch_job_logs(job_id=job.id, follow=True))
    return api.wait_for_job(job_id=job.id, timeout=120), lines


def test_values_that_look_like_bwrap_options_stay_values(user) -> None:
    """The review's escape: a secret carrying bwrap options mounted the host into the job. Values now never
    reach bwrap's argument stream; NUL bytes are refused at the API (test_security_input)."""
    _, api = user
    trap = "x --ro-bind / /stolen --setenv PWNED 1"
    info, lines = run(api, f"""
        import os, sys
        print('secret', os.environ['S'])
        print('args', sys.argv[1:], 'env', os.environ['E'] == '--bind / /x')
        print('stolen', os.path.exists('/stolen'), 'pwned', 'PWNED' in os.environ)
        print('secret whole', os.environ['S'] == {trap!r})
    """, "--bind", "/", "/x", secrets={"S": trap}, env={"E": "--bind / /x"})
    assert info.status.stage == "COMPLETED", lines
    assert "secret ***" in lines and "secret whole True" in lines
    assert "args ['--bind', '/', '/x'] env True" in lines
    assert "stolen False pwned False" in lines


def test_bwrap_command_line_carries_no_user_value(tmp_path: Path) -> None:
    layout = sandbox.SandboxLayout.for_this_host(tmp_path / "data", 300000)
    marker = "USER-VALUE-7f3a"
    spec = sandbox.SandboxSpec(
        workspace=tmp_path, uv_cache=tmp_path, command=[marker, f"--bind / /{marker}"],
        env={marker: marker}, gpus=[], cpus=[], limits=sandbox.Limits(2**30, 100, 2**30), user=None,
        routes=(), hosts=())
    argv = sandbox.bwrap_argv(layout, spec, {"hosts": 5, "uv": 6}, lambda path: path)
    assert not [arg for arg in argv if marker in arg]
    assert argv[-4:] == [str(layout.python), "-I", "-S", str(sandbox.SANDBOX_INIT)]


@pytest.mark.skipif(not AS_ROOT, reason="uid separation needs keephub to run as root")
def test_a_setuid_file_made_in_a_job_is_neither_root_owned_nor_setuid_on_the_host(box: Server, user) -> None:
    name, api = user
    info, lines = run(api, """
        import os, shutil
        for target in ('/workspace/id', '/opt/keephub/uv-cache/id'):
            shutil.copy('/usr/bin/id', target)
            os.chmod(target, 0o4755)
            print(target, oct(os.stat(target).st_mode))
    """)
    assert info.status.stage == "COMPLETED", lines
    assert "/opt/keephub/uv-cache/id 0o104755" in lines, "inside, the job may set the bit on its own file"
    left = agent_root(box) / "uv-cache" / name / "id"
    mode = left.stat()
    assert mode.st_uid >= 0x70000000, "the file belongs to the job's own uid (job_uid_base + account id), not keephub's"
    assert not mode.st_mode & (stat.S_ISUID | stat.S_ISGID), "the setuid bit does not survive the attempt"
    assert stat.S_IMODE((agent_root(box) / "uv-cache" / name).stat().st_mode) == 0o700
    assert stat.S_IMODE(box.data_dir.stat().st_mode) == 0o700, "the data directory stays private"


def test_the_root_and_system_directories_are_read_only(user) -> None:
    _, api = user
    info, lines = run(api, """
        for path in ('/x', '/opt/x', '/etc/x', '/run/x', '/dev/x', '/usr/x'):
            try:
                open(path, 'w').write('x')
                print(path, 'writable')
            except OSError as exc:
                print(path, 'refused', exc.errno)
        open('/tmp/ok', 'w').write('x'); open('/dev/shm/ok', 'w').write('x'); open('/dev/null', 'w').write('x')
        print('tmp, shm and /dev/null work')
    """)
    assert info.status.stage == "COMPLETED", lines
    assert not [line for line in lines if line.endswith("writable")], lines
    assert "tmp, shm and /dev/null work" in lines


@pytest.mark.parametrize("where", ["tmpfs", "memfd", "shared-mmap", "sysv-shm"])
def test_memory_held_in_ram_backed_files_counts_against_the_limit(user, where: str) -> None:
    """600 MiB in /tmp and 480 in /dev/shm (each within its own cap), 2 GiB in memfds, 1.5 GiB of shared
    anonymous memory, or a detached System V segment of 1.5 GiB, under a 1 GiB limit: the job ends ERROR.
    (The review held 600 MB in each of /tmp, /run, /dev/shm, / and more.)"""
    _, api = user
    fill = {
        "tmpfs": """
            import time
            block = b'x' * (1 << 20)
            for path, mib in (('/tmp/a', 600), ('/dev/shm/b', 480)):
                with open(path, 'wb') as fh:
                    for _ in range(mib):
                        fh.write(block)
            print('filled', flush=True)
            time.sleep(30)
        """,
        "memfd": """
            import os, time
            block = b'x' * (1 << 20)
            hoard = [os.memfd_create(f'hoard-{n}') for n in range(4)]
            for fd in hoard:
                for _ in range(512):
                    os.write(fd, block)
            print('filled', flush=True)
            time.sleep(30)
        """,
        "shared-mmap": """
            import mmap, time
            hoard = mmap.mmap(-1, 1536 << 20)
            for offset in range(0, len(hoard), 1 << 20):
                hoard[offset:offset + (1 << 20)] = b'x' * (1 << 20)
            print('filled', flush=True)
            time.sleep(30)
        """,
        "sysv-shm": """
            import ctypes, time
            libc = ctypes.CDLL(None, use_errno=True)
            libc.shmat.restype = ctypes.c_void_p
            segment = libc.shmget(0, ctypes.c_size_t(1536 << 20), 0o1600)
            address = libc.shmat(segment, None, 0)
            ctypes.memset(address, 1, 1536 << 20)
            libc.shmdt(ctypes.c_void_p(address))
            print('filled and detached', flush=True)
            time.sleep(30)
        """,
    }[where]
    info, lines = run(api, fill)
    assert info.status.stage == "ERROR", lines
    assert "exceeded the memory limit of 1 GB" in info.status.message


def test_a_thread_bomb_ends_with_the_limit_named_and_others_are_unaffected(box: Server, user) -> None:
    _, api = user
    bomb = api.run_job(image=IMAGE, command=["python", "-c", textwrap.dedent("""
        import threading, time
        threads = []
        while True:
            try:
                thread = threading.Thread(target=time.sleep, args=(60,))
                thread.start()
                threads.append(thread)
            except RuntimeError:
                time.sleep(0.01)
    """)])
    other_name, other_token = box.user()
    other = HfApi(endpoint=box.url, token=other_token)
    started = time.monotonic()
    assert other.whoami()["name"] == other_name and time.monotonic() - started < 5, "the API answers during the bomb"
    canary, lines = run(other, "import threading; print('canary ran with', threading.active_count(), 'thread')")
    assert canary.status.stage == "COMPLETED" and "canary ran with 1 thread" in lines, lines
    info = api.wait_for_job(job_id=bomb.id, timeout=60)
    assert info.status.stage == "ERROR", info.status
    assert "limit of 200 processes and threads" in info.status.message


def test_disk_written_beyond_the_limit_ends_the_job(user) -> None:
    _, api = user
    info, lines = run(api, """
        import os, time
        for n in range(4):
            with open(f'/workspace/blob-{n}', 'wb') as fh:
                os.posix_fallocate(fh.fileno(), 0, 400 << 20)
            print('wrote', n, flush=True)
        time.sleep(30)
    """)
    assert info.status.stage == "ERROR", lines
    assert "exceeded the disk limit of 1 GB" in info.status.message


def test_jobs_reach_keephub_but_not_the_host_or_each_other(user, echo_port: int) -> None:
    _, api = user
    listener_code = """
        import socket, time
        server = socket.create_server(('127.0.0.1', 45678))
        print('listening', flush=True)
        time.sleep(20)
    """
    first = api.run_job(image=IMAGE, command=["python", "-c", textwrap.dedent(listener_code)])
    for line in api.fetch_job_logs(job_id=first.id, follow=True):
        if line == "listening":
            break
    info, lines = run(api, f"""
        import socket
        from huggingface_hub import HfApi
        print('hub answers', bool(HfApi().list_models(limit=1) is not None))
        for port in ({echo_port}, 45678):
            try:
                socket.create_connection(('127.0.0.1', port), timeout=2)
                print(port, 'reached')
            except OSError:
                print(port, 'unreachable')
        print('interfaces', sorted(line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:]))
    """)
    api.cancel_job(job_id=first.id)
    assert info.status.stage == "COMPLETED", lines
    assert "hub answers True" in lines
    assert f"{echo_port} unreachable" in lines, "the host's loopback services are out of reach"
    assert "45678 unreachable" in lines, "another job's listener is out of reach"
    assert "interfaces ['lo']" in lines


def test_the_egress_proxy_lets_through_only_its_allow_list(user, echo_port: int) -> None:
    _, api = user
    info, lines = run(api, f"""
        import os, socket, urllib.parse
        proxy = urllib.parse.urlsplit(os.environ['HTTPS_PROXY'])
        for target in ('127.0.0.1:{echo_port}', '127.0.0.1:22', 'example.com:443'):
            with socket.create_connection((proxy.hostname, proxy.port), timeout=10) as conn:
                conn.sendall(f'CONNECT {{target}} HTTP/1.1\\r\\nHost: {{target}}\\r\\n\\r\\n'.encode())
                answer = conn.recv(4096).decode()
                status = answer.split()[1]
                if status == '200' and b'hi' not in answer.encode():
                    answer += conn.recv(4096).decode()
                print(target, status, 'host service says hi' in answer)
    """)
    assert info.status.stage == "COMPLETED", lines
    assert f"127.0.0.1:{echo_port} 200 True" in lines, lines
    assert "127.0.0.1:22 403 False" in lines
    assert "example.com:443 403 False" in lines


def test_a_user_value_given_to_the_sidecar_is_never_one_of_its_options(user) -> None:
    """The output directory comes from a label: '--sole-pusher' there is a directory's name, nothing more."""
    name, api = user
    info, lines = run(api, "import os; print('ran in', os.getcwd())", secrets={"HF_TOKEN": "$HF_TOKEN"},
                      labels={"keephub.repo": f"{name}/option-like", "keephub.output-dir": "--sole-pusher"})
    assert info.status.stage == "COMPLETED", lines
    assert "ran in /workspace" in lines


def test_a_deep_directory_tree_neither_blinds_the_limits_nor_outlives_the_attempt(box: Server, user) -> None:
    """A tree deeper than Python's recursion limit in /workspace and the uv cache made the limit watch fail,
    leaving the job without limits, timeout or cancel."""
    name, api = user
    info, lines = run(api, """
        import os, time
        for root in ('/workspace', '/opt/keephub/uv-cache'):
            os.chdir(root)
            for _ in range(1500):
                os.mkdir('d')
                os.chdir('d')
        print('deep', flush=True)
        time.sleep(3)
        hoard = bytearray(1536 << 20)
        print('allocated', flush=True)
        time.sleep(30)
    """)
    assert info.status.stage == "ERROR" and "exceeded the memory limit of 1 GB" in info.status.message, lines
    assert "deep" in lines
    assert not (agent_root(box) / "workspaces" / f"{info.id}-1").exists(), "the deep workspace is deleted"
    follow_up, lines = run(api, "print('the owner can still run jobs')")
    assert follow_up.status.stage == "COMPLETED" and "the owner can still run jobs" in lines
    sandbox.remove_tree(agent_root(box) / "uv-cache" / name)  # too deep for shutil.rmtree at teardown


def test_the_job_environment_cannot_redirect_the_sidecars_records(box: Server, user) -> None:
    """Found by review: the sidecar sent its credential to HF_ENDPOINT (and through HTTP_PROXY), which the
    job's own environment sets: a listener in the job captured it and could forge records."""
    name, api = user
    listener = textwrap.dedent("""
        import socket, sys
        server = socket.create_server(('127.0.0.1', 9999))
        server.settimeout(60)
        print('listening', flush=True)
        while True:
            client, _ = server.accept()
            if b'khagent_' in client.recv(65536):
                print('CAPTURED an agent credential', flush=True)
            client.close()
    """)
    code = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {listener!r}], " \
           "start_new_session=True); time.sleep(1)"
    trap = "http://127.0.0.1:9999"
    info, lines = run(api, code, secrets={"HF_TOKEN": "$HF_TOKEN"},
                      env={"HF_ENDPOINT": trap, "HTTP_PROXY": trap, "http_proxy": trap, "NO_PROXY": "", "no_proxy": ""},
                      labels={"keephub.repo": f"{name}/redirected", "keephub.output-dir": "out"})
    assert "listening" in lines
    assert not [line for line in lines if "CAPTURED" in line], lines
    job = httpx.get(f"{box.url}/api/jobs/{name}/{info.id}", headers={"authorization": f"Bearer {api.token}"})
    verdict = job.json()["durability"]["verdict"]
    assert "reported no verdict" not in verdict["message"], "the sidecar's verdict reached keephub all the same"


@pytest.mark.skipif(not AS_ROOT, reason="uid separation needs keephub to run as root")
def test_a_job_uid_range_another_host_user_holds_is_refused(tmp_path: Path) -> None:
    """Found by review: a default range inside a subordinate-uid range let that host user map job uids
    (newuidmap) and read jobs' environments."""
    layout = sandbox.SandboxLayout.for_this_host(tmp_path / "data", 200000)
    (tmp_path / "subuid").write_text("ubuntu:100000:65536\nbob:165536:65536\n")
    with pytest.raises(sandbox.SandboxUnavailable, match="overlap /etc/subuid of 'bob'"):
        layout.check_uid_range(tmp_path)
    (tmp_path / "subuid").write_text("ubuntu:100000:65536\n")
    layout.check_uid_range(tmp_path)
