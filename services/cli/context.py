"""What every operator command shares: the run's context (connection, language, output), the
command line's common flags, exit codes and texts. Commands live in services/cli/commands/, one
module per command or small family; services/cli/operator.py registers them on the root parser.

This module stays light on imports (no database, no aiohttp): it is what `wapi-guard <command>` loads.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeAlias, TypeVar

from services.i18n import CLI_TEXTS, DEFAULT_LANG, LANGS, lookup, normalize_lang

T = TypeVar("T")
# The root parser's subcommands, where each command registers itself.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler = Callable[["Context"], Awaitable[int]]


def say(catalogue: Mapping[str, Mapping[str, str]], lang: str, name: str, /, **values: Any) -> str:
    """A text of one CLI catalogue (services/i18n) in `lang`, formatted with `values`."""
    return lookup(catalogue, lang, name, **values)


def _t(lang: str, name: str, /, **values: Any) -> str:
    return say(CLI_TEXTS, lang, name, **values)


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_FOUND = 4
EXIT_AUTH = 5
EXIT_TRY_LATER = 6
EXIT_SERVER_ERROR = 7

EXIT_CODES_HELP = """\
exit codes:
  0  ok
  1  refused by the server: send blocked or failed (stored as FAILED), an action the instance's
     state does not allow (FAILED_PRECONDITION, ALREADY_EXISTS), or an action that changed nothing
  2  usage error (bad arguments, or rejected by the server as invalid)
  3  server unreachable, or no answer within --timeout (nothing was answered)
  4  instance or message not found
  5  unauthenticated or permission denied (check --token / WAPIGUARD_TOKEN)
  6  try again later: rate limit, action in progress, the server's storage or W-API unavailable
  7  server error or a server that does not know this command

environment: WAPIGUARD_SERVER, WAPIGUARD_TOKEN (prefer it to --token: argv is visible to other
users), WAPIGUARD_LANG. --json prints machine-readable output on stdout, errors included."""

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 20.0
DEFAULT_CONCURRENCY = 8
MAX_PAGE = 500


def common_arguments() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument(
        "--server", default=None, help=f"gRPC address host:port [env WAPIGUARD_SERVER; default {DEFAULT_SERVER}]"
    )
    group.add_argument("--token", default=None, help="API token, sent as 'authorization: Bearer' [env WAPIGUARD_TOKEN]")
    group.add_argument(
        "--lang", default=None, choices=LANGS, help="language of labels and reasons [env WAPIGUARD_LANG; default pt-BR]"
    )
    group.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    group.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help=f"seconds per call [default {DEFAULT_TIMEOUT:g}]"
    )
    group.add_argument("--tls", action="store_true", help="connect with TLS (system CA roots unless --ca-file)")
    group.add_argument("--ca-file", default=None, help="PEM CA bundle that signed the server certificate (TLS)")
    group.add_argument("--cert-file", default=None, help="PEM client certificate chain (mTLS)")
    group.add_argument("--key-file", default=None, help="PEM client private key (mTLS)")
    return common


def command_kwargs() -> dict[str, Any]:
    """What every operator subcommand's parser gets: the common flags and the exit codes' help."""
    return {
        "parents": [common_arguments()],
        "epilog": EXIT_CODES_HELP,
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


RICH_TONES = {
    "green": "green",
    "orange": "dark_orange",
    "yellow": "yellow",
    "red": "red",
    "grey": "bright_black",
    "slate": "cyan",
}


class UsageError(Exception):
    pass


class Context:
    """Connection, output and language of one command run."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.server: str = args.server or os.environ.get("WAPIGUARD_SERVER") or DEFAULT_SERVER
        self.lang: str = args.lang or normalize_lang(os.environ.get("WAPIGUARD_LANG")) or DEFAULT_LANG
        self.json: bool = bool(args.json)
        self.timeout: float = args.timeout
        if not self.timeout or self.timeout <= 0:
            raise UsageError("--timeout must be > 0")
        token = args.token if args.token is not None else os.environ.get("WAPIGUARD_TOKEN", "")
        self.metadata: tuple[tuple[str, str], ...] = (("accept-language", self.lang),)
        if token.strip():
            self.metadata += (("authorization", f"Bearer {token.strip()}"),)
        self.color = not self.json and out.isatty() and not os.environ.get("NO_COLOR")
        self.now = datetime.now(UTC)
        self._channel: Any = None

    def t(self, name: str, /, **values: Any) -> str:
        return _t(self.lang, name, **values)

    def credentials(self) -> Any:
        import grpc

        args = self.args
        if not (args.tls or args.ca_file or args.cert_file or args.key_file):
            return None
        if bool(args.cert_file) != bool(args.key_file):
            raise UsageError("--cert-file and --key-file go together")

        def read(path: str | None) -> bytes | None:
            if not path:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as error:
                raise UsageError(self.t("err_tls", path=path, error=error.strerror or error)) from None

        return grpc.ssl_channel_credentials(read(args.ca_file), read(args.key_file), read(args.cert_file))

    def channel(self) -> Any:
        import grpc

        if self._channel is None:
            credentials = self.credentials()
            if credentials is None:
                self._channel = grpc.aio.insecure_channel(self.server)
            else:
                self._channel = grpc.aio.secure_channel(self.server, credentials)
        return self._channel

    async def call(self, method: Callable[..., Awaitable[T]], request: Any) -> T:
        return await method(request, metadata=self.metadata, timeout=self.timeout)

    def health_stub(self) -> Any:
        from services.api.wapiguard.v1 import instance_health_pb2_grpc

        return instance_health_pb2_grpc.InstanceHealthServiceStub(self.channel())

    def send_stub(self) -> Any:
        from services.api.wapiguard.v1 import send_pb2_grpc

        return send_pb2_grpc.SendServiceStub(self.channel())

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    # output

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def warn(self, text: str) -> None:
        print(f"wapi-guard: {text}", file=self.err)

    def emit_json(self, value: Any) -> None:
        json.dump(value, self.out, ensure_ascii=False, indent=2)
        self.out.write("\n")

    def paint(self, text: str, tone: str) -> str:
        """Colour through rich's styles on a terminal; the text unchanged otherwise."""
        if not self.color:
            return text
        from rich.console import Console
        from rich.text import Text

        console = Console(force_terminal=True, color_system="standard", width=100_000)
        with console.capture() as captured:
            console.print(Text(text, style=RICH_TONES.get(tone, "")), end="", soft_wrap=True)
        return captured.get()
