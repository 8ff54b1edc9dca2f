"""Loading a plugin's code into this interpreter, and reloading it when its files change.

A single-file plugin's source is compiled with its real path (so tracebacks name the plugin's
file and line) and executed in a fresh module — never imported by name, so `import.py` or
`sms-alert.py` work. A directory plugin is imported as a package named after the directory,
with its parent on sys.path during the import, as InfluxDB 3 does. Before each call the files
are stat'ed; only when mtime/size/inode moved is their content hashed, and only a changed hash
reloads. `every_call` re-executes the module for every invocation (InfluxDB 3's semantics).
"""

import hashlib
import importlib.util
import os
import re
import sys
import types

ENTRY_POINTS = {
    "writes": (
        "process_writes",
        "the process_writes function is not present in the plugin. Should be defined as: "
        "process_writes(influxdb3_local, table_batches, args=None)",
    ),
    "schedule": (
        "process_scheduled_call",
        "the process_scheduled_call function is not present in the plugin. Should be defined as: "
        "process_scheduled_call(influxdb3_local, call_time, args=None)",
    ),
    "request": (
        "process_request",
        "the process_request function is not present in the plugin. Should be defined as: "
        "process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None) "
        "-> Tuple[str, Optional[Dict[str, str]]]",
    ),
}


class MissingEntryPoint(Exception):
    """The plugin does not define the function its trigger kind calls."""


def _python_files(directory):
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(root, name)


def _module_name(path):
    stem = os.path.basename(path.rstrip(os.sep))
    if stem.endswith(".py"):
        stem = stem[:-3]
    return re.sub(r"\W", "_", stem) or "plugin"


class PluginCode:
    """The plugin's code in this interpreter: load once, reload on content change."""

    def __init__(self, path, reload_mode):
        self.path = path
        self.is_package = os.path.isdir(path)
        self.every_call = reload_mode == "every_call"
        self.module = None
        self._signature = None
        self._digest = None
        self._code = None

    def files(self):
        """The plugin's source files (one file, or every .py of the package)."""
        return list(_python_files(self.path)) if self.is_package else [self.path]

    def _stat_signature(self):
        signature = []
        for name in self.files():
            st = os.stat(name)
            signature.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
        return signature

    def _content_digest(self):
        digest = hashlib.sha256()
        for name in self.files():
            digest.update(name.encode())
            with open(name, "rb") as f:
                digest.update(f.read())
        return digest.digest()

    def load(self):
        """Import the plugin now; exceptions from its module code propagate."""
        self._signature = self._stat_signature()
        self._digest = self._content_digest()
        self._import()

    def _import(self):
        if self.is_package:
            self.module = self._import_package()
            return
        with open(self.path, "rb") as f:
            source = f.read()
        self._code = compile(source, self.path, "exec", dont_inherit=True)
        self.module = self._execute()

    def _execute(self):
        name = "plugin_" + _module_name(self.path)
        module = types.ModuleType(name)
        module.__file__ = self.path
        sys.modules[name] = module
        exec(self._code, module.__dict__)
        return module

    def _import_package(self):
        name = _module_name(self.path)
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[loaded]
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(self.path, "__init__.py"), submodule_search_locations=[self.path]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        parent = os.path.dirname(self.path.rstrip(os.sep))
        sys.path.insert(0, parent)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            sys.path.remove(parent)
        importlib.invalidate_caches()
        return module

    def refresh(self):
        """Reload if the files' content changed since the last load; every_call re-executes always."""
        signature = self._stat_signature()
        if signature != self._signature:
            digest = self._content_digest()
            if digest != self._digest:
                # A failed reload keeps failing every call until the file is fixed, as in InfluxDB 3.
                self._signature = self._digest = None
                self._import()
                self._digest = digest
                self._signature = signature
                return
            self._signature = signature
        if self.every_call:
            if self.is_package:
                self.module = self._import_package()
            else:
                self.module = self._execute()

    def entry_point(self, kind):
        """The function for `kind`; raises MissingEntryPoint with InfluxDB 3's text."""
        name, missing = ENTRY_POINTS[kind]
        function = getattr(self.module, name, None)
        if function is None:
            raise MissingEntryPoint(missing)
        return function
