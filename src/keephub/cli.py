"""The `keephub` command: run the server and administer accounts on the same data directory."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from keephub.accounts import AccountError, Accounts
from keephub.config import ConfigError, Settings
from keephub.storage.blobs import BlobStoreUnavailable
from keephub.storage.db import open_database
from keephub.storage.permissions import restrict_new_files


def _settings(args: argparse.Namespace) -> Settings:
    """Settings of the commands that work on the data directory (serve and the admin commands), which keep
    everything they create there private to the account running keephub (umask 077)."""
    restrict_new_files()
    overrides = {"data_dir": args.data_dir, "host": getattr(args, "host", None), "port": getattr(args, "port", None),
                 "public_url": getattr(args, "public_url", None)}
    return Settings.load(config_file=args.config, overrides=overrides)


def _accounts(args: argparse.Namespace) -> Accounts:
    """Accounts on the metadata database alone: these commands need none of the server."""
    return Accounts(open_database(_settings(args)))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from keephub.agent.sandbox import jobs_socket
    from keephub.app import build_app
    from keephub.jobs.scheduler import check_job_settings
    from keephub.storage.blobs import check_blob_settings, trim
    from keephub.storage.db import check_database_url
    from keephub.wire.direct_body import DirectBodyProtocol

    trim.limit_heaps()
    settings = _settings(args)
    check_job_settings(settings)
    check_blob_settings(settings)
    if settings.database_url:
        check_database_url(settings.database_url)
    print(f"keephub serving {settings.data_dir.resolve()} at {settings.base_url}", flush=True)
    print(f"  point clients at it: export HF_ENDPOINT={settings.base_url}", flush=True)
    config = uvicorn.Config(build_app(settings), host=settings.host, port=settings.port, log_level=args.log_level,
                            timeout_graceful_shutdown=5, date_header=False, http=DirectBodyProtocol)
    # Jobs in isolated networks reach the API through this socket, bound into each sandbox.
    uvicorn.Server(config).run(sockets=[config.bind_socket(), jobs_socket(settings.data_dir)])
    return 0


def cmd_user_create(args: argparse.Namespace) -> int:
    _accounts(args).create_user(args.name, fullname=args.fullname or "", email=args.email or "", is_admin=args.admin)
    print(f"created user {args.name}")
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    """Set the password a user signs in to the web pages with: typed twice at a terminal, else one line of stdin
    (never an argument, which other users of the machine could read in the process list)."""
    import getpass

    from keephub.web.sessions import set_password

    if sys.stdin.isatty():
        password = getpass.getpass(f"new password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise AccountError("the two passwords differ; run the command again")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    set_password(_accounts(args).db, args.name, password)
    print(f"password of {args.name} set; other browsers signed in with the old one are signed out")
    return 0


def cmd_org_create(args: argparse.Namespace) -> int:
    _accounts(args).create_org(args.name, owner=args.owner, fullname=args.fullname or "")
    print(f"created organization {args.name} with {args.owner} as admin")
    return 0


def cmd_org_add_member(args: argparse.Namespace) -> int:
    _accounts(args).add_member(args.org, args.user, args.role)
    print(f"{args.user} is now {args.role} in {args.org}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    scopes = [*args.repo, *(f"namespace:{name}" for name in args.namespace)] or None
    lifetime = parse_lifetime(args.expires) if args.expires else None
    accounts = _accounts(args)
    # Counted from now, once the database is open (which may take a moment), so the token lives as long as asked.
    expires_at = datetime.now(timezone.utc) + lifetime if lifetime else None
    secret = accounts.create_token(args.user, name=args.name, role=args.role, expires_at=expires_at, scopes=scopes)
    if args.quiet:
        print(secret)
        return 0
    kind = "fine-grained write" if scopes else args.role
    print(f"{kind} token '{args.name}' for {args.user} (shown once, keep it safe):\n{secret}")
    if scopes:
        print(f"   writes only: {', '.join(scopes)}; reads what {args.user} can read")
    if expires_at:
        print(f"   expires: {expires_at.isoformat(timespec='seconds')}")
    return 0


_LIFETIME = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")


def parse_lifetime(text: str) -> timedelta:
    """`--expires` values: a number and a unit, e.g. 90s, 30m, 12h, 30d."""
    match = _LIFETIME.match(text.strip())
    if not match:
        raise AccountError(f"--expires {text!r} is not a lifetime; use a number and a unit: 90s, 30m, 12h or 30d")
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return timedelta(seconds=int(match.group(1)) * seconds)


def cmd_gc(args: argparse.Namespace) -> int:
    from keephub.app import open_hub

    hub = open_hub(_settings(args))
    report = hub.collect_garbage(dry_run=args.dry_run)
    lfs_report, xet = report["lfs"], report["xet"]
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {lfs_report['objects']} LFS object(s) ({lfs_report['bytes']:,} bytes) and "
          f"{lfs_report['links']} link(s) from repos whose commits no longer reach them")
    print(f"{verb} {xet['xorbs']} xorb(s) ({xet['bytes']:,} bytes) and {xet['files']} unreferenced "
          "Xet file record(s)")
    return 0


def _migration_target(args: argparse.Namespace, source: Settings) -> Settings:
    """The settings of the instance `keephub migrate` fills: --to-config's file (else this instance's settings),
    with --to-database and --to-blobs on top."""
    from dataclasses import replace
    from urllib.parse import urlsplit

    target = Settings.load(config_file=args.to_config, overrides={"data_dir": source.data_dir}) if args.to_config \
        else source
    if args.to_database:
        target = replace(target, database_url=args.to_database)
    if args.to_blobs:
        location = urlsplit(args.to_blobs)
        if location.scheme != "s3" or not location.netloc:
            raise ConfigError(f"--to-blobs {args.to_blobs!r}: name a bucket as s3://BUCKET or s3://BUCKET/PREFIX "
                              "(its endpoint and credentials come from the [blobs] settings or KEEPHUB_BLOB_*)")
        target = replace(target, blob_backend="s3", blob_bucket=location.netloc, blob_prefix=location.path.strip("/"))
    return target


def cmd_migrate(args: argparse.Namespace) -> int:
    from keephub.storage.blobs import check_blob_settings, open_blob_stores
    from keephub.storage.db import Database
    from keephub.storage.relocate import ForeignTarget, copy_metadata, copy_store
    from keephub.xet import formats, hashing

    source = _settings(args)
    if not (args.to_config or args.to_database or args.to_blobs):
        raise ConfigError("keephub migrate needs somewhere to go: --to-database URL, --to-blobs s3://BUCKET, or "
                          "--to-config FILE (the new instance's config)")
    target = _migration_target(args, source)
    same_database = target.sqlalchemy_url == source.sqlalchemy_url
    same_blobs = all(getattr(target, f) == getattr(source, f) for f in
                     ("blob_backend", "blob_endpoint", "blob_bucket", "blob_prefix"))
    if same_database and same_blobs:
        raise ConfigError("the target is this instance itself: give another database_url or blob bucket")

    def say(line: str) -> None:
        print(f"  {line}", flush=True)

    source_db = Database(source.sqlalchemy_url)
    source_db.migrate()  # an instance from an older keephub is brought up to date first
    if not same_blobs:
        check_blob_settings(target)
        print(f"copying bytes to {target.blob_backend} bucket {target.blob_bucket!r}, each object verified", flush=True)
        here, there = open_blob_stores(source), open_blob_stores(target)

        def check_xorb(fh, size: int, key: str) -> None:  # type: ignore[no-untyped-def]
            formats.verify_xorb(fh, size, hashing.from_hex(key))

        for copied in (copy_store("lfs", here.lfs, there.lfs, progress=say),
                       copy_store("xorbs", here.xorbs, there.xorbs, check=check_xorb, progress=say)):
            say(f"{copied.store}: {copied.copied} copied ({copied.bytes_copied:,} bytes), "
                f"{copied.already_there} already there")
    if not same_database:
        target_db = Database(target.sqlalchemy_url)
        try:
            target_db.migrate()
        except Exception as exc:
            raise ConfigError(f"--to-database: cannot use {target_db.engine.url.render_as_string()}: "
                              f"{type(exc).__name__}: {exc}") from None
        print(f"copying metadata to {target_db.engine.url.render_as_string()}", flush=True)
        try:
            tables = copy_metadata(source_db.engine, target_db.engine, progress=say)
        except ForeignTarget as exc:
            raise ConfigError(f"--to-database: {exc}") from None
        short = [t for t in tables if not t.complete]
        if short:
            print("keephub: error: the copy is short in " + ", ".join(f"{t.table} ({t.target_rows} of "
                  f"{t.source_rows} rows)" for t in short) + "; run the same command again", file=sys.stderr)
            return 1
        say(f"{sum(t.source_rows for t in tables)} rows in {len(tables)} tables, all there")
    print("done. Point the new servers at these settings, and give them this instance's keys: keep this data "
          "directory, or copy its signing.key and jobs/secrets.key into theirs, or set signing_key and secrets_key "
          "to those files' contents (docs/operations.md, \"From one machine to several\")", flush=True)
    return 0


def _jobs_api(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """An HfApi for the server named by --endpoint/HF_ENDPOINT, with --token/HF_TOKEN or the saved token."""
    from huggingface_hub import HfApi

    endpoint = args.endpoint or os.environ.get("HF_ENDPOINT") or "http://127.0.0.1:8080"
    return HfApi(endpoint=endpoint.rstrip("/"), token=args.token or None)


def _namespace(api, args: argparse.Namespace) -> str:  # type: ignore[no-untyped-def]
    return args.namespace or api.whoami()["name"]


def cmd_jobs_uv_run(args: argparse.Namespace) -> int:
    from keephub.jobs import client

    api = _jobs_api(args)
    run = client.UvRun(script=args.script, script_args=args.script_args, flavor=args.flavor, timeout=args.timeout,
                       secrets=args.secrets, env=args.env, with_deps=args.with_deps, labels=args.label,
                       attempts=args.attempts, namespace=args.namespace)
    job = client.submit_uv(api, run)
    namespace = job.owner.name
    print(f"job {job.id} submitted: {api.endpoint}/jobs/{namespace}/{job.id}", flush=True)
    if args.detach:
        return 0
    client.follow_logs(api, job.id, namespace)
    final = client.wait_for_job(api, job.id, namespace)
    print(f"job {job.id}: {final.status.stage} ({final.status.message})", flush=True)
    return client.exit_code_for(final.status.stage)


def cmd_jobs_ps(args: argparse.Namespace) -> int:
    from keephub.jobs import client

    api = _jobs_api(args)
    jobs = list(api.list_jobs(namespace=_namespace(api, args)))
    if not args.all:
        jobs = [j for j in jobs if j.status.stage in ("SCHEDULING", "RUNNING")]
    client.print_table(jobs)
    return 0


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    from keephub.jobs import client

    api = _jobs_api(args)
    client.follow_logs(api, args.job_id, _namespace(api, args), tail=args.tail, follow=args.follow)
    return 0


def cmd_jobs_inspect(args: argparse.Namespace) -> int:
    from keephub.jobs import client
    from keephub.jobs.describe import describe

    api = _jobs_api(args)
    document = client.inspect_json(api, args.job_id, _namespace(api, args))
    if args.json:
        print(document)
        return 0
    print(describe(json.loads(document)))
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    api = _jobs_api(args)
    api.cancel_job(job_id=args.job_id, namespace=_namespace(api, args))
    print(f"cancel requested for job {args.job_id}")
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    from huggingface_hub import get_token

    from keephub.mcp import serve_stdio

    serve_stdio(args.endpoint or os.environ.get("HF_ENDPOINT") or "http://127.0.0.1:8080", args.token or get_token())
    return 0


def cmd_preflight(args: argparse.Namespace) -> int:
    """The checklist for a script before submitting it; asks the hub about the target repo unless --offline."""
    from keephub.durability.preflight import preflight
    from keephub.jobs.client import ClientError, resolve_secrets
    from keephub.jobs.spec import parse_timeout

    try:
        source = Path(args.script).read_text(encoding="utf-8")
    except OSError as exc:
        raise ClientError(f"cannot read {args.script}: {exc.strerror}")
    environment = dict(item.partition("=")[::2] for item in args.env)
    secrets = resolve_secrets(args.secrets)
    can_write = repo_files = None
    if not args.offline:
        can_write, repo_files = _hub_answers(args, secrets.get("HF_TOKEN"))
    report = preflight(source, secret_names=sorted(secrets),
                       timeout_seconds=parse_timeout(args.timeout, 1800), can_write=can_write,
                       repo_files=repo_files, keephub_saving=args.keephub_saving, environment=environment)
    print(report.render())
    if report.failed:
        print(f"\n{len(report.failed)} check(s) failed: keephub would refuse this job (422).")
        return 1
    return 0


def _hub_answers(args: argparse.Namespace, hf_token: str | None):  # type: ignore[no-untyped-def]
    """The hub's answers for preflight, for the token the job will push with: a literal HF_TOKEN secret as
    itself, `$HF_TOKEN` (a job token that writes what yours may) as yours."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    from keephub.durability.preflight import WriteAccess
    from keephub.jobs.service import HF_TOKEN_PLACEHOLDER

    api = _jobs_api(args)
    judged = api if hf_token in (None, HF_TOKEN_PLACEHOLDER) else HfApi(endpoint=api.endpoint, token=hf_token)
    me = judged.whoami()
    roles = {me["name"]: "admin", **{org["name"]: org.get("roleInOrg", "read") for org in me.get("orgs", [])}}
    access_token = me.get("auth", {}).get("accessToken", {})
    token_role = access_token.get("role", "read")
    # A fine-grained token writes only the repos and namespaces whoami lists under fineGrained.scoped.
    scoped = {(entry["entity"]["type"], entry["entity"]["name"])
              for entry in access_token.get("fineGrained", {}).get("scoped", [])
              if "repo.write" in entry.get("permissions", [])}

    def can_write(repo: str) -> WriteAccess:
        namespace = repo.split("/")[0]
        if token_role not in ("write", "fineGrained"):
            return WriteAccess(False, f"the token '{access_token.get('displayName', '?')}' is read-only",
                               "pass --secrets HF_TOKEN (a token for the job that writes its target repo), or a "
                               "write token")
        if roles.get(namespace) not in ("write", "admin"):
            return WriteAccess(False, f"user '{me['name']}' has no write access to namespace '{namespace}'")
        covered = ("model", repo) in scoped or any(kind in ("user", "org") and name == namespace
                                                  for kind, name in scoped)
        if token_role == "fineGrained" and not covered:
            return WriteAccess(False, f"the fine-grained token may not write to {repo}",
                               f"use a token that covers model:{repo}")
        if hf_token is None:
            return WriteAccess(None, "the job gets no HF_TOKEN, so it has no token to push with (see HF_TOKEN); "
                               "with --secrets HF_TOKEN it could", "pass --secrets HF_TOKEN")
        return WriteAccess(True)

    def repo_files(repo: str) -> list[str] | None:
        try:
            return api.list_repo_files(repo)
        except (RepositoryNotFoundError, HfHubHTTPError):
            return None

    return can_write, repo_files


