"""The persisted trigger catalog: survives reopening, refuses duplicates, and a failed write changes nothing."""

import msgspec
import pytest

from triggers.catalog import (
    CatalogCorrupt,
    SettingsError,
    TriggerCatalog,
    TriggerDefinition,
    TriggerExists,
    TriggerNotFound,
    TriggerSettings,
    memory_setting,
    seconds_setting,
)


def definition(name="t1", db="db1", disabled=False, **settings) -> TriggerDefinition:
    return TriggerDefinition(
        database_name=db, trigger_name=name, plugin_filename="p.py", trigger_specification="every:1m",
        trigger_settings=TriggerSettings(**settings), trigger_arguments={"k": "v=1"}, disabled=disabled,
    )


def test_definitions_survive_reopening(tmp_path):
    path = tmp_path / "engine" / "triggers.json"
    catalog = TriggerCatalog(path)
    catalog.add(definition("a", error_behavior="disable", run_async=True, max_memory=1024))
    catalog.add(definition("b", db="db2"))
    catalog.set_disabled("db1", "a", True)
    catalog.remove("db2", "b")

    reopened = TriggerCatalog(path)
    assert reopened.all() == [definition("a", disabled=True, error_behavior="disable", run_async=True, max_memory=1024)]
    assert reopened.get("db1", "a").disabled is True
    assert reopened.find("db2", "b") is None


def test_names_are_unique_per_database(tmp_path):
    catalog = TriggerCatalog(tmp_path / "triggers.json")
    catalog.add(definition("a", db="db1"))
    catalog.add(definition("a", db="db2"))
    with pytest.raises(TriggerExists, match="trigger 'a' in database 'db1'"):
        catalog.add(definition("a", db="db1"))
    assert len(TriggerCatalog(tmp_path / "triggers.json").all()) == 2


def test_missing_triggers(tmp_path):
    catalog = TriggerCatalog(tmp_path / "triggers.json")
    with pytest.raises(TriggerNotFound, match="the requested resource was not found"):
        catalog.get("db1", "nope")
    with pytest.raises(TriggerNotFound):
        catalog.remove("db1", "nope")
    with pytest.raises(TriggerNotFound):
        catalog.set_disabled("db1", "nope", True)


def test_a_failed_write_changes_nothing(tmp_path):
    path = tmp_path / "triggers.json"
    catalog = TriggerCatalog(path)
    catalog.add(definition("a"))
    path.with_name("triggers.json.tmp").mkdir()  # the staging file cannot be created, even by root
    with pytest.raises(OSError):
        catalog.add(definition("b"))
    with pytest.raises(OSError):
        catalog.set_disabled("db1", "a", True)
    with pytest.raises(OSError):
        catalog.remove("db1", "a")
    assert catalog.all() == [definition("a")]
    assert TriggerCatalog(path).all() == [definition("a")]


def test_the_file_is_replaced_atomically(tmp_path):
    path = tmp_path / "triggers.json"
    catalog = TriggerCatalog(path)
    catalog.add(definition("a"))
    assert not path.with_name("triggers.json.tmp").exists()
    assert msgspec.json.decode(path.read_bytes())["triggers"][0]["trigger_name"] == "a"


def test_a_corrupt_file_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "triggers.json"
    path.write_text("{not json")
    with pytest.raises(CatalogCorrupt, match="unreadable"):
        TriggerCatalog(path)
    assert path.read_text() == "{not json"


def test_limit_settings_parse_and_refuse():
    assert seconds_setting("max_run_time", "1m 30s") == 90.0
    assert seconds_setting("max_run_time", 2.5) == 2.5
    assert seconds_setting("max_run_time", None) is None
    assert memory_setting("max_memory", "256MiB") == 256 * 1024**2
    assert memory_setting("max_memory", "1GB") == 10**9
    assert memory_setting("max_memory", 4096) == 4096
    for bad in (0, -1, "0s", "soon", True, float("inf")):
        with pytest.raises(SettingsError, match="max_run_time"):
            seconds_setting("max_run_time", bad)
    for bad in (0, -5, "lots", "12 parsecs", 1.5, True):
        with pytest.raises(SettingsError, match="max_memory"):
            memory_setting("max_memory", bad)
