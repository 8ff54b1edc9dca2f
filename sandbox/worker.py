"""The plugin worker process: one thread and one isolated interpreter per trigger, flush mappings.

Started by the host as `python -m sandbox.worker --control-fd N`. The main
thread reads control messages (`sandbox.protocol`); each `Load` starts a `TriggerThread` that
owns the trigger's channel and its interpreter (or, in process mode, runs the plugin in this
process's main interpreter). Flush segments arrive as memfds on run requests, are mapped
read-only once per worker, and every trigger's interpreter gets read-only views of that one
mapping. When the host goes away, the worker exits at once; it always leaves through
`os._exit`, because 3.13.0 can hang finalizing interpreters that still have threads.

Limits are decided by the host (`sandbox.watchdog`); the worker only carries them out: an
`Interrupt` makes the trigger's interpreter raise PluginLimitExceeded in the running plugin
(`sandbox.guest.interrupt`), and a process-mode worker whose trigger has `max_memory` caps its own
address space (RLIMIT_AS), so one huge allocation fails with MemoryError instead of being made.
"""

from __future__ import annotations

import argparse
import marshal
import mmap
import os
import resource
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import msgspec

from sandbox import protocol
from sandbox.guest import framing
from sandbox.interpreters import ExecutionFailed, Interpreter, InterpreterError

ROOT = str(Path(__file__).resolve().parent.parent)
CLOSE_DEADLINE = 5.0  # seconds a closed trigger's own threads get before its interpreter is abandoned
_run_request = msgspec.json.Decoder(protocol.RunRequest)
_flush_layout = msgspec.json.Decoder(protocol.FlushLayout)
_json = msgspec.json.Encoder()


class AddressSpace:
    """This process's RLIMIT_AS while a process-mode trigger with `max_memory` lives here.

    The cap is the address space in use once the plugin has loaded, plus `max_memory`, plus the
    size of every shared flush mapped meanwhile (flushes are not the plugin's memory). Threads a
    plugin starts reserve their stacks inside the cap. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limit: int | None = None

    def cap(self, allowance: int) -> None:
        """Let the process grow by at most `allowance` bytes of address space from now on."""
        with open("/proc/self/statm") as statm:
            in_use = int(statm.read().split()[0]) * mmap.PAGESIZE
        with self._lock:
            self._limit = in_use + allowance
            self._apply()

    def grow(self, size: int) -> None:
        with self._lock:
            if self._limit is not None:
                self._limit += size
                self._apply()

    def shrink(self, size: int) -> None:
        with self._lock:
            if self._limit is not None:
                self._limit -= size
                self._apply()

    def _apply(self) -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = self._limit if hard == resource.RLIM_INFINITY else min(self._limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class FlushMappings:
    """Flush segments mapped in this worker, by flush id, with their layouts; thread-safe.

    A layout is kept marshalled: it was validated here (msgspec) and the plugin side decodes
    marshal far faster than JSON.
    """

    def __init__(self, address_space: AddressSpace) -> None:
        self._lock = threading.Lock()
        self._maps: dict[int, tuple[bytes, memoryview]] = {}
        self._address_space = address_space

    def add(self, flush_id: int, fd: int, layout_json: bytes) -> None:
        """Map the memfd read-only unless already mapped; always closes `fd`.

        Raises msgspec.ValidationError for a malformed layout.
        """
        try:
            with self._lock:
                if flush_id in self._maps:
                    return
                layout = marshal.dumps(msgspec.to_builtins(_flush_layout.decode(layout_json)))
                size = os.fstat(fd).st_size
                self._address_space.grow(size)
                segment = mmap.mmap(fd, size, prot=mmap.PROT_READ)
                self._maps[flush_id] = (layout, memoryview(segment).toreadonly())
        finally:
            os.close(fd)

    def get(self, flush_id: int) -> tuple[bytes, memoryview] | None:
        with self._lock:
            return self._maps.get(flush_id)

    def release(self, flush_id: int) -> None:
        """Forget a flush; the mapping goes when the last interpreter view of it is released."""
        with self._lock:
            mapped = self._maps.pop(flush_id, None)
        if mapped is not None:
            self._address_space.shrink(mapped[1].nbytes)


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
_plughost_runner.install(_plughost_config, _plughost_reply_fd, _plughost_interrupt_fd, True)
del _plughost_config, _plughost_reply_fd, _plughost_interrupt_fd
"""


class SubinterpreterHost:
    """Runs a trigger's plugin side in its own isolated interpreter."""

    def __init__(self) -> None:
        self.interpreter = Interpreter()

    def install(self, config: bytes, reply_fd: int, interrupt_fd: int) -> None:
        self.interpreter.exec(_BOOTSTRAP, {
            "_plughost_root": ROOT, "_plughost_config": config, "_plughost_reply_fd": reply_fd,
            "_plughost_interrupt_fd": interrupt_fd,
        })

    def run(self, call: tuple, payload: bytes, flush: memoryview | None) -> None:
        self.interpreter.exec(
            _run_in_interpreter,
            {"_plughost_request": call, "_plughost_payload": payload, "_plughost_flush": flush},
        )

    def measure(self) -> None:
        self.interpreter.exec("_plughost_runner.measure()")

    def shutdown(self, deadline: float) -> str | None:
        """Destroy the interpreter once the plugin's threads end. If some outlive `deadline`
        seconds it is left alone (destroying it would block) until the worker exits, and the
        reason is returned; None when it was destroyed."""
        for attempt in range(2):
            try:
                self.interpreter.exec("_plughost_runner.shutdown(_plughost_deadline)", {"_plughost_deadline": deadline})
                break
            except ExecutionFailed as e:
                # An interrupt that was sent as the last run ended fires at the next exec: this one.
                if e.type_name == "PluginLimitExceeded" and attempt == 0:
                    continue
                return e.message or str(e)
            except InterpreterError as e:
                return str(e)
        self.interpreter.close()
        return None


