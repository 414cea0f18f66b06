"""The `keephub` command: run the server and administer accounts on the same data directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keephub.accounts import AccountError
from keephub.config import ConfigError, Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {"data_dir": args.data_dir, "host": getattr(args, "host", None), "port": getattr(args, "port", None),
                 "public_url": getattr(args, "public_url", None)}
    return Settings.load(config_file=args.config, overrides=overrides)


def _accounts(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from keephub.app import open_hub

    return open_hub(_settings(args)).accounts


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from keephub.app import build_app

    settings = _settings(args)
    print(f"keephub serving {settings.data_dir.resolve()} at {settings.base_url}", flush=True)
    print(f"  point clients at it: export HF_ENDPOINT={settings.base_url}", flush=True)
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level=args.log_level,
                timeout_graceful_shutdown=5)
    return 0


def cmd_user_create(args: argparse.Namespace) -> int:
    _accounts(args).create_user(args.name, fullname=args.fullname or "", email=args.email or "", is_admin=args.admin)
    print(f"created user {args.name}")
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
    secret = _accounts(args).create_token(args.user, name=args.name, role=args.role)
    if args.quiet:
        print(secret)
    else:
        print(f"{args.role} token '{args.name}' for {args.user} (shown once, keep it safe):\n{secret}")
    return 0


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
    token_create.add_argument("--quiet", action="store_true", help="print only the token")
    token_create.set_defaults(func=cmd_token_create)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (AccountError, ConfigError) as exc:
        print(f"keephub: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
