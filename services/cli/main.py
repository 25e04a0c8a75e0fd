"""`wapi-guard` command line: the server (serve, migrate, simulator, demo) and the operator commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from adapters.runtime import run
from services.cli.operator import OPERATOR_COMMANDS, add_operator_commands, run_operator

if TYPE_CHECKING:
    from services.config import Settings


def __getattr__(name: str) -> Any:
    """`SERVE_FLAGS`: CLI flag → Settings field, derived from Settings (services/config.py) on
    first use, so the operator commands never load the settings. Every flag also reads
    WAPIGUARD_<FIELD> (flags win)."""
    if name == "SERVE_FLAGS":
        from services.config import serve_flags

        return serve_flags()
    raise AttributeError(name)


def _add_flags(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, type[Any]]]) -> None:
    from services.config import Settings, env_name

    for flag, (name, kind) in flags.items():
        field = Settings.model_fields[name]
        env = env_name(name)
        parser.add_argument(
            flag,
            dest=name,
            type=kind,
            default=None,
            help=f"{field.description} [env {env}; default {field.default!r}]",
        )


def settings_from(args: argparse.Namespace) -> Settings:
    from services.config import Settings

    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**overrides)


DESCRIPTION = """\
wapi-guard: a delivery-truth gRPC gateway for W-API (WhatsApp) that never reports a fake "sent".

server:    serve, migrate, simulator, demo
operator:  instances, status, send, messages, retry, connect, restart, disconnect, clear-stall,
           webhooks, reconcile, subscriptions (gRPC to a running serve; --server, WAPIGUARD_SERVER)"""

EPILOG = """\
quick start: `wapi-guard demo`; or `wapi-guard simulator --port 8099 --instance DEMO-1:tok:healthy`
and `wapi-guard serve --wapi-base-url http://127.0.0.1:8099 --webhook-secret s3cret`, then the status
page at http://127.0.0.1:8080/status. `wapi-guard COMMAND --help` for each command."""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return f"wapi-guard {installed('wapi-guard')}"
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "wapi-guard (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wapi-guard",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC server (and the webhook bridge)")
    from services.config import serve_flags, serve_switches

    flags = serve_flags()
    _add_flags(serve, flags)
    for switch, (name, const, text) in serve_switches().items():
        serve.add_argument(switch, dest=name, action="store_const", const=const, default=None, help=text)
    migrate = sub.add_parser("migrate", help="apply database migrations and exit")
    _add_flags(migrate, {flag: flags[flag] for flag in ("--database-url", "--db-connect-timeout")})
    sub.add_parser("simulator", help="run the W-API simulator on loopback", add_help=False)
    demo = sub.add_parser("demo", help="end-to-end scenario on SQLite + the simulator (the main job)")
    demo.add_argument("--keep", action="store_true", help="keep the temporary database and print its path")
    demo.add_argument("--json", action="store_true", help="print the outcome as JSON")
    demo.add_argument("--verbose", action="store_true", help="also show the service's JSON log lines (stderr)")
    add_operator_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # without the server's imports
        print(version())
        return 0
    if argv[:1] and argv[0] in OPERATOR_COMMANDS:
        # Operator commands only talk gRPC: skip the server's heavy imports (settings, SQLAlchemy).
        light = argparse.ArgumentParser(prog="wapi-guard")
        add_operator_commands(light.add_subparsers(dest="command", required=True))
        return run_operator(light.parse_args(argv))
    if argv[:1] == ["simulator"]:
        from adapters.simulator.cli import main as simulator_main

        return simulator_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command in OPERATOR_COMMANDS:
        return run_operator(args)
    from pydantic import ValidationError

    try:
        settings = settings_from(args)
    except ValidationError as error:
        print(f"wapi-guard: invalid configuration:\n{error}", file=sys.stderr)
        return 2
    from services.observability.logs import setup_logging

    if args.command == "demo" and not args.verbose:
        setup_logging("ERROR", "text")
    else:
        setup_logging(settings.log_level, settings.log_format)
    if args.command in ("serve", "migrate"):
        from services.rpc.startup import StartupError

        try:
            if args.command == "migrate":
                return run(_migrate(settings), event_loop=settings.event_loop)
            if settings.workers > 1:
                from services.migration import migrate
                from services.rpc.workers import serve_workers

                return serve_workers(settings, argv[1:], migrate=migrate)
            from services.bootstrap import serve

            run(serve(settings), event_loop=settings.event_loop)
        except (StartupError, OSError, ValueError) as error:
            print(f"wapi-guard: {startup_message(error)}", file=sys.stderr)
            return 1
        return 0
    if args.command == "demo":
        from services.cli.demo import run_demo

        code: int = run(run_demo(keep=args.keep, as_json=args.json), event_loop=settings.event_loop)
        return code
    return 2


def startup_message(error: BaseException) -> str:
    """Never an empty line: an exception without text (a bare TimeoutError) still says what it was."""
    from services.observability.logs import scrub

    text = scrub(str(error).strip())
    return text or f"start-up failed: {type(error).__name__}"


async def _migrate(settings: Settings) -> int:
    from services.migration import migrate

    await migrate(settings)
    print("database is at the latest schema")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
