"""What runs in a frame's own process: prepare the folder, run the chain, publish.

The process leads its own session and process group (`os.setsid`), so every program a stage
starts is in the group the pool signals on a timeout or a cancel. It reports over its pipe:
`begin`, `stage_start`/`stage_end` around each stage (the parent records stage runs and
applies per-stage timeouts from them), then `finished` (the chain ran and its result was
published), `interrupted` (asked to stop between stages at shutdown) or `error` (something
outside the stages failed: the parent retries).

After `finished` the process kills whatever its stages left running in its group and says
`idle`; the pool may then send it the next frame (a process that has run a frame runs the next
one ~10 % faster than a new one: its heap and the libraries' caches are warm) or `exit`. After
`interrupted` or `error` it exits, and a frame whose process is killed takes the process with it.

If the daemon dies (even by SIGKILL) nothing of the frame may go on running: a thread watches
the pipe, and its end (EOF) takes the whole group down; and as the fork server exits when the
daemon goes, the kernel's parent-death signal (PR_SET_PDEATHSIG → SIGTERM) does the same. For
the fork server to notice, the frame process closes its copy of the server's "alive" pipe.
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from .executor import FrameJob
from .procs import group_members, set_parent_death_signal


class _Interrupted(Exception):
    pass


def _on_term(signum, frame) -> None:
    """Take the whole group down, then exit. Runs as the SIGTERM handler (main thread) or from
    the parent watcher's thread, where signal handlers cannot be changed."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:  # not the main thread: our own SIGTERM below may run the handler too; both exit
        pass
    try:
        os.killpg(0, signal.SIGTERM)  # the rest of the group (stage programs)
    except OSError:
        pass
    os._exit(128 + signum)


def main(job_data: dict[str, Any], conn) -> None:
    """Entry point of the frame process (multiprocessing target): the first frame, then each
    frame the parent sends after our `idle`, until it says `exit` (or goes away)."""
    try:
        os.setsid()
    except OSError:
        pass
    parent = os.getppid()
    set_parent_death_signal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the daemon, which decides
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    _close_forkserver_alive_fd()
    stop = threading.Event()
    busy = threading.Event()
    inbox: "queue.Queue[dict | None]" = queue.Queue()
    busy.set()
    threading.Thread(target=_read_parent, args=(conn, stop, busy, inbox), name="parent-watch", daemon=True).start()

    while True:
        if not _run_frame(job_data, conn, stop, busy):
            os._exit(1)
        _end_stray_programs()
        stop.clear()
        busy.clear()
        conn.send({"kind": "idle", "time": time.time()})
        job_data = inbox.get()
        if job_data is None:  # "exit", or the parent is gone
            os._exit(0)
        busy.set()


def _run_frame(job_data: dict[str, Any], conn, stop: threading.Event, busy: threading.Event) -> bool:
    """One frame: prepare, chain, publish, reported over the pipe. False: the process must end."""

    def send(kind: str, **data) -> None:
        conn.send({"kind": kind, "time": time.time(), **data})

    job = FrameJob(**job_data)
    try:
        send("begin", pid=os.getpid())
        folder = Path(job.work_dir)
        prepare(job, folder)
        from ..pipeline import publish, run_chain
        from ..stages.base import StageSettings

        settings = StageSettings.model_validate(job.stage_settings)

        def on_stage(name: str, phase: str, res) -> None:
            if phase == "start":
                if stop.is_set():
                    raise _Interrupted(name)
                send("stage_start", stage=name)
            else:
                send("stage_end", stage=name, state=res.state, error=res.error, seconds=res.seconds,
                     summary=res.summary)

        result = _profiled(job, lambda: run_chain(folder, settings, job.steps, on_stage,
                                                  functions=job.stage_functions or None, threads=job.threads))
        send("publishing")
        publish(folder, Path(job.result_dir), job.extra)
        busy.clear()
        send("finished", status=result.get("status"), error=result.get("error"), result=result)
        return True
    except _Interrupted as e:
        busy.clear()
        send("interrupted", stage=str(e))
        return False
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides
        busy.clear()
        try:
            send("error", error=f"{type(e).__name__}: {e}", trace=traceback.format_exc())
        except Exception:
            pass
        return False


