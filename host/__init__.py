"""The server process: HTTP API, write path, WAL, storage, SQL and the plugin manager."""
