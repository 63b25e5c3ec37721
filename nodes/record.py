"""The per-image record: the contract between agents, the run store and analysis.

One row per image per client. Timestamps are integers in nanoseconds since the
Unix epoch **on the controller's clock** (node clocks are mapped with the
offsets measured by the clock probe; the offsets are kept in the row so the
raw node values can be recovered: raw = mapped + offset). Every field's unit is
in its name or in its description here; ``docs/record-schema.md`` is generated
from this table (``python -m hilbed.analysis.schema``).

This module is the bottom of the stack: the client agent produces the raw
part, :func:`make_record` (in the controller) completes it, the run store
writes it, analysis reads it. It imports nothing but the standard library;
:func:`arrow_schema` imports pyarrow only when called (controller side).
"""

from __future__ import annotations

import json
from typing import Any, Callable

#: name -> (type, description); types: string, float64, int32, int64, bool, list<int32>
FIELDS: dict[str, tuple[str, str]] = {
    "run_id": ("string", "run directory name"),
    "trial_id": ("string", "hash of (scenario, codec + params, condition, repetition)"),
    "scenario": ("string", "scenario name"),
    "codec": ("string", "codec family name (jpeg, webp, ...)"),
    "codec_label": ("string", "display name of the codec variant"),
    "codec_params": ("string", "codec parameters as JSON"),
    "condition": ("string", "condition name"),
    "jamming_level": ("string", "jamming level name (none/light/heavy/custom)"),
    "link_kind": ("string", "the link kind (direct | trace | tc | radio or a registered kind)"),
    "link_rate_kbps": ("float64", "constant uplink rate in kbit/s (null for traces)"),
    "trace_name": ("string", "uplink trace file name (null for constant rate)"),
    "link_delay_ms": ("float64", "one-way delay in ms"),
    "deadline_ms": ("float64", "per-image deadline after arrival, ms"),
    "period_ms": ("float64", "image inter-arrival period, ms"),
    "n_clients": ("int32", "clients streaming at once in the condition (sharing the medium, uplink and edge)"),
    "testbed": ("string", "the testbed (bench) the image ran on"),
    "repetition": ("int32", "repetition index (0-based)"),
    "client": ("string", "client node name"),
    "image_index": ("int64", "dataset index of the image"),
    "label": ("int32", "true class index"),
    "bytes_total": ("int64", "encoded payload bytes of the image (codec output)"),
    "header_bytes": ("int64", "bytes of format headers/tables inside bytes_total"),
    "bytes_delivered": ("int64", "payload bytes the edge received by the deadline"),
    "wire_bytes_sent": ("int64", "bytes put on the link: BEGIN header + DATA frames (17 B framing each) + END; radio: radio frames only"),
    "chunks_total": ("int32", "chunks the codec produced (1 unless progressive)"),
    "chunks_delivered": ("int32", "leading chunks complete at the edge by the deadline"),
    "packets_sent": ("int32", "link packets sent (BEGIN and END included)"),
    "packets_lost": ("int32", "link packets lost (drops)"),
    "retries": ("int32", "radio MAC retries (0 on non-radio links)"),
    "rssi_dbm": ("float64", "mean received signal strength, dBm (radio links)"),
    "t_arrival_ns": ("int64", "image arrival at the client (controller clock, ns)"),
    "t_encode_start_ns": ("int64", "encoding started (ns)"),
    "t_encode_end_ns": ("int64", "encoding finished (ns)"),
    "t_tx_start_ns": ("int64", "first byte handed to the link (ns)"),
    "t_tx_end_ns": ("int64", "last byte left the client, or the deadline cut it (ns)"),
    "t_rx_end_ns": ("int64", "last accepted byte reached the edge (ns; null if none)"),
    "t_edge_close_ns": ("int64", "edge closed the message: END received or deadline (ns)"),
    "t_decode_end_ns": ("int64", "edge finished decoding (ns)"),
    "t_infer_end_ns": ("int64", "edge finished inference (ns)"),
    "batch_size": ("int32", "images the edge inferred together with this one (1: alone; null: not inferred)"),
    "batch_wait_ms": ("float64", "time the decoded image waited at the edge for its batch to form, ms"),
    "classified_by": ("string", "what produced the prediction: 'edge-model' (the scenario's model on decoded pixels) "
                                "or 'codec' (a split-computing codec's own stages: entropic student, CR+BQ, PNC with "
                                "its fine-tuned classifier); null: nothing decoded"),
    "t_result_ns": ("int64", "reply reached the client (ns; null if none)"),
    "deadline_met": ("bool", "every byte of the image reached the edge by the deadline"),
    "decoded": ("bool", "the edge could decode what arrived"),
    "top1": ("int32", "predicted class (null if not decoded)"),
    "top5": ("list<int32>", "five best classes, best first"),
    "top1_prob": ("float64", "softmax probability of top1"),
    "correct1": ("bool", "top1 == label (false when not decoded)"),
    "correct5": ("bool", "label in top5 (false when not decoded)"),
    "jammer_load": ("float64", "jammer's measured load during the image, fraction of air time 0..1"),
    "jammer_mbps": ("float64", "jammer's measured throughput during the condition, Mbit/s"),
    "jammer_note": ("string", "why jammer_load is null for an image of a jammed condition (nothing was measured)"),
    "client_clock_offset_ns": ("int64", "client clock minus controller clock (ns)"),
    "edge_clock_offset_ns": ("int64", "edge clock minus controller clock (ns)"),
    "clock_uncertainty_ns": ("int64", "sum of both offsets' uncertainties (ns)"),
    "energy_encode_mj": ("float64", "client energy over the encode window, mJ (null: no meter, or no valid sample)"),
    "energy_tx_mj": ("float64", "energy over the transmit window, mJ (the radio's meter when it has one; emulated: "
                                "the radio model alone)"),
    "power_samples": ("int64", "meter samples inside the encode and transmit windows (0: modelled, emulated meter)"),
    "power_missed": ("int64", "samples the meter's rate promised in those windows that did not come or failed"),
    "power_flagged": ("int64", "implausible samples (negative, above the meter's range) left out of the energy"),
    "power_idle_mw": ("float64", "the client's idle power measured before the condition (power_baseline), mW"),
    "power_meter": ("string", "meter kind (emulated | ina219 | ina226 | ppk2; '+kind' for a radio meter); null: none"),
    "codec_state": ("string", "an adaptive codec's state when it encoded the image (AdaCompress: its state machine's "
                              "state); null for fixed codecs"),
    "codec_quality": ("int32", "the quality an adaptive codec chose for the image (AdaCompress); null otherwise"),
    "close_reason": ("string", "end | aborted | deadline | disconnect | superseded | unsent | header_lost | rejected"),
    "error": ("string", "error text when the image produced no reply"),
}

