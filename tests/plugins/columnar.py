"""Sums a float column through the columnar API and through rows; both must agree."""


def process_writes(influxdb3_local, table_batches, args=None):
    for batch in table_batches:
        column = batch.column("usage")
        valid = column.validity
        values = column.values
        columnar = sum(v for v, ok in zip(values, valid) if ok) if valid else sum(values)
        by_rows = sum(row["usage"] for row in batch["rows"] if row["usage"] is not None)
        influxdb3_local.info(batch.table_name, batch.num_rows, column.null_count, columnar, by_rows,
                             column.to_list()[:3], batch.column("host").to_list()[:3])
