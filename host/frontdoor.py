"""The front door: one listening port for the HTTP API and Arrow Flight, sorted by each connection's first bytes.

InfluxDB 3 answers HTTP and Flight (gRPC) on one port, and its clients connect to that port for
both. uvicorn speaks HTTP/1.1 only, and a gRPC client always opens with the HTTP/2 client
preface (prior knowledge, no Upgrade), so the first bytes decide, read with MSG_PEEK so
nothing is consumed:

- the preface: the connection is spliced to the Flight server on its internal loopback port,
  by two threads calling splice(2), so the bytes never enter Python;
- anything else: the socket goes to uvicorn's HTTP protocol on the event loop, set up exactly
  as uvicorn's own listener would have set it up. From then on the front door costs HTTP nothing.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("plughost.frontdoor")

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_ACCEPT_BATCH = 100  # connections accepted per wake-up, as asyncio's own listener does
_ACCEPT_RETRY_SECONDS = 1.0  # after running out of file descriptors
_PARTIAL_PREFACE_POLL_SECONDS = 0.01
_PARTIAL_PREFACE_SECONDS = 5.0  # a connection that stops inside the preface goes to HTTP, which refuses it
_UPSTREAM_CONNECT_SECONDS = 5.0
_SPLICE_CHUNK = 1 << 20
_PIPE_SIZE = 1 << 20


class FrontDoor:
    """Accepts on `listener`; relays gRPC connections to `flight_address`, hands the rest to HTTP.

    Lives on one asyncio event loop: `open()` and `close()` are called from the loop's thread
    and never block. The relays run on threads of their own.
    """

    def __init__(self, listener: socket.socket, flight_address: tuple[str, int]):
        self.listener = listener
        self.flight_address = flight_address
        self._http_protocol: Callable[[], asyncio.Protocol] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, socket.socket] = {}  # accepted, first bytes not here yet
        self._handoffs: set[asyncio.Task] = set()
        self._closed = False

    def open(self, http_protocol: Callable[[], asyncio.Protocol]) -> None:
        """Start accepting on the running loop; `http_protocol()` makes the protocol of one HTTP connection."""
        self._http_protocol = http_protocol
        self._loop = asyncio.get_running_loop()
        self.listener.setblocking(False)
        self._loop.add_reader(self.listener.fileno(), self._accept)

    def serve_uvicorn(self, server) -> None:
        """Serve `server`'s (a started `uvicorn.Server`) HTTP protocol, and let its shutdown close the door.

        Call on the loop, after `server.startup(sockets=[])`: uvicorn then listens on nothing
        itself, and its shutdown calls `close()` and `wait_closed()` like for its own listeners.
        """
        config = server.config
        self.open(functools.partial(
            config.http_protocol_class, config=config, server_state=server.server_state,
            app_state=server.lifespan.state,
        ))
        server.servers.append(self)

    def close(self) -> None:
        """Stop accepting and drop connections not yet sorted. Relays already running go on."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None:
            self._loop.remove_reader(self.listener.fileno())
            for fd, connection in self._waiting.items():
                self._loop.remove_reader(fd)
                connection.close()
        self._waiting.clear()
        self.listener.close()

    async def wait_closed(self) -> None:
        """Return once connections being handed to HTTP are handed (HTTP then tracks them itself)."""
        if self._handoffs:
            await asyncio.wait(self._handoffs)

    # -- on the event loop --

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                connection, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:
                if error.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.error("cannot accept connections: %s; retrying in %.0f s", error, _ACCEPT_RETRY_SECONDS)
                self._loop.remove_reader(self.listener.fileno())
                self._loop.call_later(_ACCEPT_RETRY_SECONDS, self._resume_accepting)
                return
            connection.setblocking(False)
            self._sort(connection)

    def _resume_accepting(self) -> None:
        if not self._closed:
            self._loop.add_reader(self.listener.fileno(), self._accept)

    def _sort(self, connection: socket.socket, give_up_at: float | None = None) -> None:
        """Route `connection` by its first bytes, or wait for them without consuming any.

        `give_up_at` is the loop time after which a connection still part-way through the
        preface goes to HTTP; it is set when the first part arrives.
        """
        if self._closed:
            connection.close()
            return
        try:
            head = connection.recv(len(HTTP2_PREFACE), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            fd = connection.fileno()
            self._waiting[fd] = connection
            self._loop.add_reader(fd, self._readable, fd)
            return
        except OSError:
            connection.close()
            return
        if not head:
            connection.close()
        elif head == HTTP2_PREFACE:
            _Relay(connection, self.flight_address).start()
        elif not HTTP2_PREFACE.startswith(head):
            self._hand_to_http(connection)
        else:
            # part of the preface: the rest is in flight; the bytes stay readable, so poll, not select
            give_up_at = give_up_at or self._loop.time() + _PARTIAL_PREFACE_SECONDS
            if self._loop.time() < give_up_at:
                self._loop.call_later(_PARTIAL_PREFACE_POLL_SECONDS, self._sort, connection, give_up_at)
            else:
                self._hand_to_http(connection)

    def _readable(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        connection = self._waiting.pop(fd, None)
        if connection is not None:
            self._sort(connection)

    def _hand_to_http(self, connection: socket.socket) -> None:
        task = self._loop.create_task(self._connect_http(connection))
        self._handoffs.add(task)
        task.add_done_callback(self._handoffs.discard)

    async def _connect_http(self, connection: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._http_protocol, connection)
        except OSError:
            connection.close()


class _Relay:
    """One gRPC client connection, spliced both ways to the Flight server until both sides are done.

    A thread connects upstream and then pumps client → Flight; a second pumps Flight → client.
    The end of either direction, or an error in it, ends both.
    """

    def __init__(self, client: socket.socket, upstream_address: tuple[str, int]):
        self.client = client
        self.upstream_address = upstream_address
        self.upstream: socket.socket | None = None
        self._running = 2
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._run, name="plughost-flight-relay", daemon=True).start()

    def _run(self) -> None:
        self.client.setblocking(True)
        try:
            self.upstream = socket.create_connection(self.upstream_address, timeout=_UPSTREAM_CONNECT_SECONDS)
        except OSError as error:
            log.error("cannot reach the Flight server at %s:%d: %s", *self.upstream_address, error)
            self.client.close()
            return
        self.upstream.settimeout(None)
        for sock in (self.client, self.upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._pump, args=(self.upstream, self.client),
                         name="plughost-flight-relay", daemon=True).start()
        self._pump(self.client, self.upstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:
                pass  # above /proc/sys/fs/pipe-max-size: the default 64 KiB pipe only means more calls
            while moved := os.splice(source.fileno(), write_end, _SPLICE_CHUNK, flags=os.SPLICE_F_MOVE):
                while moved:
                    moved -= os.splice(read_end, sink.fileno(), moved, flags=os.SPLICE_F_MOVE)
        except OSError:
            pass  # a reset or a closed peer ends the connection like an end of stream does
        finally:
            # HTTP/2 peers never half-close: either side's end is the connection's end, so wake
            # the other pump too (it may be blocked reading a peer that waits forever)
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            os.close(read_end)
            os.close(write_end)
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self.client.close()
                self.upstream.close()
