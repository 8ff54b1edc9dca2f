"""The write-ahead log: numbered, checksummed records in segment files, fsync'd before acknowledgement.

Layout: `<dir>/<first sequence, 20 digits>.wal`. Each record is framed as

    length: u32 | crc32(sequence + payload): u32 | sequence: u64 | payload

so a crash mid-write leaves at most one torn record at the tail of the newest segment, which
`replay` detects by length or checksum and cuts off. Appends are serialized by a lock; callers
that want fewer fsyncs batch payloads themselves (the database's committer does).
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Iterator

_HEADER = struct.Struct("<IIQ")
_SUFFIX = ".wal"


class WalCorrupted(Exception):
    """A record in the middle of the log failed its checksum: the log was damaged, not torn by a crash."""


def _segment_name(first_sequence: int) -> str:
    return f"{first_sequence:020d}{_SUFFIX}"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_records(path: Path) -> tuple[list[tuple[int, bytes]], int, bool]:
    """Return the segment's good records, the byte offset where they end, and whether a bad tail follows."""
    data = path.read_bytes()
    records: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        if offset + _HEADER.size > len(data):
            return records, offset, True
        length, crc, sequence = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        payload = data[start:start + length]
        if len(payload) != length or zlib.crc32(payload, zlib.crc32(struct.pack("<Q", sequence))) != crc:
            return records, offset, True
        records.append((sequence, payload))
        offset = start + length
    return records, offset, False


class Wal:
    """An append-only log of opaque payloads; thread-safe."""

    def __init__(self, directory: Path, *, segment_bytes: int = 64 * 1024 * 1024):
        """Open or create the log in `directory`, cutting off a torn tail left by a crash.

        Raises WalCorrupted if a segment other than the newest is damaged.
        """
        self._directory = Path(directory)
        self._directory.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._last_sequence = 0
        self._file = None
        self._file_size = 0
        segments = self._segments()
        for index, path in enumerate(segments):
            records, end, torn = _read_records(path)
            if torn:
                if index != len(segments) - 1:
                    raise WalCorrupted(f"WAL segment {path} is damaged at byte {end}; move it aside to start")
                with open(path, "r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
            if records:
                self._last_sequence = records[-1][0]
        if segments:
            self._file = open(segments[-1], "ab")
            self._file_size = self._file.tell()

    def _segments(self) -> list[Path]:
        return sorted(self._directory.glob(f"*{_SUFFIX}"))

    @property
    def last_sequence(self) -> int:
        return self._last_sequence

    def append(self, payload: bytes, *, sync: bool = True) -> int:
        """Append one record and return its sequence number (1, 2, 3 …).

        Blocks until the record is on disk (fsync) when `sync` is true; otherwise returns once
        the bytes are handed to the OS. Raises OSError if the disk refuses the write.
        """
        with self._lock:
            sequence = self._last_sequence + 1
            if self._file is None or self._file_size >= self._segment_bytes:
                self._roll(sequence)
            header = _HEADER.pack(len(payload), zlib.crc32(payload, zlib.crc32(struct.pack("<Q", sequence))), sequence)
            self._file.write(header + payload)
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())
            self._file_size += len(header) + len(payload)
            self._last_sequence = sequence
            return sequence

    def _roll(self, first_sequence: int) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())
            self._file.close()
        self._file = open(self._directory / _segment_name(first_sequence), "ab")
        self._file_size = 0
        _fsync_directory(self._directory)

    def replay(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        """Yield `(sequence, payload)` for every record with a sequence above `after`, in order."""
        for path in self._segments():
            records, _, _ = _read_records(path)
            for sequence, payload in records:
                if sequence > after:
                    yield sequence, payload

    def truncate_through(self, sequence: int) -> None:
        """Delete whole segments whose records all have sequence numbers at or below `sequence`.

        The segment being appended to is never deleted.
        """
        with self._lock:
            segments = self._segments()
            removed = False
            for path, following in zip(segments, segments[1:]):
                if int(following.stem) - 1 <= sequence:
                    path.unlink()
                    removed = True
            if removed:
                _fsync_directory(self._directory)

    def close(self) -> None:
        """Flush, fsync and close the open segment; the log can be reopened later."""
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None
