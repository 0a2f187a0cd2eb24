"""Running frame jobs: the executor interface and the supervised local process pool."""
from .executor import Executor, FrameJob, PoolEvent
from .local import LocalPool

__all__ = ["Executor", "FrameJob", "LocalPool", "PoolEvent", "make_executor"]


def make_executor(pool_settings) -> Executor:
    """The executor named by `[pool] executor`."""
    if pool_settings.executor == "local":
        return LocalPool.from_settings(pool_settings)
    if pool_settings.executor == "dask":
        from .dask import DaskExecutor  # imported only when chosen: distributed is an optional extra

        return DaskExecutor.from_settings(pool_settings)
    raise ValueError(f"pool.executor = {pool_settings.executor!r} is not available in this build; use \"local\"")
