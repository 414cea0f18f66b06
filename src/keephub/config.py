"""Settings: one frozen object built from a TOML file, the environment and flags, passed explicitly.

Nothing reads the environment at import time; `Settings.load()` is called once by the CLI (or a
test) and the result is handed to `build_app`.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "KEEPHUB_"


class ConfigError(ValueError):
    """A setting has a value keephub cannot use; the message names the setting and the fix."""


@dataclass(frozen=True)
class Settings:
    """Everything a keephub server needs to know. Defaults give the embedded single-machine setup."""

    data_dir: Path = Path("keephub-data")
    host: str = "127.0.0.1"
    port: int = 8080
    # The URL clients reach the server at; used in links the API returns (commit URLs, LFS hrefs).
    public_url: str = ""
    # SQLAlchemy URL; empty means a SQLite file inside data_dir.
    database_url: str = ""
    # Largest regular (non-LFS) file accepted in a commit, and the threshold above which preupload says "lfs".
    max_regular_file_bytes: int = 10 * 1024 * 1024
    # Largest NDJSON commit body (regular files travel inline, base64-encoded). The body is spooled to a temporary
    # file and its files stored a batch at a time, so this bounds disk, not memory.
    max_commit_body_bytes: int = 2 * 1024**3
    # Largest git push body (git smart HTTP): a push's objects are held in memory while they are checked.
    max_push_bytes: int = 64 * 1024 * 1024
    # Part size offered to clients for multipart LFS uploads.
    lfs_multipart_chunk_bytes: int = 64 * 1024 * 1024
    # Multipart is offered only above this size: completing one re-reads and re-hashes every part, which
    # costs more than a single streamed PUT (measured: 0.16x vs 0.3-0.44x of a local copy for 1 GiB).
    lfs_multipart_threshold_bytes: int = 5 * 1024**3
    # Upload URLs are signed and expire after this many seconds.
    upload_url_ttl_seconds: int = 24 * 3600
    # Unfinished uploads older than this are deleted by the janitor.
    stale_upload_seconds: int = 24 * 3600
    # Xet CAS access tokens (handed out by xet-read-token / xet-write-token) expire after this many seconds;
    # clients refresh them on their own.
    xet_token_ttl_seconds: int = 3600
    # Garbage collection keeps every xorb uploaded within this many seconds, referenced or not: clients keep
    # a cache of the shards they uploaded (about three weeks) and build new uploads on the xorbs it names.
    xet_gc_grace_seconds: int = 30 * 24 * 3600
    # Bytes of Xet-stored files kept whole on local disk (data_dir/cache/xet-files) after a first full plain
    # download, so the next one is read from a file instead of rebuilt from xorbs; 0 turns it off.
    xet_file_cache_bytes: int = 4 * 1024**3
    # Entries per page of a tree listing.
    tree_page_size: int = 1000
    # CPU cores jobs may use in total (0: all of this machine's).
    job_cpus: int = 0
    # GPU device ids jobs may use, comma-separated (e.g. "0,1"); empty: no GPU flavors.
    job_gpus: str = ""
    # Memory limit of every job in GB, capping the flavor's own (0: the flavor's).
    job_memory_gb: int = 0
    # Disk (/workspace plus what an attempt adds to its uv cache) of every job in GB, capping the flavor's (0: the flavor's).
    job_disk_gb: int = 0
    # Processes and threads of every job, capping the flavor's (0: the flavor's).
    job_processes: int = 0
    # Started as root, keephub runs each job as host uid job_uid_base + the owner's account id; that range must
    # belong to no one else on the host (keephub checks /etc/passwd, /etc/subuid and /etc/subgid at start).
    job_uid_base: int = 0x70000000
    # "isolated": each attempt in its own network namespace, reaching only keephub and job_egress_allow;
    # "host": jobs share the host's network (for a public_url the sandbox cannot reach, e.g. https).
    job_network: str = "isolated"
    # host:port pairs jobs may reach through the egress proxy (the package index the uv shim installs from).
    job_egress_allow: str = "pypi.org:443,files.pythonhosted.org:443"
    # After SIGTERM (timeout or cancel), a job gets this long to save its work before SIGKILL.
    job_grace_seconds: int = 60
    # Timeout of a job that names none.
    job_default_timeout_seconds: int = 1800
    # Log bytes kept per job attempt; output past it is dropped (the job goes on) and the log says how much.
    job_log_max_bytes: int = 100 * 1024**2
    # Where attempts run: "local" (this machine, in bubblewrap sandboxes) or "slurm" (a Slurm cluster; see
    # job_slurm). Either way each attempt runs keephub's agent, which outlives a restart of this server.
    job_executor: str = "local"
    # The Slurm executor's settings, the [jobs.slurm] table of the config file (docs/jobs.md lists its keys).
    job_slurm: dict = field(default_factory=dict)
    # An attempt whose agent has not reported for this long (counted from this server's start at the
    # earliest) is given up: marked ERROR and retried if attempts remain.
    job_heartbeat_timeout_seconds: int = 90
    # Where large files' bytes live, the [blobs] table of the config file: "local" (data_dir/blobs and
    # data_dir/xorbs), "s3" (an S3-compatible bucket, the blob_* settings below) or "memory" (lost at exit).
    blob_backend: str = "local"
    # The S3 endpoint URL (e.g. http://seaweedfs:8333); empty: AWS S3 itself. Presigned download URLs name it,
    # so clients must reach it too.
    blob_endpoint: str = ""
    blob_bucket: str = ""
    blob_region: str = ""
    # Key prefix inside the bucket ("keephub/"): LFS objects under <prefix>lfs/, xorbs under <prefix>xorbs/.
    blob_prefix: str = ""
    # Credentials; both empty: boto3's own chain (AWS_ACCESS_KEY_ID, ~/.aws/credentials, instance roles).
    blob_access_key_id: str = ""
    blob_secret_access_key: str = field(default="", repr=False)
    # Lifetime of the presigned URLs downloads are redirected to.
    blob_presign_ttl_seconds: int = 300
    # Size of the parts an upload is streamed to S3 in (at least 5 MiB, S3's minimum): each upload in progress
    # holds one part in memory.
    blob_part_bytes: int = 16 * 1024 * 1024
    # Networks (CIDRs, comma-separated) on keephub's own machine or private network that webhooks may POST to;
    # others of that kind are refused, since any user picks a webhook's URL (e.g. "10.1.0.0/16").
    webhook_private_targets: str = ""
    # Secret used to sign upload URLs; generated once and stored in data_dir when empty.
    signing_key: str = field(default="", repr=False)
    # Fernet key that encrypts job secrets at rest; generated once into data_dir/jobs/secrets.key when empty.
    # Servers sharing one database must share it (and signing_key), or they cannot read each other's secrets.
    secrets_key: str = field(default="", repr=False)

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'keephub.db').resolve()}"

    @classmethod
    def load(
        cls,
        config_file: Path | None = None,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> "Settings":
        """Merge, in rising priority: defaults, the TOML file, KEEPHUB_* variables, explicit overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        config_file = config_file or (Path(environ["KEEPHUB_CONFIG"]) if environ.get("KEEPHUB_CONFIG") else None)
        if config_file is not None:
            try:
                with open(config_file, "rb") as fh:
                    values.update(tomllib.load(fh))
            except FileNotFoundError:
                raise ConfigError(f"config file {config_file} does not exist; create it or drop --config")
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {config_file} is not valid TOML: {exc}")
        values = _flatten_tables(values)
        known = {f.name for f in fields(cls)}
        for name in known:
            env_value = environ.get(ENV_PREFIX + name.upper())
            if env_value is not None:
                values[name] = env_value
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(sorted(known))}")
        return cls()._with(values)

    def _with(self, values: Mapping[str, Any]) -> "Settings":
        converted: dict[str, Any] = {}
        for f in fields(self):
            if f.name not in values:
                continue
            raw = values[f.name]
            default = getattr(self, f.name)
            try:
                if isinstance(default, dict):
                    converted[f.name] = _table(f.name, raw)
                elif isinstance(default, Path):
                    converted[f.name] = Path(raw).expanduser()
                elif isinstance(default, int):
                    converted[f.name] = int(raw)
                else:
                    converted[f.name] = str(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"setting {f.name}={raw!r} must be {type(default).__name__}")
        return replace(self, **converted)

    def with_signing_key(self) -> "Settings":
        """Return settings whose signing key is set, creating and persisting one in data_dir if needed."""
        if self.signing_key:
            return self
        key_file = self.data_dir / "signing.key"
        if not key_file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = key_file.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, key_file)
        return replace(self, signing_key=key_file.read_text().strip())


# Tables of the config file that group settings: `[jobs] executor = "slurm"` is the setting job_executor, and
# `[jobs.slurm]` the table job_slurm; `[blobs] backend = "s3"` is blob_backend.
_TABLE_PREFIXES = {"jobs": "job_", "blobs": "blob_"}


def _flatten_tables(values: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in values.items() if k not in _TABLE_PREFIXES or not isinstance(v, dict)}
    for table, prefix in _TABLE_PREFIXES.items():
        for key, value in (values.get(table) or {}).items() if isinstance(values.get(table), dict) else ():
            flat[prefix + key] = value
    return flat


def _table(name: str, raw: Any) -> dict:
    """A table setting: a TOML table, or JSON text in a KEEPHUB_* variable."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise ConfigError(f"setting {name} must be a table (JSON in {ENV_PREFIX}{name.upper()}): {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"setting {name} must be a table, as [{name.replace('job_', 'jobs.', 1)}] in the config file")
    return dict(raw)
