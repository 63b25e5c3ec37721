"""One registry gives every codec variant the same colour, and every codec family the same marker, in every figure.

Colours are chosen per variant label (``jpeg-q10``), markers per family
(``jpeg``), so variants of one family read as one curve with distinct points.
A label's colour is a hash of its label (stable across reports); when two
labels of one report hash to the same colour, the later one (in sorted
order) takes the next free colour, so colours never repeat within a report
of up to ``len(PALETTE_LARGE)`` variants (reports with up to nine use only
the nine most distinct colours).
"""

from __future__ import annotations

import hashlib
from typing import Iterable

#: nine clearly distinct colours (tab10 without its grey, which the figures use for "bytes needed")
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
#: for reports with more variants than PALETTE has colours
PALETTE_LARGE = PALETTE + ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d",
                           "#31a354", "#756bb1", "#636363", "#9c9ede", "#cedb9c"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
#: latency parts: the two waiting parts are pale, hatched versions of the work that follows them (waiting to
#: encode, waiting for the link), so a bar shows at a glance how much of a stage is work and how much is waiting
COMPONENT_COLOURS = {"wait": "#a9bcdc", "encode": "#4c72b0", "queue": "#f0bc94", "transmit": "#dd8452",
                     "decode": "#55a868", "infer": "#c44e52", "return": "#8172b3"}
COMPONENT_HATCH = {"wait": "///", "queue": "///"}


def _h(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest(), 16)


def _assign(names: Iterable[str], size: int) -> dict[str, int]:
    slots: dict[str, int] = {}
    used: set[int] = set()
    for name in sorted(set(names)):
        slot = _h(name) % size
        if len(used) < size:
            while slot in used:
                slot = (slot + 1) % size
        slots[name] = slot
        used.add(slot)
    return slots


class StyleRegistry:
    """Colour and marker per codec variant; build one per report with every label it shows."""

    def __init__(self, labels: Iterable[str] = (), families: dict[str, str] | None = None):
        self.families = dict(families or {})
        labels = list(dict.fromkeys([*map(str, labels), *self.families]))
        self.palette = PALETTE if len(labels) <= len(PALETTE) else PALETTE_LARGE
        self._colour = _assign(labels, len(self.palette))
        fams = {self.families.get(lb, lb) for lb in labels}
        self._marker = _assign(fams, len(MARKERS))

    @classmethod
    def from_frame(cls, df) -> "StyleRegistry":
        pairs = df[["codec_label", "codec"]].dropna().drop_duplicates() if len(df) else []
        fams = {str(a): str(b) for a, b in (pairs.itertuples(index=False, name=None) if len(pairs) else [])}
        return cls(fams.keys(), fams)

    def style(self, label: str) -> dict:
        """``{"color", "marker"}`` for matplotlib."""
        label = str(label)
        fam = self.families.get(label, label)
        pal = self.palette
        colour = pal[self._colour[label]] if label in self._colour else pal[_h(label) % len(pal)]
        marker = MARKERS[self._marker[fam]] if fam in self._marker else MARKERS[_h(fam) % len(MARKERS)]
        return {"color": colour, "marker": marker}

    def family(self, label: str) -> str:
        return self.families.get(str(label), str(label))


def codec_style(label: str) -> dict:
    """Style of a label outside any report (hash only)."""
    return StyleRegistry([label]).style(label)
