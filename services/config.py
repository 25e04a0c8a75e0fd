"""Configuration, declared once: every field of `Settings` is a `serve` flag (`--field-name`, or the
switch named in its `json_schema_extra`) and a WAPIGUARD_<FIELD> environment variable (the flag
wins). The flags are derived from the fields (`serve_flags`); the README's configuration table is
checked against the parser by tests/unit/test_config_table.py.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Embedded SQLite next to the process (one process); production sets a postgresql+asyncpg:// URL.
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///wapi-guard.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAPIGUARD_", extra="ignore")  # ENV_PREFIX

    host: str = Field("127.0.0.1", description="Listen address of the gRPC and HTTP servers.")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one (printed).")
    http_port: int = Field(
        8080, ge=-1, le=65535, description="Webhook bridge HTTP port; 0 picks a free one, -1 disables it."
    )
    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy async URL (sqlite+aiosqlite or postgresql+asyncpg); postgresql://, postgres://, "
        "postgresql+psycopg:// and sqlite:// are read as these.",
    )
    wapi_base_url: str = Field("https://api.w-api.app/v1", description="W-API REST base URL.")
    zapi_base_url: str = Field(
        "https://api.z-api.io", description="Z-API REST base URL (an instance's own base_url wins)."
    )
    webhook_secret: SecretStr | None = Field(
        None, description="Secret W-API must put in the webhook URL path (/webhooks/wapi/<secret>)."
    )
    api_tokens: SecretStr | None = Field(
        None,
        description="Caller tokens, 'name:token[@INSTANCE|INSTANCE],…' (bearer in gRPC metadata). Unset: open API.",
    )
    auth_open_health: bool = Field(
        True,
        description="Leave grpc.health.v1 and reflection open when auth is on.",
        json_schema_extra={
            "switch": "--closed-health",
            "help": "with auth on, health and reflection need a token too [env WAPIGUARD_AUTH_OPEN_HEALTH=false]",
        },
    )
    metrics_open: bool = Field(
        False,
        description="Serve /metrics without a token even when auth is on (for scrapers that send none).",
        json_schema_extra={
            "switch": "--open-metrics",
            "help": "with auth on, serve /metrics without a token [env WAPIGUARD_METRICS_OPEN=true]",
        },
    )
    insecure: bool = Field(
        False,
        description="Serve on a non-loopback address without API tokens or a webhook secret (refused otherwise).",
        json_schema_extra={
            "switch": "--insecure",
            "help": "serve on a non-loopback address without --api-tokens / --webhook-secret "
            "[env WAPIGUARD_INSECURE=true]",
        },
    )
    tls_cert_file: str | None = Field(None, description="PEM certificate chain: serve gRPC over TLS.")
    tls_key_file: str | None = Field(None, description="PEM private key for --tls-cert-file.")
    tls_client_ca_file: str | None = Field(None, description="PEM CA bundle: require client certificates (mTLS).")
    pending_grace: float = Field(
        60.0, gt=0, description="Seconds a message may stay PENDING before the reconciler marks OUTCOME_UNKNOWN."
    )
    send_timeout: float = Field(15.0, gt=0, description="Seconds for one provider send call.")
    probe_timeout: float = Field(10.0, gt=0, description="Seconds for one status probe.")
    probe_interval: float = Field(60.0, ge=0, description="Seconds between background probes (0 disables).")
    probe_concurrency: int = Field(16, ge=1, description="Probes in flight at once.")
    health_cache_ttl: float = Field(2.0, ge=0, description="Max staleness of the preflight's health cache.")
    gateway_failure_threshold: int = Field(
        3, ge=1, description="Consecutive provider gateway failures on sends before DEGRADED."
    )
    stuck_after: float = Field(300.0, gt=0, description="Seconds in SENT without delivery before a message is stuck.")
    stall_threshold: int = Field(
        3, ge=1, description="Stuck messages in a row (no delivery between) that stall an instance."
    )
    sweep_interval: float = Field(15.0, ge=0, description="Seconds between stuck-message sweeps (0 disables).")
    stall_false_alarm_per_day: float = Field(
        1e-4, gt=0, lt=1, description="Accepted false DELIVERY_STALLED blocks per instance-day of healthy traffic."
    )
    detect_interval: float = Field(
        1.0, ge=0, description="Seconds between stall assessments of sending instances (0 disables the learned test)."
    )
    active_probe_max_age: float = Field(
        3.0, gt=0, description="Max age (s) of a sending instance's probed health (one probe in flight each)."
    )
    retention_interval: float = Field(
        3600.0, ge=0, description="Seconds between retention runs (one replica at a time; 0 disables pruning)."
    )
    retention_events_days: float = Field(
        30.0, ge=2, description="Days raw webhook events are kept (they are the re-delivery dedupe records)."
    )
    retention_chat_statuses_days: float = Field(30.0, ge=1, description="Days chat-status events are kept.")
    retention_transitions_days: float = Field(90.0, ge=1, description="Days instance state transitions are kept.")
    retention_messages_days: float = Field(
        90.0,
        ge=1,
        description="Days terminal messages (delivered, read, played, failed) are kept after their last change.",
    )
    retention_change_log_days: float = Field(7.0, ge=1, description="Days change-log entries are kept.")
    retention_batch: int = Field(1000, ge=10, le=10000, description="Rows deleted per retention statement.")
    shutdown_grace: float = Field(
        20.0, ge=0, description="Seconds in-flight RPCs get on SIGTERM (longer than --send-timeout)."
    )
    db_pool_size: int = Field(
        10, ge=1, le=200, description="PostgreSQL connections per process (plus as many overflow). SQLite uses one."
    )
    db_timeout: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Max seconds one storage call of a request (gRPC call or webhook post) may take before it "
        "answers STORAGE_UNAVAILABLE; in a gRPC call also at most 40 percent of the caller's remaining deadline.",
    )
    db_connect_timeout: float = Field(5.0, gt=0, le=120, description="Seconds to open one database connection.")
    db_statement_timeout: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="PostgreSQL: seconds any one statement may run (server statement_timeout and asyncpg "
        "command_timeout), background work included; 0 = no limit. Migrations run without it.",
    )
    group_commit_window: float = Field(
        0.005,
        ge=0,
        le=0.1,
        description="Seconds a group-commit batch waits to fill, only while a batch is already in flight (0 = off).",
    )
    event_loop: str = Field(
        "uvloop", pattern="^(uvloop|asyncio)$", description="uvloop (default where installed) or asyncio."
    )
    event_progress_interval: float = Field(
        10.0, gt=0, le=3600, description="Seconds between progress (bookmark) messages on an idle event stream."
    )
    event_subscriber_buffer: int = Field(
        5000,
        ge=10,
        le=100_000,
        description="Newest changes kept in memory for all event streams; a stream behind them reads the log itself.",
    )
    event_subscriber_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a stream may read nothing while events wait for it; then it is cut off as too slow.",
    )
    event_poll_interval: float = Field(
        0.02, gt=0, le=10, description="Seconds between change-log reads when no LISTEN/NOTIFY wake-up is available."
    )
    webhook_retry_schedule: str = Field(
        "5,30,120,600,1800,3600,7200,14400,28800,43200",
        pattern=r"^\s*[0-9.]+(\s*,\s*[0-9.]+)*\s*$",
        description="Seconds before each webhook retry (jitter ±20 percent); its length is the retry count.",
    )
    webhook_timeout: float = Field(10.0, gt=0, le=120, description="Seconds a webhook receiver has to answer 2xx.")
    webhook_concurrency: int = Field(16, ge=1, le=1000, description="Outbound webhook posts in flight per replica.")
    webhook_allow_private: bool = Field(
        False,
        description="Let webhook subscription URLs point at loopback, private and link-local addresses "
        "(tests, single-host setups); refused by default.",
        json_schema_extra={
            "switch": "--webhook-allow-private",
            "help": "allow subscription URLs on loopback/private/link-local addresses "
            "[env WAPIGUARD_WEBHOOK_ALLOW_PRIVATE=true]",
        },
    )
    log_level: str = Field("INFO", description="Python log level.")
    log_format: str = Field("json", pattern="^(json|text)$", description="json (one object per line) or text.")
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="Public base URL of the webhook bridge (e.g. https://guard.example.com): W-API's webhooks are "
        "pointed at <url>/webhooks/wapi/<secret> on registration, on demand and after every reconnection.",
    )
    reconcile_interval: float = Field(
        300.0, ge=0, description="Seconds between replays of W-API's webhook log for every instance (0 disables)."
    )
    recovery_limit: int = Field(
        5, ge=1, description="Recovery actions (QR, pairing code, restart, …) per instance per window."
    )
    recovery_window: float = Field(600.0, gt=0, description="Seconds of the recovery rate-limit window.")
    default_phone_region: str = Field(
        "BR",
        pattern="^[A-Za-z]{2}$",
        description="Region (ISO 3166 code) whose national numbers recipients and pairing phones may be typed in "
        "(15 98112-1710 with BR); every phone is stored and sent as its E.164 digits.",
    )
    recovery_probe_interval: float = Field(
        2.5,
        ge=0,
        description="Seconds between the short probes right after a QR code, pairing code or restart, until the "
        "session reconnects with a phone (0 disables).",
    )
    recovery_probe_for: float = Field(
        120.0, gt=0, le=900, description="Seconds those short probes go on at most after one recovery action."
    )
    require_webhooks: bool = Field(
        False,
        description="Block sends (WEBHOOKS_UNCONFIGURED) from an instance whose deliveries cannot be confirmed.",
        json_schema_extra={
            "switch": "--require-webhooks",
            "help": "block sends from an instance whose W-API webhooks are not confirmed to reach this service "
            "[env WAPIGUARD_REQUIRE_WEBHOOKS=true]",
        },
    )
    webhook_evidence_window: float = Field(
        86400.0,
        gt=0,
        description="Seconds a receipt from W-API proves an instance's webhooks reach this service, whatever was "
        "configured.",
    )
    webhook_check_interval: float = Field(
        900.0,
        ge=0,
        description="Seconds between read-backs of every instance's W-API webhook URLs (needs --public-url; "
        "0 disables).",
    )
    # The warm-up policy a number declared new (RegisterInstance.new_number) gets (docs/send-policy.md).
    new_number_min_interval: float = Field(
        3.0, ge=0, le=3600, description="Seconds between two sends of a new number (plus the jitter)."
    )
    new_number_jitter: float = Field(
        5.0, ge=0, le=3600, description="Random extra seconds, up to this, after each send of a new number."
    )
    new_number_new_per_hour: int = Field(
        15, ge=0, description="New recipients per hour of a new number (0: no hourly budget)."
    )
    new_number_warmup_start: int = Field(
        20, ge=0, description="New recipients per day of a new number on its first day of warm-up."
    )
    new_number_warmup_target: int = Field(
        200, ge=1, description="New recipients per day of a new number at the end of its warm-up."
    )
    new_number_warmup_days: int = Field(
        14, ge=0, le=365, description="Days a new number's daily new-recipient budget climbs from start to target."
    )
    optout_keywords: str = Field(
        "SAIR,PARAR,STOP,CANCELAR",
        description="Comma-separated words that, as a customer's whole message (any case, accents, punctuation), "
        "opt them out of the instance's messages.",
    )
    recipient_check_ttl: float = Field(
        2592000.0,
        gt=0,
        description="Seconds a number check's answer (on WhatsApp or not) is kept and trusted by sends and "
        "CheckRecipients.",
    )
    hold_interval: float = Field(
        0.5, gt=0, le=60, description="Seconds between two looks of the hold dispatcher for due held messages."
    )
    hold_batch: int = Field(100, ge=1, le=10000, description="Held messages claimed per dispatcher batch.")
    hold_recheck: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds before a message held for an unhealthy instance is looked at again (a "
        "reconnection wakes it sooner).",
    )
    migrate_on_start: bool = Field(
        True,
        description="Apply migrations at serve start.",
        json_schema_extra={
            "switch": "--no-migrate",
            "help": "do not apply migrations at start [env WAPIGUARD_MIGRATE_ON_START]",
        },
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes sharing the gRPC and HTTP ports (SO_REUSEPORT), one database pool each; "
        "PostgreSQL only.",
    )
    reuse_port: bool = Field(
        False,
        description="Bind the gRPC and HTTP ports with SO_REUSEPORT (set for each process by --workers).",
        json_schema_extra={
            "switch": "--reuse-port",
            "help": "bind the ports with SO_REUSEPORT, to share them with other serve processes "
            "[env WAPIGUARD_REUSE_PORT]",
        },
    )

    @field_validator("default_phone_region")
    @classmethod
    def _known_region(cls, region: str) -> str:
        from statemachine.phone import supported_region

        region = region.upper()
        if not supported_region(region):
            raise ValueError(f"{region} is not a region libphonenumber knows (e.g. BR, PT, US)")
        return region


ENV_PREFIX = "WAPIGUARD_"


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _extra(field: str) -> dict[str, Any]:
    extra = Settings.model_fields[field].json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def _flag_type(annotation: Any) -> type[Any]:
    """The argparse type of a field: its annotation without None; a secret is read as text."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return str if annotation is SecretStr else typing.cast(type[Any], annotation)


def serve_flags() -> dict[str, tuple[str, type[Any]]]:
    """`--flag` → (field, type) for every valued setting, in declaration order."""
    return {
        "--" + name.replace("_", "-"): (name, _flag_type(info.annotation))
        for name, info in Settings.model_fields.items()
        if "switch" not in _extra(name)
    }


def serve_switches() -> dict[str, tuple[str, bool, str]]:
    """`--switch` → (field, value, help) for the boolean settings a flag flips from their default."""
    return {
        str(extra["switch"]): (name, not Settings.model_fields[name].default, str(extra["help"]))
        for name in Settings.model_fields
        if "switch" in (extra := _extra(name))
    }
