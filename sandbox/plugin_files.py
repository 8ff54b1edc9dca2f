"""Resolving a trigger's `plugin_filename` inside the plugin directory, refusing any escape.

Follows InfluxDB 3's `validate_path_within_plugin_dir`: the name is relative to the plugin dir;
absolute paths, Windows drive or UNC prefixes, `..` components and symlinks that lead outside
the directory are refused ("Path traversal detected"). The result is a regular file (any name)
or a directory holding `__init__.py`.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath


class PluginPathError(ValueError):
    """The plugin file name is unusable; the message says why."""


_WINDOWS_PREFIX = re.compile(r"^([A-Za-z]:|\\\\|//)")


def resolve_plugin_path(plugin_dir: Path, plugin_filename: str) -> Path:
    """The real path of the plugin, guaranteed to lie inside `plugin_dir`. Raises PluginPathError."""
    if not plugin_filename or "\x00" in plugin_filename:
        raise PluginPathError(f"invalid plugin file name {plugin_filename!r}")
    relative = PurePosixPath(plugin_filename.replace("\\", "/"))
    if relative.is_absolute() or _WINDOWS_PREFIX.match(plugin_filename) or ".." in relative.parts:
        raise PluginPathError(f"Path traversal detected: {plugin_filename!r} must be relative to the plugin directory")
    root = plugin_dir.resolve()
    candidate = root.joinpath(*relative.parts)
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise PluginPathError(f"plugin file {plugin_filename!r} not found in {root}") from None
    if not real.is_relative_to(root):
        raise PluginPathError(f"Path traversal detected: {plugin_filename!r} leads outside the plugin directory")
    if real.is_dir():
        if not (real / "__init__.py").is_file():
            raise PluginPathError(f"plugin directory {plugin_filename!r} has no __init__.py")
    elif not real.is_file():
        raise PluginPathError(f"plugin {plugin_filename!r} is neither a file nor a package directory")
    return real
