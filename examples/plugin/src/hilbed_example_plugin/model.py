"""``example-mean:``: a tiny classifier (global mean -> linear), cheap to build for tests and demos."""

from __future__ import annotations

import torch
import torch.nn as nn


class MeanColour(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.head = nn.Linear(3, num_classes)
        with torch.no_grad():  # fixed weights: the checksum is reproducible without a file
            self.head.weight.copy_(torch.linspace(-1, 1, 3 * num_classes).view(num_classes, 3))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


def load(arg: str, *, size: int, device, progress=None):
    """The loader hilbed calls for ``example-mean:ARG`` (ARG unused); classes match the synthetic set."""
    from hilbed.nodes.workload.synthetic import CLASSES
    return MeanColour(len(CLASSES)), {"classes": tuple(CLASSES), "facts": {"plugin": "hilbed-example-plugin"}}
