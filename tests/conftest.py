"""Fixtures that run a real `plughost serve` process on loopback, and the `plughost` CLI as a process.

- `start_server(**options)`: start a server (function scope; every server it started is stopped
  at teardown). Options: `data_dir`, `plugin_dir` (default: fresh temporary directories),
  `without_auth=False`, `wal_flush_interval="10ms"`, `log_level="info"`,
  `max_http_request_size=None`, `extra_args=()`, `env={}`.
- `start_module_server(**options)`: the same, for module-scoped fixtures.
- `server`: one server with default options shared by a test module (use your own database names).
- `plughost(*args, input=None, env=None)`: run the CLI, return its CompletedProcess.

A `RunningServer` has `base_url`, `token` (None without auth), `data_dir`, `plugin_dir`,
`log_path`, `process`; `client()` for an authenticated httpx.Client; `write`/`query` shortcuts;
`wait_until(predicate)`; and `restart(**options)`, `stop(sig)`, `kill()`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0  # seconds; the machine is shared and WAL replay can take a while
STOP_TIMEOUT = 30.0
_SERVING = re.compile(r"serving on (http://\S+)")


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a plughost subprocess: this checkout importable, UTC, no inherited PLUGHOST_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGHOST_")}
    env.update(TZ="UTC", PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.update(extra or {})
    return env


def wait_until(predicate, *, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    """Poll `predicate()` until it returns something truthy (returned) or `timeout` passes (test fails)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class RunningServer:
    """One `plughost serve` subprocess and the directories it uses."""

    def __init__(self, data_dir: Path, plugin_dir: Path, log_dir: Path, options: dict):
        self.data_dir = data_dir
        self.plugin_dir = plugin_dir
        self.log_dir = log_dir
        self.options = options
        self.process: subprocess.Popen | None = None
        self.base_url = ""
        self.token: str | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"server-{self.starts}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> RunningServer:
        self.starts += 1
        options = self.options
        command = [
            sys.executable, "-m", "host.cli", "serve",
            "--data-dir", str(self.data_dir), "--plugin-dir", str(self.plugin_dir),
            "--http-bind", "127.0.0.1:0",
            "--wal-flush-interval", options.get("wal_flush_interval", "10ms"),
            "--log-level", options.get("log_level", "info"),
        ]
        if options.get("without_auth"):
            command.append("--without-auth")
        if options.get("max_http_request_size") is not None:
            command += ["--max-http-request-size", str(options["max_http_request_size"])]
        command += list(options.get("extra_args", ()))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.log_dir, env=subprocess_env(options.get("env")),
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        def serving():
            if self.process.poll() is not None:
                pytest.fail(f"plughost serve exited with {self.process.returncode}:\n{self.log()}")
            return _SERVING.search(self.log())

        self.base_url = wait_until(serving, timeout=START_TIMEOUT, interval=0.05,
                                   message="the server's 'serving on' line").group(1)
        self.token = None
        if not self.options.get("without_auth"):
            self.token = (self.data_dir / "admin-token").read_text().strip()
        with self.client() as client:
            wait_until(lambda: _healthy(client), timeout=START_TIMEOUT, message="GET /health to answer 200")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kwargs) -> httpx.Client:
        """An httpx client for this server, sending the admin token."""
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=60.0, **kwargs)

    def write(self, db: str, lines: str | bytes, path: str = "/api/v3/write_lp", **params) -> httpx.Response:
        with self.client() as client:
            return client.post(path, params={"db": db, **params}, content=lines)

    def query(self, db: str, sql: str, format: str = "json") -> httpx.Response:
        with self.client() as client:
            return client.post("/api/v3/query_sql", json={"db": db, "q": sql, "format": format})

    def rows_when(self, db: str, sql: str, predicate, timeout: float = 10.0) -> list[dict]:
        """Poll a JSON query until `predicate(rows)` holds (data shows up after the next WAL flush)."""
        def check():
            response = self.query(db, sql)
            if response.status_code == 200 and predicate(rows := response.json()):
                return [rows]
            return None

        return wait_until(check, timeout=timeout, message=f"{sql!r} on {db} to give the expected rows")[0]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send `sig`, wait for the process to exit, return its exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"plughost serve did not exit within {timeout}s of signal {sig}:\n{self.log()}")

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self, **options) -> RunningServer:
        """Stop cleanly (SIGTERM), then start again on the same directories, with `options` changed."""
        code = self.stop()
        assert code == 0, f"plughost serve exited with {code}:\n{self.log()}"
        self.options = {**self.options, **options}
        return self.start()


def _healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/health").status_code == 200
    except httpx.TransportError:
        return False


class _Launcher:
    def __init__(self, root: Path):
        self.root = root
        self.servers: list[RunningServer] = []

    def __call__(self, **options) -> RunningServer:
        index = len(self.servers)
        data_dir = Path(options.pop("data_dir", self.root / f"data{index}"))
        plugin_dir = Path(options.pop("plugin_dir", self.root / f"plugins{index}"))
        log_dir = self.root / f"logs{index}"
        log_dir.mkdir(parents=True)
        server = RunningServer(data_dir, plugin_dir, log_dir, options)
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.servers:
            if server.process is not None and server.process.poll() is None:
                server.process.terminate()
        for server in self.servers:
            if server.process is not None:
                try:
                    server.process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    server.process.kill()
                    server.process.wait()


@pytest.fixture
def start_server(tmp_path):
    launcher = _Launcher(tmp_path)
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory):
    """Like `start_server`, for module-scoped fixtures: servers live until the module's tests end."""
    launcher = _Launcher(tmp_path_factory.mktemp("servers"))
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def server(start_module_server):
    return start_module_server()


@pytest.fixture
def plughost(tmp_path):
    """Run `plughost ARGS...` as a process (cwd: a temporary directory); returns the CompletedProcess."""
    def run(*args: str, input: str | bytes | None = None, env: dict[str, str] | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess:
        stdin = {"stdin": subprocess.DEVNULL} if input is None else {
            "input": input.encode() if isinstance(input, str) else input}
        return subprocess.run(
            [sys.executable, "-m", "host.cli", *args], capture_output=True, cwd=tmp_path,
            env=subprocess_env(env), timeout=timeout, **stdin,
        )

    return run
