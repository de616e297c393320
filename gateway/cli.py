"""The ``skein`` command: serve the gateway, chat from a terminal, inspect rooms."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ErrorCode, GatewayError

if TYPE_CHECKING:
    from gateway.server.config import ServerConfig

__all__ = ["main"]

ENGINES = ("aioquic", "qh3")  # as gateway.engine.ENGINES, which can't be imported before the choice

DEFAULT_URL = "https://127.0.0.1:4433/v1/chat"
DEFAULT_CA = Path("certs/ca.pem")


def _serve(args: argparse.Namespace) -> int:
    """``skein serve``. A bad setting, certificate or key is one line on stderr and exit status
    2 (a missing certificate file: status 1, saying to run ``make certs``), never a traceback, and
    all of it is found before the gateway says it is serving."""
    from gateway.core.auth import Authenticator
    from gateway.server.certs import check_certificate_pair
    from gateway.server.config import load_config
    from gateway.server.logs import setup_logging

    def bad(problem: object) -> int:
        text = " ".join(str(problem).split())  # one line, whatever the message held
        print(f"skein serve: bad configuration: {text}", file=sys.stderr)
        return 2

    try:
        config = load_config(
            args.config,
            host=args.host,
            port=args.port,
            certificate_file=args.cert,
            private_key_file=args.key,
            log_level=args.log_level,
            admin_port=args.admin_port,
            insecure_dev=args.insecure_dev,
        )
    except OSError as exc:
        return bad(f"cannot read {args.config}: {exc.strerror or exc}")
    except ValueError as exc:
        return bad(exc)
    try:
        check_certificate_pair(config.certificate_file, config.private_key_file)
    except FileNotFoundError as exc:
        print(f"skein serve: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        return bad(exc)
    if not config.auth.insecure:
        try:  # what the gateway does first: read the keys (and make the dev secret if needed)
            Authenticator.from_config(config.auth)
        except OSError as exc:
            return bad(
                f"[auth] cannot read {exc.filename}: {exc.strerror or exc} (see "
                "es256_public_key_files and dev_secret_file)"
            )
        except ValueError as exc:
            return bad(f"[auth] {exc}")
    log_format = args.log_format
    if log_format == "auto":  # a person at a terminal reads text; collectors read JSON
        log_format = "text" if sys.stderr.isatty() else "json"
    setup_logging(config.log_level, json=log_format == "json")
    return asyncio.run(_run_server(config))


async def _run_server(config: ServerConfig) -> int:
    """Run the gateway until it is stopped; the exit status, with why on stderr when not 0."""
    from gateway.server.app import run
    from gateway.store.records import StoreError

    ready = asyncio.Event()
    try:
        await run(config, ready=ready)
    except StoreError as exc:
        if ready.is_set():
            print(f"skein serve: the store failed: {exc}", file=sys.stderr)
            return 1
        path = config.store.path
        why = " ".join(str(exc).removeprefix(f"cannot open the store at {path}: ").split())
        print(
            f"skein serve: bad configuration: [store] path {path}: cannot open the store: {why}; "
            "make its directory writable by this user, or point [store] path at a writable "
            'file (kind = "memory" keeps nothing)',
            file=sys.stderr,
        )
        return 2
    except FileNotFoundError as exc:
        print(f"skein serve: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"udp {config.host}:{config.port}"
        if config.admin_port >= 0:
            where += f" and tcp {config.admin_host}:{config.admin_port} (admin)"
        print(f"skein serve: cannot listen on {where}: {exc}", file=sys.stderr)
        return 1
    return 0


def _client_options(args: argparse.Namespace) -> dict[str, object]:
    if args.insecure:
        return {"verify": False}
    ca = args.ca or (DEFAULT_CA if DEFAULT_CA.exists() else None)
    return {"ca_file": ca}


async def _chat(args: argparse.Namespace) -> int:
    from gateway.sdk import Priority, PublishTimeout, connect

    priority = Priority[args.priority.upper()]
    loop = asyncio.get_running_loop()
    options = _client_options(args)
    async with connect(args.url, name=args.name, token=args.token, **options) as client:
        await client.join(args.room)
        print(
            f"joined {args.room} as {args.name or 'anonymous'}; type a line to send it, Ctrl-D quits"
        )

        async def show() -> None:
            try:
                async for event in client.messages():
                    m = event.message
                    text = m.body.decode("utf-8", "replace")
                    print(f"[{event.room}] {m.sender}: {text}", flush=True)
            except GatewayError as exc:
                print(f"skein chat: the session ended: {exc}", file=sys.stderr, flush=True)

        printer = asyncio.create_task(show())
        try:
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    await client.publish(args.room, line.rstrip("\n").encode(), priority=priority)
                except PublishTimeout as exc:  # still pending: saying it again would post it twice
                    print("skein chat: no ack yet, still sending", file=sys.stderr, flush=True)
                    await exc.pending.wait()
        finally:
            printer.cancel()
    return 0


async def _rooms(args: argparse.Namespace) -> int:
    from rich.console import Console

    from gateway.sdk.http import get_json
    from gateway.top import rooms_table

    base = args.url.split("/v1/", 1)[0]
    options = _client_options(args)
    console = Console()
    names = args.room or (await get_json(f"{base}/v1/rooms", **options))[1]["rooms"]  # type: ignore[arg-type]
    rooms = []
    for name in names:
        status, info = await get_json(f"{base}/v1/rooms/{name}", **options)  # type: ignore[arg-type]
        if status != 200:
            console.print(f"[red]{name}: {info.get('error', status)}[/red]")
            continue
        rooms.append(info)
    console.print(rooms_table(rooms))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skein",
        description="Skein: an HTTP/3 / QUIC messaging gateway for live chat on mobile networks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        description=(
            "Serve HTTP/3 with WebTransport chat sessions. Settings come from --config (TOML with "
            "[server], [core] and [core.sharding] tables) and are overridden by the flags."
        ),
    )
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--host", help="UDP address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="UDP port (default 4433)")
    serve.add_argument("--cert", type=Path, help="PEM certificate chain (default certs/server.pem)")
    serve.add_argument("--key", type=Path, help="PEM private key (default certs/server.key)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format",
        choices=["auto", "json", "text"],
        default="auto",
        help="log lines as JSON or text (default auto: text on a terminal, JSON otherwise)",
    )
    serve.add_argument(
        "--insecure-dev",
        action="store_true",
        help="DEVELOPMENT ONLY: accept clients without tokens and let anyone join and publish "
        "anywhere (the default is to require a JWT: see `skein token`)",
    )
    serve.add_argument(
        "--admin-port",
        type=int,
        help="TCP port for /healthz, /readyz, /metrics and the browser page (default 9433; "
        "0 picks a free port, -1 disables it)",
    )
    engine_flag(serve)
    serve.set_defaults(run=_serve)

    def client_flags(p: argparse.ArgumentParser) -> None:
        engine_flag(p)
        p.add_argument("--url", default=DEFAULT_URL, help=f"gateway URL (default {DEFAULT_URL})")
        p.add_argument("--ca", type=Path, help="CA to verify the gateway (default certs/ca.pem)")
        p.add_argument("--insecure", action="store_true", help="skip certificate verification")

    chat = sub.add_parser(
        "chat",
        help="chat in a room from this terminal",
        description=("Join a room, print its messages, and send each line you type."),
    )
    chat.add_argument("--room", default="lobby", help="room to join (default lobby)")
    chat.add_argument("--name", default="", help="your name in the room")
    chat.add_argument("--priority", default="normal", choices=["chatter", "normal", "high"])
    chat.add_argument(
        "--token",
        default=os.environ.get("SKEIN_TOKEN", ""),
        help="access token (JWT) from `skein token` (default $SKEIN_TOKEN)",
    )
    client_flags(chat)
    chat.set_defaults(run=lambda a: asyncio.run(_chat(a)))

    rooms = sub.add_parser("rooms", help="show rooms, their shard maps and velocities")
    rooms.add_argument("room", nargs="*", help="rooms to show (default: all)")
    client_flags(rooms)
    rooms.set_defaults(run=lambda a: asyncio.run(_rooms(a)))

    from gateway import top

    top_parser = sub.add_parser(
        "top",
        help="a live view of a gateway: connections, migrations, rates, rooms and shards",
        description=(
            "Watch one gateway: counters and rates from /metrics on its admin port, rooms over "
            "HTTP/3. --once prints one frame and exits."
        ),
    )
    top.add_arguments(top_parser)
    top_parser.set_defaults(run=top.run_args)

    sub.add_parser(
        "loadgen",
        add_help=False,
        help="mobile-like load across network handoffs: p50/p99/p999, loss, order "
        "(skein loadgen --help)",
    )

    from gateway import tokens

    token = sub.add_parser(
        "token", help="mint a development access token (JWT)", description=tokens.DESCRIPTION
    )
    tokens.add_arguments(token)
    token.set_defaults(run=tokens.run_args)
    return parser


def engine_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quic-engine",
        choices=ENGINES,
        help="QUIC implementation: aioquic (default, pure Python) or qh3 (native packet core, "
        "less CPU per packet); also $SKEIN_QUIC_ENGINE",
    )


def _choose_engine(argv: list[str]) -> None:
    """Apply --quic-engine before any network module is imported (the engine is per process)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--quic-engine", choices=ENGINES)
    known, _ = pre.parse_known_args(argv)
    if known.quic_engine:
        os.environ["SKEIN_QUIC_ENGINE"] = known.quic_engine


