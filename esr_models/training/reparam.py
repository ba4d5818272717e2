"""Re-parameterisable conv blocks: several linear branches at train time, one conv at inference.

Every block here is a linear map of its input (no activation inside), so the sum of its
branches is exactly one convolution. ``merged()`` computes that convolution's weight and bias
in float64 from the (float32) parameters and rounds once, so the deploy conv matches the
train-time sum to float32 rounding.

Borders. A chain "1x1 conv -> 3x3 conv" is only equal to a single zero-padded 3x3 conv if the
3x3 sees, outside the image, what the 1x1 would output for a zero input: its bias. So the
chains here pad the 1x1's output with the 1x1's bias (``_pad_with_bias``), never with zeros,
and then run the 3x3 unpadded. The merged conv then agrees at every pixel, borders included.
SPAN's ``Conv3XC`` does it upstream's way, zero-padding the *input* of its first 1x1: the 1x1
then outputs its bias on the padding, which is the same thing (checked at every pixel by
tests/models/test_reparam.py).

Shapes: every ``forward`` takes (N, C_in, H, W) float and returns (N, C_out, H, W), same dtype.
``merged()`` returns ``(weight (C_out, C_in, 3, 3), bias (C_out,))`` in the parameters' dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..arch.layers import _ExactConstants
from ..arch.span import merge_conv3xc

# Isotropic Sobel (sqrt(2) centre weights instead of 2; its gradient magnitude is the same in
# every direction for a linear ramp), as the IFADNet factsheet's "isotropic Sobel" edge branches.
# Sobel-x responds to horizontal change (kernel varies along W), Sobel-y is its transpose.
_R2 = math.sqrt(2.0)
SOBEL_X = ((1.0, 0.0, -1.0), (_R2, 0.0, -_R2), (1.0, 0.0, -1.0))
SOBEL_Y = ((1.0, _R2, 1.0), (0.0, 0.0, 0.0), (-1.0, -_R2, -1.0))
# 4-neighbour Laplacian.
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def _pad_with_bias(t: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H+2, W+2) with the border filled with ``bias`` (C,) per channel:
    exactly what a preceding 1x1 conv yields for the zero padding of its own input."""
    b = bias.view(1, -1, 1, 1)
    return F.pad(t - b, (1, 1, 1, 1)) + b


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def _embed_1x1(w: torch.Tensor) -> torch.Tensor:
    """(O, I, 1, 1) -> (O, I, 3, 3) with the 1x1 at the centre tap."""
    return F.pad(w, (1, 1, 1, 1))


def _compose_1x1_3x3(w1, b1, w2, b2):
    """Merge 1x1 (w1 (M, I, 1, 1), b1 (M,)) followed by a bias-padded 3x3 (w2 (O, M, 3, 3),
    b2 (O,)) into one zero-padded 3x3: weight (O, I, 3, 3), bias (O,). float64 in and out."""
    w = torch.einsum("omhw,mi->oihw", w2, w1[:, :, 0, 0])
    b = b2 + torch.einsum("omhw,m->o", w2, b1)
    return w, b


