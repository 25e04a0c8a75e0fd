"""Operator commands (`instances`, `messages`, `send`, `status`, `subscriptions` and the recovery
loop's) talking to a running server over gRPC, in the operator vocabulary of services/i18n that
the status page shares, so the screen and the terminal say the same thing in the same words (pt-BR
by default).

The root of the command line: each command registers itself on the parser (services/cli/commands/,
one module per command or small family); they share the run's context (services/cli/context.py),
the output helpers (output.py) and the reading of gRPC failures (failures.py). Imports go one way:
operator → commands → failures/output → context.

This module stays light on imports (no database, no aiohttp): it is what `wapi-guard <command>` loads.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import TextIO

from services.cli.commands import holds, instances, messages, optouts, policy, recovery, send, status, subscriptions
from services.cli.context import EXIT_OK, EXIT_USAGE, Context, Subparsers, UsageError, command_kwargs
from services.cli.failures import decode_error, describe, error_json, exit_code

# In the order of `wapi-guard --help`.
MODULES = (instances, messages, send, status, policy, optouts, subscriptions, recovery, holds)

OPERATOR_COMMANDS: frozenset[str] = frozenset(
    {
        "instances",
        "messages",
        "send",
        "status",
        "connect",
        "restart",
        "disconnect",
        "clear-stall",
        "webhooks",
        "subscriptions",
        "policy",
        "optouts",
        "retry",
        "reconcile",
        "held",
    }
)


def add_operator_commands(sub: Subparsers) -> None:
    """Registers the operator subcommands on the `wapi-guard` parser."""
    kwargs = command_kwargs()
    for module in MODULES:
        module.register(sub, kwargs)


async def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import grpc

    ctx = Context(args, out, err)
    try:
        return await args.run(ctx)  # type: ignore[no-any-return]
    except grpc.aio.AioRpcError as error:
        failure = decode_error(error)
        if ctx.json:
            ctx.emit_json(error_json(failure, ctx))
        else:
            ctx.warn(describe(ctx, failure))
        return exit_code(failure)
    finally:
        await ctx.close()


def run_operator(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args, sys.stdout, sys.stderr))
    except UsageError as error:
        print(f"wapi-guard {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `wapi-guard instances | head`: the reader left; the command itself did its job.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
