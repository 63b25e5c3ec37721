"""The per-image record as analysis reads it: Arrow types from the contract in :mod:`hilbed.nodes.record`.

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
from hilbed.nodes.record import LATENCY_COMPONENTS, arrow_schema

SCHEMA = arrow_schema()
#: name -> (arrow type, description)
FIELDS: dict[str, tuple[pa.DataType, str]] = {name: (SCHEMA.field(name).type, desc)
                                             for name, (_, desc) in RECORD_FIELDS.items()}

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
    rows = ["# The per-image record", "", "Generated from `nodes/record.py` via `analysis/schema.py` (`python -m hilbed.analysis.schema > "
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
