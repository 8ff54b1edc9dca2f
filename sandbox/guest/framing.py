"""Frames of a JSON header plus a raw payload, the format of the trigger and services channels.

A frame is `<u32 header length><u32 payload length><header><payload>`, little-endian. The
header's schema lives in `sandbox.protocol`; this module only moves bytes, so the host, the
worker and the plugin side all share it.
"""

import array
import os
import socket
import struct

PREFIX = struct.Struct("<II")
MAX_FDS = 4
_READ_SIZE = 1 << 16
_FDS_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


class ChannelClosed(ConnectionError):
    """The peer closed the channel (or died) before a whole frame arrived."""


def pack(header: bytes, payload: bytes = b"") -> bytes:
    """Return the frame for `header` and `payload` as one bytes object."""
    return PREFIX.pack(len(header), len(payload)) + header + payload


def send(sock: socket.socket, header: bytes, payload=b"", fds=()) -> None:
    """Send one frame; `fds` ride as SCM_RIGHTS on its first byte. Blocks until sent."""
    prefix = PREFIX.pack(len(header), len(payload))
    if fds:
        socket.send_fds(sock, [prefix + header], list(fds))
        if payload:
            sock.sendall(payload)
    elif len(payload) < 65536:
        sock.sendall(prefix + header + payload)
    else:
        sock.sendall(prefix + header)
        sock.sendall(payload)


def _read_into(sock: socket.socket, buf: bytearray, got: int) -> None:
    view = memoryview(buf)
    while got < len(buf):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ChannelClosed("channel closed in the middle of a frame")
        got += n


def _split(sock: socket.socket, data: bytes) -> tuple[bytes, memoryview]:
    """Complete the frame that `data` (at least one byte) starts; return (header, payload view)."""
    while len(data) < PREFIX.size:
        more = sock.recv(PREFIX.size - len(data))
        if not more:
            raise ChannelClosed("channel closed in the middle of a frame")
        data += more
    header_length, payload_length = PREFIX.unpack_from(data)
    total = PREFIX.size + header_length + payload_length
    if len(data) > total:
        raise ChannelClosed("peer sent more than one frame at once")
    body = memoryview(data)[PREFIX.size:]
    if len(data) < total:
        buffer = bytearray(total - PREFIX.size)
        buffer[:len(body)] = body
        _read_into(sock, buffer, len(body))
        body = memoryview(buffer)
    return bytes(body[:header_length]), body[header_length:]


def receive(sock: socket.socket) -> tuple[bytes, memoryview]:
    """Block until one frame arrives; return (header, payload view). Raises ChannelClosed on EOF.

    Channels carry one frame at a time in each direction (request, then reply), so a single
    large read never takes bytes of a following frame.
    """
    data = sock.recv(_READ_SIZE)
    if not data:
        raise ChannelClosed("channel closed")
    return _split(sock, data)


def receive_with_fds(sock: socket.socket) -> tuple[bytes, memoryview, list[int]]:
    """Like `receive`, also returning the fds that came with the frame (the caller owns them)."""
    data, ancillary, _, _ = sock.recvmsg(_READ_SIZE, _FDS_SPACE)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
    if not data:
        for fd in fds:
            _close_quietly(fd)
        raise ChannelClosed("channel closed")
    try:
        header, payload = _split(sock, data)
    except BaseException:
        for fd in fds:
            _close_quietly(fd)
        raise
    return header, payload, fds


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