class _RepBase(nn.Module):
    """Common plumbing: ``merged()`` in float64, rounded once; ``zero_extra_branches_()``."""

    in_channels: int
    out_channels: int

    def merged64(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _any_weight(self) -> torch.Tensor:
        """A parameter giving the block's dtype and device."""
        return self.main.weight

    def merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = self.merged64()
        dtype = self._any_weight().dtype
        return w.to(dtype), b.to(dtype)

    def to_conv(self) -> nn.Conv2d:
        """The deploy 3x3 conv (zero padding 1) with the merged weights."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, padding=1)
        w, b = self.merged()
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(b)
        return conv.to(self._any_weight().device)

    @torch.no_grad()
    def load_deploy_(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Deploy weights into the main 3x3 branch, every other branch's output to exactly zero.
        In a chain only the *last* factor is zeroed, so that gradients still reach both factors
        (zeroing both would leave the branch dead: each factor's gradient is the other's output)."""
        self.main.weight.copy_(weight)
        self.main.bias.copy_(bias)
        self._zero_extra_()

    def _zero_extra_(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class EdgeRepConv(_RepBase):
    """IFADNet's train-time RFMB conv, an edge-oriented re-parameterisable block (C -> C):

    * ``main``: 3x3 conv with bias;
    * ``expand``/``squeeze``: 1x1 (C -> ``expand_ratio`` C) then 3x3 (-> C), bias-padded;
    * ``sobel_x``/``sobel_y``/``laplacian``: 1x1 (C -> C) then the fixed depthwise filter
      (isotropic Sobel-x, isotropic Sobel-y, 4-neighbour Laplacian) times a learnable
      per-channel scale, plus a learnable per-channel bias, bias-padded;
    * identity, times a learnable per-channel scale (1 from scratch, 0 from a deploy init).
    At inference all of it is one 3x3 conv (``merged()``).
    """

    FILTERS = {"sobel_x": SOBEL_X, "sobel_y": SOBEL_Y, "laplacian": LAPLACIAN}

    def __init__(self, channels: int, expand_ratio: int = 2):
        super().__init__()
        c, m = channels, channels * expand_ratio
        self.in_channels = self.out_channels = c
        self.main = nn.Conv2d(c, c, 3, padding=1)
        self.expand = nn.Conv2d(c, m, 1)
        self.squeeze = nn.Conv2d(m, c, 3)  # applied to the bias-padded expand output
        self.edge_pw = nn.ModuleDict({k: nn.Conv2d(c, c, 1) for k in self.FILTERS})
        # Small random scales, as edge-oriented blocks are usually initialised: the fixed
        # filters start as a gentle perturbation of the learned convs.
        self.edge_scale = nn.ParameterDict({k: nn.Parameter(torch.randn(c) * 1e-3) for k in self.FILTERS})
        self.edge_bias = nn.ParameterDict({k: nn.Parameter(torch.randn(c) * 1e-3) for k in self.FILTERS})
        self.identity_scale = nn.Parameter(torch.ones(c))
        for k, f in self.FILTERS.items():
            self.register_buffer(f"mask_{k}", torch.tensor(f).view(1, 1, 3, 3).repeat(c, 1, 1, 1),
                                 persistent=False)

    def _mask(self, k: str) -> torch.Tensor:
        return getattr(self, f"mask_{k}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.out_channels
        y = self.main(x)
        y = y + self.squeeze(_pad_with_bias(self.expand(x), self.expand.bias))
        for k in self.FILTERS:
            pw = self.edge_pw[k]
            t = _pad_with_bias(pw(x), pw.bias)
            kernel = self._mask(k).to(x.dtype) * self.edge_scale[k].view(c, 1, 1, 1)
            y = y + F.conv2d(t, kernel, self.edge_bias[k], groups=c)
        return y + x * self.identity_scale.view(1, c, 1, 1)

    def merged64(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.out_channels
        w, b = _f64(self.main.weight), _f64(self.main.bias)
        w2, b2 = _compose_1x1_3x3(_f64(self.expand.weight), _f64(self.expand.bias),
                                  _f64(self.squeeze.weight), _f64(self.squeeze.bias))
        w, b = w + w2, b + b2
        for k in self.FILTERS:
            pw = self.edge_pw[k]
            dw = _f64(self._mask(k)) * _f64(self.edge_scale[k]).view(c, 1, 1, 1)  # (C, 1, 3, 3)
            # A depthwise 3x3 after a 1x1: output channel o uses only intermediate channel o.
            we = dw * _f64(pw.weight)  # (C, 1, 3, 3) * (C, C, 1, 1) -> (C, C, 3, 3)
            be = _f64(self.edge_bias[k]) + dw.sum(dim=(1, 2, 3)) * _f64(pw.bias)
            w, b = w + we, b + be
        ident = torch.zeros(c, c, 3, 3, dtype=torch.float64, device=w.device)
        ident[torch.arange(c), torch.arange(c), 1, 1] = _f64(self.identity_scale)
        return w + ident, b

    def _zero_extra_(self) -> None:
        self.squeeze.weight.zero_()
        self.squeeze.bias.zero_()
        for k in self.FILTERS:
            self.edge_scale[k].zero_()
            self.edge_bias[k].zero_()
        self.identity_scale.zero_()


class RepMBConv(_RepBase):
    """PFDNLite's RepMBConv (C_in -> C_out): a MobileNet block with every activation removed,
    1x1 expand (C_in -> ``expand_ratio`` C_in) -> depthwise 3x3 (bias-padded) -> 1x1 project
    (-> C_out), in parallel with a plain 3x3 ``main`` conv (which holds deploy weights when
    initialised from a checkpoint). Squeezed into one 3x3 conv at inference."""

    def __init__(self, c_in: int, c_out: int, expand_ratio: int = 2):
        super().__init__()
        m = c_in * expand_ratio
        self.in_channels, self.out_channels = c_in, c_out
        self.main = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.expand = nn.Conv2d(c_in, m, 1)
        self.depthwise = nn.Conv2d(m, m, 3, groups=m)  # on the bias-padded expand output
        self.project = nn.Conv2d(m, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.depthwise(_pad_with_bias(self.expand(x), self.expand.bias))
        return self.main(x) + self.project(t)

    def merged64(self) -> tuple[torch.Tensor, torch.Tensor]:
        e, be = _f64(self.expand.weight)[:, :, 0, 0], _f64(self.expand.bias)       # (M, I), (M,)
        d, bd = _f64(self.depthwise.weight)[:, 0], _f64(self.depthwise.bias)       # (M, 3, 3), (M,)
        p, bp = _f64(self.project.weight)[:, :, 0, 0], _f64(self.project.bias)     # (O, M), (O,)
        w = torch.einsum("om,mhw,mi->oihw", p, d, e)
        b = bp + p @ (bd + d.sum(dim=(1, 2)) * be)
        return _f64(self.main.weight) + w, _f64(self.main.bias) + b

    def _zero_extra_(self) -> None:
        self.project.weight.zero_()
        self.project.bias.zero_()

    @torch.no_grad()
    def slice_outputs_(self, src: "RepMBConv", rows: slice) -> None:
        """Copy ``src`` restricted to its output channels ``rows``: the main conv's and the
        projection's rows; the expand and depthwise stages are shared by all outputs, so they
        are copied whole. ``self`` must have ``rows``' length of outputs."""
        self.main.weight.copy_(src.main.weight[rows])
        self.main.bias.copy_(src.main.bias[rows])
        self.expand.load_state_dict(src.expand.state_dict())
        self.depthwise.load_state_dict(src.depthwise.state_dict())
        self.project.weight.copy_(src.project.weight[rows])
        self.project.bias.copy_(src.project.bias[rows])


class RepPointwiseConv(_RepBase):
    """PFDNLite's re-parameterisable point-wise conv (C -> C), used for each block's conv3, the
    point-wise mixing that follows the (partial) RepMBConvs: a 3x3 ``main`` conv, a 1x1 conv
    and an identity scaled per channel. One 3x3 conv at inference (the 1x1 at the centre tap)."""

    def __init__(self, channels: int):
        super().__init__()
        self.in_channels = self.out_channels = channels
        self.main = nn.Conv2d(channels, channels, 3, padding=1)
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.identity_scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.pointwise(x) + x * self.identity_scale.view(1, -1, 1, 1)

    def merged64(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.out_channels
        w = _f64(self.main.weight) + _embed_1x1(_f64(self.pointwise.weight))
        w[torch.arange(c), torch.arange(c), 1, 1] += _f64(self.identity_scale)
        return w, _f64(self.main.bias) + _f64(self.pointwise.bias)

    def _zero_extra_(self) -> None:
        self.pointwise.weight.zero_()
        self.pointwise.bias.zero_()
        self.identity_scale.zero_()


class Conv3XC(_RepBase):
    """SPAN's train-time ``Conv3XC`` (C_in -> C_out, gain ``gain``; upstream's layout and key
    names): ``sk`` a 1x1 (C_in -> C_out) skip; ``conv`` = 1x1 (C_in -> gain C_in) -> 3x3
    unpadded (-> gain C_out) -> 1x1 (-> C_out), run on the input zero-padded by one pixel.

    Train forward, as upstream's: ``conv(F.pad(x, (1, 1, 1, 1))) + sk(x)``. The first 1x1 thus
    outputs its bias on the zero padding, and the 3x3 sees it there: exactly what the merged
    bias (``sum(w2 * b1) + b2``) assumes, so the merged 3x3 (``merged()``, zero padding 1: what
    upstream's eval and the deploy ``SPAN`` run) equals the train forward at every pixel,
    borders included. The merge is ``esr_models.arch.span.merge_conv3xc`` (upstream's
    ``update_params`` formula), evaluated in float64 and rounded once."""

    EXTRA_SCALE = 1e-3  # load_deploy_: the extra channels' initial weights, scaled down

    def __init__(self, c_in: int, c_out: int, gain: int = 2):
        super().__init__()
        self.in_channels, self.out_channels, self.gain = c_in, c_out, gain
        self.sk = nn.Conv2d(c_in, c_out, 1)
        self.conv = nn.Sequential(nn.Conv2d(c_in, c_in * gain, 1), nn.Conv2d(c_in * gain, c_out * gain, 3),
                                  nn.Conv2d(c_out * gain, c_out, 1))

    def _any_weight(self) -> torch.Tensor:
        return self.sk.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 1, 1, 1), "constant", 0)) + self.sk(x)

    def merged64(self) -> tuple[torch.Tensor, torch.Tensor]:
        sd = {f"m.{k}": _f64(v) for k, v in self.state_dict().items()}
        return merge_conv3xc(sd, "m")

    @torch.no_grad()
    def load_deploy_(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Deploy weights (C_out, C_in, 3, 3), (C_out,) such that the train forward is the deploy
        conv at every pixel, borders included, and every parameter gets a gradient within two
        steps (none is left on an exact saddle, as ``[I; 0]`` / ``[I 0]`` factors would be):

        * first 1x1: rows [0, C_in) the identity, the other rows their initial values times
          ``EXTRA_SCALE``; bias zero;
        * 3x3: block [0, C_out) x [0, C_in) the deploy weight, block [0, C_out) x [C_in, gain
          C_in) zero, rows [C_out, gain C_out) their initial values times ``EXTRA_SCALE``; bias
          [0, C_out) the deploy bias, the rest its initial values times ``EXTRA_SCALE``;
        * last 1x1: [I 0] (columns [C_out, gain C_out) zero: the zeroed factor of the extra
          channels' chain), bias zero;
        * ``sk``: zero (one factor: it gets a gradient).

        Why the extra channels start small: Adam's first steps move every parameter by about the
        learning rate whatever its gradient, so a zero factor multiplying full-size features jumps
        by lr times their size. SPAN's features are large (its head sees the image times 255):
        with the extra channels at their initial size, two steps at lr 2e-4 took SPAN from 32.1 to
        13.4 dB on a Set5 image, against 26.3 dB with them at 1e-3 of it or zero (measured
        2026-12-06). The remaining drop is the deploy weights' own first steps: fine-tune SPAN
        at a lower learning rate (2e-5: 31.9 dB after the same two steps)."""
        ci, co = self.in_channels, self.out_channels
        first, mid, last = self.conv
        first.weight[:ci].zero_()
        first.weight[torch.arange(ci), torch.arange(ci), 0, 0] = 1.0
        first.weight[ci:].mul_(self.EXTRA_SCALE)
        first.bias.zero_()
        mid.weight[:co].zero_()
        mid.weight[:co, :ci].copy_(weight)
        mid.weight[co:].mul_(self.EXTRA_SCALE)
        mid.bias[:co].copy_(bias)
        mid.bias[co:].mul_(self.EXTRA_SCALE)
        last.weight.zero_()
        last.weight[torch.arange(co), torch.arange(co), 0, 0] = 1.0
        last.bias.zero_()
        self.sk.weight.zero_()
        self.sk.bias.zero_()


class AffineInputConv3XC(_ExactConstants, Conv3XC):
    """SPAN's train-time head: ``Conv3XC`` of ``(x - in_shift) * in_scale`` (upstream
    normalises the image, then pads the normalised image with zeros), as the deploy head
    ``esr_models.arch.layers.AffineInputConv2d`` applies the same transform before its merged
    conv. ``weight`` is what the models' input check reads (its shape[1], dtype and device)."""

    def __init__(self, c_in: int, c_out: int, gain: int = 2, in_scale: float = 1.0, in_shift=None):
        super().__init__(c_in, c_out, gain)
        self.in_scale = in_scale
        self._register_constant("in_shift", in_shift, c_in)
        self.has_shift = in_shift is not None

    @property
    def weight(self) -> torch.Tensor:
        return self.sk.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_shift:
            x = x - self.in_shift.to(x.dtype)
        if self.in_scale != 1.0:
            x = x * self.in_scale
        return super().forward(x)


REP_BLOCKS = (EdgeRepConv, RepMBConv, RepPointwiseConv, Conv3XC)
