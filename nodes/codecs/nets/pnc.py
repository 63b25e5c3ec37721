"""PNC's autoencoder as torch modules (the edge runs the decoder).

The client's encoder is the numpy port in :mod:`hilbed.nodes.codecs.pnc`;
these modules are what :mod:`hilbed.nodes.codecs.fitting.pnc` trains and
what the edge loads the decoder weights into.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn


def build_modules(arch: Any):
    """(encoder, decoder) as torch modules for a :class:`~hilbed.nodes.codecs.pnc.PncArch`; the encoder ends before the sigmoid.

    Decoder: 5 layers, conv -> (nearest x2 upsample + conv) per factor of 2 of
    the stride -> 3x3 convs -> conv to RGB + sigmoid.
    """
    k1, s1, p1 = arch.conv1()
    encoder = nn.Sequential(OrderedDict(
        norm=Affine(4.0, -2.0),
        conv1=nn.Conv2d(3, arch.enc_width, k1, s1, p1), act1=nn.ReLU(),
        conv2=nn.Conv2d(arch.enc_width, arch.channels, 3, 2, 1),
    ))
    ups = {4: 2, 8: 3}[arch.stride]
    d = arch.dec_width
    widths = [d] + [max(16, d // (2 ** i)) for i in range(1, ups + 1)]
    layers: list[tuple[str, nn.Module]] = [("conv0", nn.Conv2d(arch.channels, widths[0], 3, 1, 1)), ("act0", nn.ReLU())]
    for i in range(ups):
        layers += [(f"up{i + 1}", nn.Upsample(scale_factor=2, mode="nearest")),
                   (f"conv{i + 1}", nn.Conv2d(widths[i], widths[i + 1], 3, 1, 1)), (f"act{i + 1}", nn.ReLU())]
    for i in range(ups + 1, 4):
        layers += [(f"conv{i}", nn.Conv2d(widths[-1], widths[-1], 3, 1, 1)), (f"act{i}", nn.ReLU())]
    layers += [("conv4", nn.Conv2d(widths[-1], 3, 3, 1, 1)), ("out", nn.Sigmoid())]
    decoder = nn.Sequential(OrderedDict(layers))
    return encoder, decoder


class Affine(nn.Module):
    """x * scale + shift (input normalisation without parameters)."""

    def __init__(self, scale: float, shift: float):
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x):
        return x * self.scale + self.shift


# ------------------------------------------- the edge's own classifier ---

class EdgeClassifier(nn.Module):
    """PNC's fine-tuned copy of the target classifier (stage 3): [0, 1] NCHW images in, logits out.

    It normalises its input as the teacher did, so it takes the decoder's
    output as is.
    """

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        import torch
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x01):
        return self.net((x01 - self.mean) / self.std)


def classifier_config(resnet: Any, mean, std) -> dict:
    """What rebuilds a CIFAR ResNet classifier's architecture (stored in the artifact's meta)."""
    return {"arch": "cifar-resnet", "blocks": len(resnet.layer1), "classes": int(resnet.linear.out_features),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def build_classifier(cfg: dict) -> EdgeClassifier:
    """An untrained :class:`EdgeClassifier` of the architecture ``cfg`` (:func:`classifier_config`) names."""
    if cfg.get("arch") != "cifar-resnet":
        raise ValueError(f"unknown PNC classifier architecture {cfg.get('arch')!r}")
    from hilbed.nodes.workload.models import CifarResNet
    return EdgeClassifier(CifarResNet(int(cfg["blocks"]), int(cfg["classes"])), cfg["mean"], cfg["std"])
