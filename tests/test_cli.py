"""The `plughost` command run as a real process against a real server."""

from __future__ import annotations

import io
import json
import socket

import pyarrow.parquet as pq

from conftest import wait_until

T0_NS = 1704067200 * 10**9


def common(server) -> list[str]:
    return ["--host", server.base_url, "--token", server.token]


def query_json(plughost, server, db: str, sql: str):
    result = plughost("query", "--database", db, "--format", "json", *common(server), sql)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def test_write_a_large_file_with_progress(server, plughost, tmp_path):
    path = tmp_path / "big.lp"
    path.write_text("".join(f"load,host=h{i % 10} v={i}i {T0_NS + i}\n" for i in range(25_000)))
    result = plughost("write", "--database", "cli_big", "--file", str(path), *common(server))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().startswith("success: wrote 25,000 lines")
    progress = result.stderr.decode()
    assert "sent 25,000 lines" in progress and "in 3 batches" in progress and "lines/s" in progress
    wait_until(lambda: query_json(plughost, server, "cli_big", "SELECT count(*) AS n FROM load") == [{"n": 25_000}],
               message="25,000 rows")


def test_write_from_arguments_and_stdin(server, plughost):
    args = plughost("write", "-d", "cli_small", *common(server), f"a v=1 {T0_NS}", f"a v=2 {T0_NS + 1}")
    assert args.returncode == 0, args.stderr.decode()
    stdin = plughost("write", "-d", "cli_small", "--precision", "s", *common(server),
                     input=f"a v=3 {T0_NS // 10**9 + 5}\n")
    assert stdin.returncode == 0, stdin.stderr.decode()
    wait_until(lambda: query_json(plughost, server, "cli_small", "SELECT v FROM a ORDER BY v")
               == [{"v": 1.0}, {"v": 2.0}, {"v": 3.0}], message="three rows")


def test_write_errors_name_the_file_line(server, plughost, tmp_path):
    path = tmp_path / "bad.lp"
    path.write_text(f"e v=1 {T0_NS}\ne v= {T0_NS}\ne v=3 {T0_NS + 1}\n")
    refused = plughost("write", "-d", "cli_err", "--file", str(path), *common(server))
    assert refused.returncode == 1
    message = refused.stderr.decode()
    assert f"line 2: " in message and f"e v= {T0_NS}" in message and "--accept-partial" in message

    partial = plughost("write", "-d", "cli_err", "--file", str(path), "--accept-partial", *common(server))
    assert partial.returncode == 1
    assert "1 lines refused, 2 written" in partial.stderr.decode()
    wait_until(lambda: query_json(plughost, server, "cli_err", "SELECT v FROM e ORDER BY v")
               == [{"v": 1.0}, {"v": 3.0}], message="the two good rows")


def test_query_prints_a_pretty_table_by_default(server, plughost):
    assert server.write("cli_query", f"q,host=a v=1.5 {T0_NS}\nq,host=b v=2 {T0_NS}").status_code == 204
    server.rows_when("cli_query", "SELECT * FROM q", lambda rows: len(rows) == 2)
    result = plughost("query", "--database", "cli_query", *common(server), "SELECT host, v FROM q ORDER BY host")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == (
        "+------+-----+\n"
        "| host | v   |\n"
        "+------+-----+\n"
        "| a    | 1.5 |\n"
        "| b    | 2.0 |\n"
        "+------+-----+\n"
    )


def test_query_to_a_parquet_file(server, plughost, tmp_path):
    assert server.write("cli_parquet", f"pq v=7i {T0_NS}").status_code == 204
    server.rows_when("cli_parquet", "SELECT * FROM pq", lambda rows: len(rows) == 1)
    out = tmp_path / "out.parquet"
    result = plughost("query", "-d", "cli_parquet", "--format", "parquet", "--output", str(out), *common(server),
                      "SELECT v FROM pq")
    assert result.returncode == 0, result.stderr.decode()
    assert pq.read_table(io.BytesIO(out.read_bytes())).to_pylist() == [{"v": 7}]
    refused = plughost("query", "-d", "cli_parquet", "--format", "parquet", *common(server), "SELECT 1")
    assert refused.returncode == 2 and "--output" in refused.stderr.decode()


