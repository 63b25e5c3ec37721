"""Spreading offline codec work (``hilbed fit``, ``hilbed eval-codecs``) over processes and machines.

One concept per module: :mod:`.executor` (where tasks run: in-process or on
Ray), :mod:`.transfer` (artifact directories as bytes, between a worker and
the controller's store), :mod:`.sweep` (eval-codecs as variant x shard tasks)
and :mod:`.fit` (a fit as one task per preset). Nothing here imports ray,
torch or pandas at import time: ``hilbed --help`` stays quick.
"""

from hilbed.orchestrator.scale.executor import (
                                                EXECUTORS,
                                                Executor,
                                                ExecutorError,
                                                LocalExecutor,
                                                RayExecutor,
                                                Task,
                                                make_executor,
                                                require_ray,
)

__all__ = ["EXECUTORS", "Executor", "ExecutorError", "LocalExecutor", "RayExecutor", "Task", "make_executor",
           "require_ray"]
