"""A request trigger (`request:hello` → /api/v3/engine/hello) answering with JSON.

Shows InfluxDB 3's Flask-style returns: a dict becomes JSON with status 200; a (body, status)
tuple sets the status.
"""
import json


def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
    name = query_parameters.get("name")
    if request_body:
        name = json.loads(request_body).get("name", name)
    if not name:
        return {"error": "give a name as ?name= or in a JSON body"}, 400
    rows = influxdb3_local.query("SHOW TABLES")
    return {"hello": name, "tables": sorted(row["table_name"] for row in rows if row["table_type"] == "BASE TABLE")}
