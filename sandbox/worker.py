"""The plugin worker process: one thread and one isolated interpreter per trigger, flush mappings.

Started by the host as `python -m sandbox.worker --control-fd N`. The main
thread reads control messages (`sandbox.protocol`); each `Load` starts a `TriggerThread` that
owns the trigger's channel and its interpreter (or, in process mode, runs the plugin in this
process's main interpreter). Flush segments arrive as memfds on run requests, are mapped
read-only once per worker, and every trigger's interpreter gets read-only views of that one
mapping. When the host goes away, the worker exits at once; it always leaves through
`os._exit`, because 3.13.0 can hang finalizing interpreters that still have threads.
"""

from __future__ import annotations

import argparse
import marshal
import mmap
import os
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

import msgspec

from sandbox import protocol
from sandbox.guest import framing
from sandbox.interpreters import ExecutionFailed, Interpreter, InterpreterError

ROOT = str(Path(__file__).resolve().parent.parent)
CLOSE_DEADLINE = 5.0  # seconds a closed trigger's own threads get before its interpreter is abandoned
_run_request = msgspec.json.Decoder(protocol.RunRequest)
_flush_layout = msgspec.json.Decoder(protocol.FlushLayout)
_json = msgspec.json.Encoder()


class FlushMappings:
    """Flush segments mapped in this worker, by flush id, with their layouts; thread-safe.

    A layout is kept marshalled: it was validated here (msgspec) and the plugin side decodes
    marshal far faster than JSON.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._maps: dict[int, tuple[bytes, memoryview]] = {}

    def add(self, flush_id: int, fd: int, layout_json: bytes) -> None:
        """Map the memfd read-only unless already mapped; always closes `fd`.

        Raises msgspec.ValidationError for a malformed layout.
        """
        try:
            with self._lock:
                if flush_id in self._maps:
                    return
                layout = marshal.dumps(msgspec.to_builtins(_flush_layout.decode(layout_json)))
                segment = mmap.mmap(fd, os.fstat(fd).st_size, prot=mmap.PROT_READ)
                self._maps[flush_id] = (layout, memoryview(segment).toreadonly())
        finally:
            os.close(fd)

    def get(self, flush_id: int) -> tuple[bytes, memoryview] | None:
        with self._lock:
            return self._maps.get(flush_id)

    def release(self, flush_id: int) -> None:
        """Forget a flush; the mapping goes when the last interpreter view of it is released."""
        with self._lock:
            self._maps.pop(flush_id, None)


def _run_in_interpreter():
    """One run, executed inside the trigger's interpreter against its __main__ globals."""
    global _plughost_request, _plughost_payload, _plughost_flush
    try:
        _plughost_runner.run(_plughost_request, _plughost_payload, _plughost_flush)  # noqa: F821
    finally:
        del _plughost_request, _plughost_payload, _plughost_flush


_BOOTSTRAP = """
import sys
sys.path.insert(0, _plughost_root)
import _interpreters  # lets this interpreter receive memoryviews
from sandbox.guest import runner as _plughost_runner
del _plughost_root
_plughost_runner.install(_plughost_config, _plughost_reply_fd, True)
del _plughost_config, _plughost_reply_fd
"""


class SubinterpreterHost:
    """Runs a trigger's plugin side in its own isolated interpreter."""

    def __init__(self) -> None:
        self.interpreter = Interpreter()

    def install(self, config: bytes, reply_fd: int) -> None:
        self.interpreter.exec(
            _BOOTSTRAP, {"_plughost_root": ROOT, "_plughost_config": config, "_plughost_reply_fd": reply_fd}
        )

    def run(self, call: tuple, payload: bytes, flush: memoryview | None) -> None:
        self.interpreter.exec(
            _run_in_interpreter,
            {"_plughost_request": call, "_plughost_payload": payload, "_plughost_flush": flush},
        )

    def shutdown(self, deadline: float) -> None:
        """Destroy the interpreter once the plugin's threads end; if some outlive `deadline`
        seconds it is left alone (destroying it would block), until the worker exits."""
        try:
            self.interpreter.exec("_plughost_runner.shutdown(_plughost_deadline)", {"_plughost_deadline": deadline})
        except InterpreterError as e:
            print(f"plughost worker: {e}", file=sys.stderr)
            return
        self.interpreter.close()


class MainInterpreterHost:
    """Process mode: the plugin side runs in this worker's main interpreter (C extensions work)."""

    def __init__(self) -> None:
        from sandbox.guest import runner

        self.runner = runner

    def install(self, config: bytes, reply_fd: int) -> None:
        self.runner.install(config, reply_fd, False)

    def run(self, call: tuple, payload: bytes, flush: memoryview | None) -> None:
        self.runner.run(call, payload, memoryview(flush) if flush is not None else None)

    def shutdown(self, deadline: float) -> None:
        try:
            self.runner.shutdown(deadline)
        except RuntimeError as e:
            print(f"plughost worker: {e}", file=sys.stderr)


