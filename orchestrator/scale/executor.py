"""Where tasks run: in this process, in order (``local``), or as Ray remote tasks (``ray``).

A task is a module-level function and its arguments, plus the resources it
declares (CPUs, GPUs); functions must be importable by name on every worker,
so Ray can ship them. Both executors yield ``(key, result)`` pairs: the local
one in submission order, Ray's as tasks complete, so a caller can record and
report each result as soon as it exists and restore its own order at the end.

``ray`` is imported only when a :class:`RayExecutor` starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'hilbed[ray]'"


class ExecutorError(RuntimeError):
    """A one-line, user-facing problem with the executor (ray missing, cluster unreachable)."""


def require_ray():
    """The ``ray`` module, or :class:`ExecutorError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray needs the ray package, which is not installed: {RAY_INSTALL}") from None
    return ray


@dataclass
class Task:
    """``fn(*args, **kwargs)`` with the resources it needs on a worker; ``key`` identifies its result."""

    key: Any
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    num_cpus: float = 1
    num_gpus: float = 0


class Executor:
    """Runs :class:`Task` s; see the module docstring."""

    name = "?"

    def put(self, obj: Any) -> Any:
        """A handle to pass large, shared arguments once (images shared by many tasks)."""
        return obj

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Any, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalExecutor(Executor):
    """Runs each task in this process, one after the other, in the order given."""

    name = "local"

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Any, Any]]:
        for t in tasks:
            yield t.key, t.fn(*t.args, **t.kwargs)


class RayExecutor(Executor):
    """Each task a Ray remote task with its declared ``num_cpus``/``num_gpus``.

    ``address`` (or $RAY_ADDRESS) joins a running cluster (``ray start --head``
    on the controller, docs/scale.md); without one a local Ray is started with
    ``num_cpus`` CPUs (default: all). A Ray already initialised in this process
    (tests, notebooks) is used as it is and left running by :meth:`close`.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = False):
        self._ray = require_ray()
        self._remote: dict[Callable, Any] = {}
        self.started = start_ray(address, num_cpus, log_to_driver=log_to_driver)

    def put(self, obj: Any) -> Any:
        return self._ray.put(obj)

    def _remote_fn(self, fn: Callable):
        if fn not in self._remote:
            self._remote[fn] = self._ray.remote(fn)
        return self._remote[fn]

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Any, Any]]:
        ray = self._ray
        pending: dict[Any, Any] = {}
        for t in tasks:
            ref = self._remote_fn(t.fn).options(num_cpus=t.num_cpus, num_gpus=t.num_gpus).remote(*t.args, **t.kwargs)
            pending[ref] = t.key
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    key = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # the task's own exception, not Ray's wrapper
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, BaseException):
                            raise cause from None
                        raise exc.as_instanceof_cause() from None
                    yield key, result
        finally:
            for ref in pending:  # an error or an abandoned generator: stop what is still queued
                try:
                    ray.cancel(ref)
                except Exception:
                    pass

    def close(self) -> None:
        if self.started and self._ray.is_initialized():
            self._ray.shutdown()
        self.started = False


def start_ray(address: str | None, num_cpus: int | None, resources: dict[str, float] | None = None,
              log_to_driver: bool = False) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local Ray with ``num_cpus`` and the custom
    ``resources``; True when this call started it (the caller shuts it down). A Ray already running is reused.
    ExecutorError (one line) when it cannot."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    kw: dict[str, Any] = {"log_to_driver": log_to_driver, "include_dashboard": False}
    try:
        if address:
            _reachable(address)
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=num_cpus, resources=resources or None, **kw)
    except ExecutorError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray raises several kinds; the user needs one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ExecutorError(f"cannot start {where}: {first}") from None
    return True


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse at once an address nothing listens on: ray.init would retry it for minutes."""
    import socket
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local" and other forms Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExecutorError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
                            "(is `ray start --head` running there?)") from None


def make_executor(name: str, address: str | None = None, num_cpus: int | None = None) -> Executor:
    """The executor ``--executor NAME`` asks for (ExecutorError for an unknown name or a missing ray)."""
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, num_cpus)
    raise ExecutorError(f"unknown executor {name!r} (allowed: {', '.join(EXECUTORS)})")
