"""Dynamic batching of the edge's inference across clients.

One :class:`Batcher` owns the one thread that runs the edge's main model.
Session workers (one per client connection; radio messages come through them
too) decode an image and :meth:`Batcher.submit` it with its deadline; they
block on the returned :class:`Ticket` while the batcher gathers requests
into one ``predict(np.stack(images))`` call. A model costs far less per
image in a batch than alone, so many clients on one edge stop queueing
image by image behind a lock.

A batch closes at the first of: ``max_batch`` images; ``max_wait_ms`` after
its first request was submitted; the moment its earliest deadline, less the
estimated inference time of the batch, is about to pass. Requests that are
already queued when a batch closes are taken without waiting (up to
``max_batch``), unless one more image would make the batch miss a deadline
it could still meet. The inference time is estimated per batch size by an
EWMA of measured ``predict`` calls. Only images of the same shape and dtype
share a batch; the others wait for the next one.

A ``predict`` that raises (or returns the wrong number of rows) fails that
batch's requests only; the thread keeps serving. The request queue is
bounded: :meth:`submit` blocks while it is full (back-pressure on the
workers, and through their queues on the clients).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Callable

import numpy as np

log = logging.getLogger("hilbed.batching")

MAX_BATCH_LIMIT = 256
MAX_WAIT_MS_LIMIT = 1000.0
#: weight of the newest measurement in the per-size inference-time estimate
EWMA_ALPHA = 0.3


class BatcherClosed(RuntimeError):
    """The batcher no longer takes requests (reconfigured or shutting down)."""


class InferenceFailed(RuntimeError):
    """The batch this request was in failed; the cause is chained (``__cause__``)."""


class Ticket:
    """One submitted image: a future-like handle for its probabilities and batch facts."""

    __slots__ = ("image", "deadline_ns", "t_submit_ns", "probs", "error", "batch_size", "batch_wait_ms",
                 "t_infer_start_ns", "t_infer_end_ns", "_done")

    def __init__(self, image: np.ndarray, deadline_ns: int | None, t_submit_ns: int):
        self.image = image
        self.deadline_ns = deadline_ns
        self.t_submit_ns = t_submit_ns
        self.probs: np.ndarray | None = None
        self.error: BaseException | None = None
        self.batch_size: int | None = None
        self.batch_wait_ms: float | None = None
        self.t_infer_start_ns: int | None = None
        self.t_infer_end_ns: int | None = None
        self._done = threading.Event()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> "Ticket":
        """Wait for the batch; the ticket itself (``probs`` set), or the batch's error raised."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"no inference result within {timeout} s")
        if self.error is not None:  # a fresh exception per waiter: they raise it on their own threads
            if isinstance(self.error, BatcherClosed):
                raise BatcherClosed(str(self.error))
            raise InferenceFailed(f"{type(self.error).__name__}: {self.error}") from self.error
        return self

    def _finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.image = None  # the pixels are not needed any more: do not hold them
        self._done.set()


