"""Operator commands (`instances`, `messages`, `send`, `status`) talking to a running server. To be written."""

from __future__ import annotations

import argparse

OPERATOR_COMMANDS: frozenset[str] = frozenset()


def add_operator_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Registers the operator subcommands on the `wapi-guard` parser."""


def run_operator(args: argparse.Namespace) -> int:
    raise NotImplementedError(args.command)
