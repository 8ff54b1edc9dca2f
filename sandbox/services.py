"""The host end of plugins' callbacks: query, write_sync and the plugin cache, over a Unix socket.

Every trigger interpreter opens one connection (lazily, on its first call); each connection is
served by its own daemon thread that calls the `Database` and the `GlobalCache` directly. No
lock of this module is held while the database works, so a plugin may write_sync or query from
inside a writes trigger, or call the server over HTTP, without blocking the flush or dispatch
paths. Requests are validated by `sandbox.protocol` Structs before anything is done.
"""

from __future__ import annotations

import logging
import marshal
import os
import socket
import threading
from pathlib import Path

import msgspec

from cache.plugin_cache import GlobalCache
from host.interface import Database
from sandbox import protocol
from sandbox.guest import framing
from sandbox.shared_flush import UnsupportedColumn, encode_result

log = logging.getLogger("plughost.sandbox.services")

_requests = msgspec.json.Decoder(protocol.ServiceRequest)
_encode = msgspec.json.Encoder().encode
INTERNAL_DB = "_internal"


class PluginServices:
    """A Unix-socket server at `path` answering ServiceRequests from plugin interpreters."""

    def __init__(self, database: Database, cache: GlobalCache, path: Path) -> None:
        self.database = database
        self.cache = cache
        self.path = path
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Bind and start accepting. Returns at once; raises OSError if the path cannot be bound."""
        if self.path.exists():
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, name="plugin-services-accept", daemon=True).start()

    def close(self) -> None:
        """Stop accepting and drop every connection. Does not wait for calls in progress."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.add(connection)
            threading.Thread(target=self._serve, args=(connection,), name="plugin-services", daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            while True:
                header, payload = framing.receive(connection)
                try:
                    request = _requests.decode(header)
                except msgspec.DecodeError as e:
                    reply, body = protocol.ServiceReply(ok=False, error_type="ValueError", error=f"bad service request: {e}"), b""
                else:
                    reply, body = self.handle(request, payload)
                framing.send(connection, _encode(reply), body)
        except (framing.ChannelClosed, OSError):
            pass
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()

    def handle(self, request: protocol.ServiceRequest, payload: bytes) -> tuple[protocol.ServiceReply, bytes]:
        """Carry out one request; failures become replies naming the exception to raise."""
        match request:
            case protocol.QueryCall(database=database, sql=sql, params=params):
                return self._query(database, sql, params)
            case protocol.WriteCall(database=database, lines=lines, no_sync=no_sync):
                return self._write(database, lines, no_sync), b""
            case protocol.CacheGetCall(namespace=namespace, key=key):
                value = self.cache.get(namespace, key)
                if value is None:
                    return protocol.ServiceReply(ok=True), b""
                return protocol.ServiceReply(ok=True, found=True), value
            case protocol.CachePutCall(namespace=namespace, key=key, ttl=ttl):
                try:
                    self.cache.put(namespace, key, bytes(payload), ttl)
                except ValueError as e:
                    return protocol.ServiceReply(ok=False, error_type="ValueError", error=str(e)), b""
                return protocol.ServiceReply(ok=True), b""
            case protocol.CacheDeleteCall(namespace=namespace, key=key):
                return protocol.ServiceReply(ok=True, found=self.cache.delete(namespace, key)), b""
            case protocol.CacheLoadCall(namespace=namespace):
                entries = [tuple(entry) for entry in self.cache.load(namespace)]
                return protocol.ServiceReply(ok=True, found=self.cache.persistent), marshal.dumps(entries)

    def _query(self, database: str, sql: str, params: dict[str, str] | None) -> tuple[protocol.ServiceReply, bytes]:
        try:
            table = self.database.query(database, sql, params)
        except Exception as e:
            return protocol.ServiceReply(
                ok=False, error_type="QueryError", error=f"error: {e} executing query on {database}: {sql}"
            ), b""
        try:
            result, body = encode_result(table)
        except UnsupportedColumn as e:
            return protocol.ServiceReply(ok=False, error_type="ValueError", error=str(e)), b""
        return protocol.ServiceReply(ok=True, result=result), body

    def _write(self, database: str, lines: str, no_sync: bool) -> protocol.ServiceReply:
        if database == INTERNAL_DB:
            return protocol.ServiceReply(ok=False, error_type="Exception", error="Python plugins cannot write to the _internal database")
        try:
            self.database.write_lp(database, lines, precision="ns", accept_partial=False, no_sync=no_sync)
        except Exception as e:
            log.info("write_sync to %s failed: %s", database, e)
            return protocol.ServiceReply(ok=False, error_type="Exception", error=f"error writing line protocol to {database}: {e}")
        return protocol.ServiceReply(ok=True)
