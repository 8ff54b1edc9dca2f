"""The options of `plughost serve`: their defaults, their environment variables, their parsing.

Every option `--some-name` can also come from the environment as `PLUGHOST_SOME_NAME`; the
command line wins. Defaults follow InfluxDB 3 (`influxdb3 serve`) except `--http-bind`,
which listens on loopback only.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import msgspec

from sandbox.limits import RunLimits

LOG_LEVELS = ("error", "warn", "info", "debug")
DEFAULT_MAX_HTTP_REQUEST_SIZE = 10 * 1024 * 1024  # InfluxDB 3's default, 10 MiB

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)\s*$")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3,
}


class ServeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything `plughost serve` was told, resolved and validated."""

    data_dir: Path
    plugin_dir: Path
    http_host: str
    http_port: int
    wal_flush_interval: float  # seconds
    without_auth: bool
    log_level: str
    max_http_request_size: int  # bytes
    flight_bind: tuple[str, int] | None = None  # None: Flight shares the HTTP port (host.frontdoor)
    plugin_limits: RunLimits = RunLimits()  # defaults for triggers that set no limits of their own

    @property
    def http_bind(self) -> str:
        host = f"[{self.http_host}]" if ":" in self.http_host else self.http_host
        return f"{host}:{self.http_port}"


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `10ms`, `1s`, `1.5s` or `2m`. Raises ValueError."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"invalid duration {text!r}: expected a number and a unit, like 10ms, 1s or 1.5s")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return seconds


def parse_size(text: str) -> int:
    """Bytes in a size such as `10485760`, `10MiB` or `512KB`. Raises ValueError."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"invalid size {text!r}: expected bytes, or a number with KiB, MiB or GiB")
    size = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]
    if size <= 0:
        raise ValueError(f"invalid size {text!r}: must be greater than zero")
    return size


def parse_bind(text: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) as (host, port). Port 0 asks for any free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid address {text!r}: expected HOST:PORT, like 127.0.0.1:8181")
    host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"
    return host, int(port)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"PLUGHOST_{name}", default)


def _env_flag(name: str) -> bool:
    return _env(name, "false").strip().lower() in ("1", "true", "yes", "on")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `serve` options to `parser`, with defaults taken from the environment."""
    parser.add_argument(
        "--data-dir", default=_env("DATA_DIR", "./data"),
        help="where the WAL, Parquet files, catalog and tokens live (env PLUGHOST_DATA_DIR; default ./data)",
    )
    parser.add_argument(
        "--plugin-dir", default=_env("PLUGIN_DIR", "./plugins"),
        help="where plugin files live; created if missing (env PLUGHOST_PLUGIN_DIR; default ./plugins)",
    )
    parser.add_argument(
        "--http-bind", default=_env("HTTP_BIND", "127.0.0.1:8181"),
        help="HOST:PORT to listen on; port 0 picks a free one (env PLUGHOST_HTTP_BIND; default 127.0.0.1:8181)",
    )
    parser.add_argument(
        "--flight-bind", default=_env("FLIGHT_BIND", ""),
        help="HOST:PORT to serve Arrow Flight (gRPC) on a port of its own; by default Flight shares "
        "the --http-bind port, as in InfluxDB 3 (env PLUGHOST_FLIGHT_BIND)",
    )
    parser.add_argument(
        "--wal-flush-interval", default=_env("WAL_FLUSH_INTERVAL", "1s"),
        help="how often written rows become queryable and reach plugins, e.g. 10ms, 1s "
        "(env PLUGHOST_WAL_FLUSH_INTERVAL; default 1s)",
    )
    parser.add_argument(
        "--without-auth", action="store_true", default=_env_flag("WITHOUT_AUTH"),
        help="accept requests without a token (env PLUGHOST_WITHOUT_AUTH=true)",
    )
    parser.add_argument(
        "--log-level", default=_env("LOG_LEVEL", "info"), choices=LOG_LEVELS,
        help="error, warn, info or debug (env PLUGHOST_LOG_LEVEL; default info)",
    )
    parser.add_argument(
        "--max-http-request-size", default=_env("MAX_HTTP_REQUEST_SIZE", str(DEFAULT_MAX_HTTP_REQUEST_SIZE)),
        help="largest request body accepted, before and after gzip decoding, e.g. 10485760 or 10MiB "
        "(env PLUGHOST_MAX_HTTP_REQUEST_SIZE; default 10 MiB)",
    )
    # imported here: triggers.cli builds on host.cli, which imports this module
    from triggers.cli import add_serve_limit_arguments

    add_serve_limit_arguments(parser)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """Validate parsed `serve` options. Raises ValueError naming the bad option."""
    from triggers.cli import serve_limits

    host, port = _option(parse_bind, "--http-bind", args.http_bind)
    return ServeConfig(
        data_dir=Path(args.data_dir).expanduser().resolve(),
        plugin_dir=Path(args.plugin_dir).expanduser().resolve(),
        http_host=host,
        http_port=port,
        wal_flush_interval=_option(parse_duration, "--wal-flush-interval", args.wal_flush_interval),
        without_auth=bool(args.without_auth),
        log_level=args.log_level,
        max_http_request_size=_option(parse_size, "--max-http-request-size", args.max_http_request_size),
        flight_bind=_option(parse_bind, "--flight-bind", args.flight_bind) if args.flight_bind else None,
        plugin_limits=serve_limits(args),
    )


def _option(parse, flag: str, text: str):
    try:
        return parse(text)
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None
