"""Plugin execution: worker processes, isolated subinterpreters, the plugin-side API, watchdogs."""