def _end_stray_programs() -> None:
    """Between frames: nothing a stage started may outlive its frame (the group is ours)."""
    me = os.getpid()
    for pid in group_members(os.getpgid(0)):
        if pid != me:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _read_parent(conn, stop: threading.Event, busy: threading.Event, inbox: "queue.Queue") -> None:
    """The only reader of the pipe: "stop" = end after the current stage; a job = the next
    frame; "exit" = end now. EOF = the daemon is gone: mid-frame, take the group down."""
    try:
        while True:
            msg = conn.recv()
            if msg == "stop":
                stop.set()
            elif msg == "exit":
                inbox.put(None)
            elif isinstance(msg, dict):
                inbox.put(msg)
    except (EOFError, OSError):
        if busy.is_set():
            _on_term(signal.SIGTERM, None)
        inbox.put(None)


#: set to a folder to have each frame process write a cProfile of its chain there
#: (`frame-<id>-<attempt>.prof`, read with `python -m pstats`): how the benchmark profiles the
#: stages inside a running daemon
PROFILE_ENV = "STDD_PROFILE_DIR"


def _profiled(job: FrameJob, chain):
    folder = os.environ.get(PROFILE_ENV)
    if not folder:
        return chain()
    import cProfile
    import json
    import resource

    prof = cProfile.Profile() if os.environ.get(PROFILE_ENV + "_CPROFILE", "1") != "0" else None
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    try:
        return prof.runcall(chain) if prof else chain()
    finally:
        r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"frame-{job.frame_id}-{job.attempt}"
        if prof:
            prof.dump_stats(f"{stem}.prof")
        usage = {"wall_s": round(wall, 3), "user_s": round(r1.ru_utime - r0.ru_utime, 3),
                 "system_s": round(r1.ru_stime - r0.ru_stime, 3), "minor_faults": r1.ru_minflt - r0.ru_minflt,
                 "major_faults": r1.ru_majflt - r0.ru_majflt, "voluntary_switches": r1.ru_nvcsw - r0.ru_nvcsw,
                 "involuntary_switches": r1.ru_nivcsw - r0.ru_nivcsw}
        Path(f"{stem}.json").write_text(json.dumps(usage))


def _close_forkserver_alive_fd() -> None:
    """A frame process inherits the write end of the fork server's "alive" pipe; holding it
    would keep the server (and so the parent-death signal) alive after the daemon died."""
    try:
        from multiprocessing import forkserver

        fd = forkserver._forkserver._forkserver_alive_fd
        if fd is not None:
            os.close(fd)
            forkserver._forkserver._forkserver_alive_fd = None
    except (AttributeError, OSError):
        pass


def prepare(job: FrameJob, folder: Path) -> None:
    """Make the work folder: a clean copy of the frame's exact bytes (or keep it for a
    retry from a later stage). The frame's bytes come from the spool; if the spool copy is
    gone they come back from the folder's own original, else from the source path, checked
    against the frame's SHA-256."""
    from ..pipeline import ORIGINAL_PREFIX, prepare_folder
    from ..watch.files import copy_and_hash

    spool = Path(job.source)
    originals = sorted(folder.glob(f"{ORIGINAL_PREFIX}.*")) if folder.is_dir() else []
    if not job.fresh and originals:
        return
    if not spool.is_file():
        spool.parent.mkdir(parents=True, exist_ok=True)
        if originals:
            shutil.copyfile(originals[0], spool)
        else:
            origin = Path(job.origin)
            if not origin.is_file():
                raise FileNotFoundError(
                    f"the frame's bytes are gone: no spool copy, no work folder, and {origin} does not exist")
            tmp = spool.with_name(f".{spool.name}.{os.getpid()}")
            sha, _ = copy_and_hash(origin, tmp)
            if sha != job.sha256:
                os.unlink(tmp)
                raise FileNotFoundError(f"{origin} now holds other content (sha256 {sha[:12]}…), "
                                        f"not this frame's ({job.sha256[:12]}…)")
            os.replace(tmp, spool)
    prepare_folder(spool, folder)
