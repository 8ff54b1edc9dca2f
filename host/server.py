"""The composition root of `plughost serve`: storage, tokens and the HTTP app, run by uvicorn until a signal.

`serve(config)` opens the database, creates the first admin token if needed, listens, and on
SIGINT or SIGTERM stops taking requests, lets in-flight ones finish, closes the database (final
flush, WAL closed) and returns 0. The processing engine plugs in through `Server.engine` and
`create_app(server, extra_routes)`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import signal
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from host.api import (
    QUERY_CONCURRENCY, WRITE_CONCURRENCY, ApiError, CorsMiddleware, handle_api_error, not_found, routes,
)
from host.auth import AuthMiddleware, TokenStore
from host.config import ServeConfig
from host.database import LocalDatabase
from host.flight import FlightService
from host.frontdoor import FrontDoor
from host.plugin_manager import ProcessingEngine
from cache.plugin_persistence import PersistentPluginCache
from cache.service import CacheService
from cache.store import CacheStore
from sandbox.runtime import PluginRuntime
import host.api.caches
import host.api.engine

log = logging.getLogger("plughost")

BUILD = "plughost"
_GRACEFUL_SHUTDOWN_SECONDS = 10
_LOG_LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


class Server:
    """What one `plughost serve` process holds: config, database, tokens, caches and the processing engine.

    Nothing here blocks until `start()`, which opens the database (WAL replay), the cache
    service, the plugin workers and the triggers, and may create the first admin token.
    """

    def __init__(self, config: ServeConfig):
        self.config = config
        self.database = LocalDatabase(config.data_dir, flush_interval=config.wal_flush_interval)
        self.auth: TokenStore | None = None if config.without_auth else TokenStore(config.data_dir)
        self.plugin_cache = PersistentPluginCache()
        self.runtime = PluginRuntime(self.database, config.plugin_dir, config.data_dir / "plugin-run",
                                     global_cache=self.plugin_cache, limits=config.plugin_limits)
        self.engine = ProcessingEngine(self.database, config.plugin_dir, config.data_dir, runtime=self.runtime)
        self.cache_store: CacheStore | None = None
        self.caches: CacheService | None = None
        self.version = _version()
        self.revision = _revision()
        self.build = BUILD
        self.process_id = str(uuid.uuid4())

    def start(self) -> str | None:
        """Open the database, and create the first admin token when none exists.

        Returns that new token's plaintext (also written to `admin-token`), else None.
        Blocks for WAL replay. Raises whatever opening the database raises.
        """
        # the database starts first so that rows replayed from the WAL never reach triggers or caches
        self.database.start()
        self.cache_store = CacheStore.in_directory(self.config.data_dir)
        self.caches = CacheService(self.database, self.cache_store)
        self.plugin_cache.open(self.cache_store.plugin_cache)
        self.runtime.start()
        self.engine.start()
        return self.auth.ensure_admin_token() if self.auth is not None else None

    def close(self) -> None:
        """Stop triggers and plugin workers, then flush and close the database and the caches.

        Blocks until the database's final flush is durable; the caches see that flush before
        they close.
        """
        self.engine.close()
        self.runtime.close()
        self.database.close()
        self.plugin_cache.close()
        if self.caches is not None:
            self.caches.close()
            self.cache_store.close()

    def delete_database(self, name: str) -> None:
        """Delete a database with its files, its triggers and its last-value and distinct-value caches.

        Raises host.errors.NotFound if there is no such database.
        """
        self.database.delete_database(name)
        self.engine.drop_database(name)
        self.caches.drop_database(name)

    def delete_table(self, database: str, table: str) -> None:
        """Delete a table with its files and its caches. Raises host.errors.NotFound."""
        self.database.delete_table(database, table)
        self.caches.drop_table(database, table)

    def extra_routes(self) -> list[BaseRoute]:
        """The routes of the processing engine and the cache service."""
        return [*host.api.engine.routes(self.engine), *host.api.caches.routes(self.caches)]


def create_app(server: Server, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The ASGI app serving InfluxDB 3's HTTP API over `server`, plus `extra_routes`.

    Every route, `extra_routes` included, sits behind token authentication unless the server
    runs `--without-auth`.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        app.state.write_limiter = anyio.CapacityLimiter(WRITE_CONCURRENCY)
        app.state.query_limiter = anyio.CapacityLimiter(QUERY_CONCURRENCY)
        yield

    middleware = [Middleware(CorsMiddleware)]
    if server.auth is not None:
        middleware.append(Middleware(AuthMiddleware, tokens=server.auth))
    app = Starlette(
        routes=[*routes(), *extra_routes],
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={ApiError: handle_api_error, 404: not_found, 405: not_found},
    )
    app.state.server = server
    return app


def serve(config: ServeConfig) -> int:
    """Run the server until SIGINT or SIGTERM. Returns the process exit status."""
    configure_logging(config.log_level)
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        config.plugin_dir.mkdir(parents=True, exist_ok=True)
        listener = _listen(config.http_host, config.http_port)
    except OSError as error:
        log.error("cannot start: %s", error)
        return 1
    server = Server(config)
    try:
        new_admin_token = server.start()
    except Exception:
        log.exception("cannot start the server on %s", config.data_dir)
        listener.close()
        server.close()
        return 1
    try:
        flight = FlightService(server.database, server.auth, *(config.flight_bind or ("127.0.0.1", 0)))
    except OSError as error:
        log.error("cannot start: %s", error)
        listener.close()
        server.close()
        return 1
    try:
        if new_admin_token is not None:
            log.info("admin token written to %s", server.auth.admin_token_path)
        host, port = listener.getsockname()[:2]
        url_host = f"[{host}]" if ":" in host else host
        log.info("plughost %s serving on http://%s:%d (data: %s, plugins: %s, %s)",
                 server.version, url_host, port, config.data_dir, config.plugin_dir, _auth_summary(server))
        uvicorn_server = _Uvicorn(uvicorn.Config(
            create_app(server, server.extra_routes()), log_config=None, access_log=config.log_level == "debug", lifespan="on",
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS, server_header=False,
        ))
        if config.flight_bind is None:
            uvicorn_server.front_door = FrontDoor(listener, flight.address)
            log.info("serving Arrow Flight on the same port (relayed to grpc://%s:%d)", *flight.address)
        else:
            log.info("serving Arrow Flight on grpc://%s:%d", *flight.address)
        uvicorn_server.run(sockets=[listener])
    finally:
        flight.close()
        server.close()
    log.info("plughost stopped; data flushed to %s", config.data_dir)
    return 0


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=_LOG_LEVELS[level], format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def _auth_summary(server: Server) -> str:
    if server.auth is None:
        return "authentication disabled by --without-auth"
    if server.auth.admin_token_path.exists():
        return f"admin token file: {server.auth.admin_token_path}"
    return f"token hashes: {server.auth.tokens_path}"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets that do, and without it a
    # response written as headers then body waits ~40 ms for the client's delayed ACK
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)
    except OSError as error:
        listener.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return listener


class _Uvicorn(uvicorn.Server):
    """uvicorn, except that a handled SIGINT/SIGTERM ends in a normal return (exit 0), not a re-raised signal,
    and that with a `front_door` it listens through it (sharing the port with Flight)."""

    front_door: FrontDoor | None = None

    async def startup(self, sockets=None):
        if self.front_door is None:
            await super().startup(sockets)
            return
        await super().startup(sockets=[])
        self.front_door.serve_uvicorn(self)

    @contextlib.contextmanager
    def capture_signals(self):
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:
            log.info("received %s: finishing requests, then flushing and closing the database",
                     signal.Signals(sig).name)
        super().handle_exit(sig, frame)


def _version() -> str:
    try:
        return importlib.metadata.version("plughost")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _revision() -> str:
    """The checkout's short commit hash, read from .git without running git; "unknown" elsewhere."""
    git = Path(__file__).resolve().parent.parent / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head.removeprefix("ref: ")
            ref_file = git / ref
            if ref_file.exists():
                head = ref_file.read_text().strip()
            else:
                packed = (git / "packed-refs").read_text().splitlines()
                head = next(line.split()[0] for line in packed if line.endswith(" " + ref))
        return head[:12]
    except (OSError, StopIteration):
        return "unknown"
