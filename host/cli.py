"""The `plughost` command: `serve`, `write`, `query`, and nouns under the verbs create/delete/show/enable/disable/test.

Flags follow `influxdb3`'s. Other modules add nouns by appending a registrar to `REGISTRARS`:
a function `register(verbs)` receiving `{"create": <subparsers>, "delete": ..., ...}` that adds
parsers whose defaults carry `handler=<function(args) -> int>`; `add_client_arguments` and
`client_from_args` give them the common `--host`/`--token`/`--data-dir` handling.
Every command exits 0 on success and non-zero with an `error: ...` line that says what to do.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from host.client import DEFAULT_HOST, ClientError, PlughostClient, RequestFailed, WriteRejected, resolve_token
from host.interface import LineError

VERBS = ("create", "delete", "show", "enable", "disable", "test")
Registrar = Callable[[dict[str, argparse._SubParsersAction]], None]

BATCH_LINES = 10_000
BATCH_BYTES = 4 * 1024 * 1024  # well under the server's default 10 MiB request limit
_PROGRESS_EVERY = 0.5  # seconds


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--host`, `--token` and `--data-dir` (where to find `admin-token` when no token is given)."""
    parser.add_argument("--host", default=os.environ.get("PLUGHOST_HOST", DEFAULT_HOST),
                        help=f"server URL (env PLUGHOST_HOST; default {DEFAULT_HOST})")
    parser.add_argument("--token", default=None,
                        help="API token (env PLUGHOST_TOKEN; default: the admin-token file in --data-dir)")
    parser.add_argument("--data-dir", default=None,
                        help="a local server's data directory, to read its admin-token (env PLUGHOST_DATA_DIR; "
                             "default ./data)")


def client_from_args(args: argparse.Namespace) -> PlughostClient:
    return PlughostClient(args.host, resolve_token(args.token, args.data_dir))


