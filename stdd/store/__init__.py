"""State on SQLite. The only package that holds SQL."""
from .database import SCHEMA_VERSION, Database, StoreError
from .events import EventLog
from .frames import STATES, TERMINAL, FrameStore
from .outbox import Outbox

__all__ = ["SCHEMA_VERSION", "STATES", "TERMINAL", "Database", "EventLog", "FrameStore", "Outbox", "StoreError"]