def test_query_errors_are_printed(server, plughost):
    result = plughost("query", "-d", "cli_query", *common(server), "SELECT nothing FROM nowhere")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("error: ") and "nowhere" in result.stderr.decode()


def test_create_show_and_delete_a_database(server, plughost):
    created = plughost("create", "database", "cli_admin", *common(server))
    assert (created.returncode, created.stdout.decode()) == (0, 'Database "cli_admin" created successfully\n')
    shown = plughost("show", "databases", *common(server))
    assert shown.returncode == 0 and "| cli_admin " in shown.stdout.decode()
    as_json = plughost("show", "databases", "--format", "json", *common(server))
    assert {"iox::database": "cli_admin"} in json.loads(as_json.stdout)
    duplicate = plughost("create", "database", "cli_admin", *common(server))
    assert duplicate.returncode == 1 and duplicate.stderr.decode().startswith("error: ")

    declined = plughost("delete", "database", "cli_admin", *common(server), input="no\n")
    assert declined.returncode == 1
    confirmed = plughost("delete", "database", "cli_admin", *common(server), input="yes\n")
    assert confirmed.returncode == 0, confirmed.stderr.decode()
    assert "cli_admin" not in plughost("show", "databases", "--format", "csv", *common(server)).stdout.decode()
    gone = plughost("delete", "database", "cli_admin", "--yes", *common(server))
    assert gone.returncode == 1


def test_token_comes_from_the_data_dir_or_the_environment(server, plughost):
    from_dir = plughost("show", "databases", "--host", server.base_url, "--data-dir", str(server.data_dir))
    assert from_dir.returncode == 0, from_dir.stderr.decode()
    from_env = plughost("show", "databases", env={"PLUGHOST_HOST": server.base_url, "PLUGHOST_TOKEN": server.token})
    assert from_env.returncode == 0, from_env.stderr.decode()
    refused = plughost("show", "databases", "--host", server.base_url, "--token", "apiv3_wrong")
    assert refused.returncode == 1
    assert "401" in refused.stderr.decode() and "--token" in refused.stderr.decode()


def test_an_unreachable_server_says_what_to_do(plughost):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = plughost("show", "databases", "--host", f"http://127.0.0.1:{port}", "--token", "t")
    assert result.returncode == 1
    assert f"cannot reach http://127.0.0.1:{port}: is `plughost serve` running?" in result.stderr.decode()


def test_serve_refuses_bad_options(plughost, tmp_path):
    result = plughost("serve", "--data-dir", str(tmp_path / "d"), "--wal-flush-interval", "soon")
    assert result.returncode == 2
    assert "--wal-flush-interval" in result.stderr.decode()
    bind = plughost("serve", "--data-dir", str(tmp_path / "d"), "--http-bind", "localhost")
    assert bind.returncode == 2 and "HOST:PORT" in bind.stderr.decode()


def test_serve_refuses_a_port_in_use(plughost, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = plughost("serve", "--data-dir", str(tmp_path / "d"), "--http-bind", f"127.0.0.1:{port}",
                          timeout=60)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr.decode()


def test_help_lists_the_commands(plughost):
    result = plughost("--help")
    assert result.returncode == 0
    for command in ("serve", "write", "query", "create", "delete", "show"):
        assert command in result.stdout.decode()


def test_serve_option_parsing():
    import pytest

    from host.config import parse_bind, parse_duration, parse_size

    assert parse_duration("10ms") == pytest.approx(0.01)
    assert parse_duration("1.5s") == 1.5 and parse_duration("2m") == 120.0
    assert parse_size("10MiB") == 10 * 1024 * 1024 and parse_size("10485760") == 10485760
    assert parse_bind("127.0.0.1:0") == ("127.0.0.1", 0) and parse_bind("[::1]:8181") == ("::1", 8181)
    for bad in ("", "1", "0s", "fast"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_size("lots")
    with pytest.raises(ValueError):
        parse_bind("127.0.0.1:99999")
