"""Token authentication over real HTTP: what is refused, which schemes pass, how tokens are stored and added."""

from __future__ import annotations

import base64
import json
import re
import stat

import httpx
import pytest

from conftest import wait_until

ROUTES = [
    ("GET", "/health"), ("GET", "/ping"), ("POST", "/api/v3/write_lp?db=authdb"),
    ("GET", "/api/v3/query_sql?db=authdb&q=SELECT%201"), ("GET", "/api/v3/configure/database?format=json"),
    ("POST", "/api/v2/write?bucket=authdb"), ("POST", "/write?db=authdb"), ("GET", "/no/such/route"),
]


def test_admin_token_is_created_once_and_stored_privately(server):
    admin_file = server.data_dir / "admin-token"
    tokens_file = server.data_dir / "tokens.json"
    assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    assert re.fullmatch(r"apiv3_[A-Za-z0-9_-]{86}", server.token)
    stored = tokens_file.read_text()
    assert server.token not in stored
    assert json.loads(stored)["tokens"][0]["name"] == "_admin"
    assert f"admin token written to {admin_file}" in server.log()


@pytest.mark.parametrize("method, path", ROUTES)
def test_requests_without_a_token_get_401_and_nothing_else(server, method, path):
    with httpx.Client(base_url=server.base_url) as client:
        response = client.request(method, path, content=b"authdb v=1" if method == "POST" else None)
    assert response.status_code == 401
    assert response.content == b""


@pytest.mark.parametrize("header", ["Bearer apiv3_wrong", "Token nope", "Bearer " + "x" * 10])
def test_wrong_tokens_get_401(server, header):
    with httpx.Client(base_url=server.base_url) as client:
        response = client.get("/health", headers={"Authorization": header})
    assert response.status_code == 401


@pytest.mark.parametrize("header", ["Bearer", "Digest abc", "Bearer a b", "Basic !!notbase64!!"])
def test_malformed_authorization_is_400(server, header):
    with httpx.Client(base_url=server.base_url) as client:
        response = client.get("/health", headers={"Authorization": header})
    assert response.status_code == 400
    assert "Authorization header was malformed" in response.json()["error"]


def test_bearer_token_and_basic_schemes_pass(server):
    basic = base64.b64encode(f"anyone:{server.token}".encode()).decode()
    with httpx.Client(base_url=server.base_url) as client:
        for header in (f"Bearer {server.token}", f"Token {server.token}", f"Basic {basic}"):
            response = client.get("/health", headers={"Authorization": header})
            assert (response.status_code, response.text) == (200, "OK")


def test_v1_write_takes_the_token_as_p(server):
    with httpx.Client(base_url=server.base_url) as client:
        response = client.post("/write", params={"db": "authvone", "p": server.token}, content=b"m v=1")
        assert response.status_code == 204
        refused = client.post("/write", params={"db": "authvone", "p": "wrong"}, content=b"m v=1")
        assert refused.status_code == 401


def test_an_unauthenticated_body_is_never_read(start_server):
    small = start_server(max_http_request_size="1KiB")
    with httpx.Client(base_url=small.base_url) as client:
        response = client.post("/api/v3/write_lp", params={"db": "secret"}, content=b"m v=1\n" * 1000)
    assert response.status_code == 401  # not 413: refused before the body was looked at
    with small.client() as client:
        databases = client.get("/api/v3/configure/database", params={"format": "json"}).json()
    assert {"iox::database": "secret"} not in databases


def test_created_token_works_without_restart_and_survives_one(start_server, plughost):
    running = start_server()
    result = plughost("create", "token", "--admin", "--name", "ci", "--data-dir", str(running.data_dir))
    assert result.returncode == 0, result.stderr.decode()
    output = result.stdout.decode()
    token = re.search(r"Token: (apiv3_\S+)", output).group(1)
    assert f"Authorization: Bearer {token}" in output
    assert token not in (running.data_dir / "tokens.json").read_text()

    def accepted():
        with httpx.Client(base_url=running.base_url, headers={"Authorization": f"Bearer {token}"}) as client:
            return client.get("/health").status_code == 200

    wait_until(accepted, timeout=5, message="the server to accept the new token")
    again = plughost("create", "token", "--admin", "--name", "ci", "--data-dir", str(running.data_dir))
    assert again.returncode == 1
    assert "already exists" in again.stderr.decode()

    admin_before = (running.data_dir / "admin-token").read_text()
    running.restart()
    assert (running.data_dir / "admin-token").read_text() == admin_before
    assert accepted()
    assert "admin token written" not in running.log()


def test_create_token_requires_admin(plughost, tmp_path):
    result = plughost("create", "token", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "--admin" in result.stderr.decode()


def test_without_auth_needs_no_token(start_server):
    open_server = start_server(without_auth=True)
    assert open_server.token is None
    assert not (open_server.data_dir / "admin-token").exists()
    assert "authentication disabled" in open_server.log()
    with httpx.Client(base_url=open_server.base_url) as client:
        assert client.get("/health").status_code == 200
        assert client.post("/api/v3/write_lp", params={"db": "open"}, content=b"m v=1").status_code == 204
