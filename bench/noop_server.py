"""The ceiling for any RPC on this box: grpc.aio unary handlers that do nothing.

Same services and message types as wapi-guard, so serialization costs are the same.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc

from adapters.runtime import run
from services.api.wapiguard.v1 import common_pb2, send_pb2, send_pb2_grpc, webhook_pb2, webhook_pb2_grpc

_MESSAGE = common_pb2.Message(id="00000000-0000-0000-0000-000000000000", state=common_pb2.MESSAGE_STATE_SENT)


class NoopSend(send_pb2_grpc.SendServiceServicer):
    async def SendMessage(self, request: Any, context: Any) -> common_pb2.Message:
        return _MESSAGE

    GetMessage = RetryMessage = CancelMessage = SendMessage

    async def ListMessages(self, request: Any, context: Any) -> Any:
        return send_pb2.ListMessagesResponse()

    async def ReleaseHeld(self, request: Any, context: Any) -> Any:
        return send_pb2.ReleaseHeldResponse()


class NoopWebhook(webhook_pb2_grpc.WebhookServiceServicer):
    async def IngestEvent(self, request: Any, context: Any) -> webhook_pb2.IngestEventResponse:
        return webhook_pb2.IngestEventResponse()

    async def IngestEvents(self, request: Any, context: Any) -> webhook_pb2.IngestEventsResponse:
        return webhook_pb2.IngestEventsResponse()


async def main() -> None:
    server = grpc.aio.server()
    send_pb2_grpc.add_SendServiceServicer_to_server(NoopSend(), server)
    webhook_pb2_grpc.add_WebhookServiceServicer_to_server(NoopWebhook(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"noop serving gRPC on 127.0.0.1:{port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await server.stop(0)


if __name__ == "__main__":
    run(main())  # the same event loop as the service: the baseline measures gRPC, not the loop
