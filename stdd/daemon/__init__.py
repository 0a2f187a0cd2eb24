"""The service: intake → queue → pool, scheduled jobs, signals, systemd notify, reload."""
from .hooks import NoRegions, RegionProvider, Service
from .service import Daemon, DaemonError, SubmitError, run_daemon

__all__ = ["Daemon", "DaemonError", "NoRegions", "RegionProvider", "Service", "SubmitError", "run_daemon"]
