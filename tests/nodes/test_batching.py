"""Dynamic batching at the edge: how batches form and fail (a fake model), and through a real edge over TCP."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hilbed.nodes.agent import AgentError
from hilbed.nodes.batching import Batcher, BatcherClosed, InferenceFailed
from hilbed.nodes.codecs import make_codec
from hilbed.nodes.link.tcp import DirectLink

BAD = 13  # an image filled with this value makes the fake model raise


def img(v: int, size: int = 4) -> np.ndarray:
    return np.full((size, size, 3), v, np.uint8)


class FakeModel:
    """Row i is one-hot at image i's fill value (mod 10); records batch sizes; can block, cost time per image, fail."""

    def __init__(self, delay_s: float = 0.0):
        self.calls: list[int] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        assert self.gate.wait(10)
        time.sleep(self.delay_s * len(x))
        if (x[:, 0, 0, 0] == BAD).any():
            raise ValueError("bad pixels")
        out = np.zeros((len(x), 10), np.float32)
        out[np.arange(len(x)), x[:, 0, 0, 0] % 10] = 1.0
        return out


def wait_for(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


@pytest.fixture
def batchers():
    made: list[Batcher] = []

    def make(model, **kw) -> Batcher:
        b = Batcher(model, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        model = b.predict
        if isinstance(model, FakeModel):
            model.gate.set()
        assert b.close(drain=False, timeout=5)


def blocked_first(b: Batcher, model: FakeModel):
    """Submit one image and hold the model inside its predict, so what follows queues up."""
    model.gate.clear()
    before = len(model.calls)
    t = b.submit(img(0))
    wait_for(lambda: len(model.calls) == before + 1)
    return t


# ------------------------------------------------------------------ batcher ---

def test_queued_images_form_batches_up_to_max_batch_and_each_gets_its_own_row(batchers):
    m = FakeModel()
    b = batchers(m, max_batch=4, max_wait_ms=0)
    first = blocked_first(b, m)
    ts = [b.submit(img(v)) for v in range(1, 11)]
    m.gate.set()
    for t in [first, *ts]:
        t.result(5)
    assert m.calls == [1, 4, 4, 2]
    assert [t.batch_size for t in ts] == [4] * 8 + [2] * 2
    assert [int(np.argmax(t.probs)) for t in ts] == [v % 10 for v in range(1, 11)]
    assert all(t.batch_wait_ms >= 0 for t in ts) and first.batch_size == 1
    d = b.describe()
    assert d["batches"] == 4 and d["images"] == 11 and d["max_batch_seen"] == 4


def test_a_batch_fires_at_max_wait_and_gathers_what_arrives_before(batchers):
    m = FakeModel()
    b = batchers(m, max_batch=8, max_wait_ms=150)
    t0 = time.monotonic()
    a = b.submit(img(1))
    time.sleep(0.03)
    c = b.submit(img(2))
    a.result(5)
    c.result(5)
    assert m.calls == [2]  # the second joined the first's batch instead of running alone
    assert a.batch_size == c.batch_size == 2
    assert a.batch_wait_ms >= 140  # it waited (nothing else could close the batch before max_wait)
    assert time.monotonic() - t0 < 5  # and then fired although the batch was not full
    assert b.describe()["fired"]["wait"] == 1


def test_a_batch_never_waits_past_its_earliest_deadline_less_the_inference_estimate(batchers):
    m = FakeModel(delay_s=0.1)
    b = batchers(m, max_batch=8, max_wait_ms=1000, slack_ms=1.0)
    b.submit(img(1)).result(5)  # one measurement: ~100 ms for one image (two: ~200 ms, scaled)
    assert b.estimate_ns(1) >= 0.09e9 and b.estimate_ns(2) >= 2 * b.estimate_ns(1) * 0.99
    deadline = time.time_ns() + 400_000_000
    t = b.submit(img(2), deadline)
    t.result(5)
    # without deadlines it would wait 1000 ms; with the deadline alone ~400; with the estimate ~200
    assert 150 <= t.batch_wait_ms < 330
    assert t.t_infer_end_ns <= deadline
    assert b.describe()["fired"]["deadline"] == 1


def test_an_image_that_would_cost_a_meetable_deadline_waits_for_the_next_batch(batchers):
    m = FakeModel(delay_s=0.1)
    b = batchers(m, max_batch=8, max_wait_ms=0)
    first = blocked_first(b, m)
    now = time.time_ns()
    urgent = b.submit(img(1), now + 10_000_000_000)
    other = b.submit(img(2), now + 10_000_000_000)
    m.gate.set()
    first.result(5), urgent.result(5), other.result(5)
    assert urgent.batch_size == other.batch_size == 2  # both fit their deadlines together
    assert b.estimate_ns(1) >= 0.09e9 and b.estimate_ns(2) >= 0.18e9

    first = blocked_first(b, m)
    # when the gate opens, the first image takes ~100 ms; the urgent one then has ~150 ms left:
    # enough alone (~100 ms), not with another (~200 ms)
    urgent = b.submit(img(3), time.time_ns() + 250_000_000)
    other = b.submit(img(4))
    m.gate.set()
    first.result(5), urgent.result(5), other.result(5)
    assert urgent.batch_size == 1 and other.batch_size == 1
    assert urgent.t_infer_end_ns <= urgent.deadline_ns


def test_a_failing_predict_fails_only_its_batch_and_the_thread_keeps_serving(batchers):
    m = FakeModel()
    b = batchers(m, max_batch=4, max_wait_ms=0)
    first = blocked_first(b, m)
    doomed = [b.submit(img(v)) for v in (1, BAD, 2, 3)]
    m.gate.set()
    first.result(5)
    for t in doomed:
        with pytest.raises(InferenceFailed, match="ValueError: bad pixels"):
            t.result(5)
        assert t.batch_size == 4
    later = b.submit(img(7)).result(5)
    assert int(np.argmax(later.probs)) == 7 and b.alive
    assert b.describe()["failed_batches"] == 1


def test_a_model_returning_the_wrong_rows_fails_that_batch(batchers):
    b = batchers(lambda x: np.zeros((1, 10)), max_batch=4, max_wait_ms=50)
    ts = [b.submit(img(1)), b.submit(img(2))]
    for t in ts:
        with pytest.raises(InferenceFailed, match="shape"):
            t.result(5)


def test_batching_off_infers_each_image_alone(batchers):
    m = FakeModel()
    b = batchers(m, max_batch=1, max_wait_ms=100)
    first = blocked_first(b, m)
    ts = [b.submit(img(v)) for v in range(1, 6)]
    m.gate.set()
    for t in [first, *ts]:
        assert t.result(5).batch_size == 1
    assert m.calls == [1] * 6


def test_images_of_different_shapes_never_share_a_batch(batchers):
    m = FakeModel()
    b = batchers(m, max_batch=8, max_wait_ms=0)
    first = blocked_first(b, m)
    ts = [b.submit(img(1)), b.submit(img(2, size=6)), b.submit(img(3)), b.submit(img(4, size=6))]
    m.gate.set()
    for t in [first, *ts]:
        t.result(5)
    assert sorted(m.calls[1:]) == [2, 2] and [t.batch_size for t in ts] == [2, 2, 2, 2]


def test_close_drains_or_fails_what_is_queued_and_refuses_new_images():
    m = FakeModel()
    b = Batcher(m, max_batch=2, max_wait_ms=0)
    first = blocked_first(b, m)
    queued = [b.submit(img(v)) for v in range(1, 4)]
    closer = threading.Thread(target=b.close, kwargs={"drain": True})
    closer.start()
    wait_for(lambda: b._closing.is_set())
    with pytest.raises(BatcherClosed):
        b.submit(img(9))
    m.gate.set()
    closer.join(5)
    assert not b.alive and all(t.result(1).probs is not None for t in [first, *queued])

    m2 = FakeModel()
    b2 = Batcher(m2, max_batch=2, max_wait_ms=0)
    first = blocked_first(b2, m2)
    queued = [b2.submit(img(v)) for v in range(1, 4)]
    t = threading.Thread(target=b2.close, kwargs={"drain": False})
    t.start()
    m2.gate.set()
    t.join(5)
    assert not b2.alive and first.result(1).batch_size == 1
    for q in queued:
        with pytest.raises(BatcherClosed):
            q.result(1)


def test_the_queue_is_bounded_and_submit_waits_while_it_is_full(batchers):
    m = FakeModel()
    b = batchers(m, max_batch=2, max_wait_ms=0, max_queue=3)
    blocked_first(b, m)
    for v in range(3):
        b.submit(img(v))
    late: list = []
    th = threading.Thread(target=lambda: late.append(b.submit(img(5))), daemon=True)
    th.start()
    time.sleep(0.2)
    assert not late and b.queue.qsize() == 3  # back-pressure: the fourth waits
    m.gate.set()
    th.join(5)
    assert late and late[0].result(5).batch_size >= 1


# --------------------------------------------------------------------- edge ---

class StubModel:
    """A model with a cost per call (so batches form) that records its batch sizes."""

    classes = list(range(10))

    def __init__(self, delay_s: float = 0.02):
        self.calls: list[int] = []
        self.delay_s = delay_s
        self.device = "cpu"

    def predict(self, x):
        self.calls.append(len(x))
        time.sleep(self.delay_s)
        return np.full((len(x), 10), 0.1)


JPEG = {"codec": "jpeg", "params": {"quality": 60}}


def _chunks(seed: int) -> list[bytes]:
    image = (np.random.default_rng(seed).random((32, 32, 3)) * 255).astype(np.uint8)
    return make_codec(JPEG["codec"], JPEG["params"]).encode(image).chunks


@pytest.fixture
def edge():
    from hilbed.nodes.edge import EdgeAgent
    e = EdgeAgent()
    e.model = StubModel()
    port = e.op_listen("127.0.0.1", 0)["port"]
    yield e, port
    e.teardown()


def _clients(port: int, n_clients: int, per_client: int, base_id: int) -> list[dict]:
    """``n_clients`` DirectLinks, each sending ``per_client`` images back to back at once; all replies."""
    links = [DirectLink("127.0.0.1", port) for _ in range(n_clients)]
    for link in links:
        link.authenticate(None)
    chunks = _chunks(1)
    go = threading.Barrier(n_clients)
    out: list[dict] = []
    lock = threading.Lock()

    def run(k: int, link: DirectLink) -> None:
        go.wait()
        ids = [base_id + k * 100 + i for i in range(per_client)]
        for mid in ids:
            link.send_message(mid, dict(JPEG), chunks, time.time_ns() + 5_000_000_000)
        res = [link.result(mid, 20) for mid in ids]
        with lock:
            out.extend(res)

    threads = [threading.Thread(target=run, args=(k, link)) for k, link in enumerate(links)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for link in links:
        link.close()
    return out


def test_four_clients_over_tcp_share_batches_when_batching_is_on(edge):
    e, port = edge
    off = _clients(port, 4, 3, 1000)
    assert len(off) == 12 and all(r["decoded"] and "error" not in r for r in off)
    assert {r["batch_size"] for r in off} == {1} and all(r["batch_wait_ms"] >= 0 for r in off)
    assert {r["classified_by"] for r in off} == {"edge-model"}
    assert set(e.model.calls) == {1} and e._batcher is None

    applied = e.op_batching(max_batch=8, max_wait_ms=30)
    assert applied["max_batch"] == 8 and applied["max_wait_ms"] == 30.0 and applied["amp"] is False
    e.model.calls.clear()
    on = _clients(port, 4, 5, 2000)
    assert len(on) == 20 and all(r["decoded"] and len(r["top5"]) == 5 for r in on)
    assert max(r["batch_size"] for r in on) > 1
    assert max(e.model.calls) > 1 and sum(e.model.calls) == 20
    assert all(r["batch_wait_ms"] >= 0 for r in on)
    st = e.op_stats()["batching"]
    assert st["max_batch"] == 8 and st["images"] == 20 and st["batches"] < 20

    e.op_batching(max_batch=1, max_wait_ms=0)  # off again: the batcher thread is gone
    assert e._batcher is None
    wait_for(lambda: not any(t.name == "edge-batcher" for t in threading.enumerate()))


def test_the_batching_op_checks_its_values_and_reports_amp_honestly(edge):
    e, _ = edge
    for bad in ({"max_batch": 0, "max_wait_ms": 1}, {"max_batch": 257, "max_wait_ms": 1},
                {"max_batch": True, "max_wait_ms": 1}, {"max_batch": 2.0, "max_wait_ms": 1},
                {"max_batch": 4, "max_wait_ms": -1}, {"max_batch": 4, "max_wait_ms": 1001},
                {"max_batch": 4, "max_wait_ms": float("nan")}, {"max_batch": 4, "max_wait_ms": "5"},
                {"max_batch": 4, "max_wait_ms": 5, "amp": "yes"}):
        with pytest.raises(AgentError) as ei:
            e.op_batching(**bad)
        assert "\n" not in str(ei.value) and "batching" in str(ei.value)
    assert e._batcher is None and e.batching["max_batch"] == 1  # nothing applied by a refused call
    out = e.op_batching(max_batch=256, max_wait_ms=1000, amp=True)
    assert out["amp"] is True and out["amp_applied"] is False and "cpu" in out["amp_note"]
    assert e._batcher is not None and e._batcher.max_batch == 256


def test_teardown_stops_the_batcher_thread():
    from hilbed.nodes.edge import EdgeAgent
    e = EdgeAgent()
    e.model = StubModel()
    e.op_batching(max_batch=4, max_wait_ms=5)
    b = e._batcher
    assert b is not None and b.alive
    e.teardown()
    assert not b.alive and e._batcher is None


class SplitCodec:
    """A split-computing codec stand-in: features in, its own stages' probabilities out."""

    split_computing = True

    def decode_features(self, prefix, total):
        return np.ones(3, np.float32)

    def predict_features(self, feats):
        p = np.zeros((1, 10))
        p[0, 7] = 1.0
        return p

    def decode_extra(self, prefix, total):
        return []


class ExtraCodec(SplitCodec):
    split_computing = False

    def decode(self, prefix, total):
        return np.zeros((32, 32, 3), np.uint8)

    def decode_extra(self, prefix, total):
        return [np.zeros((32, 32, 3), np.uint8)] * 2


def _incoming(msg_id: int):
    from hilbed.nodes.edge import Incoming
    inc = Incoming({"msg_id": msg_id, "codec": "x", "params": {}}, time.time_ns(), [3], time.time_ns() + 10**9)
    assert inc.add(0, 0, b"abc", time.time_ns()) is None
    return inc


@pytest.mark.parametrize("batch", [1, 8])
def test_split_codecs_and_extra_images_bypass_the_batcher(batch):
    from hilbed.nodes.edge import EdgeAgent
    e = EdgeAgent()
    e.model = StubModel(delay_s=0)
    try:
        e.op_batching(max_batch=batch, max_wait_ms=1)
        e._codec = lambda name, params: SplitCodec()
        r = e._process(_incoming(1))
        assert r["top5"][0] == 7 and r["batch_size"] == 1 and e.model.calls == []
        e._codec = lambda name, params: ExtraCodec()
        r = e._process(_incoming(2))
        assert r["batch_size"] == 1 and len(r["extra_top5"]) == 2
        assert e.model.calls == [1, 2]  # the image (alone or via the batcher), then the extras together
    finally:
        e.teardown()


def test_warm_codec_builds_the_trials_codec_before_the_stream():
    """The runner asks the edge to build a trial's codec first: the first image then finds it in the cache."""
    from hilbed.nodes.agent import AgentError
    from hilbed.nodes.edge import EdgeAgent
    e = EdgeAgent()
    try:
        got = e.op_warm_codec("jpeg", {"quality": 40})
        assert got["codec"] == "jpeg" and got["load_s"] >= 0 and got["split_computing"] is False
        built = list(e.codecs.values())
        assert len(built) == 1 and e._codec("jpeg", {"quality": 40}) is built[0]  # the stream reuses it
        with pytest.raises(AgentError, match="does not load on the edge"):
            e.op_warm_codec("jpeg", {"quality": 400})
    finally:
        e.teardown()
