"""The per-image record: the contract between nodes, the run store and analysis.

One row per image per client. Timestamps are integers in nanoseconds since the
Unix epoch **on the controller's clock** (node clocks are mapped with the
offsets measured by the clock probe; the offsets are kept in the row so the
raw node values can be recovered: raw = mapped + offset). Every field's unit is
in its name or in its description here; ``docs/record-schema.md`` is generated
from this table.
"""

from __future__ import annotations

import pyarrow as pa

# name -> (arrow type, description)
FIELDS: dict[str, tuple[pa.DataType, str]] = {
    "run_id": (pa.string(), "run directory name"),
    "trial_id": (pa.string(), "hash of (scenario, codec + params, condition, repetition)"),
    "scenario": (pa.string(), "scenario name"),
    "codec": (pa.string(), "codec family name (jpeg, webp, ...)"),
    "codec_label": (pa.string(), "display name of the codec variant"),
    "codec_params": (pa.string(), "codec parameters as JSON"),
    "condition": (pa.string(), "condition name"),
    "jamming_level": (pa.string(), "jamming level name (none/light/heavy/custom)"),
    "link_kind": (pa.string(), "direct | trace | tc | radio"),
    "link_rate_kbps": (pa.float64(), "constant uplink rate in kbit/s (null for traces)"),
    "trace_name": (pa.string(), "uplink trace file name (null for constant rate)"),
    "link_delay_ms": (pa.float64(), "one-way delay in ms"),
    "deadline_ms": (pa.float64(), "per-image deadline after arrival, ms"),
    "period_ms": (pa.float64(), "image inter-arrival period, ms"),
    "repetition": (pa.int32(), "repetition index (0-based)"),
    "client": (pa.string(), "client node name"),
    "image_index": (pa.int64(), "dataset index of the image"),
    "label": (pa.int32(), "true class index"),
    "bytes_total": (pa.int64(), "encoded payload bytes of the image (codec output)"),
    "header_bytes": (pa.int64(), "bytes of format headers/tables inside bytes_total"),
    "bytes_delivered": (pa.int64(), "payload bytes the edge received by the deadline"),
    "wire_bytes_sent": (pa.int64(), "bytes put on the link incl. per-packet framing"),
    "chunks_total": (pa.int32(), "chunks the codec produced (1 unless progressive)"),
    "chunks_delivered": (pa.int32(), "leading chunks complete at the edge by the deadline"),
    "packets_sent": (pa.int32(), "link packets sent"),
    "packets_lost": (pa.int32(), "link packets lost (drops)"),
    "retries": (pa.int32(), "radio MAC retries (0 on non-radio links)"),
    "rssi_dbm": (pa.float64(), "mean received signal strength, dBm (radio links)"),
    "t_arrival_ns": (pa.int64(), "image arrival at the client (controller clock, ns)"),
    "t_encode_start_ns": (pa.int64(), "encoding started (ns)"),
    "t_encode_end_ns": (pa.int64(), "encoding finished (ns)"),
    "t_tx_start_ns": (pa.int64(), "first byte handed to the link (ns)"),
    "t_tx_end_ns": (pa.int64(), "last byte left the client, or the deadline cut it (ns)"),
    "t_rx_end_ns": (pa.int64(), "last accepted byte reached the edge (ns; null if none)"),
    "t_edge_close_ns": (pa.int64(), "edge closed the message: END received or deadline (ns)"),
    "t_decode_end_ns": (pa.int64(), "edge finished decoding (ns)"),
    "t_infer_end_ns": (pa.int64(), "edge finished inference (ns)"),
    "t_result_ns": (pa.int64(), "reply reached the client (ns; null if none)"),
    "deadline_met": (pa.bool_(), "every byte of the image reached the edge by the deadline"),
    "decoded": (pa.bool_(), "the edge could decode what arrived"),
    "top1": (pa.int32(), "predicted class (null if not decoded)"),
    "top5": (pa.list_(pa.int32()), "five best classes, best first"),
    "top1_prob": (pa.float64(), "softmax probability of top1"),
    "correct1": (pa.bool_(), "top1 == label (false when not decoded)"),
    "correct5": (pa.bool_(), "label in top5 (false when not decoded)"),
    "jammer_load": (pa.float64(), "jammer's measured load during the image, fraction of air time 0..1"),
    "jammer_mbps": (pa.float64(), "jammer's measured throughput during the condition, Mbit/s"),
    "client_clock_offset_ns": (pa.int64(), "client clock minus controller clock (ns)"),
    "edge_clock_offset_ns": (pa.int64(), "edge clock minus controller clock (ns)"),
    "clock_uncertainty_ns": (pa.int64(), "sum of both offsets' uncertainties (ns)"),
    "close_reason": (pa.string(), "end | aborted | deadline | disconnect | superseded"),
    "error": (pa.string(), "error text when the image produced no reply"),
}

SCHEMA = pa.schema([pa.field(name, typ) for name, (typ, _) in FIELDS.items()])

#: latency components (ms) that add up to end-to-end latency t_result - t_arrival
LATENCY_COMPONENTS = ("encode", "transmit", "decode", "infer", "return")

#: columns :func:`hilbed.analysis.metrics.with_latency` derives from the timestamps (all in ms)
DERIVED: dict[str, str] = {
    "encode_ms": "t_encode_end - t_arrival: waiting for the client, then encoding",
    "transmit_ms": "t_edge_close - t_encode_end: queue + transmit + propagation, up to END or the deadline",
    "decode_ms": "t_decode_end - t_edge_close: edge decodes what arrived",
    "infer_ms": "t_infer_end - t_decode_end: edge runs the model",
    "return_ms": "t_result - t_infer_end: reply travels back to the client",
    "e2e_ms": "t_result - t_arrival: end-to-end latency (= sum of the five components; null without a reply)",
    "queue_ms": "t_tx_start - t_encode_end: waiting for the link (part of transmit_ms)",
    "link_ms": "t_edge_close - t_tx_start: on the link (part of transmit_ms)",
    "encode_only_ms": "t_encode_end - t_encode_start: the codec's own encoding time",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def schema_markdown() -> str:
    """The record schema as Markdown (``docs/record-schema.md`` is this text)."""
    head = (__doc__ or "").strip().split("\n", 2)[-1].strip()
    rows = ["# The per-image record", "", "Generated from `analysis/schema.py` (`python -m hilbed.analysis.schema > "
            "docs/record-schema.md`); do not edit by hand.", "", head, "",
            "Files: `trials.jsonl` holds one JSON object per line with these keys (a torn last line of a killed "
            "run is skipped; when a record was written twice the last one wins); `results.parquet` holds the same "
            "rows with the Arrow types below. Fields a record lacks are null.", "",
            "## Fields", "", "| field | type | meaning |", "|---|---|---|"]
    rows += [f"| `{n}` | {t} | {_cell(d)} |" for n, (t, d) in FIELDS.items()]
    rows += ["", "## Derived latency columns (ms)", "",
             "`hilbed.analysis.metrics.with_latency(df)` adds these; the five components "
             f"({', '.join(LATENCY_COMPONENTS)}) add up to `e2e_ms`.", "",
             "| column | definition |", "|---|---|"]
    rows += [f"| `{n}` | {_cell(d)} |" for n, d in DERIVED.items()]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(schema_markdown(), end="")