class TriggerThread(threading.Thread):
    """Owns one trigger: its channel, its interpreter; serves runs until the channel closes."""

    def __init__(self, load: protocol.Load, channel: socket.socket, flushes: FlushMappings) -> None:
        super().__init__(name=f"trigger-{load.trigger_id}-{load.config.trigger_name}", daemon=True)
        self.load = load
        self.channel = channel
        self.flushes = flushes
        self.host: SubinterpreterHost | MainInterpreterHost | None = None
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self.deadline = float("inf")  # monotonic time by which a Shutdown wants this trigger gone

    def _fail(self, reply: msgspec.Struct) -> None:
        framing.send(self.channel, _json.encode(reply))

    def _fail_run(self, error: str, details: str | None) -> None:
        self._fail(protocol.RunReply(ok=False, error=error, traceback=details, logs=[], writes={}, response=None, cpu_time=0.0))

    def run(self) -> None:
        try:
            self._serve()
        except framing.ChannelClosed:
            pass
        except Exception:
            traceback.print_exc()
        finally:
            self._close()

    def _serve(self) -> None:
        reply_fd = os.dup(self.channel.fileno())
        try:
            self.host = MainInterpreterHost() if self.load.main_interpreter else SubinterpreterHost()
            self.host.install(msgspec.json.encode(self.load.config), reply_fd)
        except (InterpreterError, ImportError) as e:
            os.close(reply_fd)
            details = e.details if isinstance(e, ExecutionFailed) else traceback.format_exc()
            self._fail(protocol.LoadReply(ok=False, error=str(e), traceback=details))
            return
        while not self.stopping.is_set():
            self._serve_one()

    def _serve_one(self) -> None:
        """Receive one run request and run it; no reference to the flush outlives the call."""
        header, payload, fds = framing.receive_with_fds(self.channel)
        request = _run_request.decode(header)
        flush = None
        if request.kind == "writes":
            if request.attach and fds:
                self.flushes.add(request.flush_id, fds.pop(0), bytes(payload))
            mapped = self.flushes.get(request.flush_id)
            if mapped is None:
                self._fail_run(f"flush {request.flush_id} is not mapped in this worker", None)
                return
            payload, flush = mapped
        for fd in fds:
            os.close(fd)
        call = (
            request.kind,
            request.table,
            None if request.args is None else tuple(request.args.items()),
            request.call_time,
            tuple(request.query_params.items()),
            tuple(request.headers.items()),
        )
        try:
            self.host.run(call, bytes(payload), flush)
        except ExecutionFailed as e:
            self._fail_run(str(e), e.details)

    def _close(self) -> None:
        deadline = self.deadline if self.stopping.is_set() else time.monotonic() + CLOSE_DEADLINE
        try:
            if self.host is not None:
                self.host.shutdown(max(0.0, deadline - time.monotonic()))
        finally:
            self.channel.close()
            self.finished.set()


def _serve_control(control: socket.socket) -> None:
    flushes = FlushMappings()
    triggers: list[TriggerThread] = []
    framing_buffer = bytearray()
    pending_fds: list[int] = []
    while True:
        data, fds, _, _ = socket.recv_fds(control, 65536, framing.MAX_FDS)
        if not data:
            os._exit(0)
        framing_buffer += data
        pending_fds.extend(fds)
        while len(framing_buffer) >= protocol.CONTROL_LENGTH.size:
            (length,) = protocol.CONTROL_LENGTH.unpack_from(framing_buffer)
            end = protocol.CONTROL_LENGTH.size + length
            if len(framing_buffer) < end:
                break
            message = protocol.decode_control(bytes(framing_buffer[protocol.CONTROL_LENGTH.size:end]))
            del framing_buffer[:end]
            if isinstance(message, protocol.Load):
                channel = socket.socket(fileno=pending_fds.pop(0))
                thread = TriggerThread(message, channel, flushes)
                triggers.append(thread)
                thread.start()
            elif isinstance(message, protocol.ReleaseFlush):
                flushes.release(message.flush_id)
            elif isinstance(message, protocol.Shutdown):
                _shutdown(triggers, message.deadline)


def _shutdown(triggers: list[TriggerThread], deadline: float) -> None:
    end = time.monotonic() + deadline
    for thread in triggers:
        thread.deadline = end
        thread.stopping.set()
        try:
            thread.channel.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    for thread in triggers:
        thread.finished.wait(max(0.0, end - time.monotonic()))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.worker")
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    control = socket.socket(fileno=args.control_fd)
    control.sendall(protocol.encode_control(protocol.Ready(pid=os.getpid())))
    try:
        _serve_control(control)
    except BaseException:
        traceback.print_exc()
    os._exit(1)


if __name__ == "__main__":
    main()
