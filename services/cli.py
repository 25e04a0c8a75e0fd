"""`wapi-guard` command line: serve, migrate, simulator, demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from services.operator_cli import OPERATOR_COMMANDS, add_operator_commands, run_operator
from services.runtime import run

if TYPE_CHECKING:
    from services.config import Settings

# CLI flag → Settings field. Every flag also reads WAPIGUARD_<FIELD> (flags win).
SERVE_FLAGS: dict[str, tuple[str, type[Any]]] = {
    "--host": ("host", str),
    "--grpc-port": ("grpc_port", int),
    "--http-port": ("http_port", int),
    "--database-url": ("database_url", str),
    "--wapi-base-url": ("wapi_base_url", str),
    "--webhook-secret": ("webhook_secret", str),
    "--api-tokens": ("api_tokens", str),
    "--tls-cert-file": ("tls_cert_file", str),
    "--tls-key-file": ("tls_key_file", str),
    "--tls-client-ca-file": ("tls_client_ca_file", str),
    "--pending-grace": ("pending_grace", float),
    "--send-timeout": ("send_timeout", float),
    "--probe-timeout": ("probe_timeout", float),
    "--probe-interval": ("probe_interval", float),
    "--probe-concurrency": ("probe_concurrency", int),
    "--health-cache-ttl": ("health_cache_ttl", float),
    "--gateway-failure-threshold": ("gateway_failure_threshold", int),
    "--stuck-after": ("stuck_after", float),
    "--stall-threshold": ("stall_threshold", int),
    "--sweep-interval": ("sweep_interval", float),
    "--stall-false-alarm-per-day": ("stall_false_alarm_per_day", float),
    "--detect-interval": ("detect_interval", float),
    "--active-probe-max-age": ("active_probe_max_age", float),
    "--retention-interval": ("retention_interval", float),
    "--retention-events-days": ("retention_events_days", float),
    "--retention-chat-statuses-days": ("retention_chat_statuses_days", float),
    "--retention-transitions-days": ("retention_transitions_days", float),
    "--retention-messages-days": ("retention_messages_days", float),
    "--retention-change-log-days": ("retention_change_log_days", float),
    "--retention-batch": ("retention_batch", int),
    "--shutdown-grace": ("shutdown_grace", float),
    "--db-pool-size": ("db_pool_size", int),
    "--db-timeout": ("db_timeout", float),
    "--db-connect-timeout": ("db_connect_timeout", float),
    "--db-statement-timeout": ("db_statement_timeout", float),
    "--group-commit-window": ("group_commit_window", float),
    "--event-loop": ("event_loop", str),
    "--event-progress-interval": ("event_progress_interval", float),
    "--event-subscriber-buffer": ("event_subscriber_buffer", int),
    "--event-poll-interval": ("event_poll_interval", float),
    "--webhook-retry-schedule": ("webhook_retry_schedule", str),
    "--webhook-timeout": ("webhook_timeout", float),
    "--webhook-concurrency": ("webhook_concurrency", int),
    "--log-level": ("log_level", str),
    "--log-format": ("log_format", str),
    "--public-url": ("public_url", str),
    "--reconcile-interval": ("reconcile_interval", float),
    "--recovery-limit": ("recovery_limit", int),
    "--recovery-window": ("recovery_window", float),
}


def _add_flags(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, type[Any]]]) -> None:
    from services.config import Settings

    for flag, (name, kind) in flags.items():
        field = Settings.model_fields[name]
        env = f"WAPIGUARD_{name.upper()}"
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wapi-guard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC server (and the webhook bridge)")
    _add_flags(serve, SERVE_FLAGS)
    serve.add_argument(
        "--no-migrate",
        dest="migrate_on_start",
        action="store_const",
        const=False,
        default=None,
        help="do not apply migrations at start [env WAPIGUARD_MIGRATE_ON_START]",
    )
    serve.add_argument(
        "--closed-health",
        dest="auth_open_health",
        action="store_const",
        const=False,
        default=None,
        help="with auth on, health and reflection need a token too [env WAPIGUARD_AUTH_OPEN_HEALTH=false]",
    )
    serve.add_argument(
        "--open-metrics",
        dest="metrics_open",
        action="store_const",
        const=True,
        default=None,
        help="with auth on, serve /metrics without a token [env WAPIGUARD_METRICS_OPEN=true]",
    )
    migrate = sub.add_parser("migrate", help="apply database migrations and exit")
    _add_flags(
        migrate,
        {flag: SERVE_FLAGS[flag] for flag in ("--database-url", "--db-connect-timeout")},
    )
    sub.add_parser("simulator", help="run the W-API simulator on loopback", add_help=False)
    demo = sub.add_parser("demo", help="end-to-end scenario on SQLite + the simulator (the main job)")
    demo.add_argument("--keep", action="store_true", help="keep the temporary database and print its path")
    demo.add_argument("--json", action="store_true", help="print the outcome as JSON")
    demo.add_argument("--verbose", action="store_true", help="also show the service's JSON log lines (stderr)")
    add_operator_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    from services.logs import setup_logging

    if args.command == "demo" and not args.verbose:
        setup_logging("ERROR", "text")
    else:
        setup_logging(settings.log_level, settings.log_format)
    if args.command in ("serve", "migrate"):
        from services.startup import StartupError

        try:
            if args.command == "migrate":
                return run(_migrate(settings), event_loop=settings.event_loop)
            from services.server import serve

            run(serve(settings), event_loop=settings.event_loop)
        except (StartupError, OSError, ValueError) as error:
            print(f"wapi-guard: {startup_message(error)}", file=sys.stderr)
            return 1
        return 0
    if args.command == "demo":
        from services.demo import run_demo

        code: int = run(run_demo(keep=args.keep, as_json=args.json), event_loop=settings.event_loop)
        return code
    return 2


def startup_message(error: BaseException) -> str:
    """Never an empty line: an exception without text (a bare TimeoutError) still says what it was."""
    from services.logs import scrub

    text = scrub(str(error).strip())
    return text or f"start-up failed: {type(error).__name__}"


async def _migrate(settings: Settings) -> int:
    from adapters.persistence.db import create_engine
    from adapters.persistence.migrate import upgrade_to_head
    from services.startup import step

    url = settings.database_url
    engine = create_engine(url, pool_size=1, connect_timeout=settings.db_connect_timeout)
    try:
        await step("migrations", url, settings.db_connect_timeout, upgrade_to_head(engine))
    finally:
        await engine.dispose()
    print("database is at the latest schema")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
