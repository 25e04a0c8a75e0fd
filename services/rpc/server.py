"""The gRPC server: builds it, registers the servicers, binds its port. The composition root that
builds what the servicers are given is services/bootstrap.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from services.api.wapiguard.v1 import (
    events_pb2,
    events_pb2_grpc,
    instance_health_pb2,
    instance_health_pb2_grpc,
    optouts_pb2,
    optouts_pb2_grpc,
    recipients_pb2,
    recipients_pb2_grpc,
    send_pb2,
    send_pb2_grpc,
    send_policy_pb2,
    send_policy_pb2_grpc,
    webhook_pb2,
    webhook_pb2_grpc,
)
from services.app.events import ChangeFeed
from services.app.health import Instances
from services.app.held_counts import HeldCounts
from services.app.holds import Holds
from services.app.ingest import Ingest
from services.app.message_queries import MessageQueries
from services.app.optouts import OptOuts
from services.app.principals import parse_tokens
from services.app.recipients import Recipients
from services.app.recovery import Recovery
from services.app.send_policy import SendPolicies
from services.app.sending import Sending
from services.app.webhook_subscriptions import WebhookSubscriptions
from services.config import Settings
from services.observability.logs import register_secret
from services.observability.telemetry import Telemetry
from services.rpc.auth import AuthInterceptor
from services.rpc.decoding import DecodingGuard
from services.rpc.event_servicers import EventServicer
from services.rpc.hold_servicer import HoldingInstanceHealthServicer, HoldingSendServicer
from services.rpc.optout_servicer import OptOutServicer
from services.rpc.recipient_servicer import RecipientServicer
from services.rpc.send_policy_servicer import SendPolicyServicer
from services.rpc.servicers import WebhookServicer
from services.rpc.subscription_servicer import WebhookSubscriptionServicer
from statemachine.ports import ChangeLog

log = logging.getLogger("wapi_guard.server")
# Allocations between two young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 7000

SERVICE_NAMES = (
    send_pb2.DESCRIPTOR.services_by_name["SendService"].full_name,
    webhook_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
    instance_health_pb2.DESCRIPTOR.services_by_name["InstanceHealthService"].full_name,
    events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
    events_pb2.DESCRIPTOR.services_by_name["WebhookSubscriptionService"].full_name,
    send_policy_pb2.DESCRIPTOR.services_by_name["SendPolicyService"].full_name,
    optouts_pb2.DESCRIPTOR.services_by_name["OptOutService"].full_name,
    recipients_pb2.DESCRIPTOR.services_by_name["RecipientService"].full_name,
)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured; mTLS when a client CA is configured too."""
    if not settings.tls_cert_file:
        if settings.tls_key_file or settings.tls_client_ca_file:
            raise ValueError("--tls-key-file / --tls-client-ca-file need --tls-cert-file")
        return None
    if not settings.tls_key_file:
        raise ValueError("--tls-cert-file needs --tls-key-file")
    chain = Path(settings.tls_cert_file).read_bytes()
    key = Path(settings.tls_key_file).read_bytes()
    client_ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


@dataclass(frozen=True)
class Servers:
    """What the servicers are built over (the composition root, services/bootstrap.py, builds it)."""

    instances: Instances
    sending: Sending
    messages: MessageQueries
    ingest: Ingest
    recovery: Recovery
    repo: ChangeLog
    subscriptions: WebhookSubscriptions
    feed: ChangeFeed
    # Protecting the number (docs/send-policy.md): the send policy, opt-outs, number checks.
    send_policies: SendPolicies
    opt_outs: OptOuts
    recipients: Recipients
    # Holds (docs/holds.md): CancelMessage, ReleaseHeld and the held counts.
    holds: Holds | None = None
    held: HeldCounts | None = None  # ListInstances' held counts (one grouped query)


async def build_grpc_server(
    settings: Settings, telemetry: Telemetry, parts: Servers
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """Builds the grpc.aio server, registers every servicer through the decoding guard, binds and
    starts it (health NOT_SERVING until the composition root says otherwise)."""
    interceptors: list[Any] = telemetry.server_interceptors()  # tracing first: it sees auth failures
    if settings.api_tokens:
        tokens = parse_tokens(settings.api_tokens.get_secret_value())
        for _principal, token in tokens:
            register_secret(token.decode())
        interceptors.append(AuthInterceptor(tokens, open_health=settings.auth_open_health))
    server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", int(settings.reuse_port))])
    try:
        health_servicer = await _register(server, settings, parts)
        address = f"{settings.host}:{settings.grpc_port}"
        credentials = server_credentials(settings)
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError:  # grpcio ≥ 1.67 raises where it used to return 0 (port in use)
            port = 0
        if port == 0:
            raise OSError(f"cannot bind gRPC on {settings.host}:{settings.grpc_port}")
        await server.start()
    except BaseException:
        await server.stop(0)
        raise
    return server, health_servicer, port


async def _register(server: grpc.aio.Server, settings: Settings, parts: Servers) -> health.aio.HealthServicer:
    # Every service is registered through the decoding guard: undecodable bytes answer
    # INVALID_ARGUMENT/MALFORMED_REQUEST instead of UNKNOWN plus a traceback each.
    target = cast(grpc.aio.Server, DecodingGuard(server))
    send_pb2_grpc.add_SendServiceServicer_to_server(
        HoldingSendServicer(parts.sending, parts.messages, parts.holds), target
    )
    webhook_pb2_grpc.add_WebhookServiceServicer_to_server(WebhookServicer(parts.ingest), target)
    instance_health_pb2_grpc.add_InstanceHealthServiceServicer_to_server(
        HoldingInstanceHealthServicer(
            parts.instances, parts.recovery, parts.send_policies, parts.holds, parts.opt_outs, parts.held
        ),
        target,
    )
    events_pb2_grpc.add_EventServiceServicer_to_server(
        EventServicer(
            parts.repo,
            parts.feed,
            progress_interval=settings.event_progress_interval,
            stall_timeout=settings.event_subscriber_timeout,
        ),
        target,
    )
    events_pb2_grpc.add_WebhookSubscriptionServiceServicer_to_server(
        WebhookSubscriptionServicer(parts.subscriptions, parts.feed.cursors),
        target,
    )
    optouts_pb2_grpc.add_OptOutServiceServicer_to_server(OptOutServicer(parts.opt_outs), target)
    recipients_pb2_grpc.add_RecipientServiceServicer_to_server(RecipientServicer(parts.recipients), target)
    send_policy_pb2_grpc.add_SendPolicyServiceServicer_to_server(
        SendPolicyServicer(parts.send_policies, parts.instances.cached, parts.opt_outs.lists_changed), target
    )
    health_servicer = health.aio.HealthServicer()
    # The servicer starts with the overall status SERVING: not until the database answers.
    await health_servicer.set(health.OVERALL_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, target)
    # What reflection.enable_server_reflection does for an aio server (it tells one by type).
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)), target
    )
    return health_servicer
