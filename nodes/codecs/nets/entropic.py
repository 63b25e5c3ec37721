"""Networks of the supervised-compression families (entropic student,
factorized prior, CR+BQ) and their shapes, as the edge rebuilds them from
an artifact. compressai is imported inside the builders that need it, so
CR+BQ runs with torch alone; training is in
:mod:`hilbed.nodes.codecs.fitting.entropic`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hilbed.nodes.codecs.nets.common import build_tail
from hilbed.nodes.workload.models import CifarResNet

# ------------------------------------------------------------ shapes ---

#: initial width of the learnt prior (compressai's default is 10; latents here start near unit scale, and a
#: short CPU fit never narrows a wide prior enough, leaving the coded rate far above the latents' entropy)
EB_INIT_SCALE = 2.0


@dataclass(frozen=True)
class StudentArch:
    size: int = 32
    hidden: int = 48        # channels of the encoder/decoder hidden layers
    latent: int = 24        # channels of the entropy-coded latent
    stride: int = 2         # latent at size/stride: 2 puts it at half the resolution of the features the
                            # decoder must produce (CIFAR layer1 is full resolution), as 28 vs 56 on ImageNet
    teacher_init: bool = True  # open the encoder with the teacher's conv1, close the decoder with its layer1
    feature_channels: int = 16  # the teacher's layer1 width (set from the teacher)
    blocks: int = 3         # the teacher's blocks per stage (set from the teacher)


@dataclass(frozen=True)
class FactorizedArch:
    size: int = 32
    hidden: int = 64        # N (the paper: 128)
    latent: int = 96        # M
    layers: int = 4         # conv layers each side, stride 2 each (the paper: 4 x (128, 5, 2, 2))


@dataclass(frozen=True)
class CrBqArch:
    size: int = 32
    hidden: int = 48
    bottleneck: int = 6     # channels of the reduced layer (the paper sweeps 2, 3, 6, 9, 12)
    feature_channels: int = 16


ARCHS = {"entropic": StudentArch, "factorized": FactorizedArch, "crbq": CrBqArch}


# ---------------------------------------------------------- builders ---

def _conv(cin, cout, k, s=1):
    return nn.Conv2d(cin, cout, k, s, k // 2)


def _deconv(cin, cout, k=5, s=2):
    return nn.ConvTranspose2d(cin, cout, k, s, k // 2, output_padding=s - 1)


def build_student(arch: StudentArch, tail_cfg: dict):
    """Encoder (convs + GDN) -> entropy bottleneck -> decoder (convs + IGDN) -> layer1-shaped features -> tail.

    With ``teacher_init`` the encoder opens with a conv shaped like the
    teacher's conv1 (+BN, folded) and the decoder closes with a copy of the
    teacher's layer1 blocks, both initialised from the teacher at fit time, so
    the bottleneck starts by passing edge-like conv1 features rather than
    having to relearn layer1 from scratch (what a few CPU epochs cannot do).
    """
    from compressai.entropy_models import EntropyBottleneck
    from compressai.layers import GDN

    h, n, f = arch.hidden, arch.latent, arch.feature_channels
    if arch.stride not in (2, 4):
        raise ValueError(f"student stride must be 2 or 4, got {arch.stride}")
    downs = arch.stride.bit_length() - 1
    if arch.teacher_init:
        enc: list = [nn.Conv2d(3, f, 3, 1, 1), nn.ReLU()]
        cin = f
        for _ in range(downs):
            enc += [_conv(cin, h, 5, 2), GDN(h)]
            cin = h
        enc.append(_conv(h, n, 3))
        dec: list = [_conv(n, h, 3), GDN(h, inverse=True)]
        for _ in range(downs):
            dec += [_deconv(h, h), GDN(h, inverse=True)]
        dec += [_conv(h, f, 3), nn.ReLU(), CifarResNet._stage(f, f, arch.blocks, 1)]
    else:  # the paper's layout, everything learnt from scratch
        enc = [_conv(3, h, 5, 2), GDN(h), _conv(h, h, 5 if downs == 2 else 3, 2 if downs == 2 else 1), GDN(h),
               _conv(h, n, 3)]
        dec = [_conv(n, h, 3), GDN(h, inverse=True)]
        for _ in range(downs):
            dec += [_deconv(h, h), GDN(h, inverse=True)]
        if downs == 1:
            dec += [_conv(h, h, 3), GDN(h, inverse=True)]
        dec.append(_conv(h, f, 3))
    return nn.ModuleDict({"encoder": nn.Sequential(*enc), "eb": EntropyBottleneck(n, init_scale=EB_INIT_SCALE),
                          "decoder": nn.Sequential(*dec),
                          "tail": build_tail(tail_cfg)})


def build_factorized(arch: FactorizedArch):
    from compressai.entropy_models import EntropyBottleneck
    from compressai.layers import GDN
    n, m, k = arch.hidden, arch.latent, arch.layers
    enc: list = []
    dec: list = []
    for i in range(k):
        enc.append(_conv(3 if i == 0 else n, m if i == k - 1 else n, 5, 2))
        if i < k - 1:
            enc.append(GDN(n))
        dec.append(_deconv(m if i == 0 else n, 3 if i == k - 1 else n))
        if i < k - 1:
            dec.append(GDN(n, inverse=True))
    return nn.ModuleDict({"encoder": nn.Sequential(*enc), "eb": EntropyBottleneck(m, init_scale=EB_INIT_SCALE),
                          "decoder": nn.Sequential(*dec)})


def build_crbq(arch: CrBqArch, tail_cfg: dict):
    h, c = arch.hidden, arch.bottleneck

    def cbr(cin, cout, k=3, s=1):
        return [nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    def dbr(cin, cout):
        return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    encoder = nn.Sequential(*cbr(3, h), *cbr(h, h, 3, 2), nn.Conv2d(h, c, 3, 2, 1))
    decoder = nn.Sequential(*cbr(c, h), *dbr(h, h), *dbr(h, h), nn.Conv2d(h, arch.feature_channels, 3, 1, 1))
    return nn.ModuleDict({"encoder": encoder, "decoder": decoder, "tail": build_tail(tail_cfg)})
