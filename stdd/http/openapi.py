"""The OpenAPI 3 document of every route, written by hand (served at /openapi.json).

Design note: written out rather than generated from the handlers, so it says what a client may
rely on (and what the schemathesis test holds the server to) instead of echoing the code.
Rows from the database are open objects (`additionalProperties: true`) with their well-known
keys typed; every error is the `Error` shape.
"""
from __future__ import annotations

from typing import Any

from ..pipeline import STAGE_NAMES
from ..store import STATES


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict:
    return _json(_ref("Error"), description)


NUM = {"type": "number", "nullable": True}
INT = {"type": "integer", "nullable": True}
STR = {"type": "string", "nullable": True}
ANY_OBJ = {"type": "object", "additionalProperties": True}

FRAME_ID = {"name": "id", "in": "path", "required": True, "description": "frame id",
            "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}}
ALERT_ID = {"name": "id", "in": "path", "required": True, "description": "alert id",
            "schema": {"type": "string", "minLength": 1, "maxLength": 400}}
LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}
OFFSET = {"name": "offset", "in": "query",
          "schema": {"type": "integer", "minimum": 0, "maximum": 1_000_000_000, "default": 0}}

SINCE = {"oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]}
AUTH = [{"bearer": []}]
OPEN = [{}, {"bearer": []}]  # open on loopback unless http.open_reads = false
FRAME_OPTIONS = {
    "type": "object", "additionalProperties": True,
    "description": "the frame's own settings, keys as with `-c`: a bare key is a [pipeline] key "
                   "(e.g. \"sn\": 3), `catalog.*` and `template.*` keys too, and `profile` (an instrument "
                   "profile name); an unknown key or a bad value is a 400 naming it. Recorded in result.json "
                   "(`settings.frame_options`); on a retry they are merged over the frame's earlier ones.",
}

COMMON_ERRORS = {"401": _err("missing or wrong bearer token")}
WRITE_ERRORS = {"400": _err("a bad body"), "401": _err("missing or wrong bearer token")}


def document(version: str) -> dict[str, Any]:
    schemas = {
        "Error": {
            "type": "object", "required": ["error", "status"],
            "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
            "additionalProperties": True,
        },
        "Frame": {
            "type": "object", "required": ["id", "path", "sha256", "state"], "additionalProperties": True,
            "properties": {
                "id": {"type": "integer"}, "path": {"type": "string"}, "name": STR,
                "sha256": {"type": "string"}, "size": INT, "version": INT,
                "state": {"type": "string", "enum": list(STATES)}, "stage": STR, "priority": INT,
                "attempts": INT, "error": STR, "work_dir": STR, "result_dir": STR, "worker": STR,
                "filter": STR, "zp": NUM, "zp_err": NUM, "fwhm_arcsec": NUM, "mag_limit": NUM,
                "n_candidates": INT, "created_at": NUM, "queued_at": NUM, "started_at": NUM,
                "finished_at": NUM, "updated_at": NUM,
            },
        },
        "FrameList": {
            "type": "object", "required": ["frames", "total", "limit", "offset", "next_offset"],
            "properties": {
                "frames": {"type": "array", "items": _ref("Frame")}, "total": {"type": "integer"},
                "limit": {"type": "integer"}, "offset": {"type": "integer"},
                "next_offset": {"type": "integer", "nullable": True},
            },
        },
        "FrameDetail": {
            "type": "object", "required": ["frame", "stage_runs", "result", "files", "logs", "events"],
            "properties": {
                "frame": _ref("Frame"),
                "stage_runs": {"type": "array", "items": {
                    "type": "object", "additionalProperties": True,
                    "properties": {"stage": {"type": "string"}, "state": {"type": "string"},
                                   "attempt": INT, "seconds": NUM, "error": STR}}},
                "result": {"type": "object", "nullable": True, "additionalProperties": True,
                           "description": "the frame's result.json"},
                "versions": {"type": "array", "description": "the frame's history: kept results, then the current",
                             "items": {"type": "object", "additionalProperties": True,
                                       "required": ["run", "current", "path", "status"],
                                       "properties": {"run": INT, "current": {"type": "boolean"},
                                                      "path": {"type": "string"}, "status": STR,
                                                      "stages_run": {"type": "array", "items": {"type": "string"}},
                                                      "kept_stages": {"type": "array", "items": {"type": "string"}},
                                                      "frame_options": {"type": "object",
                                                                        "additionalProperties": True}}}},
                "files": {"type": "array", "items": {
                    "type": "object", "required": ["name", "size", "url"],
                    "properties": {"name": {"type": "string"}, "size": {"type": "integer"},
                                   "url": {"type": "string"}}}},
                "logs": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
                         "description": "the last lines of each stage log"},
                "events": {"type": "array", "items": ANY_OBJ},
            },
        },
        "FrameAction": {
            "type": "object", "required": ["frame"], "additionalProperties": True,
            "properties": {"frame": _ref("Frame")},
        },
        "Submitted": {
            "type": "object", "required": ["frame", "created"],
            "properties": {"frame": _ref("Frame"), "created": {"type": "boolean"}},
        },
        "Worker": {
            "type": "object", "additionalProperties": True,
            "properties": {"name": {"type": "string"}, "alive": {"type": "boolean"}, "busy": {"type": "boolean"},
                           "frame_id": INT, "stage": STR, "pid": INT, "attempt": INT, "seconds": NUM,
                           "stage_seconds": NUM},
        },
        "Status": {
            "type": "object",
            "required": ["version", "uptime_seconds", "paused", "frames", "queue", "workers"],
            "additionalProperties": True,
            "properties": {
                "version": {"type": "string"}, "started_at": NUM, "uptime_seconds": NUM,
                "state": {"type": "string", "enum": ["starting", "running", "paused", "stopping", "stopped"]},
                "paused": {"type": "boolean"}, "paused_reason": STR, "pid": {"type": "integer"},
                "database": {"type": "string"}, "intake": {"type": "object", "nullable": True,
                                                          "additionalProperties": True},
                "updated_at": NUM,
                "frames": {"type": "object", "additionalProperties": {"type": "integer"},
                           "description": "frames per state"},
                "queue": {"type": "object", "properties": {"depth": {"type": "integer"},
                                                           "due": {"type": "integer"}}},
                "workers": {"type": "array", "items": _ref("Worker")},
                "pool": {"type": "object", "nullable": True, "additionalProperties": True},
                "event_loop": ANY_OBJ,
            },
        },
        "Health": {
            "type": "object", "required": ["ok", "checks", "version"],
            "description": "`ok` is true when every check is ok (then 200, else 503).",
            "properties": {
                "ok": {"type": "boolean"}, "version": {"type": "string"},
                "checks": {
                    "type": "object",
                    "description": (
                        "By name: `database` (the state file read, and its write lock free, on the endpoint's "
                        "own connection within 0.5 s; `problem`: database locked, disk full, read-only, "
                        "database missing, cannot open, database corrupt, I/O error, not answering, error; "
                        "`since`: when that problem was first seen), `workers`, `watcher`, `event_loop`, "
                        "`alert_stream` (only with alerts enabled: the Kafka consumer, or with "
                        "alerts.kafka.enabled = false the drop-folder intake), and those of the daemon's own "
                        "health() (e.g. `loops`, `database_writes`, one per service), prefixed `daemon.` where "
                        "a name is already taken."),
                    "additionalProperties": _ref("Check"),
                },
            },
        },
        "Check": {
            "type": "object", "required": ["ok", "detail"], "additionalProperties": True,
            "properties": {
                "ok": {"type": "boolean"},
                "detail": {"type": "string", "description": "what was found, in words (why, when not ok)"},
                "problem": {"description": "the database check's problem, by name (a string)"},
                "since": {"description": "when the problem was first seen (the database check: ISO 8601 UTC)"},
            },
        },
        "Paused": {"type": "object", "required": ["paused", "state"],
                   "properties": {"paused": {"type": "boolean"}, "state": {"type": "string"},
                                  "paused_reason": STR}},
        "Reloaded": {"type": "object", "required": ["reloaded"], "additionalProperties": True,
                     "properties": {"reloaded": {"type": "boolean"},
                                    "errors": {"type": "array", "items": {"type": "string"}}}},
        "Alert": {
            "type": "object", "required": ["id"], "additionalProperties": True,
            "properties": {
                "id": {"type": "string"}, "ivorn": STR, "event_id": STR, "mission": STR,
                "instrument": STR, "notice_type": STR, "role": STR, "time": STR, "ra": NUM, "dec": NUM,
                "error_radius_deg": NUM, "retraction": {"nullable": True}, "actionable": {"nullable": True},
                "ignore_reason": STR, "priority": INT, "state": STR, "live_until": NUM, "received_at": NUM,
            },
        },
        "AlertList": {
            "type": "object", "required": ["alerts", "total", "limit", "offset", "next_offset"],
            "properties": {
                "alerts": {"type": "array", "items": _ref("Alert")}, "total": {"type": "integer"},
                "limit": {"type": "integer"}, "offset": {"type": "integer"},
                "next_offset": {"type": "integer", "nullable": True},
            },
        },
        "AlertDetail": {
            "type": "object", "required": ["alert", "region", "actions", "frames", "candidates"],
            "properties": {
                "alert": _ref("Alert"),
                "region": {"type": "object", "nullable": True, "additionalProperties": True},
                "actions": {"type": "array", "items": ANY_OBJ},
                "frames": {"type": "array", "items": _ref("Frame")},
                "candidates": {"type": "array", "items": ANY_OBJ},
            },
        },
        "AlertHandled": {
            "type": "object", "required": ["message_id", "state", "alert", "created"], "additionalProperties": True,
            "properties": {
                "message_id": {"type": "integer"},
                "state": {"type": "string", "enum": ["parsed", "duplicate", "control", "already-processed"]},
                "alert_id": STR, "decision": {"type": "object", "nullable": True, "additionalProperties": True},
                "action_ids": {"type": "array", "items": {"type": "integer"}},
                "alert": {"allOf": [_ref("Alert")], "nullable": True},
                "created": {"type": "boolean"}},
        },
    }
    paths = {
        "/": {"get": {
            "summary": "The HTML status page: queue, workers, recent frames, live alerts",
            "security": OPEN, "tags": ["page"],
            "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}},
                          **COMMON_ERRORS}}},
        "/health": {"get": {
            "summary": "Checks: database, workers, watcher, alert stream, event loop, the daemon's own; "
                       "answers within a second",
            "security": OPEN, "tags": ["status"],
            "responses": {"200": _json(_ref("Health"), "all checks pass"),
                          "503": _json(_ref("Health"), "a check fails"), **COMMON_ERRORS}}},
        "/status": {"get": {
            "summary": "Frames per state, queue, workers and what each runs, uptime, version, paused",
            "security": OPEN, "tags": ["status"],
            "responses": {"200": _json(_ref("Status"), "the daemon's status"), **COMMON_ERRORS}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics (names prefixed stdd_)",
            "security": OPEN, "tags": ["status"],
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **COMMON_ERRORS}}},
        "/openapi.json": {"get": {
            "summary": "This document", "security": OPEN, "tags": ["status"],
            "responses": {"200": _json(ANY_OBJ, "OpenAPI 3 document"), **COMMON_ERRORS}}},
        "/frames": {
            "get": {
                "summary": "Frames, newest first, with filters and paging",
                "security": OPEN, "tags": ["frames"],
                "parameters": [
                    {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(STATES)}},
                    {"name": "since", "in": "query", "description": "Unix seconds or ISO 8601 time (updated since)",
                     "schema": SINCE},
                    {"name": "alert", "in": "query", "description": "frames linked to this alert id",
                     "schema": {"type": "string"}},
                    LIMIT, OFFSET,
                ],
                "responses": {"200": _json(_ref("FrameList"), "a page of frames"),
                              "400": _err("a bad filter or paging value"), **COMMON_ERRORS}},
            "post": {
                "summary": "Queue a file that lies under one of the configured incoming roots",
                "security": AUTH, "tags": ["frames"],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["path"], "additionalProperties": False,
                    "properties": {"path": {"type": "string", "pattern": "^/", "description": "absolute path of a FITS file"},
                                   "priority": {"type": "integer", "minimum": -1000000, "maximum": 1000000},
                                   "steps": {"type": "array", "minItems": 1,
                                             "items": {"type": "string", "enum": list(STAGE_NAMES)}},
                                   "options": FRAME_OPTIONS}}}}},
                "responses": {"201": _json(_ref("Submitted"), "queued"),
                              "200": _json(_ref("Submitted"), "the same content was already known"),
                              "403": _err("the path is outside the allowed roots"),
                              "404": _err("no such file"), **WRITE_ERRORS}},
        },
        "/frames/{id}": {"get": {
            "summary": "One frame: its row, stage runs, result.json, files, log tails, events",
            "security": OPEN, "tags": ["frames"],
            "parameters": [FRAME_ID, {"name": "log_lines", "in": "query",
                                      "schema": {"type": "integer", "minimum": 0, "maximum": 5000, "default": 50}}],
            "responses": {"200": _json(_ref("FrameDetail"), "the frame"), "400": _err("a bad parameter"),
                          "404": _err("no such frame"), **COMMON_ERRORS}}},
        "/frames/{id}/files/{name}": {"get": {
            "summary": "A file from the frame's folder (never one outside it)",
            "security": OPEN, "tags": ["frames"],
            "parameters": [FRAME_ID, {"name": "name", "in": "path", "required": True,
                                      "description": "path relative to the frame's folder",
                                      "schema": {"type": "string", "minLength": 1}}],
            "responses": {"200": {"description": "the file",
                                  "content": {"*/*": {"schema": {}}}},
                          "403": _err("the name points outside the frame's folder"),
                          "404": _err("no such frame or file"), **COMMON_ERRORS}}},
        "/frames/{id}/thumbnail.png": {"get": {
            "summary": "A small picture of the frame: a stage's preview image, else drawn from the frame",
            "security": OPEN, "tags": ["frames"], "parameters": [FRAME_ID],
            "responses": {"200": {"description": "PNG (or the stage's own preview format)",
                                  "content": {"*/*": {"schema": {}}}},
                          "404": _err("no such frame, or nothing to draw yet"), **COMMON_ERRORS}}},
        "/frames/{id}/cancel": {"post": {
            "summary": "Cancel a queued or running frame", "security": AUTH, "tags": ["frames"],
            "parameters": [FRAME_ID],
            "responses": {"200": _json(_ref("FrameAction"), "cancelled (it was queued)"),
                          "202": _json(_ref("FrameAction"), "cancelling: its process is being stopped"),
                          "404": _err("no such frame"),
                          "409": _err("the frame is already finished"), **WRITE_ERRORS}}},
        "/frames/{id}/retry": {"post": {
            "summary": "Queue a finished frame again, from the first stage or from `from_stage`",
            "security": AUTH, "tags": ["frames"], "parameters": [FRAME_ID],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {"from_stage": {"type": "string", "enum": list(STAGE_NAMES)},
                               "options": FRAME_OPTIONS}}}}},
            "responses": {"200": _json(_ref("FrameAction"), "queued again (the previous result is kept as a "
                                                            "version)"),
                          "404": _err("no such frame"),
                          "409": _err("the frame is queued or running"), **WRITE_ERRORS}}},
        "/pause": {"post": {
            "summary": "Stop starting frames (running ones go on; new files are still recorded)",
            "security": AUTH, "tags": ["control"],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {"reason": {"type": "string", "maxLength": 500}}}}}},
            "responses": {"200": _json(_ref("Paused"), "paused"), "409": _err("the daemon is stopping"),
                          **WRITE_ERRORS}}},
        "/resume": {"post": {
            "summary": "Start frames again", "security": AUTH, "tags": ["control"],
            "responses": {"200": _json(_ref("Paused"), "resumed"), "409": _err("the daemon is stopping"),
                          **WRITE_ERRORS}}},
        "/reload": {"post": {
            "summary": "Re-read the config file; the running settings stay if it has errors",
            "security": AUTH, "tags": ["control"],
            "responses": {"200": _json(_ref("Reloaded"), "reloaded"),
                          "409": _err("the config file has errors; nothing changed"), **WRITE_ERRORS}}},
        "/alerts": {
            "get": {
                "summary": "Alerts, newest first", "security": OPEN, "tags": ["alerts"],
                "parameters": [{"name": "live", "in": "query", "description": "only alerts live now",
                                "schema": {"type": "boolean"}},
                               {"name": "state", "in": "query", "schema": {"type": "string", "enum": [
                                   "live", "ignored", "retracted", "superseded", "expired", "cancel"]}},
                               {"name": "since", "in": "query", "description": "Unix seconds or ISO 8601 time "
                                "(received since)", "schema": SINCE},
                               LIMIT, {**OFFSET, "schema": {"type": "integer", "minimum": 0, "maximum": 100000,
                                                            "default": 0}}],
                "responses": {"200": _json(_ref("AlertList"), "a page of alerts"),
                              "400": _err("a bad parameter"), **COMMON_ERRORS}},
            "post": {
                "summary": "Handle a notice (GCN JSON or VOEvent XML) as if it came from Kafka",
                "security": AUTH, "tags": ["alerts"],
                "parameters": [{"name": "topic", "in": "query", "description": "the Kafka topic it would have come on",
                                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,249}$"}}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": ANY_OBJ},
                    "application/xml": {"schema": {"type": "string"}},
                    "text/xml": {"schema": {"type": "string"}}}},
                "responses": {"201": _json(_ref("AlertHandled"), "a new alert was recorded"),
                              "200": _json(_ref("AlertHandled"), "handled (a duplicate or not an alert)"),
                              "409": _err("alert handling is not running in this daemon"),
                              "413": _err("the body is larger than 8 MiB"), **WRITE_ERRORS}},
        },
        "/alerts/{id}": {"get": {
            "summary": "One alert: region, actions, frames covering it, candidates inside",
            "security": OPEN, "tags": ["alerts"],
            "parameters": [ALERT_ID, {"name": "full", "in": "query", "description": "include the parsed notice "
                                      "and the whole skymap MOC", "schema": {"type": "boolean"}}],
            "responses": {"200": _json(_ref("AlertDetail"), "the alert"), "400": _err("a bad parameter"),
                          "404": _err("no such alert"),
                          **COMMON_ERRORS}}},
        "/lightcurve": {"get": {
            "summary": "The light curve at a position from the measurement store: matched detections, or with "
                       "`forced` forced photometry on every frame covering it (limits where not detected)",
            "security": OPEN, "tags": ["store"],
            "parameters": [
                {"name": "ra", "in": "query", "required": True, "schema": {"type": "number", "minimum": 0, "maximum": 360}},
                {"name": "dec", "in": "query", "required": True, "schema": {"type": "number", "minimum": -90, "maximum": 90}},
                {"name": "radius", "in": "query", "description": "arcsec",
                 "schema": {"type": "number", "minimum": 0.01, "maximum": 300, "default": 2}},
                {"name": "forced", "in": "query", "schema": {"type": "boolean"}},
                {"name": "filter", "in": "query", "schema": {"type": "string"}},
                {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "ecsv", "votable"]}}],
            "responses": {"200": {"description": "the light curve", "content": {
                "application/json": {"schema": {"type": "object", "additionalProperties": True,
                                                "required": ["ra", "dec", "points", "filters"]}},
                "text/plain": {"schema": {"type": "string"}},
                "application/x-votable+xml": {"schema": {"type": "string"}}}},
                "400": _err("a bad parameter"), **COMMON_ERRORS}}},
        "/candidates": {"get": {
            "summary": "Candidates followed across frames, newest first, each with its detections",
            "security": OPEN, "tags": ["store"],
            "parameters": [
                {"name": "state", "in": "query", "schema": {"type": "string", "enum": [
                    "confirmed", "moving", "known variable", "high proper motion", "single"]}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 5000}},
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 10000000}},
                {"name": "non_detections", "in": "query", "description": "each with the frames covering it without "
                 "a detection, and their limits", "schema": {"type": "boolean"}}],
            "responses": {"200": _json({"type": "object", "required": ["candidates"], "additionalProperties": True,
                                        "properties": {"candidates": {"type": "array", "items": {
                                            "type": "object", "additionalProperties": True}}}}, "candidates"),
                          "400": _err("a bad parameter"), **COMMON_ERRORS}}},
        "/alerts/{id}/report": {"get": {
            "summary": "The alert's follow-up report: frames covering its region by time since T0, detections and "
                       "limits at its position, candidates in the region, the light curve against t - T0, and a "
                       "draft GCN Circular (`format=text`: the circular alone)",
            "security": OPEN, "tags": ["alerts"],
            "parameters": [ALERT_ID, {"name": "format", "in": "query",
                                      "schema": {"type": "string", "enum": ["json", "text"], "default": "json"}}],
            "responses": {"200": {"description": "the report (JSON) or the circular (text)", "content": {
                "application/json": {"schema": {"type": "object", "additionalProperties": True,
                                                "required": ["alert", "t0", "frames", "candidates", "summary",
                                                             "lightcurve", "circular"]}},
                "text/plain": {"schema": {"type": "string"}}}},
                "400": _err("a bad parameter"), "404": _err("no such alert"), **COMMON_ERRORS}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "stdd control endpoint", "version": version,
                 "description": "The local HTTP endpoint of the stdd daemon. POSTs need "
                                "`Authorization: Bearer <token>` (the token is in http.token_file); "
                                "GETs are open on loopback unless http.open_reads is false."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
