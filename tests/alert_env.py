"""A real AlertService on real SQLite with a drop folder and one request-file rule (test helper)."""
from __future__ import annotations

import contextlib
from pathlib import Path

from stdd.alerts.service import AlertService
from stdd.config.load import settings_from_dict
from stdd.store import Database


@contextlib.contextmanager
def alert_service(tmp_path: Path, *, priority: int, **alerts):
    """Yields (service, tmp_path): drop folder `drop/`, rule → `request_file` into `requests/`."""
    settings = settings_from_dict({
        "paths": {"alert_drop": "drop"},
        "alerts": {"enabled": True, "drop_poll_seconds": 0.05, "drop_settle_seconds": 0.0, **alerts,
                   "rules": [{"require_visible": False, "priority": priority, "actions": ["req"]}],
                   "actions": {"req": {"kind": "request_file", "folder": "requests"}}}}, base=tmp_path)
    db = Database(tmp_path / "stdd.sqlite")
    service = AlertService(db, settings)
    try:
        yield service, tmp_path
    finally:
        service.close()
        db.close()
