"""The plugin side: pure-stdlib code that runs inside each trigger's interpreter.

Nothing here may import msgspec, pyarrow or anything outside the standard library: an isolated
subinterpreter refuses those extension modules. The same code runs unchanged in a process-mode
worker's main interpreter.
"""