class Batcher:
    """Gathers submitted images into batches for one model, on one thread.

    ``predict``: NHWC uint8 batch -> (N, classes) probabilities; called only on
    the batcher's thread. ``clock``: the edge's clock (ns), the one deadlines
    are stated in. ``slack_ms``: margin kept before the earliest deadline.
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int = 1,
                 max_wait_ms: float = 0.0, *, max_queue: int | None = None, slack_ms: float = 1.0,
                 clock: Callable[[], int] = time.time_ns, name: str = "edge-batcher"):
        if not 1 <= int(max_batch) <= MAX_BATCH_LIMIT:
            raise ValueError(f"max_batch must be 1..{MAX_BATCH_LIMIT}, got {max_batch!r}")
        if not 0.0 <= float(max_wait_ms) <= MAX_WAIT_MS_LIMIT:
            raise ValueError(f"max_wait_ms must be 0..{MAX_WAIT_MS_LIMIT:g}, got {max_wait_ms!r}")
        self.predict = predict
        self.max_batch = int(max_batch)
        self.max_wait_ns = int(float(max_wait_ms) * 1e6)
        self.slack_ns = int(slack_ms * 1e6)
        self.clock = clock
        self.queue: queue.Queue[Ticket] = queue.Queue(maxsize=max_queue or max(64, 4 * self.max_batch))
        #: requests taken off the queue but left for a later batch (other shape, or a deadline at risk)
        self._held: collections.deque[Ticket] = collections.deque()
        #: batch size -> EWMA of its predict time, ns
        self._est: dict[int, float] = {}
        self._closing = threading.Event()  # no new requests; finish what is queued
        self._abort = threading.Event()    # fail what is queued and stop
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()  # orders submit against close: nothing is queued after close
        self.stats = {"batches": 0, "images": 0, "failed_batches": 0, "max_batch_seen": 0,
                      "fired": {"full": 0, "wait": 0, "deadline": 0}}
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._thread.start()

    # -- workers' side -----------------------------------------------------
    def submit(self, image: np.ndarray, deadline_ns: int | None = None) -> Ticket:
        """Queue one HWC image; blocks while the queue is full. BatcherClosed once closed."""
        t = Ticket(image, deadline_ns, self.clock())
        while True:
            with self._submit_lock:
                if self._closing.is_set():
                    raise BatcherClosed("the batcher is closed")
                try:
                    self.queue.put_nowait(t)
                    return t
                except queue.Full:
                    pass
            time.sleep(0.001)

    def close(self, drain: bool = True, timeout: float = 10.0) -> bool:
        """Stop taking requests; with ``drain`` finish those queued, else fail them. True once the thread ended."""
        with self._submit_lock:
            self._closing.set()
        if not drain:
            self._abort.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        self._fail_pending(BatcherClosed("the edge's batcher stopped before this image was inferred"))
        return True

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def estimate_ns(self, n: int) -> float:
        """Expected predict time of an ``n``-image batch (0 before any measurement).

        An unmeasured size scales the nearest smaller measured one linearly
        (pessimistic: batching costs less than linear), else takes the
        nearest larger one's time (which bounds it).
        """
        with self._lock:
            est = dict(self._est)
        if not est:
            return 0.0
        if n in est:
            return est[n]
        smaller = [k for k in est if k < n]
        if smaller:
            k = max(smaller)
            return est[k] * n / k
        return est[min(est)]

    def describe(self) -> dict:
        with self._lock:
            est = {k: round(v / 1e6, 3) for k, v in sorted(self._est.items())}
            stats = {**self.stats, "fired": dict(self.stats["fired"])}
        mean = stats["images"] / stats["batches"] if stats["batches"] else None
        return {"max_batch": self.max_batch, "max_wait_ms": self.max_wait_ns / 1e6, **stats,
                "mean_batch": mean, "infer_ms_by_size": est, "queued": self.queue.qsize() + len(self._held)}

    # -- the batcher's thread ---------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            self._infer(batch)

    def _next(self, timeout: float) -> Ticket | None:
        """The next queued request, waiting at most ``timeout`` s (0: only what is there)."""
        try:
            if timeout <= 0:
                return self.queue.get_nowait()
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _first(self) -> Ticket | None:
        """The request that opens a batch (None: closed and nothing left)."""
        while True:
            if self._abort.is_set():
                return None
            if self._held:
                return self._held.popleft()
            t = self._next(0.1)
            if t is not None:
                return t
            if self._closing.is_set() and self.queue.empty():
                return None

    def _gather(self) -> list[Ticket] | None:
        first = self._first()
        if first is None:
            return None
        batch = [first]
        key = (first.image.shape, first.image.dtype)
        earliest = first.deadline_ns
        held, self._held = self._held, collections.deque()  # earlier leftovers go before new requests
        skipped: list[Ticket] = []
        why = "full"
        while len(batch) < self.max_batch:
            now = self.clock()
            fire_at = first.t_submit_ns + self.max_wait_ns
            by_deadline = False
            if earliest is not None:
                latest = earliest - int(self.estimate_ns(len(batch) + 1)) - self.slack_ns
                if latest < fire_at:
                    fire_at, by_deadline = latest, True
            if held:
                t = held.popleft()
            else:
                t = self._next(max(0, fire_at - now) / 1e9)
            if t is None:
                why = "deadline" if by_deadline else "wait"
                break
            if (t.image.shape, t.image.dtype) != key:
                skipped.append(t)
                if len(skipped) + len(held) >= self.queue.maxsize:  # leftovers stay bounded too
                    break
                continue
            new_earliest = t.deadline_ns if earliest is None else (
                earliest if t.deadline_ns is None else min(earliest, t.deadline_ns))
            if new_earliest is not None:
                now = self.clock()
                meets_now = earliest is None or now + self.estimate_ns(len(batch)) <= earliest
                meets_more = now + self.estimate_ns(len(batch) + 1) <= new_earliest
                if meets_now and not meets_more:  # one more image would cost a deadline that can still be met
                    skipped.append(t)
                    why = "deadline"
                    break
            batch.append(t)
            earliest = new_earliest
        self._held.extend(skipped)
        self._held.extend(held)
        with self._lock:
            self.stats["fired"][why] += 1
        return batch

    def _infer(self, batch: list[Ticket]) -> None:
        n = len(batch)
        t0 = self.clock()
        try:
            out = np.asarray(self.predict(np.stack([t.image for t in batch])))
            if out.ndim != 2 or out.shape[0] != n:
                raise ValueError(f"the model returned shape {tuple(out.shape)} for a batch of {n}")
            err = None
        except Exception as exc:  # one failing batch must not stop the edge's inference
            log.warning("inference of a batch of %d failed: %s: %s", n, type(exc).__name__, exc)
            err, out = exc, None
        t1 = self.clock()
        with self._lock:
            self.stats["batches"] += 1
            self.stats["images"] += n
            self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], n)
            if err is None:
                old = self._est.get(n)
                self._est[n] = float(t1 - t0) if old is None else old + EWMA_ALPHA * ((t1 - t0) - old)
            else:
                self.stats["failed_batches"] += 1
        for i, t in enumerate(batch):
            t.batch_size = n
            t.batch_wait_ms = (t0 - t.t_submit_ns) / 1e6
            t.t_infer_start_ns, t.t_infer_end_ns = t0, t1
            if out is not None:
                t.probs = out[i]
            t._finish(err)

    def _fail_pending(self, error: BaseException) -> None:
        pending = list(self._held)
        self._held.clear()
        while True:
            try:
                pending.append(self.queue.get_nowait())
            except queue.Empty:
                break
        for t in pending:
            t._finish(error)
