"""Run the W-API simulator as a process: ``python -m adapters.simulator.cli --instance ID:TOKEN:healthy``.

Prints the bound base URL (``http://HOST:PORT/v1``) as its first stdout line, then serves until
SIGINT or SIGTERM. Drive it over HTTP with the control API under ``/_sim/``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import dataclass

from adapters.runtime import run
from adapters.simulator.app import Simulator
from adapters.simulator.dialects import BEHAVIOURS as DIALECT_BEHAVIOURS
from adapters.simulator.payloads import BEHAVIOURS, STATUS_STYLES


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    instance_id: str
    token: str
    behaviour: str
    phone: str | None


def parse_instance_spec(text: str) -> InstanceSpec:
    """'ID:TOKEN:BEHAVIOUR[:PHONE]' (tokens containing ':' are not supported here)."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or not all(parts):
        raise argparse.ArgumentTypeError(f"expected ID:TOKEN:BEHAVIOUR[:PHONE], got {len(parts)} field(s)")
    if parts[2] not in BEHAVIOURS:
        raise argparse.ArgumentTypeError(f"unknown behaviour {parts[2]!r}; one of {', '.join(BEHAVIOURS)}")
    return InstanceSpec(parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else None)


def parse_provider_instance(text: str) -> tuple[str, InstanceSpec]:
    """'zapi|evolution:ID:TOKEN:BEHAVIOUR[:PHONE]'."""
    provider, _sep, rest = text.partition(":")
    if provider not in ("zapi", "evolution"):
        raise argparse.ArgumentTypeError(f"expected zapi: or evolution: first, got {provider!r}")
    parts = rest.split(":")
    if len(parts) not in (3, 4) or not all(parts):
        raise argparse.ArgumentTypeError("expected PROVIDER:ID:TOKEN:BEHAVIOUR[:PHONE]")
    if parts[2] not in DIALECT_BEHAVIOURS:
        raise argparse.ArgumentTypeError(f"unknown behaviour {parts[2]!r}; one of {', '.join(DIALECT_BEHAVIOURS)}")
    return provider, InstanceSpec(parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wapi-simulator", description="W-API simulator (loopback only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099, help="0 picks a free port")
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument(
        "--instance",
        action="append",
        type=parse_instance_spec,
        default=[],
        metavar="ID:TOKEN:BEHAVIOUR[:PHONE]",
        help="repeatable",
    )
    parser.add_argument(
        "--provider-instance",
        action="append",
        type=parse_provider_instance,
        default=[],
        metavar="zapi|evolution:ID:TOKEN:BEHAVIOUR[:PHONE]",
        help="repeatable: an instance speaking Z-API's or Evolution's dialect on the same port",
    )
    parser.add_argument("--status-style", choices=STATUS_STYLES, default="phone")
    parser.add_argument("--delivered-after", type=float, default=0.05)
    parser.add_argument("--read-after", type=float, default=0.1)
    return parser


async def _serve(args: argparse.Namespace) -> int:
    sim = Simulator(args.webhook_url, delivered_after=args.delivered_after, read_after=args.read_after)
    for spec in args.instance:
        if spec.phone:
            sim.add_instance(spec.instance_id, spec.token, spec.behaviour, spec.phone)
        else:
            sim.add_instance(spec.instance_id, spec.token, spec.behaviour)
        sim.set_status_style(spec.instance_id, args.status_style)
    for provider, spec in args.provider_instance:
        extra = {"phone": spec.phone} if spec.phone else {}
        sim.dialects.add_instance(
            provider, spec.instance_id, spec.token, behaviour=spec.behaviour, webhook_url="", **extra
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await sim.start(args.host, args.port)
    try:
        print(sim.base_url, flush=True)
        print(f"W-API simulator on {sim.base_url} (control API: {sim.root_url}/_sim/)", file=sys.stderr)
        await stop.wait()
    finally:
        await sim.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(_serve(args))
    except OSError as exc:
        print(f"wapi-simulator: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
