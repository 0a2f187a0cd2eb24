"""Watching the incoming folders: which names count, when a file is complete, its content hash.

`files` — name patterns, stat snapshots, hashing while copying; `fitscheck` — is this a whole
FITS file; `settle` — when a file has stopped changing; `watcher` — watchdog (inotify or
polling) and the full rescan. Nothing here touches the database: the daemon's intake does.
"""
from .files import FileStat, copy_and_hash, file_stat, matches, scan, sha256_file
from .fitscheck import FitsCheck, check_fits
from .settle import SettleTracker
from .watcher import FolderWatcher

__all__ = [
    "FileStat", "FitsCheck", "FolderWatcher", "SettleTracker", "check_fits", "copy_and_hash",
    "file_stat", "matches", "scan", "sha256_file",
]
