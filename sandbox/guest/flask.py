"""InfluxDB 3's Flask-style conversion of a process_request return value into a response.

The order of the checks is InfluxDB 3's `process_flask_response` (reference §1): an object whose
`__flask_response__()` is True; a tuple of 1–3 items (body, status or headers, headers); a str
(text/html); a dict or list (JSON); any other iterable (str and UTF-8 bytes items concatenated);
anything else is an error.
"""

import json


class UnsupportedResponse(Exception):
    """The return value has no Flask-style meaning; the request gets a 500."""


def _header_dict(value):
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError("response headers must be a dict of str to str")
    return dict(value)


def _body(part):
    if isinstance(part, str):
        return part, {"Content-Type": "text/html"}
    if isinstance(part, (dict, list)):
        return json.dumps(part), {"Content-Type": "application/json"}
    return str(part), {"Content-Type": "text/plain"}


def _flask_like(result):
    marker = getattr(result, "__flask_response__", None)
    if marker is None:
        return False
    try:
        return marker() is True
    except Exception:
        return False


def convert(result):
    """Return (status, headers, body str) for a plugin's return value.

    Raises UnsupportedResponse (or TypeError for malformed headers), which the caller turns into
    a 500 with `{"error": ...}`.
    """
    if _flask_like(result):
        status = result.status_code
        body = result.get_data()
        if not isinstance(status, int) or not 0 <= status <= 65535:
            raise TypeError("__flask_response__ object's status_code must be an int in 0..65535")
        if not isinstance(body, str):
            raise TypeError("__flask_response__ object's get_data() must return str")
        return status, _header_dict(result.headers), body
    if isinstance(result, tuple) and 0 < len(result) <= 3:
        body, headers = _body(result[0])
        status = 200
        if len(result) >= 2:
            second = result[1]
            if isinstance(second, int):
                status = second if 0 <= second <= 65535 else 500
            elif isinstance(second, dict):
                headers.update(_header_dict(second))
            if len(result) == 3:
                if not isinstance(result[2], dict):
                    raise UnsupportedResponse("expected a dictionary in header item")
                headers.update(_header_dict(result[2]))
        return status, headers, body
    if isinstance(result, str):
        return 200, {"Content-Type": "text/html"}, result
    if isinstance(result, (dict, list)):
        return 200, {"Content-Type": "application/json"}, json.dumps(result)
    if hasattr(result, "__iter__"):
        parts = []
        for item in result:
            if isinstance(item, str):
                parts.append(item)
            elif isinstance(item, bytes):
                try:
                    parts.append(item.decode("utf-8"))
                except UnicodeDecodeError:
                    pass
        return 200, {"Content-Type": "text/html"}, "".join(parts)
    raise UnsupportedResponse("Unsupported return type from Python function")
