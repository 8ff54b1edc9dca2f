"""The host's view of one plugin worker process: spawn it, talk to it, notice its death, stop it.

A `WorkerProcess` owns the control channel (a socketpair whose other end is the worker's
`--control-fd`). A daemon reader thread waits on that channel: it hands each `Abandoned` report
to `on_abandoned`, and when it reaches EOF the worker is gone, its exit status is collected, and
`on_exit` is called (unless the host asked it to stop).
Trigger channels are separate socketpairs handed over with `Load`, so runs never queue behind
the control channel.

The watchdog (`sandbox.watchdog`) stops runaway runs through `interrupt` and, when that is not
enough, `kill_for`, which remembers whose run the worker died for.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import msgspec

from sandbox import procfs, protocol

ROOT = str(Path(__file__).resolve().parent.parent)
READY_TIMEOUT = 60.0


class WorkerError(Exception):
    """A worker could not be started, or is gone."""


def describe_exit(returncode: int) -> str:
    """'plugin worker exited with signal SIGSEGV' / '… with code 3'."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"plugin worker exited with signal {name}"
    return f"plugin worker exited with code {returncode}"


class WorkerProcess:
    """One `python -m sandbox.worker` child. Thread-safe."""

    def __init__(self, label: str, env: dict[str, str], on_exit: Callable[[WorkerProcess], None],
                 on_abandoned: Callable[[WorkerProcess, protocol.Abandoned], None]) -> None:
        self.label = label
        self._env = env
        self._on_exit = on_exit
        self._on_abandoned = on_abandoned
        self._send_lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process: subprocess.Popen | None = None
        self._stopping = False
        self.exited = threading.Event()
        self.pid = 0
        self.base_rss = 0  # resident bytes of the bare worker, before any plugin was loaded
        self.killed_for: int | None = None  # the trigger whose run made the watchdog kill this worker
        self.retired = False  # replaced in its pool slot: triggers move off it, then it stops
        self.interpreters_discarded = 0  # interpreters closed while this worker lived (3.13.0 leaks each)

    def start(self) -> None:
        """Spawn the process and wait until it reports ready. Raises WorkerError."""
        host_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "sandbox.worker", "--control-fd", str(worker_end.fileno())],
                pass_fds=[worker_end.fileno()],
                env=self._env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            worker_end.close()
        self._control = host_end
        host_end.settimeout(READY_TIMEOUT)
        try:
            message = self._read_control()
        except (OSError, WorkerError) as e:
            self.kill()
            raise WorkerError(f"plugin worker {self.label} did not start: {e}") from e
        host_end.settimeout(None)
        if not isinstance(message, protocol.Ready):
            self.kill()
            raise WorkerError(f"plugin worker {self.label} sent {message!r} instead of Ready")
        self.pid = message.pid
        self.base_rss = procfs.resident_bytes(self.pid) or 0
        threading.Thread(target=self._watch, name=f"worker-{self.label}-watch", daemon=True).start()

    def _read_control(self) -> protocol.ControlMessage:
        size = protocol.CONTROL_LENGTH.size
        prefix = self._recv_exact(size)
        (length,) = protocol.CONTROL_LENGTH.unpack(prefix)
        try:
            return protocol.decode_control(self._recv_exact(length))
        except msgspec.DecodeError as e:
            raise WorkerError(f"malformed control message: {e}") from e

    def _recv_exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self._control.recv(size - len(data))
            if not chunk:
                raise WorkerError("control channel closed")
            data += chunk
        return data

    def _watch(self) -> None:
        try:
            while True:
                message = self._read_control()  # EOF means death
                if isinstance(message, protocol.Abandoned):
                    self._on_abandoned(self, message)
        except (OSError, WorkerError):
            pass
        self._process.wait()
        self.exited.set()
        if not self._stopping:
            self._on_exit(self)

    @property
    def alive(self) -> bool:
        return self._process is not None and not self.exited.is_set()

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    def send(self, message: protocol.ControlMessage, fds: list[int] = ()) -> None:
        """Send one control message (with fds). Raises WorkerError if the worker is gone."""
        data = protocol.encode_control(message)
        with self._send_lock:
            try:
                if fds:
                    socket.send_fds(self._control, [data], list(fds))
                else:
                    self._control.sendall(data)
            except OSError as e:
                raise WorkerError(f"plugin worker {self.label} is gone: {e}") from e

    def open_trigger(self, trigger_id: int, config: protocol.LoadConfig, main_interpreter: bool,
                     memory_cap: int | None = None) -> socket.socket:
        """Start a trigger in this worker; return the host end of its channel. `memory_cap`
        (process mode only) caps the worker's address space at what it uses once the plugin
        loaded plus that many bytes.

        Returns at once; the worker answers on the channel with a LoadReply frame.
        """
        host_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.send(protocol.Load(trigger_id=trigger_id, config=config, main_interpreter=main_interpreter,
                                    memory_cap=memory_cap), [worker_end.fileno()])
        except WorkerError:
            host_end.close()
            raise
        finally:
            worker_end.close()
        return host_end

    def interrupt(self, trigger_id: int) -> None:
        """Ask the worker to raise PluginLimitExceeded in the trigger's running plugin; a worker
        that is gone is ignored. Never blocks on the plugin."""
        try:
            self.send(protocol.Interrupt(trigger_id=trigger_id))
        except WorkerError:
            pass

    def kill_for(self, trigger_id: int) -> None:
        """Kill the worker (SIGKILL) because a run of `trigger_id` would not stop."""
        self.killed_for = trigger_id
        self.kill()

    def exit_reason(self, timeout: float) -> str:
        """Wait up to `timeout` s for the process to end and describe how it ended.

        If it is still running after that, it is killed: a worker that closed a trigger channel
        on its own is in an unknown state.
        """
        if not self.exited.wait(timeout):
            self.kill()
            self.exited.wait(timeout)
            return "plugin worker stopped answering and was killed"
        return describe_exit(self._process.returncode)

    def release_flush(self, flush_id: int) -> None:
        """Tell the worker a flush is no longer needed; ignored if the worker is gone."""
        try:
            self.send(protocol.ReleaseFlush(flush_id=flush_id))
        except WorkerError:
            pass

    def begin_stop(self, deadline: float) -> None:
        """Ask the worker to close its triggers (their threads get `deadline` s) and exit."""
        self._stopping = True
        try:
            self.send(protocol.Shutdown(deadline=deadline))
        except WorkerError:
            pass

    def finish_stop(self, until: float) -> None:
        """Wait for the exit until monotonic time `until`, then kill. Never blocks much longer."""
        if self._process is None:
            return
        try:
            self._process.wait(max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            self._process.wait()
        if self._control is not None:
            self._control.close()

    def stop(self, deadline: float) -> None:
        """begin_stop + finish_stop, allowing one extra second for the process to exit."""
        self.begin_stop(deadline)
        self.finish_stop(time.monotonic() + deadline + 1.0)

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            try:
                os.kill(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def worker_environment(plugin_dir: Path) -> dict[str, str]:
    """The environment of a worker: the host's, plus the plugin dir and this package on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("PLUGIN_DIR", str(plugin_dir))
    env.setdefault("INFLUXDB3_PLUGIN_DIR", str(plugin_dir))
    return env
