"""The per-image record as analysis reads it: Arrow types from the contract in :mod:`hilbed.nodes.record`,
and the latency parts analysis derives from its timestamps.

One row per image per client. Timestamps are integers in nanoseconds since the
Unix epoch **on the controller's clock** (node clocks are mapped with the
offsets measured by the clock probe; the offsets are kept in the row so the
raw node values can be recovered: raw = mapped + offset). Every field's unit is
in its name or in its description here; ``docs/record-schema.md`` is generated
from this table.
"""

from __future__ import annotations

import pyarrow as pa

from hilbed.nodes.record import FIELDS as RECORD_FIELDS
from hilbed.nodes.record import arrow_schema

SCHEMA = arrow_schema()
#: name -> (arrow type, description)
FIELDS: dict[str, tuple[pa.DataType, str]] = {name: (SCHEMA.field(name).type, desc)
                                             for name, (_, desc) in RECORD_FIELDS.items()}

#: the parts of end-to-end latency, in order: name -> (from, to, what the interval is). Each part starts
#: where the previous one ends, so per record they add up to e2e exactly (t_result - t_arrival).
LATENCY_PARTS: dict[str, tuple[str, str, str]] = {
    "wait": ("t_arrival_ns", "t_encode_start_ns",
             "the client is busy with earlier images (still sending the previous one) before it can encode"),
    "encode": ("t_encode_start_ns", "t_encode_end_ns", "the codec's own encoding time"),
    "queue": ("t_encode_end_ns", "t_tx_start_ns", "encoded, waiting for the link to take the first byte"),
    "transmit": ("t_tx_start_ns", "t_edge_close_ns",
                 "on the link: transmit + propagation, up to END or the deadline"),
    "decode": ("t_edge_close_ns", "t_decode_end_ns", "edge decodes what arrived"),
    "infer": ("t_decode_end_ns", "t_infer_end_ns", "edge runs the model"),
    "return": ("t_infer_end_ns", "t_result_ns", "reply travels back to the client"),
}
#: the latency components, in order (``<name>_ms`` columns)
LATENCY_COMPONENTS: tuple[str, ...] = tuple(LATENCY_PARTS)
E2E = ("t_arrival_ns", "t_result_ns")


def _check_parts() -> None:
    """The parts must chain from arrival to result; otherwise they would not add up to e2e."""
    ends = [E2E[0]] + [to for _, to, _ in LATENCY_PARTS.values()]
    starts = [fr for fr, _, _ in LATENCY_PARTS.values()] + [E2E[1]]
    if ends != starts[:-1] + [E2E[1]] or any(f not in FIELDS for f in ends):
        raise AssertionError("LATENCY_PARTS do not chain from t_arrival_ns to t_result_ns")


_check_parts()


def _short(col: str) -> str:
    return col[:-3] if col.endswith("_ns") else col


#: columns :func:`hilbed.analysis.metrics.with_latency` derives from the timestamps (all in ms)
DERIVED: dict[str, str] = {
    **{f"{name}_ms": f"{_short(b)} - {_short(a)}: {what}" for name, (a, b, what) in LATENCY_PARTS.items()},
    "e2e_ms": (f"{_short(E2E[1])} - {_short(E2E[0])}: end-to-end latency (= the sum of the {len(LATENCY_PARTS)} "
               "parts; null without a reply)"),
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def schema_markdown() -> str:
    """The record schema as Markdown (``docs/record-schema.md`` is this text)."""
    head = (__doc__ or "").strip().split("\n", 2)[-1].strip()
    rows = ["# The per-image record", "", "Generated from `nodes/record.py` via `analysis/schema.py` (`python -m hilbed.analysis.schema > "
            "docs/record-schema.md`); do not edit by hand.", "", head, "",
            "Files: `trials.jsonl` holds one JSON object per line with these keys (a torn last line of a killed "
            "run is skipped; when a record was written twice the last one wins); `results.parquet` holds the same "
            "rows with the Arrow types below. Fields a record lacks are null.", "",
            "## Fields", "", "| field | type | meaning |", "|---|---|---|"]
    rows += [f"| `{n}` | {t} | {_cell(d)} |" for n, (t, d) in FIELDS.items()]
    rows += ["", "## Derived latency columns (ms)", "",
             "`hilbed.analysis.metrics.with_latency(df)` adds these; the components "
             f"({', '.join(LATENCY_COMPONENTS)}) follow each other, so per record they add up to `e2e_ms` "
             "exactly.", "",
             "| column | definition |", "|---|---|"]
    rows += [f"| `{n}` | {_cell(d)} |" for n, d in DERIVED.items()]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(schema_markdown(), end="")
