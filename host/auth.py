"""API tokens: creating them, storing only their hashes, and refusing requests without a valid one.

Tokens look like InfluxDB 3's (`apiv3_` + 64 random bytes, URL-safe base64). `data_dir/tokens.json`
(mode 0600) holds a SHA-256 hash of each; the plaintext exists only in the creator's hands and,
for the first admin token, in `data_dir/admin-token` (mode 0600). The server notices tokens
added to `tokens.json` by another process (`plughost create token`) without a restart.

Requests authenticate as InfluxDB 3 accepts them: `Authorization: Bearer <token>`,
`Token <token>`, `Basic base64(user:token)`, or the v1 `p=<token>` query parameter on `/write`
and `/query`. A request without a valid token gets 401 before its body is read.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import os
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

import msgspec

TOKEN_PREFIX = "apiv3_"
ADMIN_TOKEN_NAME = "_admin"
TOKENS_FILE = "tokens.json"
ADMIN_TOKEN_FILE = "admin-token"
_RELOAD_INTERVAL = 0.1  # seconds between looks at tokens.json when an unknown token arrives
_V1_TOKEN_PATHS = ("/write", "/query")

MALFORMED_HEADER = (
    "Authorization header was malformed, the request was not in the form of "
    "'Authorization: <auth-scheme> <token>', supported auth-schemes are Bearer, Token and Basic"
)


class TokenRecord(msgspec.Struct, frozen=True):
    """One token as stored: never the token itself."""

    name: str
    sha256: str
    admin: bool
    created_at: int  # milliseconds since the epoch


class TokenFile(msgspec.Struct):
    tokens: list[TokenRecord] = []


class TokenExists(Exception):
    """A token with that name already exists."""


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(64)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The tokens of one data directory.

    Reads and writes `tokens.json`; creating a token takes an exclusive file lock so two
    processes never lose each other's tokens. `authenticate` never blocks on the lock.
    """

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir)
        self.tokens_path = self.data_dir / TOKENS_FILE
        self.admin_token_path = self.data_dir / ADMIN_TOKEN_FILE
        self._hashes: frozenset[str] = frozenset()
        self._signature: tuple[int, int, int] | None = None
        self._last_look = 0.0
        self._reload_lock = threading.Lock()
        self._reload()

    def ensure_admin_token(self) -> str | None:
        """Create the first admin token if no token exists yet.

        Writes its plaintext to `admin-token` (mode 0600) and returns it; returns None when
        tokens already existed. Blocks on the file lock. Raises OSError.
        """
        with self._locked() as stored:
            if stored.tokens:
                return None
            token = self._add(stored, ADMIN_TOKEN_NAME)
            _write_private(self.admin_token_path, token + "\n")
            return token

    def create_token(self, name: str | None = None) -> str:
        """Create another admin token and return its plaintext (shown once, never stored).

        Blocks on the file lock. Raises TokenExists when `name` is taken, OSError on I/O.
        """
        with self._locked() as stored:
            taken = {record.name for record in stored.tokens}
            if name is None:
                name = next(f"admin-{n}" for n in range(1, len(taken) + 2) if f"admin-{n}" not in taken)
            elif name in taken:
                raise TokenExists(f"a token named {name!r} already exists")
            return self._add(stored, name)

    def names(self) -> list[str]:
        return [record.name for record in _read(self.tokens_path).tokens]

    def authenticate(self, token: str) -> bool:
        """True when `token` is one of ours. Re-reads tokens.json (at most every 0.1 s) on a miss."""
        digest = hash_token(token)
        if digest in self._hashes:
            return True
        now = time.monotonic()
        if now - self._last_look < _RELOAD_INTERVAL:
            return False
        self._last_look = now
        self._reload()
        return digest in self._hashes

    def _add(self, stored: TokenFile, name: str) -> str:
        token = new_token()
        stored.tokens.append(
            TokenRecord(name=name, sha256=hash_token(token), admin=True, created_at=int(time.time() * 1000))
        )
        _write_private(self.tokens_path, msgspec.json.format(msgspec.json.encode(stored)).decode() + "\n")
        self._reload()
        return token

    @contextlib.contextmanager
    def _locked(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / (TOKENS_FILE + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield _read(self.tokens_path)
        finally:
            os.close(fd)

    def _reload(self) -> None:
        with self._reload_lock:
            try:
                info = os.stat(self.tokens_path)
            except FileNotFoundError:
                self._hashes, self._signature = frozenset(), None
                return
            signature = (info.st_ino, info.st_mtime_ns, info.st_size)
            if signature != self._signature:
                self._hashes = frozenset(record.sha256 for record in _read(self.tokens_path).tokens)
                self._signature = signature


def _read(path: Path) -> TokenFile:
    try:
        return msgspec.json.decode(path.read_bytes(), type=TokenFile)
    except FileNotFoundError:
        return TokenFile()


def _write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, readable by the owner only, fsync'd."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class Malformed(Exception):
    """The Authorization header is not `<scheme> <token>` with a scheme InfluxDB 3 accepts."""


def token_from_request(headers: dict[bytes, bytes], path: str, query_string: bytes) -> str | None:
    """The token a request presents, or None. Raises Malformed for a bad Authorization header."""
    if path in _V1_TOKEN_PATHS and query_string:
        password = parse_qs(query_string.decode("latin-1")).get("p")
        if password:
            return password[0]
    header = headers.get(b"authorization")
    if header is None:
        return None
    parts = header.decode("latin-1").split(" ")
    if len(parts) != 2 or parts[0] not in ("Bearer", "Token", "Basic") or not parts[1]:
        raise Malformed(MALFORMED_HEADER)
    scheme, credential = parts
    if scheme != "Basic":
        return credential
    try:
        user, sep, token = base64.b64decode(credential, validate=True).decode().rpartition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise Malformed(MALFORMED_HEADER) from None
    if not sep or ":" in user:
        raise Malformed(MALFORMED_HEADER)
    return token


class AuthMiddleware:
    """ASGI middleware: HTTP requests pass only with a valid token; others get 401 and no further work."""

    def __init__(self, app, tokens: TokenStore):
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            token = token_from_request(headers, scope["path"], scope.get("query_string", b""))
        except Malformed as error:
            body = msgspec.json.encode({"error": str(error)})
            await _respond(send, 400, body, b"application/json")
            return
        if token is None or not self.tokens.authenticate(token):
            await _respond(send, 401, b"", None)
            return
        await self.app(scope, receive, send)


async def _respond(send, status: int, body: bytes, content_type: bytes | None) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
