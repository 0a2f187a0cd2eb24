"""Process groups: killing a frame's whole tree, and recognising our own leftovers.

Every frame chain runs in a process that leads its own session and process group, so
SExtractor, SCAMP or HOTPANTS started by a stage are in that group and a signal to the group
reaches all of them. Linux only (prctl, /proc), like the daemon.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time

PR_SET_PDEATHSIG = 1


def signal_group(pid: int, sig: int) -> bool:
    """Send `sig` to the process group led by `pid` (or to `pid` alone if it leads none yet).
    Returns False when nothing was there to signal."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        pass
    except PermissionError:
        return False
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) in a process group, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat_fields(int(entry))
        if stat and int(stat[2]) == pgid and stat[0] != "Z":
            out.append(int(entry))
    return out


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def process_start_time(pid: int) -> float | None:
    """Wall-clock start time of a process, from /proc (None if it does not exist)."""
    fields = _stat_fields(pid)
    if not fields:
        return None
    try:
        ticks = int(fields[19])
        with open("/proc/stat") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
    except (OSError, ValueError, StopIteration, IndexError):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def kill_stale_group(pid: int, not_before: float, not_after: float) -> bool:
    """After a crash of the daemon: kill the group of a frame process recorded in the
    database, only if a process with that pid still leads its group and was started in the
    window the database says (so a reused pid is never killed). Returns True if killed."""
    fields = _stat_fields(pid)
    if not fields or int(fields[2]) != pid:
        return False
    started = process_start_time(pid)
    if started is None or not (not_before - 2 <= started <= not_after + 2):
        return False
    signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while group_members(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = {
            "SIGKILL": " (killed: out of memory, or by hand)",
            "SIGSEGV": " (segmentation fault)",
            "SIGBUS": " (bus error)",
            "SIGABRT": " (aborted)",
        }.get(name, "")
        return f"killed by {name}{hint}"
    return f"exited with code {exitcode}"
