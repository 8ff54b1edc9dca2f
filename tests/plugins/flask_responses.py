"""Returns the Flask-style value named by the `case` query parameter."""


class FlaskLike:
    status_code = 201
    headers = {"X-Kind": "flask"}

    def __flask_response__(self):
        return True

    def get_data(self):
        return "from flask-like"


def _generator():
    yield "a"
    yield b"b"
    yield 3
    yield b"\xff"
    yield "c"


CASES = {
    "str": lambda: "<p>hi</p>",
    "dict": lambda: {"b": 1, "a": [1, 2]},
    "list": lambda: [1, "x"],
    "tuple_body": lambda: ("only body",),
    "tuple_status": lambda: ({"error": "nope"}, 404),
    "tuple_headers": lambda: ("text", {"X-A": "1"}),
    "tuple_status_headers": lambda: ("text", 202, {"Content-Type": "text/csv", "X-B": "2"}),
    "tuple_bad_status": lambda: ("text", 70000),
    "tuple_third_not_dict": lambda: (500, {"Content-Type": "text/plain"}, "legacy"),
    "tuple_other_body": lambda: (12.5, 200),
    "flask": FlaskLike,
    "generator": _generator,
    "long_tuple": lambda: ("a", "b", "c", "d"),
    "bytes": lambda: b"raw",
    "none": lambda: None,
    "int": lambda: 5,
    "raise": lambda: 1 / 0,
}


def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
    return CASES[query_parameters["case"]]()
