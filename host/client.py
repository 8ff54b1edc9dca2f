"""An HTTP client for a plughost (or InfluxDB 3) server: what the `plughost` CLI sends, as Python calls.

One `PlughostClient` keeps one keep-alive connection pool. Every call blocks until the server
answers and raises `ServerUnreachable` when it cannot connect, or `RequestFailed` (carrying the
status and the server's own error message) for any non-2xx answer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec

from host.interface import LineError

DEFAULT_HOST = "http://127.0.0.1:8181"
ADMIN_TOKEN_FILE = "admin-token"


class ClientError(Exception):
    """A request did not succeed; the message says what to do next."""


class ServerUnreachable(ClientError):
    """No connection to the server could be made."""


class RequestFailed(ClientError):
    """The server answered with an error status; `data` is the `data` of its JSON error body, if any."""

    def __init__(self, status: int, message: str, data=None):
        super().__init__(message)
        self.status = status
        self.data = data


class WriteRejected(RequestFailed):
    """A write refused lines: `partial` when the other lines were stored, else nothing was."""

    def __init__(self, status: int, message: str, errors: list[LineError], partial: bool):
        super().__init__(status, message, errors)
        self.errors = errors
        self.partial = partial


class _ErrorBody(msgspec.Struct):
    error: str
    data: msgspec.Raw = msgspec.Raw(b"null")


def resolve_token(token: str | None, data_dir: str | os.PathLike | None) -> str | None:
    """The token to send: `token` if given, else `$PLUGHOST_TOKEN`, else `<data_dir>/admin-token` if readable.

    `data_dir` defaults to `$PLUGHOST_DATA_DIR`, then `./data`.
    """
    if token:
        return token
    if os.environ.get("PLUGHOST_TOKEN"):
        return os.environ["PLUGHOST_TOKEN"]
    path = Path(data_dir or os.environ.get("PLUGHOST_DATA_DIR") or "./data") / ADMIN_TOKEN_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class PlughostClient:
    """Calls to one server at `host`, authenticated with `token` (as `Authorization: Bearer`)."""

    def __init__(self, host: str = DEFAULT_HOST, token: str | None = None, *, timeout: float = 300.0):
        self.host = host.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.host, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0)
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PlughostClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Send one request (httpx keyword arguments) and return the 2xx response, fully read."""
        with self.stream(method, path, **kwargs) as response:
            response.read()
            return response

    @contextlib.contextmanager
    def stream(self, method: str, path: str, **kwargs) -> Iterator[httpx.Response]:
        """Send one request and yield the 2xx response unread, for `iter_bytes()`."""
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 300:
                    response.read()
                    raise _failure(response)
                yield response
        except httpx.TransportError as error:
            raise ServerUnreachable(
                f"cannot reach {self.host}: is `plughost serve` running? ({error or type(error).__name__})"
            ) from None

    def write_lp(self, database: str, lines: bytes | str, *, precision: str | None = None,
                 accept_partial: bool = True, no_sync: bool = False) -> None:
        """Write line protocol through /api/v3/write_lp. Raises WriteRejected naming each bad line."""
        params = {"db": database, "accept_partial": str(accept_partial).lower()}
        if precision is not None:
            params["precision"] = precision
        if no_sync:
            params["no_sync"] = "true"
        content = lines.encode() if isinstance(lines, str) else lines
        try:
            self.request("POST", "/api/v3/write_lp", params=params, content=content,
                         headers={"Content-Type": "text/plain; charset=utf-8"})
        except RequestFailed as failure:
            raise _write_rejection(failure) from None

    def query(self, database: str, sql: str, *, format: str = "json", params: dict | None = None) -> bytes:
        """Run SQL through POST /api/v3/query_sql and return the body in `format`."""
        with self.query_stream(database, sql, format=format, params=params) as response:
            return response.read()

    @contextlib.contextmanager
    def query_stream(self, database: str, sql: str, *, format: str = "json",
                     params: dict | None = None) -> Iterator[httpx.Response]:
        """Like `query`, yielding the unread response so a large result can be streamed."""
        body = {"db": database, "q": sql, "format": format}
        if params:
            body["params"] = params
        with self.stream("POST", "/api/v3/query_sql", json=body) as response:
            yield response

    def create_database(self, name: str) -> None:
        self.request("POST", "/api/v3/configure/database", json={"db": name})

    def delete_database(self, name: str) -> None:
        self.request("DELETE", "/api/v3/configure/database", params={"db": name})

    def show_databases(self, format: str = "json") -> bytes:
        return self.request("GET", "/api/v3/configure/database", params={"format": format}).content

    def list_databases(self) -> list[str]:
        rows = msgspec.json.decode(self.show_databases("json"), type=list[dict[str, str]])
        return [row["iox::database"] for row in rows]

    def create_table(self, database: str, table: str, tags: list[str], fields: list[tuple[str, str]]) -> None:
        body = {"db": database, "table": table, "tags": tags,
                "fields": [{"name": name, "type": kind} for name, kind in fields]}
        self.request("POST", "/api/v3/configure/table", json=body)

    def delete_table(self, database: str, table: str) -> None:
        self.request("DELETE", "/api/v3/configure/table", params={"db": database, "table": table})

    def health(self) -> str:
        return self.request("GET", "/health").text

    def ping(self) -> dict:
        return self.request("GET", "/ping").json()


def _failure(response: httpx.Response) -> RequestFailed:
    status = response.status_code
    if status == 401:
        return RequestFailed(status, "the server refused the request (401 Unauthorized): give a valid token "
                                     "with --token or PLUGHOST_TOKEN, or --data-dir pointing at the server's "
                                     "data directory")
    try:
        body = msgspec.json.decode(response.content, type=_ErrorBody)
        return RequestFailed(status, body.error, msgspec.json.decode(body.data))
    except msgspec.DecodeError:
        return RequestFailed(status, response.text.strip() or f"HTTP {status} {response.reason_phrase}")


def _write_rejection(failure: RequestFailed) -> RequestFailed:
    try:
        errors = msgspec.convert(failure.data, list[LineError] | LineError | None)
    except msgspec.ValidationError:
        return failure
    if errors is None:
        return failure
    if isinstance(errors, LineError):
        return WriteRejected(failure.status, str(failure), [errors], partial=False)
    return WriteRejected(failure.status, str(failure), errors, partial=True)
