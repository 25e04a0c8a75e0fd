"""A faithful W-API stand-in on loopback: same paths, auth and payload shapes (see docs/wapi-contract.md).

sim = Simulator(webhook_url="http://127.0.0.1:9000/hook")
await sim.start()                      # sim.base_url -> "http://127.0.0.1:PORT/v1"
sim.add_instance("3B6XIW-ZTS923-GEAY6V", "token", behaviour="healthy")
...
await sim.stop()
"""

from adapters.simulator.app import SimInstance, SimRequest, Simulator, build_app
from adapters.simulator.payloads import BEHAVIOURS, EMIT_KINDS, GATEWAY_VARIANTS, STATUS_STYLES
from adapters.simulator.receiver import WebhookReceiver

__all__ = [
    "BEHAVIOURS",
    "EMIT_KINDS",
    "GATEWAY_VARIANTS",
    "STATUS_STYLES",
    "SimInstance",
    "SimRequest",
    "Simulator",
    "WebhookReceiver",
    "build_app",
]
