"""Client agent: ``python -m hilbed.nodes.client`` (a Raspberry Pi in the real lab).

Plays an image stream: image k arrives at ``start + k * period``; each is
encoded, sent over the link until done or its deadline, and its reply is
awaited on a separate thread so the next image starts on time. One
``record`` event per image carries the client's raw timestamps (its own
clock) plus the edge's reply; the controller maps clocks and stores it.

With a power meter set (``power_meter`` op), each record also carries the
energy of its encode and transmit windows (docs/energy.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from hilbed.nodes.agent import Agent, AgentError, limit_compute_threads, run_agent
from hilbed.nodes.codecs import make_codec
from hilbed.nodes.events import AgentEvent
from hilbed.nodes.link import Link, open_link
from hilbed.nodes.power import Energy, PowerMeter, PowerMeterError, make_meter
from hilbed.nodes.workload import open_dataset

log = logging.getLogger("hilbed.client")


def _sleep_until_ns(t_ns: int) -> None:
    while True:
        dt = (t_ns - time.time_ns()) / 1e9
        if dt <= 0:
            return
        time.sleep(min(dt, 0.5))


class ClientAgent(Agent):
    name = "client"

    def __init__(self) -> None:
        super().__init__()
        self.link: Link | None = None
        self.dataset = None
        self.dataset_key: tuple | None = None
        self.node = "client"
        self.msg_seq = 0
        self._abort = threading.Event()
        self._waiters = ThreadPoolExecutor(max_workers=4, thread_name_prefix="client-result")
        self.meter: PowerMeter | None = None  # the client's supply: encode (and transmit without a radio meter)
        self.radio_meter: PowerMeter | None = None  # the radio's supply, when it has its own meter
        self.power_idle_mw: float | None = None
        self.link_rate_kbps: float | None = None

    def _close_meters(self) -> None:
        for m in (self.meter, self.radio_meter):
            if m is not None:
                m.close()
        self.meter = self.radio_meter = None
        self.power_idle_mw = None

    def op_power_meter(self, kind: str = "none", radio: dict | None = None, **settings) -> dict:
        """Choose the meter (``kind``: emulated | ina219 | ina226 | ppk2 | none; ``settings`` go to it) and start it.

        ``radio``: an optional second meter (``{"kind": "ppk2", ...}``) on the radio's supply; transmit
        energy comes from it when set. A meter whose library or hardware is missing is an error here,
        before any image, not a column of nulls.
        """
        self._close_meters()
        try:
            meter = make_meter({"kind": kind, **settings})
            radio_meter = make_meter(radio) if radio else None
        except PowerMeterError as exc:
            raise AgentError(str(exc)) from None
        for m in (meter, radio_meter):
            if m is not None:
                m.start()
        self.meter, self.radio_meter = meter, radio_meter
        return {"meter": meter.describe() if meter else None,
                "radio": radio_meter.describe() if radio_meter else None}

    def op_power_baseline(self, duration_s: float = 2.0) -> dict:
        """Measure idle power with nothing running (the controller calls it per condition, before its trials)."""
        if self.meter is None:
            return {"idle_mw": None}
        idle, e = self.meter.baseline(float(duration_s))
        self.power_idle_mw = idle
        return {"idle_mw": idle, "samples": e.samples, "missed": e.missed, "flagged": e.flagged}

    def _energy(self, base: dict, cpu_ns: int, link_facts: dict) -> dict:
        """The record's energy fields; a meter that fails gives nulls and never loses the record."""
        if self.meter is None:
            return {}
        try:
            enc = self.meter.encode_energy(base["t_encode_start_ns"], base["t_encode_end_ns"], cpu_ns)
            t1 = base["t_tx_end_ns"] if base["t_tx_end_ns"] is not None else base["t_tx_start_ns"]
            tx = (self.radio_meter or self.meter).tx_energy(base["t_tx_start_ns"], t1, link_facts)
        except Exception:  # noqa: BLE001
            log.exception("power meter integration failed")
            enc = tx = Energy(None)
        return {"energy_encode_mj": enc.mj, "energy_tx_mj": tx.mj, "power_samples": enc.samples + tx.samples,
                "power_missed": enc.missed + tx.missed, "power_flagged": enc.flagged + tx.flagged,
                "power_idle_mw": self.power_idle_mw,
                "power_meter": self.meter.kind + (f"+{self.radio_meter.kind}" if self.radio_meter else "")}

    def op_configure(self, node: str, dataset: str, size: int = 32, seed: int = 0) -> dict:
        self.node = node
        key = (dataset, size, seed)
        if key != self.dataset_key:
            self.dataset = open_dataset(dataset, size, seed)
            self.dataset_key = key
        return {"dataset": self.dataset.describe(), "classes": list(self.dataset.classes),
                "compute_threads": int(os.environ.get("OMP_NUM_THREADS") or 0) or None}

    def op_open_link(self, spec: dict, host: str, port: int, edge_minus_client_ns: int = 0, seed: int = 0,
                     secret: str | None = None) -> dict:
        """Open the condition's link and authenticate it with the run's ``secret`` (when the edge asks for one).

        ``spec["accounting"]`` (``payload`` | ``frame``) picks what a shaped link charges per packet.
        """
        accounting = spec.get("accounting")
        if accounting not in (None, "payload", "frame"):
            raise AgentError(f"link accounting {accounting!r} (allowed: payload, frame)")
        self.op_close_link()
        link = open_link(spec, host, port, edge_minus_client_ns, seed)
        try:
            link.set_accounting(accounting)
            auth = link.authenticate(secret)
        except (ConnectionError, OSError, ValueError) as exc:
            link.close()
            raise AgentError(f"link to the edge at {host}:{port}: {exc}") from None
        self.link = link
        self.link_rate_kbps = spec.get("rate_kbps")
        return {"kind": link.kind, "authenticated": auth["authenticated"], "accounting": link.accounting}

    def op_close_link(self) -> dict:
        stats = {}
        if self.link is not None:
            stats = self.link.stats()
            self.link.close()
            self.link = None
        return stats

    def op_abort(self) -> dict:
        self._abort.set()
        return {}

    def op_run_trial(self, trial_id: str, codec: str, params: dict, indices: list[int], period_ms: float,
                     deadline_ms: float, start_ns: int | None = None, result_timeout_s: float = 10.0) -> dict:
        if self.link is None or self.dataset is None:
            raise AgentError("run_trial before configure/open_link")
        self._abort.clear()
        enc = make_codec(codec, params)
        enc.set_stream(deadline_ms=deadline_ms, period_ms=period_ms)  # no-op unless deadline-aware (AutoJPEG)
        self.link.announce_codec(codec, params)  # the codec's spec is set-up, not part of the first image
        period_ns = int(period_ms * 1e6)
        deadline_ns_rel = int(deadline_ms * 1e6)
        # warm the encoder (lazy library init, caches) outside the measured stream
        if indices:
            enc.encode(self.dataset[indices[0]][0])
        t0 = max(start_ns or 0, time.time_ns() + 5_000_000)
        futures = []
        for k, idx in enumerate(indices):
            if self._abort.is_set():
                break
            t_arrival = t0 + k * period_ns
            img, label = self.dataset[idx]  # the camera's frame: ready when it "arrives"
            _sleep_until_ns(t_arrival)
            t_enc0, cpu0 = time.time_ns(), time.thread_time_ns()
            encoded = enc.encode(img)
            t_enc1, cpu1 = time.time_ns(), time.thread_time_ns()
            self.msg_seq += 1
            msg_id = self.msg_seq
            deadline = t_arrival + deadline_ns_rel
            meta = {"codec": codec, "params": params, "trial_id": trial_id, "image_index": idx, "client": self.node}
            rep = self.link.send_message(msg_id, meta, encoded.chunks, deadline)
            base = {
                "trial_id": trial_id, "client": self.node, "image_index": idx, "label": int(label),
                "t_arrival_ns": t_arrival, "t_encode_start_ns": t_enc0, "t_encode_end_ns": t_enc1,
                "t_tx_start_ns": rep.t_tx_start_ns, "t_tx_end_ns": rep.t_tx_end_ns, "deadline_ns": deadline,
                "bytes_total": encoded.total_bytes, "header_bytes": encoded.header_bytes,
                "chunks_total": len(encoded.chunks), "tx_chunks_delivered": rep.chunks_delivered,
                "tx_bytes_delivered": rep.bytes_delivered, "wire_bytes_sent": rep.wire_bytes_sent,
                "packets_sent": rep.packets_sent, "packets_lost": rep.packets_lost, "tx_aborted": rep.aborted,
                "retries": getattr(rep, "retries", 0), "cca_failures": getattr(rep, "cca_failures", 0),
                "chunk_times_ns": rep.chunk_times_ns,
                # what an adaptive codec decided for this image (AdaCompress's state and quality)
                "codec_state": _text_or_none(encoded.meta.get("state")),
                "codec_quality": _int_or_none(encoded.meta.get("quality")),
            }
            if self.meter is not None:
                energy = (cpu1 - cpu0, {"kind": self.link.kind, "rate_kbps": self.link_rate_kbps,
                                        "wire_bytes_sent": rep.wire_bytes_sent, "bytes_total": encoded.total_bytes,
                                        "packets_sent": rep.packets_sent, "retries": base["retries"]})
            else:
                energy = None
            learns = enc.learns_from_feedback  # codecs that learn from replies (AdaCompress, AutoJPEG)
            futures.append(self._waiters.submit(self._await_result, msg_id, base, result_timeout_s,
                                                (enc.feedback, img, encoded, label) if learns else None, energy))
        done = 0
        for f in futures:
            f.result()
            done += 1
        return {"images": done, "aborted": self._abort.is_set()}

    def _await_result(self, msg_id: int, base: dict, timeout_s: float, feedback: tuple | None = None,
                      energy: tuple | None = None) -> None:
        assert self.link is not None
        if energy is not None:  # integrated here, off the stream's thread: the next image starts on time
            base = {**base, **self._energy(base, *energy)}
        try:
            res = self.link.result(msg_id, timeout_s + max(0.0, (base["deadline_ns"] - time.time_ns()) / 1e9))
            err = res.pop("error", None)
        except Exception as exc:  # timeout or lost connection: still one record
            res, err = {}, f"{type(exc).__name__}: {exc}"
        record = {**base, **res, "error": err}
        if feedback is not None and err is None:
            fb, img, encoded, label = feedback
            try:
                fb(img, encoded, record, label)
            except Exception:  # a learning codec must never lose a record
                log.exception("codec feedback failed")
        self.event(AgentEvent.RECORD, record=record)

    def teardown(self) -> None:
        self._abort.set()
        self._close_meters()
        if self.link is not None:
            try:
                self.link.close()
            except OSError:
                pass


def _text_or_none(v: object) -> str | None:
    return None if v is None else str(v)


def _int_or_none(v: object) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


#: a client's torch/BLAS threads (``HILBED_CLIENT_THREADS``; see :func:`~hilbed.nodes.agent.limit_compute_threads`)
CLIENT_THREADS_ENV = "HILBED_CLIENT_THREADS"

if __name__ == "__main__":
    limit_compute_threads(int(os.environ.get(CLIENT_THREADS_ENV) or 1))
    run_agent(ClientAgent)
