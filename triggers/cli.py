"""The `plughost` CLI nouns for triggers, with `influxdb3`'s flags:

    plughost create trigger --database DB (--path P | --plugin-filename P) --trigger-spec S
                            [--trigger-arguments k=v,k2=v2] [--error-behavior log|retry|disable]
                            [--run-asynchronous] [--disabled] [--max-run-time 2s] [--max-cpu-time 500ms]
                            [--max-memory 256MiB] [--isolation auto|interpreter|process] NAME
    plughost delete trigger --database DB [--force] NAME
    plughost enable|disable trigger --database DB NAME
    plughost show triggers [--database DB] [--format pretty|json|jsonl|csv]
    plughost test wal_plugin --database DB (--lp LP | --file F) [--input-arguments ...] [--cache-name N] FILENAME
    plughost test schedule_plugin --database DB [--schedule CRON] [--input-arguments ...] [--cache-name N] FILENAME

Everything goes through the HTTP API (`host.client.PlughostClient`).

`add_serve_limit_arguments` / `serve_limits` give `plughost serve` the server-wide defaults for
limits a trigger leaves unset (`--plugin-max-run-time`, `--plugin-max-cpu-time`,
`--plugin-max-memory`), to be passed as `PluginRuntime(limits=...)`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import host.cli as host_cli  # a module import, so host.cli may import this module back
from sandbox.limits import RunLimits
from triggers.catalog import memory_setting, seconds_setting
from triggers.spec import TriggerSpecError, parse_trigger_spec

TRIGGER_PATH = "/api/v3/configure/processing_engine_trigger"


def key_values(text: str) -> dict[str, str]:
    """`k1=v1,k2=v2` as influxdb3 reads it: split on commas, each item on its first `=`."""
    pairs = {}
    for item in text.split(","):
        key, equals, value = item.partition("=")
        if not equals:
            raise argparse.ArgumentTypeError(f"invalid KEY=value: no `=` found in `{item}`")
        pairs[key] = value
    return pairs


def trigger_spec(text: str) -> str:
    """Check the spec before sending it, so a typo fails with the grammar's own message."""
    try:
        return parse_trigger_spec(text).canonical()
    except TriggerSpecError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_serve_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `serve`'s defaults for the limits triggers leave unset (env PLUGHOST_PLUGIN_MAX_*)."""
    for flag, metavar, example, what in (
        ("run-time", "DURATION", "30s", "wall-clock time a plugin run may take"),
        ("cpu-time", "DURATION", "10s", "CPU time a plugin run may use"),
        ("memory", "SIZE", "512MiB", "memory a plugin may use (see docs/plugins.md, Operations)"),
    ):
        env = "PLUGHOST_PLUGIN_MAX_" + flag.replace("-", "_").upper()
        parser.add_argument(f"--plugin-max-{flag}", default=os.environ.get(env), metavar=metavar,
                            help=f"default limit on the {what}, e.g. {example}, for triggers that set none "
                                 f"(env {env}; default: no limit)")


def serve_limits(args: argparse.Namespace) -> RunLimits:
    """The defaults given to `add_serve_limit_arguments`' options. Raises SettingsError naming the option."""
    return RunLimits(
        max_run_time=seconds_setting("--plugin-max-run-time", args.plugin_max_run_time),
        max_cpu_time=seconds_setting("--plugin-max-cpu-time", args.plugin_max_cpu_time),
        max_memory=memory_setting("--plugin-max-memory", args.plugin_max_memory),
    )


def _merged_arguments(values: list[dict[str, str]] | None) -> dict[str, str] | None:
    if not values:
        return None
    merged: dict[str, str] = {}
    for value in values:
        merged.update(value)
    return merged


def _create_trigger(args: argparse.Namespace) -> int:
    plugin = args.path or args.plugin_filename
    if not plugin:
        print("error: name the plugin with --path (or the older --plugin-filename)", file=sys.stderr)
        return 2
    settings: dict = {"run_async": args.run_asynchronous, "error_behavior": args.error_behavior}
    for name in ("max_run_time", "max_cpu_time", "max_memory", "isolation"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    body = {
        "db": args.database,
        "plugin_filename": plugin,
        "trigger_name": args.name,
        "trigger_specification": args.trigger_spec,
        "trigger_arguments": _merged_arguments(args.trigger_arguments),
        "trigger_settings": settings,
        "disabled": args.disabled,
    }
    with host_cli.client_from_args(args) as client:
        client.request("POST", TRIGGER_PATH, json=body)
    print(f"Trigger {args.name} created successfully")
    return 0


def _delete_trigger(args: argparse.Namespace) -> int:
    with host_cli.client_from_args(args) as client:
        client.request("DELETE", TRIGGER_PATH,
                       params={"db": args.database, "trigger_name": args.name, "force": str(args.force).lower()})
    print(f"Trigger {args.name} deleted successfully")
    return 0


def _switch_trigger(action: str):
    def switch(args: argparse.Namespace) -> int:
        with host_cli.client_from_args(args) as client:
            client.request("POST", f"{TRIGGER_PATH}/{action}", params={"db": args.database, "trigger_name": args.name})
        print(f"Trigger {args.name} {action}d successfully")
        return 0

    return switch


def _show_triggers(args: argparse.Namespace) -> int:
    # `_internal` lists the triggers of every database; any other database lists its own.
    database = args.database or "_internal"
    sql = "SELECT * FROM system.processing_engine_triggers ORDER BY database_name, trigger_name"
    with host_cli.client_from_args(args) as client:
        text = client.query(database, sql, format=args.format).decode()
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def _test_wal_plugin(args: argparse.Namespace) -> int:
    if (args.lp is None) == (args.file is None):
        print("error: give the input line protocol with exactly one of --lp or --file", file=sys.stderr)
        return 2
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as source:
                input_lp = source.read()
        except OSError as error:
            print(f"error: cannot read {args.file}: {error.strerror}", file=sys.stderr)
            return 1
    else:
        input_lp = args.lp
    body = {"filename": args.filename, "database": args.database, "input_lp": input_lp,
            "input_arguments": _merged_arguments(args.input_arguments), "cache_name": args.cache_name}
    return _print_test("/api/v3/plugin_test/wal", body, args)


def _test_schedule_plugin(args: argparse.Namespace) -> int:
    body = {"filename": args.filename, "database": args.database, "schedule": args.schedule,
            "input_arguments": _merged_arguments(args.input_arguments), "cache_name": args.cache_name}
    return _print_test("/api/v3/plugin_test/schedule", body, args)


def _print_test(path: str, body: dict, args: argparse.Namespace) -> int:
    with host_cli.client_from_args(args) as client:
        response = client.request("POST", path, json=body).json()
    print(json.dumps(response, indent=2))
    return 1 if response.get("errors") else 0


def _add_test_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-arguments", type=key_values, action="append", metavar="K=V[,K=V...]",
                        help="arguments passed to the plugin as `args`")
    parser.add_argument("--cache-name", default=None, help="the cache namespace for this test run")
    parser.add_argument("filename", help="the plugin file, relative to the server's plugin directory")


