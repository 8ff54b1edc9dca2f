"""The `plughost` CLI nouns for last-value and distinct-value caches, with `influxdb3`'s flags:

    plughost create last_cache -d DB -t TABLE [--key-columns a,b] [--value-columns x,y]
                               [--count N] [--ttl 4h] [NAME]
    plughost delete last_cache -d DB -t TABLE NAME
    plughost create distinct_cache -d DB -t TABLE --columns a,b [--max-cardinality N] [--max-age 1d] [NAME]
    plughost delete distinct_cache -d DB -t TABLE NAME

Durations are humantime, as influxdb3 reads them (`4h`, `90s`, `1 day`, `1h 30m`); they are
sent in whole seconds. Everything goes through the HTTP API (`host.client.PlughostClient`).
"""

from __future__ import annotations

import argparse
import json
import re

from host.cli import add_client_arguments, add_database_argument, client_from_args

LAST_CACHE_PATH = "/api/v3/configure/last_cache"
DISTINCT_CACHE_PATH = "/api/v3/configure/distinct_cache"

_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Zµ]+)")
_SECONDS_PER_UNIT = {
    **dict.fromkeys(("nsec", "ns"), 1e-9),
    **dict.fromkeys(("usec", "us", "µs"), 1e-6),
    **dict.fromkeys(("msec", "ms"), 1e-3),
    **dict.fromkeys(("seconds", "second", "sec", "s"), 1.0),
    **dict.fromkeys(("minutes", "minute", "min", "m"), 60.0),
    **dict.fromkeys(("hours", "hour", "hr", "h"), 3600.0),
    **dict.fromkeys(("days", "day", "d"), 86400.0),
    **dict.fromkeys(("weeks", "week", "w"), 7 * 86400.0),
    **dict.fromkeys(("months", "month", "M"), 30.44 * 86400.0),
    **dict.fromkeys(("years", "year", "y"), 365.25 * 86400.0),
}


def duration_seconds(text: str) -> int:
    """Whole seconds in a humantime duration (`4h`, `1 day`, `1h 30m`). Raises argparse.ArgumentTypeError."""
    position, total = 0, 0.0
    text = text.strip()
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None or match.group(2) not in _SECONDS_PER_UNIT:
            raise argparse.ArgumentTypeError(
                f"invalid duration {text!r}: expected a number and a unit, like 90s, 4h, 1d or 1h 30m"
            )
        total += float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]
        position = match.end()
    if not text:
        raise argparse.ArgumentTypeError("invalid duration '': expected a number and a unit, like 90s or 4h")
    return int(total)


def column_list(text: str) -> list[str]:
    """`a,b,c` as a list of column names."""
    columns = [c.strip() for c in text.split(",")]
    if not all(columns):
        raise argparse.ArgumentTypeError(f"invalid column list {text!r}: give names separated by commas")
    return columns


def positive_integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be a whole number, at least 1")
    return value


def _create_last_cache(args: argparse.Namespace) -> int:
    body = {"db": args.database, "table": args.table, "name": args.name, "key_columns": args.key_columns,
            "value_columns": args.value_columns, "count": args.count, "ttl": args.ttl}
    return _create(args, LAST_CACHE_PATH, body)


def _create_distinct_cache(args: argparse.Namespace) -> int:
    body = {"db": args.database, "table": args.table, "name": args.name, "columns": args.columns,
            "max_cardinality": args.max_cardinality, "max_age": args.max_age}
    return _create(args, DISTINCT_CACHE_PATH, body)


def _create(args: argparse.Namespace, path: str, body: dict) -> int:
    with client_from_args(args) as client:
        created = client.request("POST", path, json={k: v for k, v in body.items() if v is not None}).json()
    print(f"new cache created: {json.dumps(created, indent=2)}")
    return 0


def _delete(path: str, what: str):
    def delete(args: argparse.Namespace) -> int:
        with client_from_args(args) as client:
            client.request("DELETE", path, json={"db": args.database, "table": args.table, "name": args.name})
        print(f"{what} deleted successfully")
        return 0

    return delete


def _add_location(parser: argparse.ArgumentParser) -> None:
    add_database_argument(parser)
    parser.add_argument("-t", "--table", required=True, help="the table the cache belongs to")


def register(verbs: dict[str, argparse._SubParsersAction]) -> None:
    """Add `last_cache` and `distinct_cache` under `create` and `delete`."""
    create_last = verbs["create"].add_parser("last_cache", help="create a last value cache")
    _add_location(create_last)
    create_last.add_argument("--key-columns", type=column_list, default=None,
                             help="columns keying the cache: tags, string, int, uint or bool (default: the tags)")
    create_last.add_argument("--value-columns", type=column_list, default=None,
                             help="columns to cache; time is always added (default: every non-key column)")
    create_last.add_argument("--count", type=positive_integer, default=None,
                             help="rows kept per key (default 1)")
    create_last.add_argument("--ttl", type=duration_seconds, default=None,
                             help="how long a cached row lives, e.g. 4h (default 4h)")
    create_last.add_argument("name", nargs="?", default=None,
                             help="the cache's name (default <table>_<key columns>_last_cache)")
    add_client_arguments(create_last)
    create_last.set_defaults(handler=_create_last_cache)

    delete_last = verbs["delete"].add_parser("last_cache", help="delete a last value cache")
    _add_location(delete_last)
    delete_last.add_argument("name", help="the cache's name")
    add_client_arguments(delete_last)
    delete_last.set_defaults(handler=_delete(LAST_CACHE_PATH, "last cache"))

    create_distinct = verbs["create"].add_parser("distinct_cache", help="create a distinct value cache")
    _add_location(create_distinct)
    create_distinct.add_argument("--columns", type=column_list, required=True,
                                 help="tag or string columns, in hierarchy order")
    create_distinct.add_argument("--max-cardinality", type=positive_integer, default=None,
                                 help="most value combinations kept (default 100000)")
    create_distinct.add_argument("--max-age", type=duration_seconds, default=None,
                                 help="how long an unseen combination is kept, e.g. 1d (default 1d)")
    create_distinct.add_argument("name", nargs="?", default=None,
                                 help="the cache's name (default <table>_<columns>_distinct_cache)")
    add_client_arguments(create_distinct)
    create_distinct.set_defaults(handler=_create_distinct_cache)

    delete_distinct = verbs["delete"].add_parser("distinct_cache", help="delete a distinct value cache")
    _add_location(delete_distinct)
    delete_distinct.add_argument("name", help="the cache's name")
    add_client_arguments(delete_distinct)
    delete_distinct.set_defaults(handler=_delete(DISTINCT_CACHE_PATH, "distinct cache"))
