"""`python -m bench.phones`: what the recipient rule (statemachine.phone.canonical_phone, through
statemachine.validation.canonical_send) costs per send, in µs, on this machine.

Three numbers: a number seen for the first time (a libphonenumber parse; the cache is cleared before
each call), a repeated number (the process-wide cache), and the whole request canonicalisation of a
text send to a repeated national number. CPU only, no I/O; bounded by --calls.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from statemachine.domain import MessageKind, Text
from statemachine.phone import canonical_phone
from statemachine.validation import SendRequest, canonical_send

TYPED = ("15 98112-1710", "+55 15 98112-1710", "5515981121710", "12025550123", "0000000000000", "(11) 3234-5678")


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per measurement (default 20000)")
    calls = parser.parse_args().calls

    def uncached() -> None:
        canonical_phone.cache_clear()
        for typed in TYPED:
            canonical_phone(typed, "BR")

    def cached() -> None:
        for typed in TYPED:
            canonical_phone(typed, "BR")

    request = SendRequest("3B6XIW-ZTS923-GEAY6V", "15 98112-1710", "order-42", MessageKind.TEXT, Text("olá"))
    cold = per_call_us(uncached, max(1, calls // 20)) / len(TYPED)
    warm = per_call_us(cached, calls) / len(TYPED)
    whole = per_call_us(lambda: canonical_send(request, "BR"), calls)
    print(f"canonical_phone, new number (libphonenumber parse): {cold:8.2f} µs/call")
    print(f"canonical_phone, repeated number (cached):          {warm:8.2f} µs/call")
    print(f"canonical_send, text to a repeated national number: {whole:8.2f} µs/call")


if __name__ == "__main__":
    main()