def register(verbs: dict[str, argparse._SubParsersAction]) -> None:
    """Add `trigger(s)`, `wal_plugin` and `schedule_plugin` under the CLI's verbs."""
    create = verbs["create"].add_parser("trigger", help="create a processing engine trigger")
    host_cli.add_database_argument(create)
    create.add_argument("--path", default=None, help="the plugin file or directory, relative to the plugin directory")
    create.add_argument("--plugin-filename", default=None, help="the same as --path (the older name)")
    create.add_argument("--trigger-spec", required=True, type=trigger_spec,
                        help="table:<TABLE>, all_tables, every:<DURATION>, cron:<EXPRESSION> or request:<PATH>")
    create.add_argument("--trigger-arguments", type=key_values, action="append", metavar="K=V[,K=V...]",
                        help="arguments passed to the plugin as `args` (split on commas, each on its first =)")
    create.add_argument("--error-behavior", default="log", choices=("log", "retry", "disable"),
                        help="what a plugin error does (default log)")
    create.add_argument("--run-asynchronous", action="store_true", help="let runs of this trigger overlap")
    create.add_argument("--disabled", action="store_true", help="create the trigger disabled")
    create.add_argument("--max-run-time", default=None,
                        help="wall-clock limit per run, e.g. 500ms or 30s (default: the server's --plugin-max-run-time)")
    create.add_argument("--max-cpu-time", default=None,
                        help="CPU-time limit per run, e.g. 2s (default: the server's --plugin-max-cpu-time)")
    create.add_argument("--max-memory", default=None,
                        help="memory limit in bytes or e.g. 256MiB (default: the server's --plugin-max-memory)")
    create.add_argument("--isolation", default=None, choices=("auto", "interpreter", "process"),
                        help="run the plugin in a subinterpreter or its own process (default auto)")
    create.add_argument("name", help="the trigger's name, unique in its database")
    host_cli.add_client_arguments(create)
    create.set_defaults(handler=_create_trigger)

    delete = verbs["delete"].add_parser("trigger", help="delete a trigger")
    host_cli.add_database_argument(delete)
    delete.add_argument("--force", action="store_true", help="delete even if the trigger is enabled")
    delete.add_argument("name")
    host_cli.add_client_arguments(delete)
    delete.set_defaults(handler=_delete_trigger)

    for action in ("enable", "disable"):
        switch = verbs[action].add_parser("trigger", help=f"{action} a trigger")
        host_cli.add_database_argument(switch)
        switch.add_argument("name")
        host_cli.add_client_arguments(switch)
        switch.set_defaults(handler=_switch_trigger(action))

    show = verbs["show"].add_parser("triggers", help="list triggers (of one database, or of all)")
    host_cli.add_database_argument(show, required=False)
    show.add_argument("--format", default="pretty", choices=("pretty", "json", "jsonl", "csv"))
    host_cli.add_client_arguments(show)
    show.set_defaults(handler=_show_triggers)

    wal = verbs["test"].add_parser("wal_plugin", help="run a writes plugin once on some line protocol, storing nothing")
    host_cli.add_database_argument(wal)
    wal.add_argument("--lp", default=None, help="the input line protocol")
    wal.add_argument("--file", default=None, help="read the input line protocol from FILE (on this machine)")
    _add_test_inputs(wal)
    host_cli.add_client_arguments(wal)
    wal.set_defaults(handler=_test_wal_plugin)

    schedule = verbs["test"].add_parser("schedule_plugin", help="run a schedule plugin once, storing nothing")
    host_cli.add_database_argument(schedule)
    schedule.add_argument("--schedule", default=None, help="cron expression (default '* * * * * *')")
    _add_test_inputs(schedule)
    host_cli.add_client_arguments(schedule)
    schedule.set_defaults(handler=_test_schedule_plugin)
