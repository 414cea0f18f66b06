"""keephub against its peers (issue 22), each figure a ratio measured in the same run, runs interleaved (A B A B)
so machine noise hits both sides alike.

1. Downloads with curl of one large random file: keephub's `resolve` for an LFS-stored file (uploaded with
   HF_HUB_DISABLE_XET=1) and for a Xet-stored one (uploaded through hf_xet: rebuilt from xorbs on a first read, then
   read from the copy a whole read keeps, xet/filecache.py), against nginx
   (Debian's, with sendfile) serving the same bytes from a plain file. Then hf_hub_download of the same bytes
   from keephub (through hf_xet, and over plain HTTP with HF_HUB_DISABLE_XET=1) and from nginx (given the two
   headers a resolve answer carries), each into an empty cache in its own process.
2. Small calls on a repo of 1,000 files (model_info, list_repo_files, whoami, get_paths_info, resolve HEAD): the
   median latency with one client thread, and requests per second with 8 client threads, against the same
   client fetching a small static file from nginx (the client's own ceiling); the 8-thread target is twice the
   share of that ceiling the issue measured (SMALL_CALL_RATE_TARGET).
3. Against MLflow (peers_mlflow.py): the seed's checkpoint workload (time and disk), a fresh large upload with
   and without Xet, its download, and small calls, each against MLflow's own client or REST API.

Run:  .venv/bin/python benchmarks/peers_bench.py [--size-mib 512] [--runs 5] [--only downloads|small|mlflow]
Needs nginx (`apt-get install nginx-light`, which scripts/setup.sh does); MLflow it installs itself from PyPI
into a virtualenv of its own (--mlflow-venv). Exit status 1 if a figure fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from report import Figure, add_work_dir_options, at_least, print_table, work_dir

from keephub.devserver import LocalServer, free_port

MIB = 1024 * 1024
LFS_DOWNLOAD_TARGET = 0.9
XET_DOWNLOAD_TARGET = 0.5
XET_REPEATED_READ_TARGET = 0.9
HF_HUB_DOWNLOAD_TARGET = 0.97
SMALL_CALL_P50_MS = 1.5
SMALL_CALL_THREADS = 8
# Issue 22's "at least twice today's requests per second": it measured model_info at 229 req/s with 8 threads
# against this client's ceiling of 1,247 req/s on that machine. Taken as a share of the ceiling measured in
# the same run, so that the target moves with the machine: twice 229 / 1,247.
SMALL_CALL_RATE_TARGET = round(2 * 229 / 1247, 2)
REPO_FILES = 1000

NGINX_CONF = """daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/nginx-tmp;
    proxy_temp_path {work}/nginx-tmp;
    fastcgi_temp_path {work}/nginx-tmp;
    uwsgi_temp_path {work}/nginx-tmp;
    scgi_temp_path {work}/nginx-tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        # What hf_hub_download needs of a resolve answer to download a file from an endpoint: the commit and
        # the file's ETag. Files under /peer/ are hard links laid out as /peer/<repo>/resolve/<commit>/<name>.
        location /peer/ {{
            add_header X-Repo-Commit {commit};
            add_header X-Linked-Etag "{etag}";
        }}
    }}
}}
"""
PEER_COMMIT = "0" * 40
DRIVER = Path(__file__).with_name("peers_driver.py")


class Nginx:
    """Debian's nginx serving `root` on a free port, with its config and temp files in `work`."""

    def __init__(self, work: Path, root: Path, etag: str = "") -> None:
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if binary is None:
            sys.exit("nginx is not installed: run scripts/setup.sh (or apt-get install nginx-light)")
        self.port = free_port()
        (work / "nginx-tmp").mkdir()
        conf = work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=work, port=self.port, root=root, commit=PEER_COMMIT, etag=etag or "-"))
        for folder in (work, root):  # nginx's workers drop root to nobody, who must reach the files
            folder.chmod(0o755)
        self.process = subprocess.Popen([binary, "-p", str(work), "-c", str(conf)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/")
                return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        sys.exit(f"nginx did not start; see {work}/nginx-error.log")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def random_file(path: Path, size_mib: int) -> Path:
    with open(path, "wb") as fh:
        fh.writelines(os.urandom(MIB) for _ in range(size_mib))
    path.chmod(0o644)
    return path


def upload(server: LocalServer, token: str, repo: str, source: Path, xet: bool) -> None:
    """Upload through the real client in its own process: whether it uses Xet is fixed when it is imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_XET", "HF_TOKEN")}
    env |= {"HF_HUB_DISABLE_PROGRESS_BARS": "1", **({} if xet else {"HF_HUB_DISABLE_XET": "1"})}
    code = ("import sys; from huggingface_hub import HfApi; api = HfApi(endpoint=sys.argv[1], token=sys.argv[2]); "
            "api.create_repo(sys.argv[3]); api.upload_file(path_or_fileobj=sys.argv[4], path_in_repo='file.bin', "
            "repo_id=sys.argv[3])")
    subprocess.run([sys.executable, "-c", code, server.url, token, repo, str(source)], check=True, env=env)


def curl_mib_per_s(url: str, size_mib: int, token: str | None) -> float:
    auth = ["-H", f"authorization: Bearer {token}"] if token else []
    started = time.perf_counter()
    subprocess.run(["curl", "-sfL", "-o", "/dev/null", *auth, url], check=True)
    return size_mib / (time.perf_counter() - started)


def hf_download_mib_per_s(endpoint: str, token: str, repo: str, revision: str, size_mib: int, xet: bool,
                          work: Path) -> float:
    """hf_hub_download into an empty cache, timed in its own process (peers_driver.py): whether it uses Xet is
    fixed when huggingface_hub is imported."""
    cache = work / f"hf-cache-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {"HF_HOME": str(cache / "home"), "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DOWNLOAD_TIMEOUT": "300", "HF_HUB_ETAG_TIMEOUT": "60", **({} if xet else {"HF_HUB_DISABLE_XET": "1"})}
    try:
        done = subprocess.run([sys.executable, str(DRIVER), "hf-download", endpoint, token, repo, "file.bin",
                               str(cache / "hub"), revision], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"hf_hub_download from {endpoint} failed:\n{done.stderr[-4000:]}")
        return size_mib / json.loads(done.stdout.strip().splitlines()[-1])["seconds"][0]
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def hf_hub_download_figures(server: LocalServer, token: str, repos: dict[str, str], nginx: Nginx, size_mib: int,
                            runs: int, work: Path) -> list[Figure]:
    """hf_hub_download of the same bytes from keephub (Xet-stored through hf_xet, and both files over plain HTTP
    with HF_HUB_DISABLE_XET=1) and from nginx (plain HTTP, the headers a resolve answer needs): the client is
    the same function, so what differs is the server."""
    peer = f"http://127.0.0.1:{nginx.port}/peer"
    results = interleaved(runs, {
        "nginx": lambda: hf_download_mib_per_s(peer, token, "file", PEER_COMMIT, size_mib, False, work),
        "hf_xet": lambda: hf_download_mib_per_s(server.url, token, repos["xet"], "main", size_mib, True, work),
        "http xet": lambda: hf_download_mib_per_s(server.url, token, repos["xet"], "main", size_mib, False, work),
        "http lfs": lambda: hf_download_mib_per_s(server.url, token, repos["lfs"], "main", size_mib, False, work),
    })
    floor = statistics.median(results["nginx"])
    figures = []
    for kind, label in (("hf_xet", "Xet-stored, hf_xet"), ("http xet", "Xet-stored, HF_HUB_DISABLE_XET=1"),
                        ("http lfs", "LFS-stored, HF_HUB_DISABLE_XET=1")):
        rate = statistics.median(results[kind])
        figures.append(Figure(f"hf_hub_download, {label}", rate, floor, "MiB/s", rate / floor,
                              f">= {HF_HUB_DOWNLOAD_TARGET}x", rate / floor >= HF_HUB_DOWNLOAD_TARGET, digits=0))
    print("hf_hub_download runs (MiB/s): " + "; ".join(f"{k} {spread(v)}" for k, v in results.items()), flush=True)
    return figures


def interleaved(runs: int, contenders: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, measure in contenders.items():
            results[name].append(measure())
    return results


def spread(values: list[float]) -> str:
    middle = statistics.median(values)
    return f"{min(values):.0f}–{max(values):.0f} (±{(max(values) - min(values)) / 2 / middle:.0%})"


def latency_ms(method: str, url: str, headers: dict, body: dict | None, count: int) -> float:
    with httpx.Client(timeout=60) as client:
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            client.request(method, url, headers=headers, json=body).raise_for_status()
            samples.append(time.perf_counter() - started)
    return statistics.median(samples[count // 10 :]) * 1000


def requests_per_s(method: str, url: str, headers: dict, body: dict | None, count: int) -> float:
    def worker() -> None:
        with httpx.Client(timeout=60) as client:
            for _ in range(count):
                client.request(method, url, headers=headers, json=body).raise_for_status()

    threads = [threading.Thread(target=worker) for _ in range(SMALL_CALL_THREADS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return SMALL_CALL_THREADS * count / (time.perf_counter() - started)


def small_call_figures(server: LocalServer, token: str, nginx: Nginx, requests: int) -> list[Figure]:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=server.url, token=token)
    repo = api.create_repo(f"{api.whoami()['name']}/files-{uuid.uuid4().hex[:6]}").repo_id
    api.create_commit(repo, [CommitOperationAdd(f"folder-{i // 100}/file-{i}.txt", f"{i}".encode())
                             for i in range(REPO_FILES)], commit_message=f"{REPO_FILES} files")
    auth = {"authorization": f"Bearer {token}"}
    calls = {
        "model_info": ("GET", f"{server.url}/api/models/{repo}", None),
        "list_repo_files": ("GET", f"{server.url}/api/models/{repo}/tree/main?recursive=true", None),
        "whoami": ("GET", f"{server.url}/api/whoami-v2", None),
        "get_paths_info": ("POST", f"{server.url}/api/models/{repo}/paths-info/main",
                           {"paths": ["folder-3/file-300.txt", "folder-5"]}),
        "resolve HEAD": ("HEAD", f"{server.url}/{repo}/resolve/main/folder-7/file-700.txt", None),
    }
    static = ("GET", nginx.url("small.txt"), None)
    figures = []
    ceiling_p50 = statistics.median(latency_ms(*static[:2], {}, None, requests) for _ in range(3))
    ceiling_rate = statistics.median(requests_per_s(*static[:2], {}, None, requests // 4) for _ in range(3))
    for name, (method, url, body) in calls.items():
        p50 = latency_ms(method, url, auth, body, requests)
        rate = requests_per_s(method, url, auth, body, requests // 4)
        figures.append(Figure(f"{name} p50, 1 thread", p50, ceiling_p50, "ms", p50 / ceiling_p50,
                              f"<= {SMALL_CALL_P50_MS} ms", p50 <= SMALL_CALL_P50_MS))
        figures.append(Figure(f"{name}, {SMALL_CALL_THREADS} threads", rate, ceiling_rate, "req/s",
                              rate / ceiling_rate, f">= {SMALL_CALL_RATE_TARGET}x",
                              rate / ceiling_rate >= SMALL_CALL_RATE_TARGET, digits=0))
    return figures


def main() -> int:
    import peers_mlflow  # here, not at the top: it imports this module's helpers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=at_least(1), default=512, help="size of the downloaded file")
    parser.add_argument("--runs", type=at_least(1), default=5,
                        help="interleaved runs per download and MLflow figure")
    parser.add_argument("--requests", type=at_least(40), default=400, help="requests per small-call sample")
    parser.add_argument("--only", choices=["downloads", "small", "mlflow"], help="one group of figures")
    peers_mlflow.add_options(parser)
    add_work_dir_options(parser)
    args = parser.parse_args()
    # A SIGTERM unwinds like an error, so the servers this run started (keephub, nginx, MLflow) stop with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    with work_dir(parser, args, "keephub-peers-") as work:
        www = work / "www"
        www.mkdir()
        (www / "small.txt").write_text("x" * 200)
        downloads = args.only in (None, "downloads")
        if downloads:  # before nginx starts: its resolve headers name the file's sha256
            for kind in ("lfs", "xet"):
                random_file(www / f"{kind}.bin", args.size_mib)
            xet_sha256 = hashlib.sha256((www / "xet.bin").read_bytes()).hexdigest()
            peer_copy = www / "peer" / "file" / "resolve" / PEER_COMMIT / "file.bin"
            peer_copy.parent.mkdir(parents=True)
            os.link(www / "xet.bin", peer_copy)
            for folder in peer_copy.parents:  # nginx's workers run as nobody
                if folder == www:
                    break
                folder.chmod(0o755)
        nginx = Nginx(work, www, etag=xet_sha256 if downloads else "")
        server = LocalServer(data_dir=work / "data")
        server.start()
        figures: list[Figure] = []
        notes = {} if args.only == "mlflow" else {
            "baseline": "nginx 1.22 (Debian, sendfile on) serving the same bytes from a plain file; for "
                        "small calls, a 200-byte static file (the client's own ceiling)"}
        try:
            name, token = server.user()
            if downloads:
                urls, repos = {}, {}
                for kind in ("lfs", "xet"):
                    repos[kind] = f"{name}/{kind}-{uuid.uuid4().hex[:6]}"
                    upload(server, token, repos[kind], www / f"{kind}.bin", xet=kind == "xet")
                    urls[kind] = f"{server.url}/{repos[kind]}/resolve/main/file.bin"
                kept = server.data_dir / "cache" / "xet-files" / xet_sha256

                def xet_first_read() -> float:
                    """A read that rebuilds the file from its xorbs: the copy a previous read kept is removed first."""
                    kept.unlink(missing_ok=True)
                    return curl_mib_per_s(urls["xet"], args.size_mib, token)

                def xet_repeated_read() -> float:
                    if not kept.exists():  # a whole read keeps a copy, published once it is hashed
                        curl_mib_per_s(urls["xet"], args.size_mib, token)
                        deadline = time.monotonic() + 60
                        while not kept.exists() and time.monotonic() < deadline:
                            time.sleep(0.05)
                    return curl_mib_per_s(urls["xet"], args.size_mib, token)

                results = interleaved(args.runs, {
                    "nginx": lambda: curl_mib_per_s(nginx.url("lfs.bin"), args.size_mib, None),
                    "lfs": lambda: curl_mib_per_s(urls["lfs"], args.size_mib, token),
                    "xet": xet_first_read,
                    "xet again": xet_repeated_read,
                })
                floor = statistics.median(results["nginx"])
                for kind, label, target in (("lfs", "LFS-stored", LFS_DOWNLOAD_TARGET),
                                            ("xet", "Xet-stored, first read", XET_DOWNLOAD_TARGET),
                                            ("xet again", "Xet-stored, read again", XET_REPEATED_READ_TARGET)):
                    rate = statistics.median(results[kind])
                    figures.append(Figure(f"curl download, {label}", rate, floor, "MiB/s",
                                          rate / floor, f">= {target}x", rate / floor >= target, digits=0))
                    notes[f"{kind} runs"] = spread(results[kind]) + " MiB/s"
                notes["nginx runs"] = spread(results["nginx"]) + " MiB/s"
                figures += hf_hub_download_figures(server, token, repos, nginx, args.size_mib, args.runs, work)
            if args.only in (None, "small"):
                figures += small_call_figures(server, token, nginx, args.requests)
            if args.only in (None, "mlflow"):
                mlflow_figures, mlflow_notes = peers_mlflow.mlflow_figures(args, work, server, name, token)
                figures += mlflow_figures
                notes |= mlflow_notes
        finally:
            server.stop()
            nginx.stop()
        print_table(figures, notes)
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
