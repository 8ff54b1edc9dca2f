"""The persisted trigger definitions: one JSON file in the data directory, replaced atomically
(write, fsync, rename, fsync the directory) on every change, so a crash leaves either the old or
the new catalog and never half of one.

The file is the msgspec encoding of `CatalogFile`. It survives restarts, including `disabled`
set by `error_behavior=disable` (InfluxDB 3 forgets that one; see docs/triggers.md).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Literal

import msgspec

from sandbox.limits import RunLimits
from triggers.schedule import DurationError, parse_duration

ErrorBehavior = Literal["log", "retry", "disable"]
Isolation = Literal["auto", "interpreter", "process"]

_MEMORY_UNITS = {
    "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
}


class SettingsError(ValueError):
    """A trigger setting has a value it cannot take; the message names the setting."""


class TriggerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a trigger runs. `run_async` and `error_behavior` are InfluxDB 3's; the limits
    (seconds, seconds, bytes; None = the server's default) and `isolation` are ours."""

    run_async: bool = False
    error_behavior: ErrorBehavior = "log"
    max_run_time: float | None = None
    max_cpu_time: float | None = None
    max_memory: int | None = None
    isolation: Isolation = "auto"

    def limits(self) -> RunLimits:
        """The trigger's own limits; unset ones fall back to the plugin runtime's defaults."""
        return RunLimits(max_run_time=self.max_run_time, max_cpu_time=self.max_cpu_time, max_memory=self.max_memory)


def seconds_setting(name: str, value: float | int | str | None) -> float | None:
    """A time limit given as seconds (number) or a humantime string (`30s`, `2m`); None = no limit."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise SettingsError(f"{name} must be a number of seconds or a duration like '30s', not {value!r}")
    if isinstance(value, str):
        try:
            seconds = parse_duration(value) / 1e9
        except DurationError as error:
            raise SettingsError(f"{name}: couldn't parse {value!r} as a duration: {error}") from None
    else:
        seconds = float(value)
    if not seconds > 0 or seconds == float("inf"):
        raise SettingsError(f"{name} must be a positive, finite duration, not {value!r}")
    return seconds


def memory_setting(name: str, value: int | str | None) -> int | None:
    """A memory limit given as bytes (integer) or a size string (`256MiB`, `1GB`); None = no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or isinstance(value, float):
        raise SettingsError(f"{name} must be a whole number of bytes or a size like '256MiB', not {value!r}")
    if isinstance(value, str):
        text = value.strip()
        digits = len(text) - len(text.lstrip("0123456789"))
        unit = text[digits:].strip().lower()
        if digits == 0 or unit not in _MEMORY_UNITS and unit != "":
            raise SettingsError(
                f"{name}: couldn't parse {value!r} as a size; use bytes or a unit of "
                "B, KB, MB, GB, KiB, MiB, GiB"
            )
        amount = int(text[:digits]) * _MEMORY_UNITS.get(unit, 1)
    else:
        amount = value
    if amount <= 0:
        raise SettingsError(f"{name} must be positive, not {value!r}")
    return amount


class TriggerDefinition(msgspec.Struct, frozen=True):
    """One trigger as created: where it lives, what it runs, when, and how."""

    database_name: str
    trigger_name: str
    plugin_filename: str
    trigger_specification: str  # the canonical string form, e.g. "every:1m"
    trigger_settings: TriggerSettings
    trigger_arguments: dict[str, str] | None
    disabled: bool


class CatalogFile(msgspec.Struct):
    """The on-disk layout of the trigger catalog."""

    format_version: int
    triggers: list[TriggerDefinition]


CATALOG_FORMAT_VERSION = 1


class TriggerNotFound(LookupError):
    """No trigger of that name exists in that database."""

    def __init__(self, database: str, name: str):
        super().__init__(f"the requested resource was not found: trigger {name!r} in database {database!r}")
        self.database = database
        self.name = name


class TriggerExists(Exception):
    """A trigger of that name already exists in that database."""

    def __init__(self, database: str, name: str):
        super().__init__(
            f"attempted to create a resource that already exists: trigger {name!r} in database {database!r}"
        )
        self.database = database
        self.name = name


class CatalogCorrupt(Exception):
    """The catalog file exists but cannot be read; it is left untouched for inspection."""


class TriggerCatalog:
    """All trigger definitions, kept in memory and in one atomically replaced JSON file.

    Every mutation writes the file first and updates memory only after the rename succeeded,
    so a failed write changes nothing. Thread-safe; writers serialise on one lock.
    """

    def __init__(self, path: Path):
        """Open (or start) the catalog at `path`. Blocks on reading the file.

        Raises CatalogCorrupt when the file exists but does not decode.
        """
        self.path = Path(path)
        self._lock = threading.Lock()
        self._triggers: dict[tuple[str, str], TriggerDefinition] = {}
        if self.path.exists():
            try:
                loaded = msgspec.json.decode(self.path.read_bytes(), type=CatalogFile)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                raise CatalogCorrupt(f"trigger catalog {self.path} is unreadable: {error}") from None
            for definition in loaded.triggers:
                self._triggers[(definition.database_name, definition.trigger_name)] = definition

    def all(self) -> list[TriggerDefinition]:
        """Every definition, in creation order."""
        with self._lock:
            return list(self._triggers.values())

    def find(self, database: str, name: str) -> TriggerDefinition | None:
        with self._lock:
            return self._triggers.get((database, name))

    def get(self, database: str, name: str) -> TriggerDefinition:
        """The named definition; raises TriggerNotFound."""
        definition = self.find(database, name)
        if definition is None:
            raise TriggerNotFound(database, name)
        return definition

    def add(self, definition: TriggerDefinition) -> None:
        """Persist a new definition. Blocks on fsync. Raises TriggerExists, OSError."""
        key = (definition.database_name, definition.trigger_name)
        with self._lock:
            if key in self._triggers:
                raise TriggerExists(*key)
            updated = dict(self._triggers)
            updated[key] = definition
            self._write(updated)
            self._triggers = updated

    def remove(self, database: str, name: str) -> TriggerDefinition:
        """Delete a definition and return it. Blocks on fsync. Raises TriggerNotFound, OSError."""
        with self._lock:
            updated = dict(self._triggers)
            definition = updated.pop((database, name), None)
            if definition is None:
                raise TriggerNotFound(database, name)
            self._write(updated)
            self._triggers = updated
            return definition

    def set_disabled(self, database: str, name: str, disabled: bool) -> TriggerDefinition:
        """Persist the `disabled` flag (a no-op write is skipped) and return the definition."""
        with self._lock:
            current = self._triggers.get((database, name))
            if current is None:
                raise TriggerNotFound(database, name)
            if current.disabled == disabled:
                return current
            updated = dict(self._triggers)
            changed = msgspec.structs.replace(current, disabled=disabled)
            updated[(database, name)] = changed
            self._write(updated)
            self._triggers = updated
            return changed

    def _write(self, triggers: dict[tuple[str, str], TriggerDefinition]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = msgspec.json.format(
            msgspec.json.encode(
                CatalogFile(format_version=CATALOG_FORMAT_VERSION, triggers=list(triggers.values()))
            )
        )
        staging = self.path.with_name(self.path.name + ".tmp")
        with open(staging, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staging, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
