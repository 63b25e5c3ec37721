"""What the edge-side networks share: the ResNet tail a split-computing
student classifies with, uint8 -> float conversion and ``.npz`` weights.

Imports torch at module level: import it lazily, where a network runs.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hilbed.nodes.workload.models import CifarResNet


def to_unit(batch: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1] on ``device``."""
    t = torch.as_tensor(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
    return t.to(device).permute(0, 3, 1, 2).float().div_(255.0)


class ResNetTail(nn.Module):
    """layer2, layer3, pooling and the classifier of a CIFAR ResNet, as a trainable copy."""

    def __init__(self, resnet: CifarResNet):
        super().__init__()
        import copy
        self.layer2 = copy.deepcopy(resnet.layer2)
        self.layer3 = copy.deepcopy(resnet.layer3)
        self.linear = copy.deepcopy(resnet.linear)
        for p in self.parameters():
            p.requires_grad_(True)

    def forward(self, f1: torch.Tensor, return_features: bool = False):
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        logits = self.linear(F.adaptive_avg_pool2d(f3, 1).flatten(1))
        return (f2, f3, logits) if return_features else logits


def tail_config(resnet: CifarResNet) -> dict:
    return {"blocks": len(resnet.layer1), "classes": resnet.linear.out_features}


def build_tail(cfg: dict) -> ResNetTail:
    return ResNetTail(CifarResNet(cfg["blocks"], cfg["classes"]))


def npz_to_arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_state(module: nn.Module, arrays: dict[str, np.ndarray], prefix: str = "", strict: bool = True) -> None:
    """Copy ``prefix``-ed arrays into ``module`` (resizing buffers whose shape is data dependent)."""
    own = module.state_dict()
    sub = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    if strict:
        missing = set(own) - set(sub)
        if missing:
            raise KeyError(f"weights missing for {sorted(missing)[:5]}")
    for name, arr in sub.items():
        if name not in own:
            if strict:
                raise KeyError(f"unexpected weight {name}")
            continue
        t = own[name]
        src = torch.from_numpy(np.array(arr))
        if t.shape != src.shape:  # e.g. an entropy bottleneck's CDF tables
            obj = module
            *path, leaf = name.split(".")
            for p in path:
                obj = getattr(obj, p)
            getattr(obj, leaf).resize_(src.shape)
        own_t = module.state_dict()[name]
        own_t.copy_(src.to(own_t.dtype))
