"""A thin layer over CPython 3.13's `_interpreters`: create, exec, destroy isolated interpreters.

Modelled on Lib/concurrent/interpreters (3.14). What it adds for 3.13.0: `exec` turns the
returned excinfo into an `ExecutionFailed` exception, and an excinfo whose type is None (3.13.0
loses a MemoryError's details, reference §8 bug 1) becomes a MemoryError report instead of a
crash in the error path.
"""

from __future__ import annotations

import _interpreters


class InterpreterError(Exception):
    """An interpreter could not be created, used or destroyed."""


class ExecutionFailed(InterpreterError):
    """Code run in an interpreter raised; `type_name`, `message` and `details` describe it."""

    def __init__(self, type_name: str, message: str, details: str):
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.details = details


def _raise_for(excinfo) -> None:
    if excinfo is None:
        return
    if excinfo.type is None:
        raise ExecutionFailed("MemoryError", "out of memory (details lost by CPython 3.13.0)", "MemoryError")
    details = getattr(excinfo, "errdisplay", None) or excinfo.formatted or ""
    raise ExecutionFailed(excinfo.type.__name__, excinfo.msg or "", details)


class Interpreter:
    """One isolated interpreter (own GIL, own obmalloc, no fork/exec, no daemon threads).

    Only one thread may run code in it at a time; callers serialize.
    """

    def __init__(self) -> None:
        """Create the interpreter. Blocks ~8 ms. Raises InterpreterError on failure."""
        try:
            self.id = _interpreters.create("isolated")
        except Exception as e:
            raise InterpreterError(f"cannot create an isolated interpreter: {e}") from e
        self._closed = False

    def exec(self, code, shared: dict | None = None) -> None:
        """Run `code` in the interpreter's __main__, on the calling thread, after binding `shared`.

        `code` is a str or an argument-less, closure-less function (its code runs against the
        interpreter's __main__ globals). `shared` values must be shareable (None, bool, int,
        float, str, bytes, tuples of those, memoryview — the latter only once the interpreter
        has imported `_interpreters`). Blocks until the code finishes. Returns None; raises
        ExecutionFailed if the code raised, InterpreterError if the interpreter is unusable.
        """
        try:
            excinfo = _interpreters.exec(self.id, code, shared)
        except _interpreters.InterpreterError as e:
            raise InterpreterError(str(e)) from e
        _raise_for(excinfo)

    def close(self) -> None:
        """Destroy the interpreter. Blocks while its non-daemon threads run (3.13.0): callers
        must first make sure none are alive. Raises InterpreterError if it is running code."""
        if self._closed:
            return
        try:
            _interpreters.destroy(self.id)
        except _interpreters.InterpreterError as e:
            raise InterpreterError(str(e)) from e
        self._closed = True
