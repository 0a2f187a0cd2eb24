"""What every handler finds in `request.app`: the daemon, the reader pool, the token, the
metrics, the lag monitor, whether GETs are open to local peers, and /health's off-loop checks
(set by `create_app`)."""
from __future__ import annotations

from aiohttp import web

from .dbprobe import DatabaseCheck
from .lag import LagMonitor
from .metrics import Metrics
from .offloop import OffLoop
from .reads import ReadPool

KEY_DAEMON = web.AppKey("daemon", object)
KEY_READS = web.AppKey("reads", ReadPool)
KEY_TOKEN = web.AppKey("token", str)
KEY_METRICS = web.AppKey("metrics", Metrics)
KEY_LAG = web.AppKey("lag", LagMonitor)
KEY_OPEN_READS = web.AppKey("open_reads", bool)
KEY_DB_CHECK = web.AppKey("db_check", DatabaseCheck)
KEY_DAEMON_CHECKS = web.AppKey("daemon_checks", OffLoop)