def _add_jobs(commands) -> None:  # type: ignore[no-untyped-def]
    jobs = commands.add_parser("jobs", help="run and follow jobs on a keephub server",
                               description="Run scripts as jobs on a keephub server, list them, print and follow "
                                           "their logs, show their records and cancel them.")
    jobs.add_argument("--endpoint", help="keephub URL (default: HF_ENDPOINT, else http://127.0.0.1:8080)")
    jobs.add_argument("--token", help="access token (default: HF_TOKEN or the token saved by `hf auth login`)")
    jobs.add_argument("--namespace", help="user or organization to run in (default: the token's user)")
    actions = jobs.add_subparsers(dest="action", required=True)

    uv = actions.add_parser("uv", help="run a uv script").add_subparsers(dest="uv_action", required=True)
    run = uv.add_parser("run", help="run a local script (sent inline) or a script URL as a job and follow its log",
                        description="Submit the script as a job, print its log as it runs (riding out a keephub "
                                    "restart of up to a minute) and exit with 0 when it completes, 1 otherwise. "
                                    "The job is named after the script (label name=...) unless --label name=... "
                                    "says otherwise.")
    run.add_argument("script", help="local .py file or http(s) URL")
    run.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script")
    run.add_argument("--flavor", default="cpu-basic", help="hardware flavor (see /api/jobs/hardware)")
    run.add_argument("--timeout", help="e.g. 300, 30m, 2h, 1d (default 30m)")
    run.add_argument("--secrets", "-s", action="append", default=[], metavar="NAME[=VALUE]",
                     help="secret env var; HF_TOKEN alone gets a job-scoped token, NAME alone reads your env")
    run.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("--with", dest="with_deps", action="append", default=[], metavar="REQ",
                     help="extra requirement (host packages are reused)")
    run.add_argument("--label", "-l", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--attempts", type=int, default=1, help="attempts before the job is marked ERROR")
    run.add_argument("--detach", "-d", action="store_true", help="print the job id and return")
    run.set_defaults(func=cmd_jobs_uv_run)

    ps = actions.add_parser("ps", help="list running jobs (id, stage, flavor, creation time, script or command)")
    ps.add_argument("--all", "-a", action="store_true", help="include finished jobs")
    ps.set_defaults(func=cmd_jobs_ps)
    logs = actions.add_parser("logs", help="print a job's log; with --follow, until the job ends")
    logs.add_argument("job_id")
    logs.add_argument("--follow", "-f", action="store_true", help="keep streaming until the job ends")
    logs.add_argument("--tail", type=int, help="only the last N lines")
    logs.set_defaults(func=cmd_jobs_logs)
    inspect = actions.add_parser("inspect", help="show a job: stage, script, attempts, token and durability "
                                                 "record (--json: the full record as JSON)")
    inspect.add_argument("job_id")
    inspect.add_argument("--json", action="store_true",
                         help="print the server's full record as JSON instead (with the inline script's payload)")
    inspect.set_defaults(func=cmd_jobs_inspect)
    cancel = actions.add_parser("cancel", help="cancel a job (SIGTERM, grace period, SIGKILL)")
    cancel.add_argument("job_id")
    cancel.set_defaults(func=cmd_jobs_cancel)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keephub", description="Self-hosted hub and jobs where results are never lost.")
    parser.add_argument("--config", type=Path, help="TOML config file (also KEEPHUB_CONFIG)")
    parser.add_argument("--data-dir", type=Path, help="data directory (also KEEPHUB_DATA_DIR; default ./keephub-data)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--public-url", help="URL clients use to reach this server, if not http://host:port")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)

    user = commands.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    user_create = user.add_parser("create", help="create a user")
    user_create.add_argument("name")
    user_create.add_argument("--fullname")
    user_create.add_argument("--email")
    user_create.add_argument("--admin", action="store_true", help="site admin: may act in every namespace")
    user_create.set_defaults(func=cmd_user_create)
    user_passwd = user.add_parser("passwd", help="set the password a user signs in to the web pages with "
                                  "(prompted for, or one line of stdin)")
    user_passwd.add_argument("name")
    user_passwd.set_defaults(func=cmd_user_passwd)

    org = commands.add_parser("org", help="manage organizations").add_subparsers(dest="action", required=True)
    org_create = org.add_parser("create", help="create an organization")
    org_create.add_argument("name")
    org_create.add_argument("--owner", required=True, help="user who becomes the organization's first admin")
    org_create.add_argument("--fullname")
    org_create.set_defaults(func=cmd_org_create)
    org_member = org.add_parser("add-member", help="add a user to an organization, or change their role")
    org_member.add_argument("org")
    org_member.add_argument("user")
    org_member.add_argument("--role", default="read", choices=["read", "write", "admin"])
    org_member.set_defaults(func=cmd_org_add_member)

    token = commands.add_parser("token", help="manage access tokens").add_subparsers(dest="action", required=True)
    token_create = token.add_parser("create", help="create an access token (printed once)")
    token_create.add_argument("user")
    token_create.add_argument("--name", default="default", help="a label for the token")
    token_create.add_argument("--role", default="read", choices=["read", "write"])
    token_create.add_argument("--repo", action="append", default=[], metavar="TYPE:NAMESPACE/NAME",
                              help="fine-grained: the token may write only listed repos and namespaces "
                                   "(model:alice/foo, dataset:alice/d; repeatable); it still reads what the user reads")
    token_create.add_argument("--namespace", action="append", default=[], metavar="NAME",
                              help="fine-grained: the token may write every repo of this user or organization and "
                                   "run jobs there (repeatable)")
    token_create.add_argument("--expires", metavar="LIFETIME", help="the token stops working after e.g. 30d, 12h")
    token_create.add_argument("--quiet", action="store_true", help="print only the token")
    token_create.set_defaults(func=cmd_token_create)
    gc = commands.add_parser("gc", help="delete LFS and Xet storage no repo or bucket holds any more (keeps recent "
                                        "uploads)")
    gc.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    gc.set_defaults(func=cmd_gc)
    migrate = commands.add_parser(
        "migrate", help="copy this instance (metadata and bytes, each object verified) to another database and/or "
                        "blob store, e.g. PostgreSQL and S3; re-run to resume after an interruption")
    migrate.add_argument("--to-database", metavar="URL", help="e.g. postgresql+psycopg://keephub@db/keephub")
    migrate.add_argument("--to-blobs", metavar="s3://BUCKET[/PREFIX]",
                         help="the bucket's endpoint and credentials come from the [blobs] settings / KEEPHUB_BLOB_*")
    migrate.add_argument("--to-config", type=Path, metavar="FILE",
                         help="the new instance's config file (its database_url and [blobs] table)")
    migrate.set_defaults(func=cmd_migrate)
    _add_jobs(commands)
    mcp = commands.add_parser("mcp", help="serve the MCP tools (hf_jobs, hf_whoami, ...) on stdin/stdout for an "
                                          "agent; each call goes to the keephub at --endpoint (see docs/mcp.md)")
    mcp.add_argument("--endpoint", help="keephub URL (default: HF_ENDPOINT, else http://127.0.0.1:8080)")
    mcp.add_argument("--token", help="access token (default: HF_TOKEN, else the token saved by `hf auth login`)")
    mcp.set_defaults(func=cmd_mcp)
    check = commands.add_parser("preflight", help="check a training script before submitting it")
    check.add_argument("script", type=Path)
    check.add_argument("--secrets", "-s", action="append", default=[], metavar="NAME[=VALUE]")
    check.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE")
    check.add_argument("--timeout", help="the job's timeout, e.g. 2h")
    check.add_argument("--keephub-saving", action="store_true",
                       help="keephub's sidecar will push checkpoints (the script need not push itself)")
    check.add_argument("--offline", action="store_true", help="skip the checks that ask the hub")
    check.add_argument("--endpoint", help="keephub URL (default: HF_ENDPOINT)")
    check.add_argument("--token", help="access token (default: HF_TOKEN)")
    check.set_defaults(func=cmd_preflight)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, where a reader that went away is caught, not at exit
        return code
    except (AccountError, ConfigError) as exc:
        print(f"keephub: error: {exc}", file=sys.stderr)
        return 2
    except BlobStoreUnavailable as exc:  # `keephub gc` or `migrate` while S3 is down: a message, not a traceback
        print(f"keephub: error: {exc.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`keephub jobs ps | head`): nothing more to say, and nothing to say it to.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        from huggingface_hub.errors import HfHubHTTPError

        from keephub.jobs.client import ClientError, is_unreachable

        if is_unreachable(exc):
            endpoint = getattr(args, "endpoint", None) or os.environ.get("HF_ENDPOINT") or "http://127.0.0.1:8080"
            print(f"keephub: error: cannot reach keephub at {endpoint} ({type(exc).__name__}: {exc}); check that "
                  "it is running, or point --endpoint / HF_ENDPOINT at it", file=sys.stderr)
            return 2
        if isinstance(exc, (HfHubHTTPError, ClientError)):
            print(f"keephub: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
