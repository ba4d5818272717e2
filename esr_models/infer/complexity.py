"""Parameter and FLOP counts in the NTIRE ESR challenge's convention (fvcore): one
multiply-accumulate of a convolution counts as one FLOP, and fvcore's handlers for the few
non-conv ops it knows (bilinear upsample: 4 per output element) are counted too.
Elementwise activations, pooling and pixel shuffle count nothing, as in fvcore."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

_BILINEAR_FLOPS_PER_OUTPUT = 4


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _FlopCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name == "convolution":
            weight = args[1]
            # MACs = output elements x (input channels per group x kernel area)
            self.flops += out.numel() * weight[0].numel()
        elif name.startswith("upsample_bilinear2d"):
            self.flops += out.numel() * _BILINEAR_FLOPS_PER_OUTPUT
        return out


@torch.no_grad()
def count_flops(model: nn.Module, height: int = 256, width: int = 256) -> int:
    """FLOPs (conv MACs + bilinear) of one forward pass on a (1, 3, height, width) input."""
    param = next(model.parameters())
    x = torch.rand(1, 3, height, width, device=param.device, dtype=param.dtype)
    counter = _FlopCounter()
    with counter:
        model(x)
    return counter.flops
