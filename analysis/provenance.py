"""What a run was made with (manifest ``provenance``), and where two runs differ in it.

The runner records ``manifest["provenance"]``: per node (under ``nodes``, or
at the top) the wheel hash, Python, package versions and radio firmware, plus
the run-wide ``model``, ``inputs`` and ``lease``; older manifests keep
``inputs`` and ``model`` at the top level, which stand in. ``hilbed compare`` warns on every difference: two
runs built from different code, libraries, firmware or inputs may differ for
that reason alone, and the verdicts cannot tell.
"""

from __future__ import annotations

from dataclasses import dataclass

#: run-wide entries of ``provenance``; every other key is a node
RUN_WIDE = ("model", "inputs", "lease")
#: keys that change on every run by nature (when a lease was taken, how long the model took to load): not a
#: difference in what the run was made with
VOLATILE_SUFFIXES = ("_at", "_ns", "_s", "_since", "_until")
ABSENT = "absent"


@dataclass(frozen=True)
class ProvenanceDiff:
    where: str  # a node name, or model / inputs / lease
    what: str   # dotted path inside it (packages.numpy, radios.client-1.firmware, wheel_sha256)
    base: object
    run: object

    def text(self) -> str:
        return f"provenance differs: {self.where}: {self.what}: base {_show(self.base)}, run {_show(self.run)}"


def _show(v) -> str:
    s = str(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _flat(d, prefix: str = "") -> dict[str, object]:
    """Nested dicts as {dotted path: leaf}; an empty dict is a leaf of its own."""
    if not isinstance(d, dict) or not d:
        return {prefix: d} if prefix else {}
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def provenance_of(m: dict) -> dict[str, dict]:
    """``where -> facts`` of a manifest: its nodes (``provenance`` or ``provenance.nodes``), model, inputs, lease."""
    p = dict(m.get("provenance") or {})  # {"nodes": {...}, "model", "inputs", "lease"}, or nodes at the top
    nodes = p.pop("nodes", None)
    out = {str(k): v for k, v in (nodes or {}).items() if isinstance(v, dict)}
    out.update({str(k): v for k, v in p.items() if k not in RUN_WIDE and isinstance(v, dict)})
    for key in RUN_WIDE:
        v = p.get(key, m.get(key))
        if v is not None:
            out[key] = v if isinstance(v, dict) else {"value": v}
    return out


def _volatile(path: str) -> bool:
    return path.split(".")[-1].endswith(VOLATILE_SUFFIXES)


def diff_provenance(base: dict, run: dict) -> list[ProvenanceDiff]:
    """Every difference of two manifests' provenance, in the order base's entries come (then run-only ones).

    A node or a fact recorded in one run and not the other is a difference
    (``absent``); when neither manifest records any provenance there is none. Times (keys ending ``_at``,
    ``_s``, ...) are not compared.
    """
    pb, pr = provenance_of(base), provenance_of(run)
    out = []
    for where in [*pb, *(w for w in pr if w not in pb)]:
        if where not in pr or where not in pb:
            out.append(ProvenanceDiff(where, "node" if where not in RUN_WIDE else where,
                                      "recorded" if where in pb else ABSENT, "recorded" if where in pr else ABSENT))
            continue
        fb, fr = _flat(pb[where]), _flat(pr[where])
        for what in [*fb, *(k for k in fr if k not in fb)]:
            if _volatile(what):
                continue
            b, r = fb.get(what, ABSENT), fr.get(what, ABSENT)
            if b != r:
                out.append(ProvenanceDiff(where, what, b, r))
    return out