class MainInterpreterHost:
    """Process mode: the plugin side runs in this worker's main interpreter (C extensions work)."""

    def __init__(self) -> None:
        from sandbox.guest import runner

        self.runner = runner

    def install(self, config: bytes, reply_fd: int, interrupt_fd: int) -> None:
        self.runner.install(config, reply_fd, interrupt_fd, False)

    def run(self, call: tuple, payload: bytes, flush: memoryview | None) -> None:
        self.runner.run(call, payload, memoryview(flush) if flush is not None else None)

    def measure(self) -> None:
        self.runner.measure()

    def shutdown(self, deadline: float) -> str | None:
        try:
            self.runner.shutdown(deadline)
        except RuntimeError as e:
            return str(e)
        return None


class TriggerThread(threading.Thread):
    """Owns one trigger: its channel, its interpreter; serves runs until the channel closes."""

    def __init__(self, load: protocol.Load, channel: socket.socket, flushes: FlushMappings,
                 address_space: AddressSpace, report: Callable[[protocol.ControlMessage], None]) -> None:
        super().__init__(name=f"trigger-{load.trigger_id}-{load.config.trigger_name}", daemon=True)
        self.load = load
        self.channel = channel
        self.flushes = flushes
        self.address_space = address_space
        self.report = report
        self.host: SubinterpreterHost | MainInterpreterHost | None = None
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self.deadline = float("inf")  # monotonic time by which a Shutdown wants this trigger gone
        self._interrupt_read, self._interrupt_write = os.pipe()
        self._interrupt_lock = threading.Lock()

    def interrupt(self) -> None:
        """Ask the trigger's interpreter to raise PluginLimitExceeded in the running plugin, if
        one is running. Never blocks on the plugin."""
        with self._interrupt_lock:
            if self._interrupt_write >= 0:
                os.write(self._interrupt_write, b"!")

    def _close_interrupter(self) -> None:
        """Closing the pipe ends the interrupter thread, which the interpreter's shutdown joins."""
        with self._interrupt_lock:
            if self._interrupt_write >= 0:
                os.close(self._interrupt_write)
                self._interrupt_write = -1

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
            interrupt_fd, self._interrupt_read = self._interrupt_read, -1  # the interpreter owns it now
            self.host.install(msgspec.json.encode(self.load.config), reply_fd, interrupt_fd)
        except (InterpreterError, ImportError) as e:
            os.close(reply_fd)
            details = e.details if isinstance(e, ExecutionFailed) else traceback.format_exc()
            self._fail(protocol.LoadReply(ok=False, error=str(e), traceback=details))
            return
        if self.load.memory_cap is not None:
            self.address_space.cap(self.load.memory_cap)
        while not self.stopping.is_set():
            self._serve_one()

    def _serve_one(self) -> None:
        """Receive one run request and run it; no reference to the flush outlives the call."""
        header, payload, fds = framing.receive_with_fds(self.channel)
        request = _run_request.decode(header)
        if request.kind == "measure":
            try:
                self.host.measure()
            except ExecutionFailed as e:
                self._fail_run(str(e), e.details)
            return
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
        self._close_interrupter()
        if self._interrupt_read >= 0:  # the interpreter never took it
            os.close(self._interrupt_read)
        try:
            if self.host is not None:
                stranded = self.host.shutdown(max(0.0, deadline - time.monotonic()))
                if stranded is not None:
                    print(f"plughost worker: trigger {self.load.config.trigger_name}: {stranded}", file=sys.stderr)
                    if not self.stopping.is_set():
                        self.report(protocol.Abandoned(trigger_id=self.load.trigger_id, reason=stranded))
        finally:
            self.channel.close()
            self.finished.set()


def _serve_control(control: socket.socket) -> None:
    send_lock = threading.Lock()

    def report(message: protocol.ControlMessage) -> None:
        with send_lock:
            try:
                control.sendall(protocol.encode_control(message))
            except OSError:
                pass  # the host is gone; this worker exits as soon as the main thread notices

    address_space = AddressSpace()
    flushes = FlushMappings(address_space)
    triggers: dict[int, TriggerThread] = {}
    framing_buffer = bytearray()
    pending_fds: list[int] = []
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 65536, framing.MAX_FDS)
        except ConnectionResetError:
            data, fds = b"", []
        if not data:  # the host is gone
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
                thread = TriggerThread(message, channel, flushes, address_space, report)
                for trigger_id in [i for i, t in triggers.items() if t.finished.is_set()]:
                    del triggers[trigger_id]
                triggers[message.trigger_id] = thread
                thread.start()
            elif isinstance(message, protocol.Interrupt):
                thread = triggers.get(message.trigger_id)
                if thread is not None:
                    thread.interrupt()
            elif isinstance(message, protocol.ReleaseFlush):
                flushes.release(message.flush_id)
            elif isinstance(message, protocol.Shutdown):
                _shutdown(list(triggers.values()), message.deadline)


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