def _loadgen(argv: list[str]) -> int:
    """``skein loadgen``: loadgen has its own parser and --help; every argument is its own.

    loadgen is imported only here, so a gateway installed without the ``loadgen`` extra serves,
    chats and mints tokens without it. Without the extra this is one line on stderr naming it
    and the missing modules, and exit status 2, before any client starts."""
    import loadgen

    missing = loadgen.missing_modules()
    if missing:
        print(
            f"skein loadgen: needs the {loadgen.EXTRA!r} extra, which is not installed (missing "
            f"{', '.join(missing)}): pip install 'skein[{loadgen.EXTRA}]'",
            file=sys.stderr,
        )
        return 2
    from loadgen.cli import main as loadgen_main

    return loadgen_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _choose_engine(argv)
    if argv[:1] == ["loadgen"]:
        return _loadgen(argv[1:])
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    except GatewayError as exc:
        hint = ""
        if exc.code in (ErrorCode.UNAUTHENTICATED, ErrorCode.FORBIDDEN):
            hint = " Mint a token with `skein token --sub NAME --join ROOMS --publish ROOMS`."
        print(
            f"skein {args.command}: the gateway refused: {exc.message} ({exc.code.name}).{hint}",
            file=sys.stderr,
        )
        return 1
    except (OSError, ConnectionError, TimeoutError) as exc:
        print(
            f"skein {args.command}: cannot reach the gateway: {exc!r}. Is `skein serve` running, "
            f"and is --url right?",
            file=sys.stderr,
        )
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