def add_database_argument(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """`-d/--database`, defaulting to PLUGHOST_DATABASE; required unless that is set or `required` is false."""
    parser.add_argument("-d", "--database", default=os.environ.get("PLUGHOST_DATABASE"),
                        required=required and "PLUGHOST_DATABASE" not in os.environ,
                        help="database name (env PLUGHOST_DATABASE)")


# --- serve ---------------------------------------------------------------------------------------

def _serve(args: argparse.Namespace) -> int:
    from host.config import config_from_args
    from host.server import serve

    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return serve(config)


# --- write ---------------------------------------------------------------------------------------

def _write(args: argparse.Namespace) -> int:
    if args.file and args.line_protocol:
        print("error: give line protocol either with --file or as arguments, not both", file=sys.stderr)
        return 2
    if args.file:
        try:
            source: BinaryIO = open(args.file, "rb")
        except OSError as error:
            print(f"error: cannot read {args.file}: {error.strerror}", file=sys.stderr)
            return 1
        total = os.fstat(source.fileno()).st_size
    elif args.line_protocol:
        source, total = io.BytesIO("\n".join(args.line_protocol).encode()), None
    elif not sys.stdin.isatty():
        source, total = sys.stdin.buffer, None
    else:
        print("error: no line protocol: give it as an argument, with --file FILE, or on standard input",
              file=sys.stderr)
        return 2
    with source, client_from_args(args) as client:
        return _send_batches(client, args, source, total)


def _batches(source, max_lines: int, max_bytes: int) -> Iterator[tuple[int, int, int, bytes]]:
    """Yield (first line number, physical lines, data lines, body) for consecutive runs of `source`'s lines."""
    lines: list[bytes] = []
    size = data_lines = 0
    first = 1
    for line in source:
        lines.append(line)
        size += len(line)
        stripped = line.strip()
        if stripped and not stripped.startswith(b"#"):
            data_lines += 1
        if len(lines) >= max_lines or size >= max_bytes:
            yield first, len(lines), data_lines, b"".join(lines)
            first += len(lines)
            lines, size, data_lines = [], 0, 0
    if lines:
        yield first, len(lines), data_lines, b"".join(lines)


def _send_batches(client: PlughostClient, args: argparse.Namespace, source, total: int | None) -> int:
    progress = _Progress(total)
    refused: list[LineError] = []
    written = 0
    for first, count, data_lines, body in _batches(source, BATCH_LINES, BATCH_BYTES):
        try:
            client.write_lp(args.database, body, precision=args.precision,
                            accept_partial=args.accept_partial, no_sync=args.no_sync)
            written += data_lines
        except WriteRejected as rejection:
            shifted = [LineError(e.original_line, e.line_number + first - 1, e.error_message)
                       for e in rejection.errors]
            if not rejection.partial:
                progress.finish()
                _print_refused(shifted)
                print(f"error: {rejection}: lines {first}-{first + count - 1} were not written "
                      f"({written:,} lines before them were); fix the line above, or pass --accept-partial "
                      "to store the good lines", file=sys.stderr)
                return 1
            refused.extend(shifted)
            written += data_lines - len(shifted)
        except RequestFailed as failure:
            progress.finish()
            print(f"error: write failed at lines {first}-{first + count - 1} ({failure.status}): {failure} "
                  f"({written:,} lines before them were written)", file=sys.stderr)
            return 1
        progress.update(count, len(body))
    progress.finish()
    if refused:
        _print_refused(refused)
        print(f"error: {len(refused):,} lines refused, {written:,} written", file=sys.stderr)
        return 1
    print(f"success: wrote {written:,} lines in {progress.elapsed():.2f}s")
    return 0


def _print_refused(errors: list[LineError]) -> None:
    for error in errors:
        print(f"line {error.line_number}: {error.error_message}\n    {error.original_line}", file=sys.stderr)


class _Progress:
    """A progress line on stderr for inputs longer than one batch (rewritten in place on a terminal)."""

    def __init__(self, total_bytes: int | None):
        self.total_bytes = total_bytes
        self.started = time.monotonic()
        self.lines = self.bytes = self.batches = 0
        self.last_shown = self.started
        self.tty = sys.stderr.isatty()
        self.shown = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, lines: int, size: int) -> None:
        self.lines += lines
        self.bytes += size
        self.batches += 1
        now = time.monotonic()
        if self.batches > 1 and now - self.last_shown >= _PROGRESS_EVERY:
            self.last_shown = now
            self._show()

    def finish(self) -> None:
        if self.batches > 1:
            self._show()
        if self.shown and self.tty:
            sys.stderr.write("\n")

    def _show(self) -> None:
        elapsed = max(self.elapsed(), 1e-9)
        share = f" ({100 * self.bytes / self.total_bytes:.0f}%)" if self.total_bytes else ""
        text = (f"sent {self.lines:,} lines, {self.bytes / 1e6:.1f} MB{share} in {self.batches} batches, "
                f"{self.lines / elapsed:,.0f} lines/s")
        sys.stderr.write(f"\r{text}\x1b[K" if self.tty else text + "\n")
        sys.stderr.flush()
        self.shown = True


# --- query ---------------------------------------------------------------------------------------

