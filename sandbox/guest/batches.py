"""`table_batches` for process_writes: InfluxDB 3's list of dicts, built lazily from shared memory.

Each entry is a `TableBatch`, a dict with exactly InfluxDB 3's keys, `"table_name"` and `"rows"`.
Its rows (a real list of fresh, mutable dicts holding every schema column, None where a line
did not write it, `time` as int ns) are decoded from the shared buffers the first time the
plugin looks at them. The columnar API (`batch.column(name)`) reads the same buffers in place
and never builds rows. Views into shared memory are valid only during the call.
"""

from sandbox.guest import arrowlite


class Column:
    """One column of a write batch, read in place from the flush's shared memory.

    `values` is a read-only typed memoryview of the column's values for numeric and timestamp
    columns (e.g. `format == 'd'` for float64), with no copy; null slots hold whatever Arrow put
    there, so check `validity` when `null_count` is not 0. `to_list()` decodes any column type
    into Python values with None for nulls.
    """

    __slots__ = ("name", "type", "null_count", "_mem", "_layout", "_views")

    def __init__(self, mem, layout, views):
        self.name = layout["name"]
        self.type = layout["type"]
        self.null_count = layout.get("null_count", 0)
        self._mem = mem
        self._layout = layout
        self._views = views

    def __len__(self):
        return self._layout["length"]

    def __repr__(self):
        return f"<Column {self.name!r} {self.type} rows={len(self)} nulls={self.null_count}>"

    @property
    def values(self):
        """Typed read-only memoryview of a numeric/timestamp column's values (zero copy)."""
        if self.type not in arrowlite.NUMBER_FORMATS:
            raise TypeError(f"column {self.name!r} of type {self.type} has no numeric values; use to_list()")
        view = arrowlite.numbers(self._mem, self._layout)
        self._views.append(view)
        return view

    @property
    def validity(self):
        """A list of bools (True = value present), or None when the column has no nulls."""
        return arrowlite.validity(self._mem, self._layout)

    def to_list(self):
        """All values as Python objects (int, float, bool, str; time as int ns), None for nulls."""
        return arrowlite.values(self._mem, self._layout)

    def __iter__(self):
        return iter(self.to_list())


def _materializing(name):
    method = getattr(dict, name)

    def wrapper(self, *args, **kwargs):
        self._materialize()
        return method(self, *args, **kwargs)

    wrapper.__name__ = name
    return wrapper


class TableBatch(dict):
    """`{"table_name": str, "rows": [...]}` whose rows are decoded on first access.

    Also offers `table_name`, `rows`, `num_rows`, `column_names` and `column(name)` as
    attributes, for plugins written against the columnar API.
    """

    __slots__ = ("num_rows", "_mem", "_layouts", "_views")

    def __init__(self, table_name, num_rows, layouts, mem, views):
        super().__init__(table_name=table_name)
        self.num_rows = num_rows
        self._mem = mem
        self._layouts = {layout["name"]: layout for layout in layouts}
        self._views = views

    def __missing__(self, key):
        if key != "rows":
            raise KeyError(key)
        self._materialize()
        return dict.__getitem__(self, "rows")

    def _materialize(self):
        if not dict.__contains__(self, "rows"):
            dict.__setitem__(self, "rows", self._build_rows())

    def _build_rows(self):
        names = list(self._layouts)
        columns = [arrowlite.values(self._mem, layout) for layout in self._layouts.values()]
        if not columns:
            return [{} for _ in range(self.num_rows)]
        return [dict(zip(names, row)) for row in zip(*columns)]

    for _name in ("get", "keys", "items", "values", "__iter__", "__len__", "__contains__", "__repr__",
                  "__eq__", "__ne__", "copy", "pop", "popitem", "setdefault", "update", "__or__",
                  "__ror__", "__ior__"):
        locals()[_name] = _materializing(_name)
    del _name
    __hash__ = None

    def __reduce_ex__(self, protocol):
        # copy.deepcopy and pickle get a plain dict: the shared-memory views stay behind.
        self._materialize()
        return dict, (dict(self),)

    @property
    def table_name(self):
        return dict.__getitem__(self, "table_name")

    @property
    def rows(self):
        return self["rows"]

    @property
    def column_names(self):
        """The table's columns, in schema order (tags, fields, then time)."""
        return list(self._layouts)

    def column(self, name):
        """The named column, read in place; raises KeyError for a column the table lacks."""
        return Column(self._mem, self._layouts[name], self._views)


def build(layout, mem, database, table, views):
    """Build InfluxDB 3's `table_batches` for one trigger from a decoded flush layout.

    Keeps the tables of `database` (only `table` when it is not None), in flush order. Every
    memoryview created for the plugin is appended to `views`, so the caller can release them.
    """
    return [
        TableBatch(entry["table"], entry["num_rows"], entry["columns"], mem, views)
        for entry in layout["tables"]
        if entry["database"] == database and (table is None or entry["table"] == table)
    ]
