"""The service: intake → queue → pool, scheduled jobs, signals, systemd notify, reload."""
from .hooks import NoRegions, RegionProvider, Service
from .control import SubmitError
from .service import Daemon, DaemonError, run_daemon

__all__ = ["Daemon", "DaemonError", "NoRegions", "RegionProvider", "Service", "SubmitError", "run_daemon"]