def _query(args: argparse.Namespace) -> int:
    sql = " ".join(args.query)
    if args.format == "parquet" and args.output is None:
        print("error: parquet output is binary: give --output FILE", file=sys.stderr)
        return 2
    with client_from_args(args) as client, client.query_stream(args.database, sql, format=args.format) as response:
        if args.output is not None:
            with open(args.output, "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
            return 0
        out = sys.stdout.buffer
        last = b"\n"
        for chunk in response.iter_bytes():
            out.write(chunk)
            last = chunk[-1:] or last
        if last != b"\n":
            out.write(b"\n")
        out.flush()
    return 0


# --- nouns: database, token ----------------------------------------------------------------------

def _create_database(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        client.create_database(args.name)
    print(f'Database "{args.name}" created successfully')
    return 0


def _delete_database(args: argparse.Namespace) -> int:
    if not args.yes:
        sys.stderr.write(f'Are you sure you want to delete "{args.name}"? Enter \'yes\' to confirm: ')
        sys.stderr.flush()
        if sys.stdin.readline().strip() != "yes":
            print("error: not deleted (answer 'yes', or pass --yes)", file=sys.stderr)
            return 1
    with client_from_args(args) as client:
        client.delete_database(args.name)
    print(f'Database "{args.name}" deleted successfully')
    return 0


def _show_databases(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        body = client.show_databases(args.format)
    sys.stdout.buffer.write(body if body.endswith(b"\n") else body + b"\n")
    return 0


def _create_token(args: argparse.Namespace) -> int:
    from host.auth import TokenExists, TokenStore

    if not args.admin:
        print("error: plughost has admin tokens only: pass --admin", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir or os.environ.get("PLUGHOST_DATA_DIR") or "./data")
    try:
        token = TokenStore(data_dir).create_token(args.name)
    except TokenExists as error:
        print(f"error: {error}: choose another --name", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: cannot write tokens in {data_dir}: {error.strerror or error}", file=sys.stderr)
        return 1
    print("New token created successfully!\n")
    print(f"Token: {token}")
    print(f"HTTP Requests Header: Authorization: Bearer {token}\n")
    print("IMPORTANT: Store this token securely, as it will not be shown again.")
    return 0


def register(verbs: dict[str, argparse._SubParsersAction]) -> None:
    """Add plughost's own nouns: `create|delete|show database(s)` and `create token`."""
    create_db = verbs["create"].add_parser("database", help="create a database")
    create_db.add_argument("name")
    add_client_arguments(create_db)
    create_db.set_defaults(handler=_create_database)

    delete_db = verbs["delete"].add_parser("database", help="delete a database and all its data")
    delete_db.add_argument("name")
    delete_db.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    add_client_arguments(delete_db)
    delete_db.set_defaults(handler=_delete_database)

    show_dbs = verbs["show"].add_parser("databases", help="list databases")
    show_dbs.add_argument("--format", default="pretty", choices=("pretty", "json", "jsonl", "csv"))
    add_client_arguments(show_dbs)
    show_dbs.set_defaults(handler=_show_databases)

    create_token = verbs["create"].add_parser(
        "token", help="create an admin token in a data directory (works while the server runs, or offline)")
    create_token.add_argument("--admin", action="store_true", help="an admin token (the only kind plughost has)")
    create_token.add_argument("--name", default=None, help="a name for the token (default admin-N)")
    create_token.add_argument("--data-dir", default=None,
                              help="the server's data directory (env PLUGHOST_DATA_DIR; default ./data)")
    create_token.set_defaults(handler=_create_token)


def _register_triggers(verbs) -> None:
    # imported late: triggers.cli imports host.cli's helpers, so a top-level import would be circular
    from triggers.cli import register as register_triggers

    register_triggers(verbs)


def _register_caches(verbs) -> None:
    from cache.cli import register as register_caches

    register_caches(verbs)


REGISTRARS: list[Registrar] = [register, _register_triggers, _register_caches]


def build_parser(registrars: list[Registrar] | None = None) -> argparse.ArgumentParser:
    """The whole `plughost` parser, with nouns from `registrars` (default `REGISTRARS`)."""
    from host.config import add_serve_arguments

    parser = argparse.ArgumentParser(prog="plughost", description="A time-series database that runs "
                                     "InfluxDB 3 processing-engine plugins.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    add_serve_arguments(serve)
    serve.set_defaults(handler=_serve)

    write = commands.add_parser("write", help="write line protocol")
    add_database_argument(write)
    write.add_argument("-f", "--file", help="read line protocol from FILE (default: arguments, else stdin)")
    write.add_argument("--precision", default=None, choices=("auto", "s", "ms", "us", "ns"),
                       help="timestamp precision (default auto)")
    write.add_argument("--accept-partial", action="store_true",
                       help="store the valid lines of a batch even when others are refused")
    write.add_argument("--no-sync", action="store_true", help="do not wait for the WAL fsync")
    write.add_argument("line_protocol", nargs="*", help="line protocol lines")
    add_client_arguments(write)
    write.set_defaults(handler=_write)

    query = commands.add_parser("query", help="run a SQL query")
    add_database_argument(query)
    query.add_argument("--format", default="pretty", choices=("pretty", "json", "jsonl", "csv", "parquet"))
    query.add_argument("-o", "--output", default=None, help="write the result to FILE instead of stdout")
    query.add_argument("query", nargs="+", help="the SQL statement")
    add_client_arguments(query)
    query.set_defaults(handler=_query)

    verbs = {}
    for verb in VERBS:
        verb_parser = commands.add_parser(verb, help=f"{verb} a resource")
        verb_parser.set_defaults(usage_parser=verb_parser)
        verbs[verb] = verb_parser.add_subparsers(title="resources", metavar="RESOURCE")
    for registrar in REGISTRARS if registrars is None else registrars:
        registrar(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `plughost` with `argv` (default sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        getattr(args, "usage_parser", parser).print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