#: raw keys of the client's power meter, copied to the record as they are (docs/energy.md)
ENERGY_KEYS = ("energy_encode_mj", "energy_tx_mj", "power_samples", "power_missed", "power_flagged", "power_idle_mw",
               "power_meter")


def arrow_schema():
    """The record as an Arrow schema (results.parquet); needs pyarrow."""
    import pyarrow as pa
    types = {"string": pa.string(), "float64": pa.float64(), "int32": pa.int32(), "int64": pa.int64(),
             "bool": pa.bool_(), "list<int32>": pa.list_(pa.int32())}
    return pa.schema([pa.field(name, types[typ]) for name, (typ, _) in FIELDS.items()])


def _mapped(raw: dict, key: str, offset_ns: int) -> int | None:
    v = raw.get(key)
    return None if v is None else int(v) - offset_ns


def make_record(raw: dict, *, run_id: str, scenario: str, trial_id: str, codec: str, codec_label: str,
                codec_params: dict, repetition: int, condition_fields: dict, client: str,
                client_offset: dict, edge_offset: dict, jammer: dict) -> dict:
    """A stored record from a client's raw record (its own clock, plus the edge's reply on the edge's clock).

    ``condition_fields``: condition, jamming_level, link_kind, link_rate_kbps, trace_name, link_delay_ms,
    deadline_ms, period_ms, n_clients, testbed. ``*_offset``: ``{"offset_ns", "uncertainty_ns"}`` from the clock probe.
    ``jammer``: ``{"jammer_load", "jammer_mbps", "jammer_note"}`` measured for this image.
    """
    c_ns, e_ns = client_offset["offset_ns"], edge_offset["offset_ns"]
    label = int(raw["label"])
    top5 = [int(x) for x in raw.get("top5") or []]
    decoded = bool(raw.get("decoded"))
    bytes_total = int(raw["bytes_total"])
    bytes_delivered = int(raw.get("bytes_received", 0) or 0)
    chunks_total = int(raw["chunks_total"])
    chunks_delivered = int(raw.get("chunks_received", 0) or 0)
    rec = {
        "run_id": run_id, "trial_id": trial_id, "scenario": scenario, "codec": codec, "codec_label": codec_label,
        "codec_params": json.dumps(codec_params, sort_keys=True), **condition_fields,
        "repetition": repetition, "client": raw.get("client", client), "image_index": int(raw["image_index"]),
        "label": label, "bytes_total": bytes_total, "header_bytes": raw.get("header_bytes"),
        "bytes_delivered": bytes_delivered, "wire_bytes_sent": raw.get("wire_bytes_sent"),
        "chunks_total": chunks_total, "chunks_delivered": chunks_delivered,
        "packets_sent": raw.get("packets_sent"), "packets_lost": raw.get("packets_lost"),
        "retries": raw.get("retries", 0), "rssi_dbm": raw.get("rssi_dbm"),
        "t_arrival_ns": _mapped(raw, "t_arrival_ns", c_ns), "t_encode_start_ns": _mapped(raw, "t_encode_start_ns", c_ns),
        "t_encode_end_ns": _mapped(raw, "t_encode_end_ns", c_ns), "t_tx_start_ns": _mapped(raw, "t_tx_start_ns", c_ns),
        "t_tx_end_ns": _mapped(raw, "t_tx_end_ns", c_ns), "t_rx_end_ns": _mapped(raw, "edge_t_rx_end_ns", e_ns),
        "t_edge_close_ns": _mapped(raw, "edge_t_close_ns", e_ns),
        "t_decode_end_ns": _mapped(raw, "edge_t_decode_end_ns", e_ns),
        "t_infer_end_ns": _mapped(raw, "edge_t_infer_end_ns", e_ns), "t_result_ns": _mapped(raw, "t_result_ns", c_ns),
        "batch_size": raw.get("batch_size"), "batch_wait_ms": raw.get("batch_wait_ms"),
        "classified_by": raw.get("classified_by"),
        "deadline_met": (raw.get("error") is None and bytes_delivered == bytes_total
                         and chunks_delivered == chunks_total),
        "decoded": decoded, "top1": top5[0] if top5 else None, "top5": top5,
        "top1_prob": (raw.get("top5_prob") or [None])[0],
        "correct1": bool(decoded and top5 and top5[0] == label),
        "correct5": bool(decoded and label in top5),
        "jammer_load": jammer.get("jammer_load"), "jammer_mbps": jammer.get("jammer_mbps"),
        "jammer_note": jammer.get("jammer_note"),
        "client_clock_offset_ns": c_ns, "edge_clock_offset_ns": e_ns,
        "clock_uncertainty_ns": client_offset["uncertainty_ns"] + edge_offset["uncertainty_ns"],
        **{k: raw.get(k) for k in ENERGY_KEYS},
        "codec_state": raw.get("codec_state"), "codec_quality": raw.get("codec_quality"),
        "close_reason": raw.get("close"), "error": raw.get("error"),
    }
    unknown = set(rec) - set(FIELDS)
    if unknown:  # the contract is this table: a field not in it is a bug, not a new column
        raise KeyError(f"record fields not in the schema: {sorted(unknown)}")
    return rec


