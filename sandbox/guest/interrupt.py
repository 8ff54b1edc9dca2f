"""The in-interpreter half of limits: the exception that stops a runaway run, and the thread that raises it.

CPython 3.13 can raise an exception asynchronously in a thread only from the same interpreter
(reference §6a): `PyThreadState_SetAsyncExc` called from the worker's main interpreter hits the
thread's *main-interpreter* state and the plugin never sees it. So every trigger interpreter
starts one "interrupter" thread that sleeps in `os.read` on a pipe (no CPU, no GIL held); the
worker writes a thread ident into the pipe when the host asks it to stop a run, and the
interrupter raises `PluginLimitExceeded` in that thread. Closing the pipe ends the thread.

`PluginLimitExceeded` derives from BaseException so `except Exception` in a plugin cannot swallow
it. A bare `except:`, code that never returns to the interpreter loop (a C loop, a blocking
syscall) or a plugin that keeps catching it still cannot be stopped from in here: the host then
kills the worker process.
"""

import ctypes
import os
import sys
import threading

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = [ctypes.c_ulong, ctypes.py_object]
_set_async_exc.restype = ctypes.c_int

SWITCH_INTERVAL = 0.001  # seconds; see start()

_lock = threading.Lock()
_running_ident = None  # the thread running plugin code right now, else None


class PluginLimitExceeded(BaseException):
    """Raised inside a plugin's run when it passed one of its trigger's limits."""


def entering(ident):
    """Mark plugin code as running on thread `ident` (interrupts now target it)."""
    global _running_ident
    with _lock:
        _running_ident = ident


def leaving():
    """Mark plugin code as finished: an interrupt arriving from now on is ignored, so it can
    never land in the runtime's own reply path."""
    global _running_ident
    with _lock:
        _running_ident = None


def interrupt():
    """Raise PluginLimitExceeded in the thread running plugin code, if any. Returns whether one was hit."""
    with _lock:
        if _running_ident is None:
            return False
        return _set_async_exc(_running_ident, PluginLimitExceeded) == 1


def _serve(read_fd):
    try:
        while os.read(read_fd, 64):
            interrupt()
    finally:
        os.close(read_fd)


def start(read_fd):
    """Start the interrupter thread on `read_fd` (it owns and closes the fd). Returns the thread;
    it ends when the pipe's write end is closed.

    The interrupter needs this interpreter's GIL to raise, and a spinning plugin keeps it for a
    whole switch interval (5 ms by default) before yielding; the interval is lowered to
    SWITCH_INTERVAL. Since 3.12 each own-GIL interpreter has its own interval, so only threads of
    this interpreter (a plugin's own, the interrupter) switch more often.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
    thread = threading.Thread(target=_serve, args=(read_fd,), name="plughost-interrupter")
    thread.start()
    return thread
