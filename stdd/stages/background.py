"""Output that nothing downstream reads (plots), made on a helper thread while the next stages run.

Design note: a 1024² frame spends ~0.4 s drawing its photometry plots, and no later stage reads
them. Inside a chain (`run_chain` wraps it in `overlapping()`), a stage hands such work to
`submit` and goes on; the work runs on one helper thread of the frame process, mostly while the
next stages wait on SExtractor, SWarp or large numpy operations (which release the GIL), and the
chain waits for it before it writes result.json, so the products and their notes are all there
when the frame is published. Measured in one process on 1024² frames, alternating: 5.88 s per
frame with the plots drawn in line, 5.60 s with them on the helper thread. With as many workers
as cores the helper could only use the gaps of its own frame and would take CPU from the other
workers' frames, so the pool gives each frame a thread budget (`pool.threads_per_frame`, by default
cores ÷ workers) and a chain with a budget of 1 draws in line.

A stage run on its own (no chain around it) does the work in line, as before. The work must not
touch the stage's StageRun (its log is closed by then): it gets plain data and returns
`(written, problems)` — the products it wrote (paths relative to the frame folder) and what went
wrong — which the chain adds to that stage's result.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

Work = Callable[..., "tuple[list[str], list[str]]"]

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_pending: "list[_Pending]" = []
_depth = 0  # > 0 inside overlapping()


@dataclass
class _Pending:
    stage: str
    what: str
    future: Future


@dataclass
class Done:
    stage: str
    what: str
    written: list[str]
    problems: list[str]


def submit(run, what: str, work: Work, *args) -> None:
    """Do `work(*args)` on the helper thread inside a chain, else now; its products and problems
    end up in `run`'s stage result either way."""
    global _executor
    if _depth == 0:
        written, problems = _safely(work, what, *args)
        for rel in written:
            run.product(rel)
        for p in problems:
            run.note(p)
        return
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stdd-output")
        _pending.append(_Pending(run.stage, what, _executor.submit(_safely, work, what, *args)))


def _safely(work: Work, what: str, *args) -> tuple[list[str], list[str]]:
    try:
        return work(*args)
    except Exception as e:  # output must never fail a stage or the chain
        return [], [f"{what} not made: {type(e).__name__}: {e}"]


def busy() -> bool:
    """Submitted work is not all collected yet."""
    with _lock:
        return bool(_pending)


def wait() -> list[Done]:
    """Wait for all submitted work; what each piece wrote and what went wrong."""
    with _lock:
        pending, _pending[:] = list(_pending), []
    out = []
    for p in pending:
        written, problems = p.future.result()
        out.append(Done(p.stage, p.what, written, problems))
    return out


@contextmanager
def overlapping(enabled: bool = True):
    """Inside: `submit` defers work to the helper thread. Leaving waits for all of it
    (also when the chain failed), so nothing of one frame runs into the next. Not `enabled`
    (the frame has no spare thread): the work is done in line, as outside."""
    global _depth
    if not enabled:
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            wait_quietly()


def wait_quietly() -> None:
    """Leaving a chain by an exception: wait anyway; the chain is failing already, so what the
    work wrote is not listed (the folder is reset before the frame runs again)."""
    import logging

    try:
        wait()
    except Exception as e:  # _safely catches the work's own errors: this is a cancelled future
        logging.getLogger("stdd.stages").warning("output work not collected: %s: %s", type(e).__name__, e)


def append_log(folder: Path, stage: str, lines: list[str]) -> None:
    import time

    if not lines:
        return
    stamp = time.strftime("%H:%M:%S")
    with open(Path(folder) / f"{stage}.log", "a") as fh:
        for line in lines:
            fh.write(f"{stamp} NOTE: {line}\n")
