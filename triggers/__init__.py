"""Trigger specifications and the dispatch of writes, schedules and requests to plugins."""
