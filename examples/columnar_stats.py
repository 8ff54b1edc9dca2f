"""Per-table statistics of one float field, read straight from the flush's shared memory.

Uses plughost's columnar API (see docs/plugins.md): `batch.column(name).values` is a read-only
memoryview of doubles inside the shared flush — no row dicts, no copies — and `validity` tells
which slots hold a value. Writes one summary line per table to `<table>_stats`.

Trigger arguments: `field` (default `usage`).
Example: plughost create trigger -d mydb --trigger-spec all_tables --path columnar_stats.py stats
"""


def process_writes(influxdb3_local, table_batches, args=None):
    field = (args or {}).get("field", "usage")
    for batch in table_batches:
        if field not in batch.column_names:
            continue
        column = batch.column(field)
        if column.type != "float64":
            influxdb3_local.warn(f"{batch.table_name}.{field} is {column.type}, not a float field")
            continue
        values = column.values  # memoryview of doubles, valid only during this call
        valid = column.validity  # None when every row has a value
        present = list(values) if valid is None else [v for v, ok in zip(values, valid) if ok]
        if not present:
            continue
        line = (LineBuilder(f"{batch.table_name}_stats")
                .tag("field", field)
                .int64_field("count", len(present))
                .float64_field("sum", sum(present))
                .float64_field("min", min(present))
                .float64_field("max", max(present)))
        influxdb3_local.write(line)
        influxdb3_local.info(f"{batch.table_name}: {len(present)} of {batch.num_rows} rows have {field}")
