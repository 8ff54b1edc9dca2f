"""Reports where the float column it is given lives in memory, read through the C API."""
import ctypes
import os


class Py_buffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.py_object), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


def address(obj):
    view = Py_buffer()
    ctypes.pythonapi.PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(Py_buffer), ctypes.c_int]
    ctypes.pythonapi.PyBuffer_Release.argtypes = [ctypes.POINTER(Py_buffer)]
    ctypes.pythonapi.PyObject_GetBuffer(obj, ctypes.byref(view), 0)
    try:
        return view.buf, view.readonly
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


def process_writes(influxdb3_local, table_batches, args=None):
    values = table_batches[0].column("usage").values
    buf, readonly = address(values)
    influxdb3_local.info(os.getpid(), buf, readonly, values.format, sum(values))
    try:
        values[0] = 1.0
    except TypeError as e:
        influxdb3_local.info("write refused:", e)