#: the keys that identify a record (a re-run supersedes the record with the same keys)
KEY_FIELDS = ("trial_id", "client", "image_index")


def _is_int(v: Any, bits: int) -> bool:
    return type(v) is int and -(1 << (bits - 1)) <= v < (1 << (bits - 1))


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "float64": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "int32": lambda v: _is_int(v, 32),
    "int64": lambda v: _is_int(v, 64),
    "bool": lambda v: isinstance(v, bool),
    "list<int32>": lambda v: isinstance(v, list) and all(_is_int(x, 32) for x in v),
}
_FIELD_CHECKS = [(name, _TYPE_CHECKS[t]) for name, (t, _) in FIELDS.items() if t in _TYPE_CHECKS]


def record_problem(rec: Any) -> str | None:
    """Why ``rec`` is not a usable record (None when it is): the one rule the run store and analysis share.

    A record is an object with a non-empty ``trial_id`` and ``client`` and a non-negative integer
    ``image_index``, and every field of this contract it has is null or of the contract's type
    (otherwise results.parquet could not be built from it). Unknown keys are allowed (newer writers).
    """
    if not isinstance(rec, dict):
        return f"not a record (a JSON {type(rec).__name__})"
    for k in KEY_FIELDS:
        if rec.get(k) is None:
            return f"not a record (no {k})"
    if not isinstance(rec["trial_id"], str) or not rec["trial_id"]:
        return "not a record (trial_id is not a string)"
    if not isinstance(rec["client"], str) or not rec["client"]:
        return "not a record (client is not a string)"
    if not _is_int(rec["image_index"], 64) or rec["image_index"] < 0:
        return "not a record (image_index is not a non-negative integer)"
    for name, ok in _FIELD_CHECKS:
        v = rec.get(name)
        if v is not None and not ok(v):
            return f"bad type of {name} ({type(v).__name__}, the contract says {FIELDS[name][0]})"
    return None
