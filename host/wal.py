"""The write-ahead log: numbered opaque records, appended to segment files and fsync'd in groups.

A WAL is a directory of segment files named after the first sequence number each holds,
``00000000000000000001.wal``, ``00000000000000004711.wal`` ... Each segment starts with an
8-byte magic, then records, each framed as::

    u32 payload length | u32 CRC-32 | u64 sequence | payload        (little-endian)

The CRC covers the payload, then the length and sequence fields. Sequences start at 1 and are
contiguous across segments.

Durability: `append(sync=True)` returns only after the record is fsync'd. Concurrent appenders
share fsyncs (group commit): the thread that starts an fsync covers every record written before
it, so N threads waiting at once cost far fewer than N fsyncs. A new segment is fsync'd with
its directory before any record lands in it, and a full one is fsync'd before the next opens.

Recovery: opening a WAL scans its last segment. A damaged tail there (a record cut short or
failing its CRC, as a crash mid-write leaves it) is cut off, so later appends start clean and
the sequence continues from the last good record. Damage anywhere in an older segment is not a
torn write, and `replay` raises WalCorrupted naming the file and offset.

All methods are thread-safe; `replay` should not run concurrently with `truncate_through`.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import zlib
from pathlib import Path
from typing import Iterator

__all__ = ["Wal", "WalCorrupted"]

_MAGIC = b"PLUGWAL1"
_HEADER = struct.Struct("<IIQ")  # payload length, CRC-32, sequence
_LENGTH_AND_SEQUENCE = struct.Struct("<IQ")
_MAX_PAYLOAD = 0xFFFF_FFFF
_SEGMENT_NAME = re.compile(r"(\d{20})\.wal")


class WalCorrupted(Exception):
    """A WAL segment is damaged where no crash could have damaged it."""

    def __init__(self, path: Path, offset: int, reason: str):
        super().__init__(f"{path}: corrupt WAL at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class _Damaged(Exception):
    """Internal: a record at `offset` is cut short or fails its checks."""

    def __init__(self, offset: int, reason: str):
        self.offset = offset
        self.reason = reason


class Wal:
    """An open write-ahead log in `directory` (created if missing)."""

    def __init__(self, directory: Path, *, segment_bytes: int = 64 * 1024 * 1024):
        """Open or create the log, cutting off a torn tail left by a crash.

        Blocks on disk I/O (reads the last segment, fsyncs). Raises WalCorrupted if the last
        segment does not even start like a segment, and OSError from the file system.
        """
        if segment_bytes <= len(_MAGIC) + _HEADER.size:
            raise ValueError(f"segment_bytes must exceed {len(_MAGIC) + _HEADER.size}")
        self._directory = Path(directory)
        self._segment_bytes = segment_bytes
        # _lock orders writes, sequence numbers and segment changes. _sync_state (never held
        # while taking _lock) tracks group commit: what is durable and who is fsyncing.
        self._lock = threading.Lock()
        self._sync_state = threading.Condition(threading.Lock())
        self._syncing = False
        self._failure: BaseException | None = None

        created = not self._directory.exists()
        self._directory.mkdir(parents=True, exist_ok=True)
        if created:
            _fsync_directory(self._directory.parent)
        self._segments = sorted(
            int(match[1])
            for path in self._directory.iterdir()
            if (match := _SEGMENT_NAME.fullmatch(path.name))
        )
        if not self._segments:
            self._segments.append(1)
            self._fd = self._create_segment(1)
            self._segment_size = len(_MAGIC)
            self._last_sequence = 0
        else:
            self._fd, self._segment_size, self._last_sequence = self._recover_last_segment()
        self._synced_sequence = self._last_sequence

    @property
    def last_sequence(self) -> int:
        """The sequence number of the last record appended (0 for an empty log)."""
        return self._last_sequence

    def append(self, payload: bytes, *, sync: bool = True) -> int:
        """Append one record and return its sequence number.

        With `sync`, blocks until the record is fsync'd (sharing the fsync with concurrent
        appenders); without, returns once the record is written to the OS. Raises ValueError
        if the log is closed or the payload exceeds 4 GiB, and OSError when the disk fails; after
        a failed fsync the log refuses further appends, since what reached the disk is unknown.
        """
        length = len(payload)
        if length > _MAX_PAYLOAD:
            raise ValueError(f"WAL record of {length} bytes exceeds the 4 GiB limit")
        payload_crc = zlib.crc32(payload)
        with self._lock:
            self._check_usable()
            record_size = _HEADER.size + length
            if (
                self._segment_size + record_size > self._segment_bytes
                and self._segment_size > len(_MAGIC)
            ):
                self._start_next_segment()
            sequence = self._last_sequence + 1
            crc = zlib.crc32(_LENGTH_AND_SEQUENCE.pack(length, sequence), payload_crc)
            self._write(_HEADER.pack(length, crc, sequence), payload)
            self._segment_size += record_size
            self._last_sequence = sequence
        if sync:
            self._sync_through(sequence)
        return sequence

    def replay(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        """Yield (sequence, payload) for every record with sequence > `after`, in order.

        Reads segment by segment and stops at the last record appended when replay began.
        Raises WalCorrupted, naming file and offset, for damage in any segment but the last.
        Records already removed by truncate_through are simply not there.
        """
        with self._lock:
            segments = list(self._segments)
            last_sequence = self._last_sequence
        for index, start in enumerate(segments):
            is_last = index == len(segments) - 1
            end = last_sequence if is_last else segments[index + 1] - 1
            if end <= after:
                continue
            path = self._segment_path(start)
            data = path.read_bytes()
            if not data.startswith(_MAGIC):
                raise WalCorrupted(path, 0, "not a WAL segment (bad magic)")
            sequence = start - 1
            try:
                for sequence, payload in _records(data, start):
                    if sequence > after:
                        yield sequence, payload
                    if sequence >= end:
                        break
            except _Damaged as damage:
                if is_last:
                    return  # an append in flight; records up to the snapshot are all yielded
                raise WalCorrupted(path, damage.offset, damage.reason) from None
            if sequence < end and not is_last:
                raise WalCorrupted(
                    path, len(data), f"segment ends at sequence {sequence}, the next starts at {end + 1}"
                )

    def truncate_through(self, sequence: int) -> None:
        """Delete the segments whose records all have sequence <= `sequence`.

        The segment being appended to is never deleted. Blocks on unlink and a directory fsync.
        """
        with self._lock:
            doomed = [
                start
                for start, next_start in zip(self._segments, self._segments[1:])
                if next_start - 1 <= sequence
            ]
            for start in doomed:
                self._segment_path(start).unlink()
            if doomed:
                del self._segments[: len(doomed)]
                _fsync_directory(self._directory)

    def close(self) -> None:
        """Fsync and close the log; appends made with sync=False become durable here too.

        Closing twice is harmless. Appends after close raise ValueError.
        """
        with self._lock:
            if self._fd is None:
                return
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            durable = self._last_sequence
        with self._sync_state:
            self._synced_sequence = max(self._synced_sequence, durable)
            self._sync_state.notify_all()

    # --- internals ---------------------------------------------------------------------------

    def _segment_path(self, start: int) -> Path:
        return self._directory / f"{start:020d}.wal"

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise OSError(f"WAL in {self._directory} failed earlier: {self._failure}") from self._failure
        if self._fd is None:
            raise ValueError(f"WAL in {self._directory} is closed")

    def _write(self, header: bytes, payload: bytes) -> None:
        """Write one record at the end of the segment, or leave the segment as it was."""
        fd = self._fd
        try:
            written = os.writev(fd, (header, payload))
            if written < len(header) + len(payload):
                record = memoryview(header + bytes(payload))
                while written < len(record):
                    written += os.write(fd, record[written:])
        except BaseException:
            try:
                os.ftruncate(fd, self._segment_size)
            except OSError as error:
                self._failure = error
            raise

    def _sync_through(self, sequence: int) -> None:
        """Block until `sequence` is durable, fsyncing for everyone if nobody else is."""
        with self._sync_state:
            while self._synced_sequence < sequence:
                if self._failure is not None:
                    raise OSError(f"WAL in {self._directory} failed: {self._failure}") from self._failure
                if self._syncing:
                    self._sync_state.wait()
                    continue
                self._syncing = True
                self._sync_state.release()
                try:
                    durable = self._fsync_written()
                finally:
                    self._sync_state.acquire()
                    self._syncing = False
                    self._sync_state.notify_all()
                self._synced_sequence = max(self._synced_sequence, durable)

    def _fsync_written(self) -> int:
        """Fsync every record written so far and return the last such sequence."""
        with self._lock:
            if self._fd is None:
                return self._last_sequence  # close() fsync'd everything
            durable = self._last_sequence
            # A duplicate stays valid while the next segment opens and this one closes.
            fd = os.dup(self._fd)
        try:
            os.fsync(fd)
        except OSError as error:
            self._failure = error
            raise
        finally:
            os.close(fd)
        return durable

    def _start_next_segment(self) -> None:
        """With _lock held: make the full segment durable and open the next one."""
        try:
            os.fsync(self._fd)
        except OSError as error:
            self._failure = error
            raise
        start = self._last_sequence + 1
        fd = self._create_segment(start)
        os.close(self._fd)
        self._fd = fd
        self._segments.append(start)
        self._segment_size = len(_MAGIC)
        with self._sync_state:
            self._synced_sequence = max(self._synced_sequence, start - 1)
            self._sync_state.notify_all()

    def _create_segment(self, start: int) -> int:
        path = self._segment_path(start)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            os.write(fd, _MAGIC)
            os.fsync(fd)
            _fsync_directory(self._directory)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _recover_last_segment(self) -> tuple[int, int, int]:
        """Open the last segment for appending after cutting off any torn tail.

        Returns (fd, size, last sequence).
        """
        start = self._segments[-1]
        path = self._segment_path(start)
        data = path.read_bytes()
        if not data.startswith(_MAGIC):
            if not _MAGIC.startswith(data):
                raise WalCorrupted(path, 0, "not a WAL segment (bad magic)")
            # Created, but the crash came before its magic was durable.
            path.unlink()
            _fsync_directory(self._directory)
            return self._create_segment(start), len(_MAGIC), start - 1
        last_sequence = start - 1
        good_end = len(data)
        try:
            for last_sequence, _ in _records(data, start):
                pass
        except _Damaged as damage:
            good_end = damage.offset
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            if good_end < len(data):
                os.ftruncate(fd, good_end)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd, good_end, last_sequence


def _records(data: bytes, first_sequence: int) -> Iterator[tuple[int, bytes]]:
    """Yield (sequence, payload) from a segment's bytes; raise _Damaged at the first bad record."""
    offset = len(_MAGIC)
    expected = first_sequence
    header_size = _HEADER.size
    while offset < len(data):
        if len(data) - offset < header_size:
            raise _Damaged(offset, f"record header cut short ({len(data) - offset} of {header_size} bytes)")
        length, crc, sequence = _HEADER.unpack_from(data, offset)
        payload_start = offset + header_size
        payload_end = payload_start + length
        if payload_end > len(data):
            raise _Damaged(offset, f"record payload cut short ({len(data) - payload_start} of {length} bytes)")
        payload = data[payload_start:payload_end]
        if zlib.crc32(_LENGTH_AND_SEQUENCE.pack(length, sequence), zlib.crc32(payload)) != crc:
            raise _Damaged(offset, "record fails its CRC")
        if sequence != expected:
            raise _Damaged(offset, f"record has sequence {sequence} where {expected} was due")
        yield sequence, payload
        expected += 1
        offset = payload_end


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
