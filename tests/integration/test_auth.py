"""Caller authentication: bearer tokens (constant-time), instance scopes, open health, TLS/mTLS."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api.wapiguard.v1 import instance_health_pb2, instance_health_pb2_grpc, send_pb2, webhook_pb2
from tests.integration.harness import Harness, rich_error, start_harness, stop_harness

ADMIN = "admin-token-0123456789abcdef"
SCOPED = "crm-token-abcdef0123456789"
TOKENS = f"admin:{ADMIN},crm:{SCOPED}@shop-1"


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def guard(database_url: str) -> AsyncIterator[Harness]:
    harness = await start_harness(database_url, api_tokens=TOKENS)
    try:
        yield harness
    finally:
        await stop_harness(harness)


async def register(guard: Harness, instance_id: str) -> None:
    await guard.health.RegisterInstance(
        instance_health_pb2.RegisterInstanceRequest(instance_id=instance_id, token="wapi-tok-1234567", skip_probe=True),
        metadata=bearer(ADMIN),
    )


def text(instance_id: str) -> send_pb2.SendMessageRequest:
    return send_pb2.SendMessageRequest(instance_id=instance_id, to="5515981121710", text=send_pb2.TextContent(body="x"))


@pytest.mark.parametrize(
    "metadata", [(), (("authorization", "Bearer wrong-token-xxxxxxxxxxxx"),), (("authorization", f"Basic {ADMIN}"),)]
)
async def test_calls_without_a_valid_token_are_unauthenticated(guard: Harness, metadata: tuple) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.health.ListInstances(instance_health_pb2.ListInstancesRequest(), metadata=metadata)
    error = rich_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(text("shop-1"), metadata=metadata)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    stream = guard.health.WatchInstances(instance_health_pb2.WatchInstancesRequest(), metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_valid_token_passes_and_health_stays_open(guard: Harness) -> None:
    await register(guard, "shop-1")
    listed = await guard.health.ListInstances(instance_health_pb2.ListInstancesRequest(), metadata=bearer(ADMIN))
    assert [i.instance_id for i in listed.instances] == ["shop-1"]
    health = health_pb2_grpc.HealthStub(guard.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_scoped_token_sees_and_acts_only_on_its_instances(guard: Harness) -> None:
    await register(guard, "shop-1")
    await register(guard, "shop-2")
    listed = await guard.health.ListInstances(instance_health_pb2.ListInstancesRequest(), metadata=bearer(SCOPED))
    assert [i.instance_id for i in listed.instances] == ["shop-1"]
    for call in (
        guard.send.SendMessage(text("shop-2"), metadata=bearer(SCOPED)),
        guard.health.GetInstanceHealth(
            instance_health_pb2.GetInstanceHealthRequest(instance_id="shop-2"), metadata=bearer(SCOPED)
        ),
        guard.send.ListMessages(send_pb2.ListMessagesRequest(instance_id="shop-2"), metadata=bearer(SCOPED)),
        guard.webhooks.IngestEvent(webhook_pb2.IngestEventRequest(payload=b"{}"), metadata=bearer(SCOPED)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert rich_error(caught.value).code is grpc.StatusCode.PERMISSION_DENIED
    # Its own instance works (blocked by health, not by auth).
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(text("shop-1"), metadata=bearer(SCOPED))
    assert rich_error(caught.value).reason == "HEALTH_UNKNOWN"
    mine = await guard.send.ListMessages(send_pb2.ListMessagesRequest(), metadata=bearer(SCOPED))
    assert [m.instance_id for m in mine.messages] == ["shop-1"]
    # A message of another instance is answered like an unknown id: neither the id nor its owner leaks.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(text("shop-2"), metadata=bearer(ADMIN))
    other = rich_error(caught.value).metadata["message_id"]

    async def get(mid: str) -> object:
        return await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id=mid), metadata=bearer(SCOPED))

    async def retry(mid: str) -> object:
        return await guard.send.RetryMessage(send_pb2.RetryMessageRequest(message_id=mid), metadata=bearer(SCOPED))

    for lookup in (get, retry):
        answers = []
        for mid in (other, "no-such-message-id"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await lookup(mid)
            error = rich_error(caught.value)
            assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "MESSAGE_NOT_FOUND")
            assert "shop-2" not in (caught.value.details() or "")
            assert "shop-2" not in error.metadata.values()
            answers.append(error.metadata.keys())
        assert answers[0] == answers[1]


async def test_register_with_an_unknown_plan_is_a_field_violation(guard: Harness) -> None:
    request = instance_health_pb2.RegisterInstanceRequest(
        instance_id="shop-9", token="wapi-tok-1234567", skip_probe=True
    )
    request.plan = 7  # type: ignore[assignment]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.health.RegisterInstance(request, metadata=bearer(ADMIN))
    error = rich_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert "plan" in error.violations
    listed = await guard.health.ListInstances(instance_health_pb2.ListInstancesRequest(), metadata=bearer(ADMIN))
    assert "shop-9" not in [i.instance_id for i in listed.instances]


async def test_tokens_never_reach_the_logs(guard: Harness, caplog: pytest.LogCaptureFixture) -> None:
    from services.observability.logs import JsonFormatter

    caplog.set_level(logging.DEBUG)
    await register(guard, "shop-1")
    logging.getLogger("wapi_guard.test").warning("caller sent Bearer %s and %s", ADMIN, SCOPED)
    rendered = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert ADMIN not in rendered
    assert SCOPED not in rendered
    assert "***" in rendered


def _self_signed(
    directory: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, key


async def test_tls_and_mutual_tls(database_url: str, tmp_path: Path) -> None:
    ca = _self_signed(tmp_path, "ca")
    _self_signed(tmp_path, "server", ca)
    _self_signed(tmp_path, "client", ca)
    harness = await start_harness(
        database_url,
        tls_cert_file=str(tmp_path / "server.crt"),
        tls_key_file=str(tmp_path / "server.key"),
        tls_client_ca_file=str(tmp_path / "ca.crt"),
    )
    port = harness.app.grpc_port
    options = (("grpc.ssl_target_name_override", "localhost"),)
    try:
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=(tmp_path / "ca.crt").read_bytes(),
            private_key=(tmp_path / "client.key").read_bytes(),
            certificate_chain=(tmp_path / "client.crt").read_bytes(),
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", with_cert, options=options) as channel:
            stub = instance_health_pb2_grpc.InstanceHealthServiceStub(channel)
            reply = await stub.ListInstances(instance_health_pb2.ListInstancesRequest(), timeout=5)
            assert list(reply.instances) == []
        no_cert = grpc.ssl_channel_credentials(root_certificates=(tmp_path / "ca.crt").read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", no_cert, options=options) as channel:
            stub = instance_health_pb2_grpc.InstanceHealthServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListInstances(instance_health_pb2.ListInstancesRequest(), timeout=5)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = instance_health_pb2_grpc.InstanceHealthServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ListInstances(instance_health_pb2.ListInstancesRequest(), timeout=2)
    finally:
        await stop_harness(harness)
