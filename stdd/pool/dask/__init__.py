"""Running frame jobs on a Dask distributed cluster (`[pool] executor = "dask"`).

Design note: a frame is one Dask task, and on the worker that task runs the frame exactly as
the local pool does — each Dask worker process keeps one `LocalPool` of its own, and the task
hands it the frame and relays what it reports. So a frame on a Dask worker gets the same
process group (a cancel or a timeout kills SExtractor, SCAMP, HOTPANTS too), the same per-stage
timeouts, the same death detection and the same events as on the daemon's machine; nothing of
that is written twice. The Dask task only occupies one worker thread while its frame's process
works, so a worker's `--nthreads` is how many frames it runs at once.

Events flow back as Dask structured events (`Worker.log_event` on a topic private to this
executor, `Client.subscribe_topic` here), numbered per run so that the copy the task also
returns as its result fills any gap and duplicates are dropped. The daemon sees the same
`PoolEvent`s as from the local pool, except that `pid` is None (a pid on another machine must
never reach the daemon's crash recovery, which kills stale local process groups); the worker,
its host and the frame's pid there are in the events' `data` and in `status()`.

Retries are ours only: the scheduler's `allowed-failures` is set to 0 at start (a task whose
worker dies fails with KilledWorker instead of being run again somewhere), and tasks are
submitted with `retries=0`, so the daemon's `max_attempts` and back-off apply as with the local
pool. If Dask still starts a second run of a task (a worker that left politely), the executor
cancels it and reports the frame lost, and the daemon retries it. A cancel (and a timeout on the
worker) kills the frame's process group there; the lost event waits for the worker to confirm
it (or for `kill_grace` + `CONFIRM_SECONDS` if the worker is gone). At shutdown, a frame stops
after its current stage (the executor cancels it at its next stage end unless that was its last
stage), and whatever still runs after the grace period is cancelled.

Paths: workers must see the daemon's spool, work and results folders (shared storage); where a
worker mounts them elsewhere, `[pool] dask_path_map` maps daemon-side prefixes to worker-side
ones in the job, and back in what comes back.

The modules:

* `wire` — what crosses between the daemon and the workers: `PathMap`, `plain()`;
* `on_worker` — what runs in the Dask processes: the task, the worker's own frame pool, the
  warm-up plugin, and the one call made on the scheduler;
* `jobs` — the daemon side's book of frames on the cluster and what their events mean;
* `executor` — `DaskExecutor`, the `Executor` the daemon drives, and its scheduler connection;
* `compare` — running jobs to the end, and the local-pool-versus-Dask comparison (bench, tests).
"""
try:
    import distributed  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError('pool.executor = "dask" needs Dask distributed: pip install "stdd[dask]"') from e

from .compare import comparable_result, compare_local_vs_dask, run_jobs
from .executor import DaskExecutor
from .on_worker import WarmPool, run_frame_task, warm_worker
from .wire import PathMap

__all__ = ["DaskExecutor", "PathMap", "WarmPool", "comparable_result", "compare_local_vs_dask", "run_frame_task",
           "run_jobs", "warm_worker"]
