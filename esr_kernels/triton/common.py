"""Device helpers shared by the Triton kernels. All maths in float32."""
import triton
import triton.language as tl

from ..spec import ACT_GELU, ACT_LEAKY, ACT_SIGMOID, ACT_SILU, LEAKY_SLOPE

_ACT_GELU: tl.constexpr = tl.constexpr(ACT_GELU)
_ACT_SILU: tl.constexpr = tl.constexpr(ACT_SILU)
_ACT_LEAKY: tl.constexpr = tl.constexpr(ACT_LEAKY)
_ACT_SIGMOID: tl.constexpr = tl.constexpr(ACT_SIGMOID)
_LEAKY_SLOPE: tl.constexpr = tl.constexpr(LEAKY_SLOPE)


@triton.jit
def program_pixels(BLOCK_P: tl.constexpr, total, width):
    """This program's BLOCK_P flattened pixel indices (axis 0 of the grid), their in-bounds
    mask, and their (row, column) in an image ``width`` wide."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    return p, p < total, p // width, p % width


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def apply_act(x, ACT: tl.constexpr):
    if ACT == _ACT_GELU:
        # erf form, as nn.GELU(): the tanh approximation is off by up to ~1e-3.
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACT == _ACT_SILU:
        x = x * sigmoid(x)
    elif ACT == _ACT_LEAKY:
        x = tl.where(x >= 0, x, x * _LEAKY_SLOPE)
    elif ACT == _ACT_SIGMOID:
        x = sigmoid(x)
    return x


@triton.jit
def bilinear_coords(dst, scale, src_len):
    """align_corners=False source coordinate of output index ``dst``: (dst + 0.5) * scale - 0.5
    clamped at 0 (as PyTorch), the two taps and the weight of the second one."""
    src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    i0 = tl.minimum(src.to(tl.int32), src_len - 1)
    i1 = tl.minimum(i0 + 1, src_len - 1)
    lam = src - i0.to(tl.float32)
    return i0, i1, lam


@triton.jit
def bilinear_sample(base_ptr, chan_off, y0, y1, ly, x0, x1, lx, s_h, s_w, mask):
    """Bilinear value of a low-resolution map at rows (y0, y1, ly), cols (x0, x1, lx).
    ``chan_off`` broadcasts against the pixel coordinates; the order of operations is PyTorch's."""
    p00 = tl.load(base_ptr + chan_off + y0 * s_h + x0 * s_w, mask=mask, other=0.0).to(tl.float32)
    p01 = tl.load(base_ptr + chan_off + y0 * s_h + x1 * s_w, mask=mask, other=0.0).to(tl.float32)
    p10 = tl.load(base_ptr + chan_off + y1 * s_h + x0 * s_w, mask=mask, other=0.0).to(tl.float32)
    p11 = tl.load(base_ptr + chan_off + y1 * s_h + x1 * s_w, mask=mask, other=0.0).to(tl.float32)
    return (1.0 - ly) * ((1.0 - lx) * p00 + lx * p01) + ly * ((1.0 - lx) * p10 + lx * p11)


def interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def pixel_block() -> int:
    """Pixels per program: large under the interpreter (fewer, numpy-vectorised programs)."""
    return 4096 if interpreting() else 64


@triton.jit
def mma(a, b, EXACT: tl.constexpr):
    """a @ b with float32 accumulation; ``a`` is float32, ``b`` holds the weights' dtype.
    EXACT: operands rounded to b's dtype, then multiplied exactly in float32 (IEEE, no tf32):
    float32 models, and bfloat16 under the interpreter, whose bf16 dot is broken. bf16 x bf16
    products are exact in float32, so this is the tensor cores' arithmetic.
    Otherwise fp16/bf16 operands on the tensor cores."""
    if EXACT:
        return tl.dot(a.to(b.dtype).to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a.to(b.dtype), b)


def exact_dot(dtype) -> bool:
    import torch

    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting())
